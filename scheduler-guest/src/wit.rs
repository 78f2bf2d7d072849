//! The crate's records as the WIT contract carries them, described once: [`wit_conversions!`]
//! derives the conversions to and from any Rust binding of `wit/scheduler.wit` (wasmtime's on
//! the host, wit-bindgen's in a guest), whose generated types have the records' field and case
//! names.

use alloc::string::String;
use alloc::vec::Vec;

use crate::output::RequestHandle;
use crate::request::RequestId;

/// A field-for-field conversion between a crate type and a binding's type of the same record.
pub trait Convert<T> {
    /// Convert.
    fn convert(self) -> T;
}

macro_rules! unchanged {
    ($($ty:ty),*) => {
        $(impl Convert<$ty> for $ty {
            fn convert(self) -> $ty {
                self
            }
        })*
    };
}

unchanged!(u8, u32, u64, i32, f64, bool, String);

impl Convert<RequestId> for String {
    fn convert(self) -> RequestId {
        RequestId::from(self)
    }
}

impl Convert<String> for RequestId {
    fn convert(self) -> String {
        String::from(&*self)
    }
}

impl Convert<RequestHandle> for u64 {
    fn convert(self) -> RequestHandle {
        RequestHandle(self)
    }
}

impl Convert<u64> for RequestHandle {
    fn convert(self) -> u64 {
        self.0
    }
}

impl<A: Convert<B>, B> Convert<Option<B>> for Option<A> {
    fn convert(self) -> Option<B> {
        self.map(Convert::convert)
    }
}

impl<A: Convert<B>, B> Convert<Vec<B>> for Vec<A> {
    fn convert(self) -> Vec<B> {
        // Collected in place where the element layouts agree (handles, token lists).
        self.into_iter().map(Convert::convert).collect()
    }
}

/// Both conversions of one record; `..` marks crate fields the WIT does not carry (they take
/// their default).
#[doc(hidden)]
#[macro_export]
macro_rules! __wit_record {
    ($wit:ident :: $name:ident = $ty:path { $($field:ident),* $(,)? } $($rest:tt)?) => {
        impl $crate::wit::Convert<$wit::$name> for $ty {
            fn convert(self) -> $wit::$name {
                $wit::$name {
                    $($field: $crate::wit::Convert::convert(self.$field)),*
                }
            }
        }
        impl $crate::wit::Convert<$ty> for $wit::$name {
            fn convert(self) -> $ty {
                $crate::__wit_record!(@build $ty, self { $($field),* } $($rest)?)
            }
        }
    };
    (@build $ty:path, $value:ident { $($field:ident),* }) => {{
        use $ty as Target;
        Target { $($field: $crate::wit::Convert::convert($value.$field)),* }
    }};
    (@build $ty:path, $value:ident { $($field:ident),* } ..) => {{
        use $ty as Target;
        Target {
            $($field: $crate::wit::Convert::convert($value.$field),)*
            ..::core::default::Default::default()
        }
    }};
}

/// Both conversions of an enum whose cases carry nothing.
#[doc(hidden)]
#[macro_export]
macro_rules! __wit_enum {
    ($wit:ident :: $name:ident = $ty:path { $($case:ident),* $(,)? }) => {
        impl $crate::wit::Convert<$wit::$name> for $ty {
            fn convert(self) -> $wit::$name {
                use $ty as Source;
                match self {
                    $(Source::$case => $wit::$name::$case),*
                }
            }
        }
        impl $crate::wit::Convert<$ty> for $wit::$name {
            fn convert(self) -> $ty {
                use $ty as Target;
                match self {
                    $($wit::$name::$case => Target::$case),*
                }
            }
        }
    };
}

