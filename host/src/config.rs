//! Host configuration: every limit with its default. Each limit is named with its unit, has a
//! `sluice serve` flag, and hitting it yields an error that names it.

use std::path::PathBuf;

/// Limits on guests and on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline of one guest call (`define` or one record's handler), enforced by
    /// epoch interruption.
    pub call_deadline_ms: u64,
    /// Wall-clock deadline of one query call.
    pub query_deadline_ms: u64,
    /// Linear memory one guest instance may grow to.
    pub instance_memory_bytes: usize,
    /// Largest `.wasm` accepted at deploy.
    pub module_size_bytes: usize,
    /// Largest HTTP request body (other than a module upload).
    pub request_body_bytes: usize,
    /// Largest single record (as CBOR).
    pub record_size_bytes: usize,
    /// Work items queued per partition before appends are refused with 503.
    pub partition_queue_depth: usize,
    /// Records one worker batch (one group commit) takes at most.
    pub batch_records_max: usize,
    /// Hops one partition's queue holds at most; a sender holds the rest (they are durable
    /// in its outbox) and offers them again as the queue drains.
    pub hop_queue_max: usize,
    /// Attempts of a failing handler before its record becomes a dead letter.
    pub handler_attempts_max: u32,
    /// How long PState commits may stay non-durable before one is fsynced (0: fsync each).
    /// Bounds the depot-log replay after a crash; never affects what is acked.
    pub pstate_flush_interval_ms: u64,
    /// How long the microbatch coordinator waits when no new records arrived.
    pub microbatch_interval_ms: u64,
    /// The most records of one depot partition one microbatch takes (a backlog is taken in
    /// several batches).
    pub microbatch_records_max: u64,
    /// Lines one NDJSON append may carry.
    pub ndjson_lines_max: usize,
    /// Navigators one path may have.
    pub path_navigators_max: usize,
    /// Values one select may return.
    pub select_values_max: usize,
    /// Records one depot read may return.
    pub depot_read_max: usize,
    /// The largest answer a depot read or a select gives (JSON bytes of its items); past it
    /// the answer is cut with a continuation (`next`), after at least one item.
    pub answer_bytes_max: usize,
    /// How long an append's `Idempotency-Key` is remembered (a retry within it answers the
    /// original record; after it, the key is new again). Survives restarts.
    pub idempotency_window_ms: u64,
    /// Subscribers the host serves at once (each is one SSE connection).
    pub subscribers_max: usize,
    /// Subscribers one module may have at once.
    pub subscribers_per_module_max: usize,
    /// Events buffered for one subscriber; a subscriber that falls further behind is dropped.
    pub subscriber_buffer_events: usize,
    /// A quiet subscription gets a keep-alive comment this often.
    pub subscription_keepalive_ms: u64,
    /// How long a path's feed (its recent events) outlives its last subscriber, so a client
    /// that reconnects within it resumes from `Last-Event-ID` without a gap.
    pub subscription_linger_ms: u64,
}

impl Limits {
    /// The subscription limits among these.
    pub fn subscriptions(&self) -> crate::subscription::SubscriptionLimits {
        crate::subscription::SubscriptionLimits {
            subscribers_max: self.subscribers_max.max(1),
            subscribers_per_module_max: self.subscribers_per_module_max.max(1),
            buffer_events: self.subscriber_buffer_events.max(1),
            keepalive: std::time::Duration::from_millis(self.subscription_keepalive_ms.max(1)),
            linger: std::time::Duration::from_millis(self.subscription_linger_ms),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_deadline_ms: 2_000,
            query_deadline_ms: 5_000,
            instance_memory_bytes: 64 << 20,
            module_size_bytes: 32 << 20,
            request_body_bytes: 8 << 20,
            record_size_bytes: 1 << 20,
            partition_queue_depth: 4_096,
            batch_records_max: 1_000,
            hop_queue_max: 65_536,
            handler_attempts_max: 3,
            pstate_flush_interval_ms: 500,
            microbatch_interval_ms: 20,
            microbatch_records_max: 10_000,
            select_values_max: 10_000,
            ndjson_lines_max: 10_000,
            path_navigators_max: 64,
            depot_read_max: 1_000,
            answer_bytes_max: 8 << 20,
            idempotency_window_ms: crate::depot::log::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            subscribers_max: 10_000,
            subscribers_per_module_max: 5_000,
            subscriber_buffer_events: 256,
            subscription_keepalive_ms: 15_000,
            subscription_linger_ms: 30_000,
        }
    }
}

impl Config {
    /// The directory of the compiled-module cache.
    pub fn compile_cache_dir(&self) -> std::path::PathBuf {
        self.compile_cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }
}

/// Everything a host needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Partitions of a module deployed without `?partitions=`.
    pub default_partitions: u32,
    /// redb's page cache for the whole host, split evenly over the open partition files.
    pub cache_budget_bytes: usize,
    /// Verify every page checksum of every partition file when the host opens it.
    pub verify_on_open: bool,
    /// Where compiled components are cached; `None`: `<data_dir>/cache`. Hosts may share one
    /// (entries are written atomically and checked against their digest); it must be as
    /// trusted as the data directory, since its contents are loaded as machine code.
    pub compile_cache_dir: Option<std::path::PathBuf>,
    /// A clock that moves only when told (tests: tick depots without sleeping); `None`: the
    /// system clock.
    pub manual_clock: Option<std::sync::Arc<crate::partition::seams::ManualClock>>,
}

/// The default of [`Config::cache_budget_bytes`].
pub const CACHE_BUDGET_BYTES_DEFAULT: usize = 256 << 20;

/// The most partitions a module may have.
pub const PARTITIONS_MAX: u32 = 1024;
