//! Job configuration: parallelism, batching, credits, workers.

use crate::error::GraphError;
use crate::partition::PartitionScheme;
use std::time::Duration;

/// Records per batch on an edge unless configured: a batch is flushed when it holds this many.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Longest time a partly filled batch waits before it is flushed (the latency bound).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Batches in flight per channel (upstream subtask → downstream subtask).
pub const DEFAULT_CREDITS: usize = 4;

/// How a job runs. Every field has a documented default ([`JobConfig::default`]).
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Parallelism of operators that do not set their own (default: 1).
    pub default_parallelism: usize,
    /// Records per batch (default [`DEFAULT_BATCH_SIZE`]).
    pub batch_size: usize,
    /// Flush partly filled batches after this long (default [`DEFAULT_FLUSH_INTERVAL`]).
    pub flush_interval: Duration,
    /// Credits (batches in flight) per channel (default [`DEFAULT_CREDITS`]). A channel holds at
    /// most `credits × batch_size` records that were sent and not yet processed.
    pub credits: usize,
    /// Worker threads (actix arbiters); `None` means one per available core.
    pub workers: Option<usize>,
    /// Chain forward edges of equal parallelism into one actor (default: true).
    pub chaining: bool,
    /// Partitioner for keyed edges (default: the ring with 1024 virtual nodes).
    pub partitioning: PartitionScheme,
    /// Job name, used in logs.
    pub name: String,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            default_parallelism: 1,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            credits: DEFAULT_CREDITS,
            workers: None,
            chaining: true,
            partitioning: PartitionScheme::default(),
            name: "riffle-job".to_string(),
        }
    }
}

impl JobConfig {
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
        if self.credits == 0 {
            return Err(bad("credits", 0, "must be at least 1"));
        }
        if self.workers == Some(0) {
            return Err(bad("workers", 0, "must be at least 1"));
        }
        if self.flush_interval.is_zero() {
            return Err(bad("flush_interval_ms", 0, "must be positive"));
        }
        if let PartitionScheme::Ring { vnodes: 0 } = self.partitioning {
            return Err(bad("vnodes", 0, "must be at least 1"));
        }
        Ok(())
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
