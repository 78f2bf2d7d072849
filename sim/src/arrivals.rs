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
    /// Nanoseconds after arrival by which the request should finish (deadline-aware policies).
    pub deadline_after_ns: Option<u64>,
}

/// A prompt given by length (with an optional shared prefix) or as explicit tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// `len` tokens, the first `prefix_len` shared by every request of `prefix_group`.
    Length {
        /// Prompt length.
        len: u32,
        /// Shared prefix group.
        prefix_group: Option<PrefixGroup>,
        /// Shared prefix length.
        prefix_len: u32,
    },
    /// Explicit token ids.
    Tokens(Vec<u32>),
}

/// A shared-prefix group, named in a workload file by an integer or a string. Requests of one
/// group share their prefix tokens; different groups never share a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixGroup {
    /// Seeds the group's prefix tokens; integers and names hash into it with different tags.
    seed: u64,
}

impl PrefixGroup {
    /// The group with this number (`"prefix_group": 3`, or the generator's group 3).
    pub fn numbered(index: u32) -> Self {
        Self::keyed(b'#', &index.to_le_bytes())
    }

    /// The group with this name (`"prefix_group": "system-prompt-a"`).
    pub fn named(name: &str) -> Self {
        Self::keyed(b'$', name.as_bytes())
    }

    /// FNV-1a over a tag and the key: stable across versions and platforms, so a workload file
    /// gives the same prompts everywhere.
    fn keyed(tag: u8, key: &[u8]) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0100_0000_01b3;
        let seed = [b"prefix-group:".as_slice(), &[tag], key]
            .concat()
            .iter()
            .fold(OFFSET, |hash, &byte| {
                (hash ^ u64::from(byte)).wrapping_mul(PRIME)
            });
        Self { seed }
    }
}

impl<'de> Deserialize<'de> for PrefixGroup {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = PrefixGroup;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a prefix group: a string or an integer from 0 to 4294967295")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<PrefixGroup, E> {
                u32::try_from(value)
                    .map(PrefixGroup::numbered)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<PrefixGroup, E> {
                u64::try_from(value)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
                    .and_then(|value| self.visit_u64(value))
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<PrefixGroup, E> {
                Ok(PrefixGroup::named(name))
            }
        }
        deserializer.deserialize_any(Key)
    }
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
                let shared = prefix_group.map_or(0, |_| (*prefix_len).min(*len));
                let mut tokens = vec![0; *len as usize];
                let (prefix, rest) = tokens.split_at_mut(shared as usize);
                draw_tokens(prefix, prefix_group.map_or(0, |group| group.seed));
                draw_tokens(rest, unique.wrapping_mul(0x9e37_79b9).wrapping_add(1));
                tokens
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

/// Fill `tokens` with ids drawn uniformly from `16..50_016` by a generator seeded with `seed`.
/// Each 64 random bits give two ids (32 bits each, scaled by a multiply rather than reduced by a
/// division): prompts are most of what a simulation generates.
fn draw_tokens(tokens: &mut [u32], seed: u64) {
    let mut rng = Rng::new(seed);
    let token = |bits: u64| 16 + (((bits & 0xffff_ffff) * 50_000) >> 32) as u32;
    let mut pairs = tokens.chunks_exact_mut(2);
    for pair in &mut pairs {
        let bits = rng.next_u64();
        pair[0] = token(bits);
        pair[1] = token(bits >> 32);
    }
    if let [last] = pairs.into_remainder() {
        *last = token(rng.next_u64());
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
    /// A request is listed after one that arrives later.
    #[error(
        "workload line {line}: request {id:?} arrives before the request on line {previous_line}; \
         list requests in arrival order (sort the file by arrival_ms or arrival_step)"
    )]
    OutOfOrder {
        /// 1-based line number of the request.
        line: usize,
        /// The request.
        id: String,
        /// The line of the later arrival listed ahead of it.
        previous_line: usize,
    },
}

