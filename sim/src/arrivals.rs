//! Workload input: JSON Lines files and the synthetic generator, both as streams of arrivals, so
//! a million-request workload never sits in memory.

use std::io::BufRead;

use serde::Deserialize;
use thiserror::Error;

use crate::rng::Rng;

/// When a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalTime {
    /// Virtual nanoseconds since the start.
    Ns(u64),
    /// Right before the engine iteration with this index.
    Step(u64),
}

/// One request of a workload, before it is turned into tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Request id.
    pub id: String,
    /// Arrival.
    pub at: ArrivalTime,
    /// The prompt.
    pub prompt: Prompt,
    /// Tokens the request produces before it stops.
    pub output_len: u32,
    /// Cap on output tokens (at least `output_len` unless the cap ends it first).
    pub max_tokens: u32,
    /// Priority (lower first).
    pub priority: i32,
    /// Client (tenant) index.
    pub client: u32,
}

/// A prompt given by length (with an optional shared prefix) or as explicit tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// `len` tokens, the first `prefix_len` shared by every request of `prefix_group`.
    Length {
        /// Prompt length.
        len: u32,
        /// Shared prefix group.
        prefix_group: Option<u32>,
        /// Shared prefix length.
        prefix_len: u32,
    },
    /// Explicit token ids.
    Tokens(Vec<u32>),
}

/// Token ids the simulator never uses in prompts: EOS and the filler of generated text.
pub const EOS: u32 = 2;
const FILLER: u32 = 3;

impl Prompt {
    /// The prompt's token ids. Shared prefixes are the same for every request of a group;
    /// the rest is unique to the request (a hash of its index), so only the prefix is cached.
    pub fn token_ids(&self, unique: u64) -> Vec<u32> {
        match self {
            Self::Tokens(tokens) => tokens.clone(),
            Self::Length {
                len,
                prefix_group,
                prefix_len,
            } => {
                let shared = if prefix_group.is_some() {
                    (*prefix_len).min(*len)
                } else {
                    0
                };
                let group = prefix_group.unwrap_or(0);
                let mut rng = Rng::new(unique.wrapping_mul(0x9e37_79b9).wrapping_add(1));
                (0..*len)
                    .map(|i| {
                        if i < shared {
                            16 + (group.wrapping_mul(7919).wrapping_add(i) % 50_000)
                        } else {
                            16 + rng.below(50_000) as u32
                        }
                    })
                    .collect()
            }
        }
    }

    /// Prompt length.
    pub fn len(&self) -> u32 {
        match self {
            Self::Tokens(tokens) => tokens.len() as u32,
            Self::Length { len, .. } => *len,
        }
    }

    /// Whether the prompt is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The token the simulated model samples for a request that has produced `produced` tokens so
/// far: EOS for its `output_len`-th token, a filler token before.
pub fn sampled_token(produced: u32, output_len: u32) -> u32 {
    if produced + 1 >= output_len {
        EOS
    } else {
        FILLER
    }
}

/// A malformed workload line.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("reading the workload: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a valid request.
    #[error("workload line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Arrivals went back in time.
    #[error("request {id:?} arrives before the request listed ahead of it; list requests in arrival order")]
    OutOfOrder {
        /// The offending request.
        id: String,
    },
}

/// A workload's arrivals released by the clock, in order: each when its time or its step has
/// come. Simulations and the browser's live mode admit requests through it.
pub struct ArrivalQueue<I: Iterator<Item = Result<Arrival, WorkloadError>>> {
    pending: std::iter::Peekable<I>,
    last_arrival_ns: u64,
}

impl<I: Iterator<Item = Result<Arrival, WorkloadError>>> ArrivalQueue<I> {
    /// The queue of `arrivals`.
    pub fn new(arrivals: I) -> Self {
        Self {
            pending: arrivals.peekable(),
            last_arrival_ns: 0,
        }
    }

