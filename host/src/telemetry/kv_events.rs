//! vLLM's KV events: the scheduler's prefix-cache changes published as vLLM publishes them
//! (`--kv-events-config`), so a router that indexes vLLM replicas' caches (llm-d's precise
//! prefix-cache routing) indexes Waypoint replicas too.
//!
//! The wire format is vLLM's ZMQ publisher's: PUB multipart `(topic, 8-byte big-endian sequence
//! number, payload)`, the payload an `EventBatch` `[ts, events, data_parallel_rank]` in msgpack,
//! each event an array tagged with its type name, fields in vLLM's order:
//! `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
//! lora_name, extra_keys, group_idx, kv_cache_spec_kind]`, `["BlockRemoved", block_hashes,
//! medium, group_idx]`, `["AllBlocksCleared"]`. Block hashes are the scheduler's own, as
//! integers. With a `replay_endpoint`, a ROUTER socket answers a request for a start sequence
//! number with every buffered batch from there, then `(-1, b"")`.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use waypoint_scheduler::kv::{BlockStored, KvEvent};

use super::metrics::Metrics;

/// vLLM's `KVEventsConfig`, as `--kv-events-config` takes it (JSON).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    /// Publish events at all.
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `"zmq"` or `"null"`; unset, `"zmq"` when events are on.
    #[serde(default)]
    pub publisher: Option<String>,
    /// The PUB socket: bound when it has `*` or `::` or is `ipc://` or `inproc://`, connected
    /// otherwise (vLLM's rule).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The ROUTER socket that replays missed batches, bound.
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    /// The PUB socket's send high-water mark.
    #[serde(default = "default_hwm")]
    pub hwm: i32,
    /// Batches waiting for the publisher thread; more are dropped (and counted).
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// The first frame of every message.
    #[serde(default)]
    pub topic: String,
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}

fn default_buffer_steps() -> usize {
    10_000
}

fn default_hwm() -> i32 {
    100_000
}

fn default_max_queue_size() -> usize {
    100_000
}

/// Why a `--kv-events-config` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvEventsError {
    /// Not vLLM's JSON.
    #[error("not vLLM's KVEventsConfig JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A publisher other than `zmq` or `null`.
    #[error("unknown publisher {0:?} (use \"zmq\" or \"null\")")]
    Publisher(String),
    /// A value out of range.
    #[error("{0}")]
    Invalid(&'static str),
    /// A socket could not be opened.
    #[error("KV events: {what} {endpoint}: {error}")]
    Socket {
        /// Which socket, and what was done with it.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
        /// ZeroMQ's error.
        error: zmq::Error,
    },
}

impl KvEventsConfig {
    /// Parse `--kv-events-config`.
    pub fn parse(json: &str) -> Result<Self, KvEventsError> {
        let config: Self = serde_json::from_str(json)?;
        match config.publisher.as_deref() {
            None | Some("zmq") | Some("null") => {}
            Some(other) => return Err(KvEventsError::Publisher(other.into())),
        }
        if config.hwm < 0 {
            return Err(KvEventsError::Invalid("hwm must not be negative"));
        }
        if config.max_queue_size == 0 {
            return Err(KvEventsError::Invalid("max_queue_size must be at least 1"));
        }
        Ok(config)
    }

    /// Whether events are published (on, with the zmq publisher).
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher.as_deref().unwrap_or("zmq") == "zmq"
    }
}

/// The prefix-cache shape every event names.
#[derive(Clone, Copy, Debug)]
pub struct CacheShape {
    /// Tokens per block.
    pub block_size: u32,
}

/// One step's events, as the engine thread hands them over.
struct Batch {
    ts: f64,
    events: Vec<KvEvent>,
}

/// The engine thread's end of the publisher: it queues batches and never waits on a socket.
pub struct KvEventPublisher {
    batches: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

/// Where the sockets ended up (a `*` port is resolved).
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The PUB socket's endpoint.
    pub publish: String,
    /// The replay socket's, if any.
    pub replay: Option<String>,
}

