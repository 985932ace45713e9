//! # Riffle — Flink-style stream processing on actors
//!
//! Riffle runs dataflows (sources → operators → sinks, each with its own parallelism) where
//! every parallel subtask is an actix actor with its own mailbox. Keyed records are routed over
//! a consistent-hash ring, so rescaling an operator moves only about 1/(N+1) of the keys.
//!
//! This is the facade crate: it re-exports the layers below it and adds the test harness.
//!
//! | crate | layer |
//! |---|---|
//! | `riffle-framework` | user API, job graph, partitioning, connectors (no actors) |
//! | `riffle-actors` | local runtime: subtask actors, credit-based channels, job supervisor |
//! | `riffle-cluster` | nodes, authenticated (optionally encrypted) links, remote mailboxes, jobs across nodes |
//!
//! ```
//! use riffle::prelude::*;
//!
//! let counts = riffle::testing::run_local(|env| {
//!     env.set_parallelism(2);
//!     env.from_collection(vec!["a b".to_string(), "b c".into(), "b".into()])
//!         .flat_map(|line: String| line.split(' ').map(str::to_string).collect::<Vec<_>>())
//!         .key_by(|w: &String| w.clone())
//!         .sum(|_| 1u64)
//! });
//! let b = counts.iter().filter(|(w, _)| w == "b").map(|(_, n)| *n).max();
//! assert_eq!(b, Some(3));
//! ```

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use riffle_actors as actors;
pub use riffle_cluster as cluster;
pub use riffle_framework as framework;

pub use riffle_actors::chaos;
pub use riffle_actors::{
    CheckpointStats, ErrorKind, Execute, JobError, JobHandle, JobResult, RecoveryEvent,
    RescaleOutcome, RestartEvent, SubtaskMetrics,
};
pub use riffle_framework::exec::Fault;
pub use riffle_framework::{
    Backoff, Checkpoint, CheckpointConfig, CheckpointStorage, CheckpointStore, CollectHandle,
    ConnectorError, CountHandle, Data, DataStream, DeadLetter, Encoded, ExecutionPlan,
    FailureCause, FsStore, GraphError, JobConfig, Key, KeyRing, KeyedOperator, KeyedStream,
    MemoryStore, ModuloPartitioner, Operator, Output, PartitionScheme, Partitioner, PoisonAction,
    PoisonPolicy, Position, RestartKind, RestartStrategy, RestoreFrom, Sink, SinkStream, Snapshot,
    Source, SourceStatus, StoreError, StreamEnv, SubtaskInfo, TaskSnapshot, UserError,
};

/// Everything an operator author needs, and what running a checkpointed, rescaled job
/// takes: `use riffle::prelude::*;`.
pub mod prelude {
    pub use riffle_actors::{Execute, JobError, JobHandle, JobResult, RescaleOutcome};
    pub use riffle_framework::{
        CheckpointConfig, Data, DataStream, FsStore, JobConfig, Key, KeyedOperator, KeyedStream,
        Operator, Output, Position, RestartKind, RestartStrategy, RestoreFrom, Sink, Source,
        SourceStatus, StoreError, StreamEnv, SubtaskInfo, UserError,
    };
}

/// One-line harnesses for tests and docs.
pub mod testing {
    use crate::prelude::*;

    /// Builds a job with `build`, collects the stream it returns, runs it locally and returns
    /// the collected records (each subtask's records contiguous and in arrival order).
    ///
    /// # Panics
    /// If the job is invalid or fails; use [`try_run_local`] to get the error instead.
    pub fn run_local<T: Data>(build: impl FnOnce(&StreamEnv) -> DataStream<T>) -> Vec<T> {
        match try_run_local(build) {
            Ok(v) => v,
            Err(e) => panic!("job failed: {e}"),
        }
    }

    /// Like [`run_local`], returning the job's error instead of panicking.
    ///
    /// # Errors
    /// Any [`JobError`] of the job.
    pub fn try_run_local<T: Data>(
        build: impl FnOnce(&StreamEnv) -> DataStream<T>,
    ) -> Result<Vec<T>, JobError> {
        let env = StreamEnv::new();
        let out = build(&env).collect();
        env.execute()?;
        Ok(out.take())
    }
}