    /// The next arrival due at `now_ns` or by engine step `step`, with the time it arrives
    /// (`now_ns` for one given by step); `None` when none is due yet.
    pub fn next_due(
        &mut self,
        now_ns: u64,
        step: u64,
    ) -> Result<Option<(Arrival, u64)>, WorkloadError> {
        let due = match self.pending.peek() {
            None => false,
            Some(Err(_)) => true,
            Some(Ok(arrival)) => match arrival.at {
                ArrivalTime::Ns(t) => t <= now_ns,
                ArrivalTime::Step(k) => k <= step,
            },
        };
        if !due {
            return Ok(None);
        }
        let arrival = match self.pending.next() {
            Some(Ok(arrival)) => arrival,
            Some(Err(error)) => return Err(error),
            None => return Ok(None),
        };
        let at = match arrival.at {
            ArrivalTime::Ns(t) if t < self.last_arrival_ns => {
                return Err(WorkloadError::OutOfOrder { id: arrival.id })
            }
            ArrivalTime::Ns(t) => {
                self.last_arrival_ns = t;
                t
            }
            ArrivalTime::Step(_) => now_ns,
        };
        Ok(Some((arrival, at)))
    }

    /// When the next arrival not yet due comes; `None` when none is left.
    pub fn next_at(&mut self) -> Option<ArrivalTime> {
        self.pending
            .peek()
            .and_then(|item| item.as_ref().ok())
            .map(|arrival| arrival.at)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    arrival_ms: Option<f64>,
    arrival_step: Option<u64>,
    prompt_len: Option<u32>,
    prompt_token_ids: Option<Vec<u32>>,
    output_len: u32,
    max_tokens: Option<u32>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    client: u32,
    prefix_group: Option<u32>,
    prefix_len: Option<u32>,
}

fn parse_line(text: &str) -> Result<Arrival, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let at = match (line.arrival_ms, line.arrival_step) {
        (Some(ms), None) if ms.is_finite() && ms >= 0.0 => {
            ArrivalTime::Ns((ms * 1e6).round() as u64)
        }
        (Some(ms), None) => {
            return Err(format!(
                "arrival_ms must be a non-negative number, got {ms}"
            ))
        }
        (None, Some(step)) => ArrivalTime::Step(step),
        (None, None) => return Err("one of arrival_ms or arrival_step is required".into()),
        (Some(_), Some(_)) => return Err("give arrival_ms or arrival_step, not both".into()),
    };
    let prompt = match (line.prompt_len, line.prompt_token_ids) {
        (Some(len), None) => Prompt::Length {
            len,
            prefix_group: line.prefix_group,
            prefix_len: line.prefix_len.unwrap_or(0),
        },
        (None, Some(tokens)) if line.prefix_group.is_none() => Prompt::Tokens(tokens),
        (None, Some(_)) => {
            return Err("prefix_group applies to prompt_len, not prompt_token_ids".into())
        }
        (None, None) => return Err("one of prompt_len or prompt_token_ids is required".into()),
        (Some(_), Some(_)) => return Err("give prompt_len or prompt_token_ids, not both".into()),
    };
    if line.prefix_len.is_some() && line.prefix_group.is_none() {
        return Err("prefix_len needs a prefix_group".into());
    }
    if line.output_len == 0 {
        return Err("output_len must be at least 1".into());
    }
    Ok(Arrival {
        id: line.id,
        at,
        prompt,
        output_len: line.output_len,
        max_tokens: line.max_tokens.unwrap_or(line.output_len),
        priority: line.priority,
        client: line.client,
    })
}

/// The requests of a JSON Lines workload, in file order. Blank lines are skipped; a malformed
/// line is an error naming its line number.
pub fn read_workload(reader: impl BufRead) -> impl Iterator<Item = Result<Arrival, WorkloadError>> {
    reader.lines().enumerate().filter_map(|(index, line)| {
        let line_number = index + 1;
        match line {
            Err(error) => Some(Err(WorkloadError::Io(error))),
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(parse_line(&text).map_err(|message| WorkloadError::Line {
                line: line_number,
                message,
            })),
        }
    })
}