impl KvEventPublisher {
    /// Open the sockets and start the publisher thread.
    pub fn start(
        config: &KvEventsConfig,
        shape: CacheShape,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Endpoints), KvEventsError> {
        let context = zmq::Context::new();
        let socket_error = |what, endpoint: &str| {
            let endpoint = endpoint.to_owned();
            move |error| KvEventsError::Socket {
                what,
                endpoint,
                error,
            }
        };
        let publish = context
            .socket(zmq::PUB)
            .map_err(socket_error("opening the PUB socket for", &config.endpoint))?;
        publish
            .set_sndhwm(config.hwm)
            .map_err(socket_error("setting hwm on", &config.endpoint))?;
        let endpoint = config.endpoint.as_str();
        if binds(endpoint) {
            publish
                .bind(endpoint)
                .map_err(socket_error("binding", endpoint))?;
        } else {
            publish
                .connect(endpoint)
                .map_err(socket_error("connecting to", endpoint))?;
        }
        let replay = match &config.replay_endpoint {
            Some(endpoint) => {
                let replay = context
                    .socket(zmq::ROUTER)
                    .map_err(socket_error("opening the replay socket for", endpoint))?;
                replay
                    .bind(endpoint)
                    .map_err(socket_error("binding", endpoint))?;
                Some(replay)
            }
            None => None,
        };
        let endpoints = Endpoints {
            publish: last_endpoint(&publish).unwrap_or_else(|| config.endpoint.clone()),
            replay: replay.as_ref().and_then(last_endpoint),
        };
        let (batches, receiver) = mpsc::sync_channel(config.max_queue_size);
        let mut thread = PublisherThread {
            publish,
            replay,
            topic: config.topic.clone().into_bytes(),
            shape,
            sequence: 0,
            buffer: VecDeque::new(),
            buffer_steps: config.buffer_steps,
        };
        let thread = std::thread::Builder::new()
            .name("waypoint-kv-events".into())
            .spawn(move || thread.run(&receiver))
            .map_err(|_| KvEventsError::Invalid("could not start the publisher thread"))?;
        Ok((
            Self {
                batches: Some(batches),
                thread: Some(thread),
                metrics,
            },
            endpoints,
        ))
    }

    /// Publish one step's events at wall-clock time `ts` (seconds since the epoch); nothing
    /// when there are none, as vLLM does.
    pub fn publish(&self, ts: f64, events: Vec<KvEvent>) {
        let (Some(batches), false) = (&self.batches, events.is_empty()) else {
            return;
        };
        match batches.try_send(Batch { ts, events }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.kv_event_batch_dropped()
            }
        }
    }

    /// Publish the scheduler's cache as cleared (a fresh scheduler took over after a fault).
    pub fn cleared(&self, ts: f64) {
        self.publish(ts, vec![KvEvent::AllBlocksCleared]);
    }
}

