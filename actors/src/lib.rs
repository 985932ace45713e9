//! # riffle-actors — the local runtime on actix
//!
//! The second layer of Riffle (framework ← **actors** ← cluster ← riffle). It runs an
//! [`riffle_framework::ExecutionPlan`] in one process:
//!
//! - a pool of actix `Arbiter`s (worker threads; one per available core unless configured);
//! - one **subtask actor** per parallel instance of each chain (operators joined by forward
//!   edges are chained into one actor, as Flink chains operators), spread over the workers,
//!   each under its own actix `Supervisor`;
//! - **credit-based channels** between subtasks: records travel in batches (flushed when full,
//!   on a timer, and before end-of-input), each batch costs a credit that returns when the
//!   receiver has handled it, and a sender without credit stops taking input — so memory in
//!   flight is bounded and a slow sink slows the sources. The data plane never uses
//!   `do_send`;
//! - a **job supervisor** actor, the root of the supervision tree: it applies the restart
//!   strategy (one-for-one, one-for-all, never; intensity limit; exponential backoff with
//!   jitter), re-creates subtasks whose worker thread stopped, collects each subtask's outcome
//!   and reports the job's [`JobResult`] or a typed [`JobError`] through [`JobHandle::wait`];
//! - with checkpointing on, the job supervisor's **checkpoint coordinator**: aligned barrier
//!   checkpoints, two-phase commits of the sinks, savepoints, and recovery of the whole job from
//!   the latest completed checkpoint in a new epoch (stale messages are dropped);
//! - the [`chaos`] module, which crashes subtasks, stops actors and worker threads on purpose;
//! - the operator's view of running jobs: `telemetry` (every subtask's and job's figures
//!   through the `metrics` facade, and the latest figures of each subtask for the REST API),
//!   `registry` (the jobs this process runs, each with a `JobControl` that takes savepoints,
//!   rescales and stops it from any thread) and `http` (an actix-web server, off unless
//!   started: `GET /metrics`, the REST API described in `openapi.json`, and the web console,
//!   static files built in).
//!
//! Inside, the job's protocols — restart supervision, checkpoint coordination, recovery and
//! rescale in place — are plain state machines (`protocol/`, tested without actors), and the
//! job supervisor (`supervisor/`) is a thin actor that feeds them and carries out what they
//! decide, one file per protocol. A running job's [`Progress`] is kept by the runtime
//! (`stats.rs`) and read or waited on through [`JobHandle`].
//!
//! User code runs under `catch_unwind` (in the framework's operator chain), so a panic becomes
//! a typed failure naming the operator, never a panic in the caller. Without checkpoints a
//! failed batch's output is rolled back and the batch retried on a rebuilt chain, so stateless
//! jobs are exact across restarts, and records in the mailbox of a subtask whose *worker thread*
//! stopped are lost; with checkpoints state and transactional output are exactly-once through
//! every kind of failure, including the loss of the process.

pub mod chaos;
mod directory;
mod error;
pub mod host;
pub mod http;
mod message;
mod protocol;
pub mod registry;
mod requests;
mod rng;
mod runtime;
mod stats;
mod subtask;
mod supervisor;
pub mod telemetry;

pub use error::{
    CheckpointStats, ClusterError, ErrorKind, JobError, JobResult, LinkFigures, NodeFigures,
    RecoveryEvent, RestartEvent,
};
pub use message::{
    CheckpointAck, Committed, Control, Credit, DataMessage, DeadLettered, Decision, Failure,
    FirstRecord, PlannedKind, RemoteCredit, ResetDone, ResetOrder, StopDue, SubtaskMetrics,
    TaskDraining, TaskFailed, TaskFinished, TaskLost, TaskResumed, ToJob,
};
pub use protocol::rescale::InPlaceFigures;
pub use requests::{Fence, NodeLost};
pub use runtime::{
    pin_to_cores, start_distributed, start_plan, state_moved, Distribution, Execute, JobHandle,
    JobPorts, RescaleOutcome, Rng,
};
pub use stats::Progress;
pub use subtask::Lifecycle;