/// A length distribution: `fixed:N`, `uniform:A-B`, or `sharegpt` (a built-in long-tailed shape).
#[derive(Clone, Debug, PartialEq)]
pub enum Lengths {
    /// Always `N`.
    Fixed(u32),
    /// Uniform in `A..=B`.
    Uniform(u32, u32),
    /// Log-normal with the given median and spread, clamped to `[min, max]` (ShareGPT-like).
    LogNormal {
        /// Median length.
        median: f64,
        /// Standard deviation of the log.
        sigma: f64,
        /// Smallest length.
        min: u32,
        /// Largest length.
        max: u32,
    },
}

impl Lengths {
    /// Parse `fixed:N`, `uniform:A-B` or `sharegpt`; `prompt` picks the ShareGPT prompt or
    /// output shape.
    pub fn parse(text: &str, prompt: bool) -> Result<Self, String> {
        let bad =
            || format!("bad length distribution {text:?}: use fixed:N, uniform:A-B or sharegpt");
        if text == "sharegpt" {
            // Medians and spreads close to the ShareGPT conversations used by vLLM's benchmarks.
            return Ok(if prompt {
                Self::LogNormal {
                    median: 180.0,
                    sigma: 1.1,
                    min: 4,
                    max: 1800,
                }
            } else {
                Self::LogNormal {
                    median: 190.0,
                    sigma: 1.0,
                    min: 4,
                    max: 1200,
                }
            });
        }
        if let Some(n) = text.strip_prefix("fixed:") {
            return n
                .parse()
                .ok()
                .filter(|&n: &u32| n > 0)
                .map(Self::Fixed)
                .ok_or_else(bad);
        }
        if let Some(range) = text.strip_prefix("uniform:") {
            let (a, b) = range.split_once('-').ok_or_else(bad)?;
            let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            return (a > 0 && a <= b)
                .then_some(Self::Uniform(a, b))
                .ok_or_else(bad);
        }
        Err(bad())
    }

    fn sample(&self, rng: &mut Rng) -> u32 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform(a, b) => a + rng.below(u64::from(b - a) + 1) as u32,
            Self::LogNormal {
                median,
                sigma,
                min,
                max,
            } => {
                let value = median * (sigma * standard_normal(rng)).exp();
                (value.round() as u32).clamp(min, max)
            }
        }
    }
}