impl Drop for KvEventPublisher {
    /// Publish what is queued, then close the sockets.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// vLLM's rule for whether the PUB endpoint is bound or connected.
fn binds(endpoint: &str) -> bool {
    endpoint.contains('*')
        || endpoint.contains("::")
        || endpoint.starts_with("ipc://")
        || endpoint.starts_with("inproc://")
}

fn last_endpoint(socket: &zmq::Socket) -> Option<String> {
    socket.get_last_endpoint().ok()?.ok()
}

/// The end-of-replay marker's sequence number: -1 as 8 signed big-endian bytes.
const END_OF_REPLAY: [u8; 8] = (-1i64).to_be_bytes();

/// How long the thread waits for a batch before it looks at the replay socket again.
const REPLAY_POLL: Duration = Duration::from_millis(20);

struct PublisherThread {
    publish: zmq::Socket,
    replay: Option<zmq::Socket>,
    topic: Vec<u8>,
    shape: CacheShape,
    sequence: u64,
    buffer: VecDeque<(u64, Vec<u8>)>,
    buffer_steps: usize,
}

impl PublisherThread {
    fn run(&mut self, batches: &Receiver<Batch>) {
        loop {
            self.serve_replays();
            match batches.recv_timeout(REPLAY_POLL) {
                Ok(batch) => self.send(&batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn send(&mut self, batch: &Batch) {
        let payload = match encode_batch(batch, self.shape) {
            Ok(payload) => payload,
            Err(error) => {
                eprintln!("waypoint: encoding KV events: {error}");
                return;
            }
        };
        let sequence = self.sequence;
        self.sequence += 1;
        let frames: [&[u8]; 3] = [&self.topic, &sequence.to_be_bytes(), &payload];
        // A PUB socket drops for subscribers past their high-water mark; it never blocks.
        if let Err(error) = self.publish.send_multipart(frames, zmq::DONTWAIT) {
            if error != zmq::Error::EAGAIN {
                eprintln!("waypoint: publishing KV events: {error}");
            }
        }
        if self.buffer_steps > 0 {
            if self.buffer.len() == self.buffer_steps {
                self.buffer.pop_front();
            }
            self.buffer.push_back((sequence, payload));
        }
    }

    /// Answer every waiting replay request: `(identity, "", start)` gets each buffered batch
    /// from `start` on as `(identity, "", sequence, payload)`, then the end marker.
    fn serve_replays(&mut self) {
        let Some(replay) = &self.replay else {
            return;
        };
        while let Ok(frames) = replay.recv_multipart(zmq::DONTWAIT) {
            let [identity, empty, start] = &frames[..] else {
                eprintln!(
                    "waypoint: ignoring a KV-event replay request of {} frames (3 expected)",
                    frames.len()
                );
                continue;
            };
            let Some(start) = sequence_number(start) else {
                eprintln!(
                    "waypoint: ignoring a KV-event replay request for a {}-byte sequence number",
                    start.len()
                );
                continue;
            };
            let reply = |sequence: &[u8], payload: &[u8]| {
                let frames: [&[u8]; 4] = [identity, empty, sequence, payload];
                replay.send_multipart(frames, zmq::DONTWAIT)
            };
            let sent = self
                .buffer
                .iter()
                .filter(|(sequence, _)| *sequence >= start)
                .try_for_each(|(sequence, payload)| reply(&sequence.to_be_bytes(), payload))
                .and_then(|()| reply(&END_OF_REPLAY, b""));
            if let Err(error) = sent {
                eprintln!("waypoint: answering a KV-event replay request: {error}");
            }
        }
    }
}

/// A big-endian unsigned sequence number of at most 8 bytes.
fn sequence_number(bytes: &[u8]) -> Option<u64> {
    if bytes.len() > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

/// vLLM's medium for the accelerator's own cache.
const MEDIUM: &str = "GPU";
/// vLLM's `kv_cache_spec_kind` of a full-attention cache group.
const SPEC_KIND: &str = "full_attention";
/// The one cache group.
const GROUP: u32 = 0;
/// The one data-parallel rank.
const DATA_PARALLEL_RANK: u32 = 0;

/// One event in vLLM's tagged array form.
struct WireEvent<'a> {
    event: &'a KvEvent,
    shape: CacheShape,
}

impl Serialize for WireEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.event {
            KvEvent::BlockStored(stored) => {
                let mut seq = serializer.serialize_seq(Some(11))?;
                seq.serialize_element("BlockStored")?;
                seq.serialize_element(&stored.block_hashes)?;
                seq.serialize_element(&stored.parent_block_hash)?;
                seq.serialize_element(&stored.token_ids)?;
                seq.serialize_element(&self.shape.block_size)?;
                seq.serialize_element(&None::<u32>)?;
                seq.serialize_element(MEDIUM)?;
                seq.serialize_element(&None::<&str>)?;
                seq.serialize_element(&ExtraKeys(stored))?;
                seq.serialize_element(&GROUP)?;
                seq.serialize_element(SPEC_KIND)?;
                seq.end()
            }
            KvEvent::BlockRemoved(removed) => {
                let mut seq = serializer.serialize_seq(Some(4))?;
                seq.serialize_element("BlockRemoved")?;
                seq.serialize_element(&removed.block_hashes)?;
                seq.serialize_element(MEDIUM)?;
                seq.serialize_element(&GROUP)?;
                seq.end()
            }
            KvEvent::AllBlocksCleared => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element("AllBlocksCleared")?;
                seq.end()
            }
        }
    }
}

/// `extra_keys`: one entry per block, `[salt]` for a salted sequence's first block, else nil.
struct ExtraKeys<'a>(&'a BlockStored);

impl Serialize for ExtraKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let stored = self.0;
        let mut seq = serializer.serialize_seq(Some(stored.block_hashes.len()))?;
        for index in 0..stored.block_hashes.len() {
            let salt = stored.cache_salt.as_deref().filter(|_| index == 0);
            seq.serialize_element(&salt.map(|salt| [salt]))?;
        }
        seq.end()
    }
}

