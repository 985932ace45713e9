//! Requests to the job supervisor from outside the job's subtasks: from the job's handle
//! (rescale, savepoint, chaos) and from the cluster layer (a node was lost).

use crate::error::JobError;
use crate::message::Control;
use crate::protocol::rescale::{InPlace, InPlaceError};
use actix::prelude::*;
use riffle_framework::TaskId;
use tokio::sync::oneshot;

/// Asks the job supervisor to rescale `operator` to `n` subtasks in place.
pub(crate) struct RescaleRequest {
    pub operator: String,
    pub n: usize,
    pub reply: oneshot::Sender<Result<InPlace, InPlaceError>>,
}
impl Message for RescaleRequest {
    type Result = ();
}

/// Asks the job for a savepoint.
pub(crate) struct SavepointRequest {
    pub reply: oneshot::Sender<Result<u64, JobError>>,
    /// Stop the job once the savepoint is committed.
    pub stop: bool,
}
impl Message for SavepointRequest {
    type Result = ();
}

/// Asks the job to stop at once, without a savepoint.
pub(crate) struct CancelRequest {
    /// Who asked (for the error and the log).
    pub by: String,
}
impl Message for CancelRequest {
    type Result = ();
}

/// A node that ran some of the job's subtasks was lost; they were re-placed (the cluster
/// layer's [`crate::host::RemoteTasks::node_of`] already answers with their new nodes).
#[derive(Debug)]
pub struct NodeLost {
    /// The lost node.
    pub node: String,
    /// The subtasks it ran.
    pub tasks: Vec<TaskId>,
}
impl Message for NodeLost {
    type Result = ();
}

/// The cluster layer found that this process lost its authority over the job (another node
/// leads now): the job ends with `reason` at once, committing nothing more.
#[derive(Debug)]
pub struct Fence {
    /// Why.
    pub reason: crate::ClusterError,
}
impl Message for Fence {
    type Result = ();
}

/// A chaos request, handled by the job supervisor.
pub(crate) enum ChaosCommand {
    /// A control message for the task at this index of `ExecutionPlan::tasks()`.
    Control { task: usize, control: Control },
    /// Stop a worker thread (never the last live one).
    StopWorker(usize),
}
impl Message for ChaosCommand {
    type Result = ();
}