fn unit(rng: &mut Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn standard_normal(rng: &mut Rng) -> f64 {
    let (u, v) = (unit(rng), unit(rng));
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Gamma(shape, 1) by Marsaglia and Tsang (shape < 1 boosted).
fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * unit(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v > 0.0 && unit(rng).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A weighted choice among values: `0:0.8,1:0.2` (value:weight pairs).
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(Vec<(i64, f64)>);

impl Mix {
    /// Parse `value:weight,...` (a bare `value` has weight 1).
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries = text
            .split(',')
            .map(|part| {
                let (value, weight) = part.split_once(':').unwrap_or((part, "1"));
                let value: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad mix entry {part:?}"))?;
                let weight: f64 = weight
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad mix weight {part:?}"))?;
                (weight >= 0.0 && weight.is_finite())
                    .then_some((value, weight))
                    .ok_or_else(|| format!("bad mix weight {part:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if entries.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err(format!("mix {text:?} has no weight"));
        }
        Ok(Self(entries))
    }

    fn sample(&self, rng: &mut Rng) -> i64 {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let mut point = unit(rng) * total;
        for &(value, weight) in &self.0 {
            if point < weight {
                return value;
            }
            point -= weight;
        }
        self.0.last().map_or(0, |(value, _)| *value)
    }
}

/// Settings of the synthetic workload generator.
#[derive(Clone, Debug, PartialEq)]
pub struct Synthetic {
    /// Requests to generate.
    pub num_requests: u64,
    /// Mean arrivals per second (infinite: all at time 0).
    pub request_rate: f64,
    /// Gamma shape of inter-arrival times: 1 is Poisson, below 1 burstier.
    pub burstiness: f64,
    /// Prompt lengths.
    pub prompt_lengths: Lengths,
    /// Output lengths.
    pub output_lengths: Lengths,
    /// Fraction of requests that share a prefix with their group.
    pub prefix_fraction: f64,
    /// Prefix groups shared requests are spread over.
    pub prefix_groups: u32,
    /// Length of a shared prefix.
    pub prefix_len: u32,
    /// Priority mix.
    pub priorities: Mix,
    /// Client mix.
    pub clients: Mix,
    /// Seed.
    pub seed: u64,
}

impl Synthetic {
    /// The generated requests, lazily.
    pub fn arrivals(self) -> impl Iterator<Item = Arrival> {
        let mut rng = Rng::new(self.seed);
        let mut time_s = 0.0f64;
        (0..self.num_requests).map(move |index| {
            if self.request_rate.is_finite() && index > 0 {
                let mean = 1.0 / self.request_rate;
                time_s += gamma(&mut rng, self.burstiness) * mean / self.burstiness;
            }
            let mut len = self.prompt_lengths.sample(&mut rng);
            let shared = unit(&mut rng) < self.prefix_fraction;
            let group = rng.below(u64::from(self.prefix_groups.max(1))) as u32;
            if shared {
                len = len.max(self.prefix_len + 1);
            }
            let output_len = self.output_lengths.sample(&mut rng);
            Arrival {
                id: format!("req-{index}"),
                at: ArrivalTime::Ns((time_s * 1e9).round() as u64),
                prompt: Prompt::Length {
                    len,
                    prefix_group: shared.then_some(group),
                    prefix_len: if shared { self.prefix_len } else { 0 },
                },
                output_len,
                max_tokens: output_len,
                priority: self.priorities.sample(&mut rng) as i32,
                client: self.clients.sample(&mut rng).max(0) as u32,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lines: &str) -> ArrivalQueue<impl Iterator<Item = Result<Arrival, WorkloadError>>> {
        ArrivalQueue::new(
            read_workload(lines.as_bytes())
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    #[test]
    fn arrivals_are_released_when_their_time_or_step_comes() {
        let mut arrivals = queue(concat!(
            r#"{"id": "a", "arrival_ms": 0, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "b", "arrival_ms": 5, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "c", "arrival_step": 3, "prompt_len": 4, "output_len": 1}"#,
        ));
        let (first, at) = arrivals.next_due(0, 0).expect("valid").expect("due");
        assert_eq!((first.id.as_str(), at), ("a", 0));
        assert!(arrivals.next_due(4_999_999, 0).expect("valid").is_none());
        assert_eq!(arrivals.next_at(), Some(ArrivalTime::Ns(5_000_000)));
        let (second, at) = arrivals
            .next_due(7_000_000, 0)
            .expect("valid")
            .expect("due");
        assert_eq!((second.id.as_str(), at), ("b", 5_000_000));
        assert!(arrivals.next_due(9_000_000, 2).expect("valid").is_none());
        let (third, at) = arrivals
            .next_due(9_000_000, 3)
            .expect("valid")
            .expect("due");
        assert_eq!((third.id.as_str(), at), ("c", 9_000_000));
        assert_eq!(arrivals.next_at(), None);
    }

    #[test]
    fn an_arrival_listed_after_a_later_one_is_named() {
        let mut arrivals = queue(concat!(
            r#"{"id": "late", "arrival_ms": 10, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "early", "arrival_ms": 2, "prompt_len": 4, "output_len": 1}"#,
        ));
        assert!(arrivals.next_due(20_000_000, 0).expect("valid").is_some());
        let error = arrivals.next_due(20_000_000, 0).expect_err("out of order");
        assert!(
            matches!(error, WorkloadError::OutOfOrder { ref id } if id == "early"),
            "{error}"
        );
    }
}