fn encode_batch(batch: &Batch, shape: CacheShape) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let events: Vec<WireEvent<'_>> = batch
        .events
        .iter()
        .map(|event| WireEvent { event, shape })
        .collect();
    rmp_serde::to_vec(&(batch.ts, events, DATA_PARALLEL_RANK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypoint_scheduler::kv::BlockRemoved;

    #[test]
    fn config_takes_vllms_json_and_its_defaults() {
        let config = KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "topic": "kv"}"#)
            .expect("vLLM's JSON");
        assert!(config.publishes());
        assert_eq!(config.endpoint, "tcp://*:5557");
        assert_eq!(config.buffer_steps, 10_000);
        assert_eq!(config.hwm, 100_000);
        assert!(
            !KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "publisher": "null"}"#)
                .expect("null publisher")
                .publishes()
        );
        assert!(!KvEventsConfig::parse("{}")
            .expect("all defaults")
            .publishes());
    }

    #[test]
    fn config_rejects_unknown_keys_publishers_and_ranges() {
        for bad in [
            r#"{"enable_kv_cache_events": true, "endpont": "tcp://*:1"}"#,
            r#"{"publisher": "kafka"}"#,
            r#"{"hwm": -1}"#,
            r#"{"max_queue_size": 0}"#,
            "not json",
        ] {
            assert!(KvEventsConfig::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_batch_is_vllms_tagged_array_msgpack() {
        let batch = Batch {
            ts: 1.5,
            events: vec![
                KvEvent::BlockStored(BlockStored {
                    block_hashes: vec![7, u64::MAX],
                    parent_block_hash: None,
                    token_ids: vec![1, 2, 3, 4],
                    cache_salt: Some("tenant-a".into()),
                }),
                KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: vec![7],
                }),
                KvEvent::AllBlocksCleared,
            ],
        };
        let bytes = encode_batch(&batch, CacheShape { block_size: 2 }).expect("encodes");
        let decoded = rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack");
        let expected = rmpv::Value::Array(vec![
            1.5.into(),
            rmpv::Value::Array(vec![
                rmpv::Value::Array(vec![
                    "BlockStored".into(),
                    rmpv::Value::Array(vec![7u64.into(), u64::MAX.into()]),
                    rmpv::Value::Nil,
                    rmpv::Value::Array(vec![1.into(), 2.into(), 3.into(), 4.into()]),
                    2.into(),
                    rmpv::Value::Nil,
                    "GPU".into(),
                    rmpv::Value::Nil,
                    rmpv::Value::Array(vec![
                        rmpv::Value::Array(vec!["tenant-a".into()]),
                        rmpv::Value::Nil,
                    ]),
                    0.into(),
                    "full_attention".into(),
                ]),
                rmpv::Value::Array(vec![
                    "BlockRemoved".into(),
                    rmpv::Value::Array(vec![7.into()]),
                    "GPU".into(),
                    0.into(),
                ]),
                rmpv::Value::Array(vec!["AllBlocksCleared".into()]),
            ]),
            0.into(),
        ]);
        assert_eq!(decoded, expected);
    }

    #[test]
    fn replay_sequence_numbers_are_big_endian_of_at_most_eight_bytes() {
        assert_eq!(sequence_number(&5u64.to_be_bytes()), Some(5));
        assert_eq!(sequence_number(&[1, 0]), Some(256));
        assert_eq!(sequence_number(&[0; 9]), None);
    }
}