/// A workload's arrivals released by the clock, in order: each when its time or its step has
/// come. Simulations and the browser's live mode admit requests through it.
pub struct ArrivalQueue<I: Iterator<Item = Result<Arrival, WorkloadError>>> {
    pending: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = Result<Arrival, WorkloadError>>> ArrivalQueue<I> {
    /// The queue of `arrivals`.
    pub fn new(arrivals: I) -> Self {
        Self {
            pending: arrivals.peekable(),
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
            ArrivalTime::Ns(t) => t,
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
    prefix_group: Option<PrefixGroup>,
    prefix_len: Option<u32>,
    deadline_ms: Option<f64>,
}

/// Check a line against `max_model_len` before its prompt is built, so a huge `prompt_len`
/// is an error rather than an allocation.
fn parse_line(text: &str, max_model_len: u32) -> Result<Arrival, String> {
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
    let deadline_after_ns = match line.deadline_ms {
        Some(ms) if ms.is_finite() && ms > 0.0 && ms <= MAX_DEADLINE_MS => {
            Some((ms * 1e6).round() as u64)
        }
        Some(ms) => {
            return Err(format!(
                "deadline_ms must be a number of milliseconds in (0, {MAX_DEADLINE_MS}], got {ms}"
            ))
        }
        None => None,
    };
    if prompt.len() >= max_model_len {
        return Err(format!(
            "a prompt of {} tokens does not fit max_model_len {max_model_len} (a prompt must \
             leave room for one output token)",
            prompt.len()
        ));
    }
    Ok(Arrival {
        id: line.id,
        at,
        prompt,
        output_len: line.output_len,
        max_tokens: line.max_tokens.unwrap_or(line.output_len),
        priority: line.priority,
        client: line.client,
        deadline_after_ns,
    })
}

/// The longest deadline a workload line may give: a day.
const MAX_DEADLINE_MS: f64 = 86_400_000.0;

/// The requests of a JSON Lines workload, in file order, for a scheduler whose longest
/// sequence is `max_model_len`. Blank lines are skipped; a malformed line, a prompt that
/// cannot fit, or a request listed after a later one is an error naming its line number.
///
/// Out-of-order lines are refused rather than sorted: sorting would hold the whole file in
/// memory, and a file out of order is more often a generator's bug than a wish.
pub fn read_workload(
    reader: impl BufRead,
    max_model_len: u32,
) -> impl Iterator<Item = Result<Arrival, WorkloadError>> {
    let mut order = ArrivalOrder::default();
    reader.lines().enumerate().filter_map(move |(index, line)| {
        let line_number = index + 1;
        let text = match line {
            Err(error) => return Some(Err(WorkloadError::Io(error))),
            Ok(text) if text.trim().is_empty() => return None,
            Ok(text) => text,
        };
        Some(
            parse_line(&text, max_model_len)
                .map_err(|message| WorkloadError::Line {
                    line: line_number,
                    message,
                })
                .and_then(|arrival| order.admit(arrival, line_number)),
        )
    })
}

/// The latest arrival so far of each kind (time and step), with its line.
#[derive(Default)]
struct ArrivalOrder {
    latest_ns: Option<(u64, usize)>,
    latest_step: Option<(u64, usize)>,
}

impl ArrivalOrder {
    fn admit(&mut self, arrival: Arrival, line: usize) -> Result<Arrival, WorkloadError> {
        let (latest, at) = match arrival.at {
            ArrivalTime::Ns(t) => (&mut self.latest_ns, t),
            ArrivalTime::Step(k) => (&mut self.latest_step, k),
        };
        if let Some((previous, previous_line)) = *latest {
            if at < previous {
                return Err(WorkloadError::OutOfOrder {
                    line,
                    id: arrival.id,
                    previous_line,
                });
            }
        }
        *latest = Some((at, line));
        Ok(arrival)
    }
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

    /// The longest length it gives.
    pub fn largest(&self) -> u32 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform(_, b) => b,
            Self::LogNormal { max, .. } => max,
        }
    }

    /// A long-tailed shape cut at `longest`; fixed and uniform lengths as given.
    pub fn fitted(self, longest: u32) -> Self {
        match self {
            Self::LogNormal {
                median,
                sigma,
                min,
                max,
            } => Self::LogNormal {
                median,
                sigma,
                min: min.min(longest),
                max: max.min(longest),
            },
            other => other,
        }
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
                    prefix_group: shared.then_some(PrefixGroup::numbered(group)),
                    prefix_len: if shared { self.prefix_len } else { 0 },
                },
                output_len,
                max_tokens: output_len,
                priority: self.priorities.sample(&mut rng) as i32,
                client: self.clients.sample(&mut rng).max(0) as u32,
                deadline_after_ns: None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lines: &str) -> ArrivalQueue<impl Iterator<Item = Result<Arrival, WorkloadError>>> {
        ArrivalQueue::new(
            read_workload(lines.as_bytes(), 4096)
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

    fn read(lines: &str) -> Vec<Result<Arrival, WorkloadError>> {
        read_workload(lines.as_bytes(), 4096).collect()
    }

    #[test]
    fn an_arrival_listed_after_a_later_one_is_refused_with_both_lines() {
        for (late, early) in [
            ("\"arrival_ms\": 10", "\"arrival_ms\": 2"),
            ("\"arrival_step\": 4", "\"arrival_step\": 0"),
        ] {
            let arrivals = read(&format!(
                "{{\"id\": \"late\", {late}, \"prompt_len\": 4, \"output_len\": 1}}\n\n\
                 {{\"id\": \"early\", {early}, \"prompt_len\": 4, \"output_len\": 1}}\n"
            ));
            assert!(arrivals[0].is_ok());
            let error = arrivals[1].as_ref().expect_err("out of order");
            assert!(
                matches!(error, WorkloadError::OutOfOrder { line: 3, ref id, previous_line: 1 } if id == "early"),
                "{error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("workload line 3: request \"early\""),
                "{error}"
            );
        }
    }

    #[test]
    fn time_and_step_arrivals_are_each_kept_in_order_on_their_own() {
        let arrivals = read(concat!(
            r#"{"id": "a", "arrival_ms": 50, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "b", "arrival_step": 2, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "c", "arrival_ms": 60, "prompt_len": 4, "output_len": 1}"#,
            "\n",
            r#"{"id": "d", "arrival_step": 2, "prompt_len": 4, "output_len": 1}"#,
        ));
        assert!(arrivals.iter().all(Result::is_ok));
    }

    #[test]
    fn prefix_groups_may_be_named_by_strings_or_integers() {
        let arrivals: Vec<Arrival> = read(concat!(
            r#"{"id": "a", "arrival_ms": 0, "prompt_len": 40, "output_len": 1, "prefix_group": "system-prompt-a", "prefix_len": 32}"#,
            "\n",
            r#"{"id": "b", "arrival_ms": 0, "prompt_len": 40, "output_len": 1, "prefix_group": "system-prompt-a", "prefix_len": 32}"#,
            "\n",
            r#"{"id": "c", "arrival_ms": 0, "prompt_len": 40, "output_len": 1, "prefix_group": 7, "prefix_len": 32}"#,
            "\n",
            r#"{"id": "d", "arrival_ms": 0, "prompt_len": 40, "output_len": 1, "prefix_group": "7", "prefix_len": 32}"#,
        ))
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("valid lines");
        let prompts: Vec<Vec<u32>> = arrivals
            .iter()
            .enumerate()
            .map(|(i, arrival)| arrival.prompt.token_ids(i as u64))
            .collect();
        assert_eq!(
            prompts[0][..32],
            prompts[1][..32],
            "one named group shares its prefix"
        );
        assert_ne!(prompts[0][32..], prompts[1][32..], "and nothing after it");
        assert_ne!(
            prompts[2][..16],
            prompts[3][..16],
            "group 7 and group \"7\" are different groups"
        );
        assert_ne!(prompts[0][..16], prompts[2][..16]);
    }

    #[test]
    fn a_shorter_prompt_of_a_group_shares_the_longer_ones_prefix_and_ids_stay_in_range() {
        let group = Some(PrefixGroup::numbered(3));
        let prompt = |len, prefix_len| Prompt::Length {
            len,
            prefix_group: group,
            prefix_len,
        };
        let long = prompt(40, 33).token_ids(0);
        let short = prompt(7, 33).token_ids(1);
        assert_eq!(short[..], long[..7], "odd lengths end on the same draws");
        assert_ne!(long[33..], prompt(40, 33).token_ids(2)[33..]);
        let many = prompt(4001, 0).token_ids(5);
        assert!(many.iter().all(|&token| (16..50_016).contains(&token)));
        let high = many.iter().filter(|&&token| token >= 25_016).count();
        assert!(
            (1800..2200).contains(&high),
            "{high} of 4001 in the upper half"
        );
    }

    #[test]
    fn a_prefix_group_of_another_type_is_a_clear_line_error() {
        let arrivals = read(
            r#"{"id": "a", "arrival_ms": 0, "prompt_len": 40, "output_len": 1, "prefix_group": 1.5, "prefix_len": 8}"#,
        );
        let error = arrivals[0]
            .as_ref()
            .expect_err("a float is no group")
            .to_string();
        assert!(error.contains("workload line 1"), "{error}");
        assert!(error.contains("a string or an integer"), "{error}");
    }

    #[test]
    fn a_prompt_longer_than_the_model_is_refused_before_it_is_built() {
        let arrivals = read(concat!(
            r#"{"id": "a", "arrival_ms": 0, "prompt_len": 4000000000, "output_len": 1}"#,
            "\n",
            r#"{"id": "b", "arrival_ms": 0, "prompt_len": 4096, "output_len": 1}"#,
            "\n",
            r#"{"id": "c", "arrival_ms": 0, "prompt_len": 4095, "output_len": 1}"#,
        ));
        let error = arrivals[0].as_ref().expect_err("too long").to_string();
        assert!(
            error.contains(
                "workload line 1: a prompt of 4000000000 tokens does not fit max_model_len 4096"
            ),
            "{error}"
        );
        assert!(
            arrivals[1].is_err(),
            "a prompt must leave room for one output token"
        );
        assert!(arrivals[2].is_ok());
    }

    #[test]
    fn synthetic_lengths_are_checked_against_the_model_length() {
        let settings = |prompt_lengths: &str| crate::settings::SyntheticSettings {
            num_requests: 10,
            request_rate: None,
            burstiness: 1.0,
            prompt_lengths: prompt_lengths.into(),
            output_lengths: "fixed:4".into(),
            prefix_fraction: 0.0,
            prefix_groups: 1,
            prefix_len: 0,
            priorities: "0".into(),
            clients: "0".into(),
            seed: 0,
        };
        let error = settings("fixed:4000000000")
            .synthetic(4096)
            .expect_err("too long");
        assert!(error.contains("do not fit --max-model-len 4096"), "{error}");
        assert!(settings("uniform:10-5000").synthetic(4096).is_err());
        let fitted = settings("sharegpt")
            .synthetic(256)
            .expect("sharegpt is cut to fit");
        assert!(fitted.arrivals().all(|arrival| arrival.prompt.len() < 256));
    }
}