/// [`Convert`] both ways between the crate's records and the binding module `$wit` (the
/// `types` interface of `wit/scheduler.wit` as a binding generator emitted it). Records and
/// plain enums are listed by field or case; the step events and errors, whose WIT cases carry
/// records of their own, are spelled out here once for every binding. Only the model output's
/// flat encoding is converted beside each binding.
#[macro_export]
macro_rules! wit_conversions {
    ($wit:ident) => {
        $crate::__wit_enum!(
            $wit::FinishStatus = $crate::FinishStatus {
                Stopped,
                LengthCapped,
                Aborted,
                Ignored,
                Error,
            }
        );
        $crate::__wit_enum!(
            $wit::JourneyEventType = $crate::JourneyEventType {
                Queued,
                Scheduled,
                FirstToken,
                Preempted,
                Finished,
                Recovered,
            }
        );
        $crate::__wit_enum!($wit::ScheduleKind = $crate::ScheduleKind { First, Resume });
        $crate::__wit_enum!(
            $wit::Phase = $crate::Phase {
                Waiting,
                Prefill,
                Decode
            }
        );
        $crate::__wit_enum!(
            $wit::ScheduledKind = $crate::ScheduledKind {
                New,
                Resumed,
                Running
            }
        );
        $crate::__wit_record!($wit::JourneyConfig = $crate::JourneyConfig { enabled });
        $crate::__wit_record!(
            $wit::StepTracingConfig = $crate::StepTracingConfig {
                enabled,
                sample_rate,
                rich_subsample_rate,
                closure_interval,
                seed,
            }
        );
        $crate::__wit_record!(
            $wit::SchedulerConfig = $crate::SchedulerConfig {
                max_num_seqs,
                max_num_batched_tokens,
                max_model_len,
                block_size,
                num_blocks,
                enable_prefix_caching,
                enable_chunked_prefill,
                long_prefill_token_threshold,
                reserve_full_prompt,
                enable_kv_cache_events,
                journey,
                step_tracing,
            }..
        );
        $crate::__wit_record!(
            $wit::Recovery = $crate::Recovery {
                output_token_ids,
                num_preemptions,
                was_scheduled,
            }
        );
        $crate::__wit_record!(
            $wit::NewRequest = $crate::NewRequest {
                id,
                client_index,
                prompt_token_ids,
                max_tokens,
                min_tokens,
                eos_token_id,
                stop_token_ids,
                priority,
                arrival_ns,
                deadline_ns,
                journey_sampled,
                cache_salt,
                recovery,
            }
        );
        $crate::__wit_record!(
            $wit::JourneyEvent = $crate::JourneyEvent {
                request_id,
                event_type,
                ts_monotonic_ns,
                scheduler_step,
                prefill_done_tokens,
                prefill_total_tokens,
                decode_done_tokens,
                decode_max_tokens,
                phase,
                num_preemptions_so_far,
                schedule_kind,
                finish_status,
                client_index,
            }
        );
        $crate::__wit_record!(
            $wit::BatchSummary = $crate::step_trace::BatchSummary {
                step_id,
                ts_start_ns,
                running_depth,
                waiting_depth,
                num_prefill_reqs,
                num_decode_reqs,
                scheduled_tokens,
                prefill_tokens,
                decode_tokens,
                num_finished,
                num_preempted,
                kv_usage_ratio,
                kv_blocks_total,
                kv_blocks_free,
            }
        );
        $crate::__wit_record!(
            $wit::RequestSnapshot = $crate::step_trace::RequestSnapshot {
                step_id,
                request_id,
                phase,
                num_prompt_tokens,
                num_computed_tokens,
                num_output_tokens,
                num_preemptions,
                scheduled_tokens_this_step,
                kv_blocks_allocated,
                kv_blocks_cached,
                effective_prompt_len,
            }
        );
        $crate::__wit_record!(
            $wit::ScheduledDetail = $crate::ScheduledDetail {
                index,
                kind,
                num_blocks,
            }
        );
        $crate::__wit_record!(
            $wit::ScheduledBatch = $crate::ScheduledBatch {
                handles,
                num_computed_tokens,
                num_scheduled_tokens,
                sample,
                details,
                block_ids,
            }
        );
        $crate::__wit_record!(
            $wit::RequestRef = $crate::RequestRef {
                id,
                handle,
                client_index
            }
        );
        $crate::__wit_record!(
            $wit::SchedulerOutput = $crate::SchedulerOutput {
                step,
                batch,
                total_num_scheduled_tokens,
                preempted,
                finished,
                journey_events,
                step_events,
                kv_events,
            }
        );
        $crate::__wit_record!(
            $wit::BlockStored = $crate::kv::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                cache_salt,
            }
        );
        $crate::__wit_record!($wit::BlockRemoved = $crate::kv::BlockRemoved { block_hashes });
        $crate::__wit_record!(
            $wit::OutputFinish = $crate::OutputFinish {
                index,
                status,
                stop_reason,
            }
        );
        $crate::__wit_record!(
            $wit::EngineOutputs = $crate::EngineOutputs {
                step,
                handles,
                token_ids,
                finishes,
                journey_events,
            }
        );
        $crate::__wit_record!(
            $wit::Added = $crate::Added {
                handle,
                journey_events
            }
        );
        $crate::__wit_record!(
            $wit::LiveRequest = $crate::LiveRequest {
                handle,
                request_id,
                client_index,
                num_tokens,
                num_blocks,
                finished,
            }
        );
        $crate::__wit_record!(
            $wit::FinishOutcome = $crate::FinishOutcome {
                finished_ids,
                journey_events,
            }
        );
        $crate::__wit_record!(
            $wit::ResetOutcome = $crate::ResetOutcome {
                reset,
                preempted_ids,
                journey_events,
                kv_events,
            }
        );
        $crate::__wit_record!(
            $wit::PrefixCacheStats = $crate::kv::PrefixCacheStats {
                requests,
                queries,
                hits,
                preempted_requests,
                preempted_queries,
                preempted_hits,
                resets,
            }
        );
        $crate::__wit_record!(
            $wit::SchedulerStats = $crate::SchedulerStats {
                step,
                num_running,
                num_waiting,
                kv_cache_usage,
                num_free_blocks,
                num_usable_blocks,
                prefix_cache,
                num_preemptions_total,
            }
        );

        use $crate::wit::Convert as _;
        impl $crate::wit::Convert<$wit::KvEvent> for $crate::kv::KvEvent {
            fn convert(self) -> $wit::KvEvent {
                use $crate::kv::KvEvent as K;
                match self {
                    K::BlockStored(stored) => $wit::KvEvent::BlockStored(stored.convert()),
                    K::BlockRemoved(removed) => $wit::KvEvent::BlockRemoved(removed.convert()),
                    K::AllBlocksCleared => $wit::KvEvent::AllBlocksCleared,
                }
            }
        }
        impl $crate::wit::Convert<$crate::kv::KvEvent> for $wit::KvEvent {
            fn convert(self) -> $crate::kv::KvEvent {
                use $crate::kv::KvEvent as K;
                match self {
                    $wit::KvEvent::BlockStored(stored) => K::BlockStored(stored.convert()),
                    $wit::KvEvent::BlockRemoved(removed) => K::BlockRemoved(removed.convert()),
                    $wit::KvEvent::AllBlocksCleared => K::AllBlocksCleared,
                }
            }
        }
        impl $crate::wit::Convert<$wit::StepEvent> for $crate::StepEvent {
            fn convert(self) -> $wit::StepEvent {
                use $crate::StepEvent as S;
                match self {
                    S::WindowOpened {
                        sequence,
                        step_range_start,
                        closure_interval,
                    } => $wit::StepEvent::WindowOpened($wit::WindowOpened {
                        sequence,
                        step_range_start,
                        closure_interval,
                    }),
                    S::BatchSummary(summary) => $wit::StepEvent::BatchSummary(summary.convert()),
                    S::RequestSnapshot(snapshot) => {
                        $wit::StepEvent::RequestSnapshot(snapshot.convert())
                    }
                    S::WindowClosed {
                        sequence,
                        step_range_start,
                        step_range_end,
                    } => $wit::StepEvent::WindowClosed($wit::WindowClosed {
                        sequence,
                        step_range_start,
                        step_range_end,
                    }),
                }
            }
        }
        impl $crate::wit::Convert<$crate::StepEvent> for $wit::StepEvent {
            fn convert(self) -> $crate::StepEvent {
                use $crate::StepEvent as S;
                match self {
                    $wit::StepEvent::WindowOpened(w) => S::WindowOpened {
                        sequence: w.sequence,
                        step_range_start: w.step_range_start,
                        closure_interval: w.closure_interval,
                    },
                    $wit::StepEvent::BatchSummary(s) => S::BatchSummary(s.convert()),
                    $wit::StepEvent::RequestSnapshot(r) => S::RequestSnapshot(r.convert()),
                    $wit::StepEvent::WindowClosed(w) => S::WindowClosed {
                        sequence: w.sequence,
                        step_range_start: w.step_range_start,
                        step_range_end: w.step_range_end,
                    },
                }
            }
        }
        impl $crate::wit::Convert<$wit::ConfigError> for $crate::ConfigError {
            fn convert(self) -> $wit::ConfigError {
                let error = self;
                let limit = |budget, limit| $wit::BudgetAndLimit { budget, limit };
                use $wit::ConfigError as W;
                match error {
                    $crate::ConfigError::ZeroBlockSize => W::ZeroBlockSize,
                    $crate::ConfigError::TooFewBlocks { num_blocks } => W::TooFewBlocks(num_blocks),
                    $crate::ConfigError::ZeroMaxNumSeqs => W::ZeroMaxNumSeqs,
                    $crate::ConfigError::ZeroMaxModelLen => W::ZeroMaxModelLen,
                    $crate::ConfigError::BudgetBelowBlockSize {
                        max_num_batched_tokens,
                        block_size,
                    } => W::BudgetBelowBlockSize(limit(max_num_batched_tokens, block_size)),
                    $crate::ConfigError::BudgetBelowMaxNumSeqs {
                        max_num_batched_tokens,
                        max_num_seqs,
                    } => W::BudgetBelowMaxNumSeqs(limit(max_num_batched_tokens, max_num_seqs)),
                    $crate::ConfigError::BudgetBelowModelLenUnchunked {
                        max_num_batched_tokens,
                        max_model_len,
                    } => W::BudgetBelowModelLenUnchunked(limit(
                        max_num_batched_tokens,
                        max_model_len,
                    )),
                    $crate::ConfigError::KvCacheTooSmall {
                        capacity_tokens,
                        usable_blocks,
                        block_size,
                        max_model_len,
                    } => W::KvCacheTooSmall($wit::KvTooSmall {
                        capacity_tokens,
                        usable_blocks,
                        block_size,
                        max_model_len,
                    }),
                    $crate::ConfigError::ThresholdAboveModelLen {
                        threshold,
                        max_model_len,
                    } => W::ThresholdAboveModelLen(limit(threshold, max_model_len)),
                    $crate::ConfigError::SampleRateOutOfRange(rate) => {
                        W::SampleRateOutOfRange(rate)
                    }
                    $crate::ConfigError::RichSubsampleRateOutOfRange(rate) => {
                        W::RichSubsampleRateOutOfRange(rate)
                    }
                    $crate::ConfigError::ClosureIntervalOutOfRange(interval) => {
                        W::ClosureIntervalOutOfRange(interval)
                    }
                }
            }
        }
        impl $crate::wit::Convert<$wit::RequestError> for $crate::RequestError {
            fn convert(self) -> $wit::RequestError {
                let error = self;
                use $wit::RequestError as W;
                match error {
                    $crate::RequestError::DuplicateId { id } => W::DuplicateId(id),
                    $crate::RequestError::EmptyPrompt { id } => W::EmptyPrompt(id),
                    $crate::RequestError::PromptTooLong {
                        id,
                        prompt_len,
                        max_model_len,
                    } => W::PromptTooLong($wit::PromptTooLong {
                        id,
                        prompt_len,
                        max_model_len,
                    }),
                    $crate::RequestError::ZeroMaxTokens { id } => W::ZeroMaxTokens(id),
                    $crate::RequestError::MinTokensAboveMaxTokens {
                        id,
                        min_tokens,
                        max_tokens,
                    } => W::MinTokensAboveMaxTokens($wit::MinAboveMax {
                        id,
                        min_tokens,
                        max_tokens,
                    }),
                    $crate::RequestError::NothingToRecover { id } => W::NothingToRecover(id),
                }
            }
        }
        impl $crate::wit::Convert<$wit::OutputError> for $crate::OutputError {
            fn convert(self) -> $wit::OutputError {
                let error = self;
                match error {
                    $crate::OutputError::NoStepInFlight => $wit::OutputError::NoStepInFlight,
                    $crate::OutputError::LengthMismatch { expected, got } => {
                        $wit::OutputError::LengthMismatch($wit::LengthMismatch {
                            expected: expected as u32,
                            got: got as u32,
                        })
                    }
                    $crate::OutputError::TokenDuringPrefill { id } => {
                        $wit::OutputError::TokenDuringPrefill(id)
                    }
                }
            }
        }
        impl $crate::wit::Convert<$wit::StateError> for $crate::StateError {
            fn convert(self) -> $wit::StateError {
                let error = self;
                match error {
                    $crate::StateError::NotAState => $wit::StateError::NotAState,
                    $crate::StateError::UnsupportedVersion(version) => {
                        $wit::StateError::UnsupportedVersion(version)
                    }
                    $crate::StateError::Malformed(message) => $wit::StateError::Malformed(message),
                    $crate::StateError::Inconsistent(message) => {
                        $wit::StateError::Inconsistent(message)
                    }
                    $crate::StateError::Config(error) => $wit::StateError::Config(error.convert()),
                }
            }
        }
        impl $crate::wit::Convert<$crate::ConfigError> for $wit::ConfigError {
            fn convert(self) -> $crate::ConfigError {
                let error = self;
                use $wit::ConfigError as W;
                match error {
                    W::ZeroBlockSize => $crate::ConfigError::ZeroBlockSize,
                    W::TooFewBlocks(num_blocks) => $crate::ConfigError::TooFewBlocks { num_blocks },
                    W::ZeroMaxNumSeqs => $crate::ConfigError::ZeroMaxNumSeqs,
                    W::ZeroMaxModelLen => $crate::ConfigError::ZeroMaxModelLen,
                    W::BudgetBelowBlockSize(l) => $crate::ConfigError::BudgetBelowBlockSize {
                        max_num_batched_tokens: l.budget,
                        block_size: l.limit,
                    },
                    W::BudgetBelowMaxNumSeqs(l) => $crate::ConfigError::BudgetBelowMaxNumSeqs {
                        max_num_batched_tokens: l.budget,
                        max_num_seqs: l.limit,
                    },
                    W::BudgetBelowModelLenUnchunked(l) => {
                        $crate::ConfigError::BudgetBelowModelLenUnchunked {
                            max_num_batched_tokens: l.budget,
                            max_model_len: l.limit,
                        }
                    }
                    W::KvCacheTooSmall(k) => $crate::ConfigError::KvCacheTooSmall {
                        capacity_tokens: k.capacity_tokens,
                        usable_blocks: k.usable_blocks,
                        block_size: k.block_size,
                        max_model_len: k.max_model_len,
                    },
                    W::ThresholdAboveModelLen(l) => $crate::ConfigError::ThresholdAboveModelLen {
                        threshold: l.budget,
                        max_model_len: l.limit,
                    },
                    W::SampleRateOutOfRange(rate) => {
                        $crate::ConfigError::SampleRateOutOfRange(rate)
                    }
                    W::RichSubsampleRateOutOfRange(rate) => {
                        $crate::ConfigError::RichSubsampleRateOutOfRange(rate)
                    }
                    W::ClosureIntervalOutOfRange(interval) => {
                        $crate::ConfigError::ClosureIntervalOutOfRange(interval)
                    }
                }
            }
        }
        impl $crate::wit::Convert<$crate::RequestError> for $wit::RequestError {
            fn convert(self) -> $crate::RequestError {
                let error = self;
                use $wit::RequestError as W;
                match error {
                    W::DuplicateId(id) => $crate::RequestError::DuplicateId { id },
                    W::EmptyPrompt(id) => $crate::RequestError::EmptyPrompt { id },
                    W::PromptTooLong(e) => $crate::RequestError::PromptTooLong {
                        id: e.id,
                        prompt_len: e.prompt_len,
                        max_model_len: e.max_model_len,
                    },
                    W::ZeroMaxTokens(id) => $crate::RequestError::ZeroMaxTokens { id },
                    W::MinTokensAboveMaxTokens(e) => {
                        $crate::RequestError::MinTokensAboveMaxTokens {
                            id: e.id,
                            min_tokens: e.min_tokens,
                            max_tokens: e.max_tokens,
                        }
                    }
                    W::NothingToRecover(id) => $crate::RequestError::NothingToRecover { id },
                }
            }
        }
        impl $crate::wit::Convert<$crate::OutputError> for $wit::OutputError {
            fn convert(self) -> $crate::OutputError {
                let error = self;
                match error {
                    $wit::OutputError::NoStepInFlight => $crate::OutputError::NoStepInFlight,
                    $wit::OutputError::LengthMismatch(e) => $crate::OutputError::LengthMismatch {
                        expected: e.expected as usize,
                        got: e.got as usize,
                    },
                    $wit::OutputError::TokenDuringPrefill(id) => {
                        $crate::OutputError::TokenDuringPrefill { id }
                    }
                }
            }
        }
        impl $crate::wit::Convert<$crate::StateError> for $wit::StateError {
            fn convert(self) -> $crate::StateError {
                let error = self;
                match error {
                    $wit::StateError::NotAState => $crate::StateError::NotAState,
                    $wit::StateError::UnsupportedVersion(version) => {
                        $crate::StateError::UnsupportedVersion(version)
                    }
                    $wit::StateError::Malformed(message) => $crate::StateError::Malformed(message),
                    $wit::StateError::Inconsistent(message) => {
                        $crate::StateError::Inconsistent(message)
                    }
                    $wit::StateError::Config(error) => $crate::StateError::Config(error.convert()),
                }
            }
        }
        // The one record whose WIT shape differs: a token per entry (0 where none) and the
        // positions that have none, so a decode step crosses as two flat lists.
        impl $crate::wit::Convert<$wit::ModelOutput> for &$crate::ModelOutput {
            fn convert(self) -> $wit::ModelOutput {
                let sampled = &self.sampled_token_ids;
                $wit::ModelOutput {
                    token_ids: sampled.iter().map(|token| token.unwrap_or(0)).collect(),
                    missing: (0..sampled.len() as u32)
                        .filter(|&index| sampled[index as usize].is_none())
                        .collect(),
                }
            }
        }
        /// Positions listed in `missing` (out-of-range ones are ignored) get no token.
        impl $crate::wit::Convert<$crate::ModelOutput> for $wit::ModelOutput {
            fn convert(self) -> $crate::ModelOutput {
                let mut output = $crate::ModelOutput {
                    sampled_token_ids: self.token_ids.into_iter().map(Some).collect(),
                };
                for index in self.missing {
                    if let Some(entry) = output.sampled_token_ids.get_mut(index as usize) {
                        *entry = None;
                    }
                }
                output
            }
        }
    };
}
