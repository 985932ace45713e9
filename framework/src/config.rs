//! Job configuration: parallelism, batching, credits, workers.

use crate::error::GraphError;
use crate::partition::PartitionScheme;
use std::time::Duration;

/// The most records a batch on an edge holds unless configured (a batch is full when it holds
/// this many, or [`DEFAULT_BATCH_BYTES`] of records, whichever comes first).
pub const DEFAULT_BATCH_SIZE: usize = 4096;
/// The most bytes of records (by in-memory size, `size_of::<T>()` each) a batch inside a
/// process holds unless configured: 32 KiB, like Flink's network buffers. 2,048 records of 16
/// bytes, 1,024 of 32, 163 of 200; so a channel's memory in flight is bounded by
/// `credits × 32 KiB` whatever the record type.
pub const DEFAULT_BATCH_BYTES: usize = 32 * 1024;
/// Longest time a partly filled batch waits before it is flushed (the latency bound).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Batches in flight per channel (upstream subtask → downstream subtask).
pub const DEFAULT_CREDITS: usize = 4;
/// Batches in flight per channel to a subtask on another node.
pub const DEFAULT_REMOTE_CREDITS: usize = 8;
/// How many times [`JobConfig::batch_size`] records a batch to another node holds.
pub const DEFAULT_REMOTE_BATCH_SCALE: usize = 32;
/// The most a batch to another node holds by the records' in-memory size
/// (`size_of::<T>()` each), unless one local batch is more: 256 KiB. With
/// [`DEFAULT_REMOTE_CREDITS`] a channel between nodes holds at most 2 MiB of records in
/// flight, whatever their type (as `credits` batches of [`DEFAULT_BATCH_BYTES`] bound a local
/// channel).
pub const REMOTE_BATCH_BYTES: usize = 256 * 1024;

/// How a job runs. Every field has a documented default ([`JobConfig::default`]).
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Parallelism of operators that do not set their own (default: 1).
    pub default_parallelism: usize,
    /// The most records per batch (default [`DEFAULT_BATCH_SIZE`]); see also
    /// [`JobConfig::batch_bytes`].
    pub batch_size: usize,
    /// The most bytes of records per batch inside a process, by in-memory size (default
    /// [`DEFAULT_BATCH_BYTES`]): a batch of `T` holds
    /// `min(batch_size, batch_bytes / size_of::<T>())` records, at least one. Small records
    /// travel in larger batches (fewer messages and credits per record), large ones in
    /// smaller (bounded memory). Also what a source is asked for per call.
    pub batch_bytes: usize,
    /// Flush partly filled batches after this long (default [`DEFAULT_FLUSH_INTERVAL`]), like
    /// Flink's buffer timeout. `Duration::ZERO` is *latency mode*: a subtask sends what it
    /// has as soon as it handled an input batch (or a source produced), so a lightly loaded
    /// pipeline's latency is set by its work, not by a timer; under load batches still fill
    /// from full input batches. It costs throughput where inputs arrive in small pieces.
    pub flush_interval: Duration,
    /// Credits (batches in flight) per channel (default [`DEFAULT_CREDITS`]). A channel holds at
    /// most `credits` full batches that were sent and not yet processed.
    pub credits: usize,
    /// Credits per channel to a subtask on another node (default [`DEFAULT_REMOTE_CREDITS`]).
    /// A credit returns only after the batch crossed the link, was handled and its credit
    /// crossed back, so a remote channel needs enough batches in flight to cover that round
    /// trip (the bandwidth-delay product, as Flink's floating buffers do); with the local
    /// channels' 4 and batches of 4,096 records a two-node job ran at three quarters of the
    /// rate it reached with 16. Batches to other nodes are larger (see
    /// [`JobConfig::remote_batch_scale`]), so 8 of them cover the round trip.
    pub remote_credits: usize,
    /// A batch to a subtask on another node is full at `batch_size × remote_batch_scale`
    /// records (default [`DEFAULT_REMOTE_BATCH_SCALE`]) or at [`REMOTE_BATCH_BYTES`] of
    /// records by their in-memory size, whichever comes first (but never below a local batch):
    /// each batch that crosses costs a frame, a write and wake-ups on both nodes, so larger
    /// ones carry records for less. The flush interval still bounds how long a partly filled
    /// batch waits (and latency mode still sends after each input batch).
    pub remote_batch_scale: usize,
    /// Worker threads (actix arbiters); `None` means one per available core.
    pub workers: Option<usize>,
    /// Pin worker `i` to core `i` (mod the cores this process may use). `None` (default):
    /// pin when the job has a worker per available core and is not in latency mode. Without
    /// pinning the kernel at times placed both workers of a two-worker job on one core (a
    /// worker that wakes the other pulls it to its own core), and a keyed job's throughput
    /// then swung by a third from run to run, its sources waiting for credits from a consumer
    /// that had no core. What pinning trades: a woken worker must wait for its own core, so a
    /// lightly loaded job's latency grows (p99 at 10,000 records/s in latency mode went from
    /// 71 µs to 114 µs), which is why latency mode does not pin unless asked.
    pub pin_workers: Option<bool>,
    /// Chain forward edges of equal parallelism into one actor (default: true).
    pub chaining: bool,
    /// Partitioner for keyed edges (default: the ring with 1024 virtual nodes).
    pub partitioning: PartitionScheme,
    /// Hot keys, first step: per keyed operator (by name), each subtask's relative share of
    /// the ring in percent (100 = an equal share; 25 gives a subtask a quarter of the keys it
    /// would otherwise own, and the others take the rest). Applies when the list has one
    /// entry per subtask; otherwise the shares are equal. Limits: a single hot key still goes
    /// to one subtask (weights move *other* keys away from it), and weights are fixed while
    /// a job runs — change them by stopping at a savepoint and restarting, which moves the
    /// affected keyed state (see `ExecutionPlan::adapt_checkpoint`).
    pub ring_weights: std::collections::BTreeMap<String, Vec<u32>>,
    /// Job name, used in logs.
    pub name: String,
    /// How failed subtasks restart (default [`RestartStrategy::default`]); operators can
    /// override the kind and backoff with `DataStream::restart_strategy`.
    pub restart: RestartStrategy,
    /// What happens to records that keep failing (default [`PoisonPolicy::default`]).
    pub poison: PoisonPolicy,
    /// Seed of the runtime's randomness (backoff jitter); default 0.
    pub seed: u64,
    /// Checkpointing (default: off). With it on, failures restore the whole job from the
    /// latest completed checkpoint and transactional sinks are exactly-once.
    pub checkpoint: Option<CheckpointConfig>,
    /// Start from a checkpoint or savepoint instead of from scratch (default: none).
    pub restore: Option<RestoreFrom>,
    /// How long the job waits for every subtask to report ready — at a distributed job's
    /// start and in each recovery — before it fails with `JobError::NotReady` naming the
    /// ones that did not (default 60 s). Nothing waits for ever on another process.
    pub ready_timeout: Duration,
}

