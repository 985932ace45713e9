//! # Riffle — Flink-style stream processing on actors
//!
//! Riffle runs dataflows (sources → operators → sinks, each with its own parallelism) where
//! every parallel subtask is an actix actor with its own mailbox. Keyed records are routed over
//! a consistent-hash ring, so rescaling an operator moves only about 1/(N+1) of the keys.
//!
//! This is the facade crate: the API of the layers below it, grouped by use.
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
//!
//! ## Modules
//!
//! Most programs need only [`prelude`]. The rest of the API is grouped by what it is for:
//!
//! | module | for |
//! |---|---|
//! | [`operators`] | writing operators, sources and sinks as types |
//! | [`streams`] | building the dataflow |
//! | [`config`] | job configuration: parallelism, restarts, checkpoints, restoring |
//! | [`state`] | checkpoints and where they are kept |
//! | [`connectors`] | the built-in sources' and sinks' handles |
//! | [`routing`] | how keyed records are spread over subtasks |
//! | [`job`] | running jobs: the handle, results, rescaling, progress |
//! | [`errors`] | every error type, and whose problem it is |
//! | [`chaos`] | crashing subtasks, actors, workers on purpose |
//! | [`testing`] | one-line harnesses for tests and docs |
//! | [`cluster`] | running nodes and jobs across them |
//! | [`http`] | the HTTP server: metrics, REST API, web console |
//! | [`metrics`] | the Prometheus recorder and the node label |
//! | [`cli`] | command-line programs: logging, one-line errors, progress, stop signals |
//!
//! The `riffle` binary (`src/bin/riffle.rs`) is the command line over the REST API.
//!
//! The layers below (`riffle-framework`, `riffle-actors`, `riffle-cluster`) are the
//! runtime's own; their internals are not part of this API.

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Everything an operator author needs, and what running a checkpointed, rescaled job
/// takes: `use riffle::prelude::*;`.
pub mod prelude {
    pub use riffle_actors::registry::JobControl;
    pub use riffle_actors::{Execute, JobError, JobHandle, JobResult, RescaleOutcome};
    pub use riffle_framework::{
        AggregateFunction, Firing, TimeDomain, TimeWindow, Timer, Timers, Trigger, WindowAssigner,
        WindowResult, Windowed, WindowedStream,
    };
    pub use riffle_framework::{
        Backoff, CheckpointConfig, CollectHandle, CountHandle, Data, DataStream, FsStore,
        JobConfig, Key, KeyedOperator, KeyedStates, KeyedStream, Operator, Output, PoisonAction,
        PoisonPolicy, Position, RestartKind, RestartStrategy, RestoreFrom, Sink, Snapshot, Source,
        SourceStatus, StoreError, StreamEnv, SubtaskInfo, UserError, WatermarkStrategy,
    };
}

/// Operators as types: implement [`Operator`](operators::Operator),
/// [`KeyedOperator`](operators::KeyedOperator), [`Source`](operators::Source) or
/// [`Sink`](operators::Sink); each parallel subtask runs one instance as an actor.
pub mod operators {
    pub use riffle_framework::{
        Data, DeadLetter, Encoded, Key, KeyedOperator, KeyedStates, Operator, Output, Position,
        Sink, Snapshot, Source, SourceStatus, SubtaskInfo, UserError,
    };
}

/// Building a dataflow: an environment and the streams between its operators.
pub mod streams {
    pub use riffle_framework::{
        DataStream, KeyedStream, SinkStream, StreamEnv, Windowed, WindowedStream,
    };
}

/// Event time: how records get timestamps and watermarks ([`WatermarkStrategy`](time::WatermarkStrategy),
/// used with `DataStream::assign_timestamps_and_watermarks`), and a subtask's clock, the
/// minimum of its inputs' watermarks ([`InputClock`](time::InputClock)); operators see it
/// advance in `Operator::on_watermark`. Keyed operators register timers per key
/// ([`Timers`](time::Timers), from `Output::timers`), and windows are built on them
/// ([`WindowAssigner`](time::WindowAssigner), `KeyedStream::window`).
pub mod time {
    pub use riffle_framework::timers::processing_time_now;
    pub use riffle_framework::{
        AggregateFunction, Firing, GeneratorFn, InputClock, KeyTimers, TimeDomain, TimeWindow,
        Timer, Timers, TimestampFn, Trigger, WatermarkStrategy, WindowAssigner, WindowEvent,
        WindowResult, WindowState,
    };
}

