//! # riffle-actors — the local runtime on actix
//!
//! The second layer of Riffle (framework ← **actors** ← cluster ← riffle). It runs an
//! [`riffle_framework::ExecutionPlan`] in one process:
//!
//! - a pool of actix `Arbiter`s (worker threads; one per available core unless configured);
//! - one **subtask actor** per parallel instance of each chain (operators joined by forward
//!   edges are chained into one actor, as Flink chains operators), spread over the workers;
//! - **credit-based channels** between subtasks: records travel in batches (flushed when full,
//!   on a timer, and before end-of-input), each batch costs a credit that returns when the
//!   receiver has handled it, and a sender without credit stops taking input — so memory in
//!   flight is bounded and a slow sink slows the sources. The data plane never uses
//!   `do_send`;
//! - a **job supervisor** actor that collects each subtask's outcome and counters and reports
//!   the job's [`JobResult`] or a typed [`JobError`] through [`JobHandle::wait`].
//!
//! User code runs under `catch_unwind` (in the framework's operator chain), so a panic becomes
//! a [`JobError::SubtaskFailed`] naming the operator, never a panic in the caller.
//!
//! Not yet here (see the project's issues): restarts and supervision strategies, checkpoints,
//! remote mailboxes.

mod error;
mod message;
mod runtime;
mod subtask;

pub use error::{ErrorKind, JobError, JobResult};
pub use message::{DataMessage, Event, SubtaskMetrics};
pub use runtime::{start_plan, Execute, JobHandle};
pub use subtask::Lifecycle;