/// Where checkpoints are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStorage {
    /// In memory (lost with the process; for tests).
    Memory,
    /// In `DIR/JOB/chk-N/` (survives the process; see `FsStore`).
    Dir(std::path::PathBuf),
}

/// Checkpointing settings. Defaults: every 1 s, 60 s timeout, in memory, keep 3.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointConfig {
    /// Time between the start of one checkpoint and the trigger of the next.
    pub interval: Duration,
    /// A checkpoint not complete after this long is discarded (the job goes on).
    pub timeout: Duration,
    /// Where checkpoints go.
    pub storage: CheckpointStorage,
    /// How many completed checkpoints to keep (savepoints are always kept).
    pub keep: usize,
    /// A rescale in place not done after this long gives up: before its switch it releases
    /// the sources and fails with `JobError::RescaleTimedOut`; after it the job recovers from
    /// the rescaled checkpoint (so no wait for a subtask that never confirms is endless).
    pub rescale_timeout: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            storage: CheckpointStorage::Memory,
            keep: 3,
            rescale_timeout: Duration::from_secs(60),
        }
    }
}

impl CheckpointConfig {
    /// Checkpoints every `interval`, in memory.
    pub fn every(interval: Duration) -> Self {
        CheckpointConfig {
            interval,
            ..Self::default()
        }
    }

    /// Keeps checkpoints in `DIR/JOB/`.
    pub fn in_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.storage = CheckpointStorage::Dir(dir.into());
        self
    }
}