/// A job's configuration: name, parallelism, workers, batching, restarts, checkpoints and
/// what to restore from.
pub mod config {
    pub use riffle_framework::{
        Backoff, Batching, CheckpointConfig, CheckpointStorage, JobConfig, PoisonAction,
        PoisonPolicy, RestartKind, RestartStrategy, RestoreFrom, DEFAULT_BATCH_BYTES,
        DEFAULT_BATCH_SIZE, DEFAULT_CREDITS, DEFAULT_FLUSH_INTERVAL, DEFAULT_REMOTE_BATCH_SCALE,
        DEFAULT_REMOTE_CREDITS, REMOTE_BATCH_BYTES,
    };
}

/// Checkpoints: what they hold and where they are kept.
pub mod state {
    pub use riffle_framework::{
        Checkpoint, CheckpointId, CheckpointStore, FsStore, MemoryStore, StoreError, TaskSnapshot,
    };
}

/// Handles of the built-in sinks (the sources and sinks themselves are methods of
/// [`StreamEnv`](streams::StreamEnv) and [`DataStream`](streams::DataStream)).
pub mod connectors {
    pub use riffle_framework::{CollectHandle, ConnectorError, CountHandle};
}

/// How keyed records are spread over subtasks: the consistent-hash ring (rescaling moves only
/// about 1/(N+1) of the keys), the `hash mod N` baseline, and the key hash itself.
pub mod routing {
    pub use riffle_framework::{
        canonical_key_bytes, ChainRescale, KeyRing, ModuloPartitioner, PartitionScheme,
        Partitioner, DEFAULT_VNODES,
    };
}

/// Running jobs: start one, wait for it, take savepoints, rescale it in place, watch its
/// progress; what a run reports.
pub mod job {
    pub use riffle_actors::registry::JobControl;
    pub use riffle_actors::{
        CheckpointStats, Execute, InPlaceFigures, JobHandle, JobResult, Progress, RecoveryEvent,
        RescaleOutcome, RestartEvent, SubtaskMetrics,
    };
}

/// Every error a job, an operator or a connector can report; [`ErrorKind`](errors::ErrorKind)
/// says whose problem it is.
pub mod errors {
    pub use riffle_actors::{ClusterError, ErrorKind, JobError};
    pub use riffle_framework::{
        CodecError, ConnectorError, FailureCause, FitError, FitProblem, GraphError, Permanent,
        StoreError, UserError,
    };
}

/// Chaos tooling: crash subtasks, stop actors and worker threads on purpose, and plan faults
/// from a seed.
pub mod chaos {
    pub use riffle_actors::chaos::*;
    pub use riffle_framework::exec::Fault;
}

pub mod cli;

/// The process's HTTP server: `GET /metrics` for Prometheus, the REST API of its jobs
/// (described by [`OPENAPI`](http::OPENAPI), served at `/openapi.json`) and the web console
/// at `/console/`. Off unless started: `riffle::http::serve("127.0.0.1:8081".parse()?)`.
pub mod http {
    pub use riffle_actors::http::{
        serve, set_cluster_view, set_parts_view, HttpError, HttpServer, NodeInfo, PartInfo, OPENAPI,
    };
}

/// Metrics through the `metrics` facade (names and labels in Prometheus's conventions; the
/// table is in `riffle_actors::telemetry`): install the Prometheus recorder and render it.
pub mod metrics {
    pub use riffle_actors::telemetry::{install_prometheus, prometheus, set_node_name};
}

/// Nodes and jobs across them: a node process joins a cluster with its shared secret, and a
/// job's subtasks are placed over the live nodes.
pub mod cluster {
    pub use riffle_actors::ClusterError;
    pub use riffle_cluster::{
        ClusterJob, EtcdAuth, EtcdTls, HostedEnd, JobBuilder, JobOptions, Limits, Member, Node,
        NodeBuilder, NodeError, Placement, Refusals, Secret, SecretError, Status,
    };
}

/// The layers below the API, for Riffle's own tests and tools: not covered by semver, not
/// documented here.
#[doc(hidden)]
pub mod internals {
    pub use riffle_actors as actors;
    pub use riffle_cluster as cluster;
    pub use riffle_framework as framework;
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