/// Which checkpoint a job starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest complete checkpoint or savepoint of this job (by name) under the directory;
    /// the job fails to start if there is none.
    Latest(std::path::PathBuf),
    /// As `Latest`, but a job that has no checkpoint there yet starts fresh — what a restart
    /// script wants. A job whose checkpoints are all damaged still fails to start
    /// (`StoreError::AllDamaged`): starting fresh would redo committed output.
    LatestOrFresh(std::path::PathBuf),
    /// A given checkpoint or savepoint directory (`.../chk-N` or `.../sp-N`).
    Path(std::path::PathBuf),
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            default_parallelism: 1,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_bytes: DEFAULT_BATCH_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            credits: DEFAULT_CREDITS,
            remote_credits: DEFAULT_REMOTE_CREDITS,
            remote_batch_scale: DEFAULT_REMOTE_BATCH_SCALE,
            workers: None,
            pin_workers: None,
            chaining: true,
            partitioning: PartitionScheme::default(),
            ring_weights: std::collections::BTreeMap::new(),
            name: "riffle-job".to_string(),
            restart: RestartStrategy::default(),
            poison: PoisonPolicy::default(),
            seed: 0,
            checkpoint: None,
            restore: None,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// How full a batch gets: at most `records` records and `bytes` bytes of them (by in-memory
/// size), at least one record. From [`JobConfig::batching`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// The most records.
    pub records: usize,
    /// The most bytes of records (`size_of::<T>()` each).
    pub bytes: usize,
}

impl Batching {
    /// Batches of exactly `records` records, whatever their size.
    pub fn records(records: usize) -> Self {
        Batching {
            records,
            bytes: usize::MAX,
        }
    }

    /// How many records of type `T` make a full batch.
    pub fn records_of<T>(&self) -> usize {
        (self.bytes / std::mem::size_of::<T>().max(1)).clamp(1, self.records.max(1))
    }
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            records: DEFAULT_BATCH_SIZE,
            bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

impl JobConfig {
    /// The batch limits of edges inside a process ([`JobConfig::batch_size`] and
    /// [`JobConfig::batch_bytes`]).
    pub fn batching(&self) -> Batching {
        Batching {
            records: self.batch_size,
            bytes: self.batch_bytes,
        }
    }

    /// Checks every value is in range.
    ///
    /// # Errors
    /// [`GraphError::InvalidConfig`] naming the first bad field, or
    /// [`GraphError::ZeroParallelism`] for a default parallelism of 0.
    pub fn validate(&self) -> Result<(), GraphError> {
        if self.default_parallelism == 0 {
            return Err(GraphError::ZeroParallelism {
                operator: "<job default>".to_string(),
            });
        }
        let bad = |field, value: usize, reason| GraphError::InvalidConfig {
            field,
            value: value as u64,
            reason,
        };
        if self.batch_size == 0 {
            return Err(bad("batch_size", 0, "must be at least 1"));
        }
        if self.batch_bytes == 0 {
            return Err(bad("batch_bytes", 0, "must be at least 1"));
        }
        if self.credits == 0 {
            return Err(bad("credits", 0, "must be at least 1"));
        }
        if self.remote_credits == 0 {
            return Err(bad("remote_credits", 0, "must be at least 1"));
        }
        if self.remote_batch_scale == 0 {
            return Err(bad("remote_batch_scale", 0, "must be at least 1"));
        }
        if self.workers == Some(0) {
            return Err(bad("workers", 0, "must be at least 1"));
        }
        if let Some(c) = &self.checkpoint {
            if c.interval.is_zero() {
                return Err(bad("checkpoint.interval_ms", 0, "must be positive"));
            }
        }
        if self.poison.max_attempts == 0 {
            return Err(bad("poison.max_attempts", 0, "must be at least 1"));
        }
        if let PartitionScheme::Ring { vnodes: 0 } = self.partitioning {
            return Err(bad("vnodes", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// Whether worker threads are pinned to cores ([`JobConfig::pin_workers`]).
    pub fn pins_workers(&self) -> bool {
        self.pin_workers.unwrap_or_else(|| {
            !self.flush_interval.is_zero()
                && std::thread::available_parallelism()
                    .is_ok_and(|n| n.get() == self.worker_count())
        })
    }

    /// The most credits any input channel of a subtask can have: what its mailbox must take.
    pub fn max_credits(&self) -> usize {
        self.credits.max(self.remote_credits)
    }

    /// The partitioner of the keyed edge into operator `operator` with `parallelism`
    /// subtasks: [`JobConfig::partitioning`], weighted by [`JobConfig::ring_weights`].
    pub fn routing_for(&self, operator: &str, parallelism: usize) -> crate::partition::Routing {
        match (&self.partitioning, self.ring_weights.get(operator)) {
            (PartitionScheme::Ring { vnodes }, Some(w)) if w.len() == parallelism => {
                let weights: Vec<usize> = w
                    .iter()
                    .map(|p| (vnodes * *p as usize / 100).max(1))
                    .collect();
                crate::partition::Routing::Ring(std::sync::Arc::new(
                    crate::partition::KeyRing::weighted(&weights),
                ))
            }
            (scheme, _) => scheme.build(parallelism),
        }
    }

    /// Worker threads to start: the configured count or the available cores.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Which subtasks restart when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartKind {
    /// Only the failed subtask (default).
    OneForOne,
    /// Every subtask of the job (each rebuilds its operators from their factories).
    OneForAll,
    /// No restart: the first failure fails the job.
    Never,
}

/// Exponential backoff between restarts of a subtask, with jitter.
///
/// The n-th consecutive restart of a subtask (n = 0, 1, ...) waits
/// `min(initial × multiplier^n, max)`, scaled by a random factor in `[1 − jitter, 1 + jitter]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart (default 1 ms).
    pub initial: Duration,
    /// Largest delay (default 1 s).
    pub max: Duration,
    /// Growth per consecutive restart (default 2.0).
    pub multiplier: f64,
    /// Relative jitter, 0.0..=1.0 (default 0.2).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before consecutive restart `n` (0-based), before jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(n.min(64) as i32);
        let d = self.initial.as_secs_f64() * factor;
        Duration::from_secs_f64(d.min(self.max.as_secs_f64()))
    }

    /// The delay before consecutive restart `n`, with `unit` in `[0, 1)` choosing the jitter.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let j = self.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - j + 2.0 * j * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64(self.base_delay(n).as_secs_f64() * scale)
    }
}

/// How failed subtasks are restarted. Defaults: one-for-one, at most 10 restarts within 10 s
/// over the whole job, backoff 1 ms doubling to at most 1 s with ±20 % jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestartStrategy {
    /// Which subtasks restart.
    pub kind: RestartKind,
    /// Past this many restarts within `window` the failure escalates and the job fails.
    pub max_restarts: u32,
    /// The intensity window.
    pub window: Duration,
    /// Delay between restarts.
    pub backoff: Backoff,
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy {
            kind: RestartKind::OneForOne,
            max_restarts: 10,
            window: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

impl RestartStrategy {
    /// No restarts: the first failure fails the job.
    pub fn never() -> Self {
        RestartStrategy {
            kind: RestartKind::Never,
            ..Self::default()
        }
    }
}

/// What happens to a record on which the same operator failed `max_attempts` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoisonAction {
    /// Set it aside on the job's dead-letter output and go on (default).
    DeadLetter,
    /// Fail the job with `JobError::PoisonRecord`.
    FailJob,
}

/// Poison record handling. Default: 3 attempts, then dead-letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonPolicy {
    /// Failures of the same record before it counts as poison (at least 1; default 3).
    pub max_attempts: u32,
    /// What to do with it.
    pub action: PoisonAction,
}

impl Default for PoisonPolicy {
    fn default() -> Self {
        PoisonPolicy {
            max_attempts: 3,
            action: PoisonAction::DeadLetter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_pinned_when_the_job_has_every_core_and_is_not_in_latency_mode() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cfg = JobConfig {
            workers: Some(cores),
            ..JobConfig::default()
        };
        assert!(cfg.pins_workers());
        cfg.workers = Some(cores + 1);
        assert!(!cfg.pins_workers(), "more workers than cores");
        cfg.workers = Some(cores);
        cfg.flush_interval = Duration::ZERO;
        assert!(!cfg.pins_workers(), "latency mode");
        cfg.pin_workers = Some(true);
        assert!(cfg.pins_workers(), "asked for");
        cfg.flush_interval = DEFAULT_FLUSH_INTERVAL;
        cfg.pin_workers = Some(false);
        assert!(!cfg.pins_workers(), "asked not to");
    }

    #[test]
    fn a_batch_is_full_at_its_bytes_or_its_records_whichever_comes_first() {
        let b = Batching::default();
        assert_eq!(
            b.records_of::<u64>(),
            4096,
            "32 KiB of 8 bytes, and the record limit"
        );
        assert_eq!(b.records_of::<(u64, u64)>(), 2048);
        assert_eq!(b.records_of::<[u8; 200]>(), 163);
        assert_eq!(b.records_of::<[u8; 64 * 1024]>(), 1, "never empty");
        assert_eq!(
            b.records_of::<()>(),
            4096,
            "zero-sized records: the record limit"
        );
        assert_eq!(Batching::records(4).records_of::<[u8; 200]>(), 4);
        let cfg = JobConfig {
            batch_size: 100,
            ..JobConfig::default()
        };
        assert_eq!(
            cfg.batching().records_of::<u64>(),
            100,
            "a smaller record limit holds"
        );
        let zero = JobConfig {
            batch_bytes: 0,
            ..JobConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
