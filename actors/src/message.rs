//! Data-plane and control messages.

use actix::prelude::*;
use riffle_framework::exec::{Fault, Payload};
use riffle_framework::{DeadLetter, FailureCause, TaskId, TaskSnapshot};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// What travels on a channel: records and the control events ordered with them.
pub enum Event {
    /// A batch of records (`Vec<T>` of the channel's record type).
    Batch {
        /// The records.
        payload: Payload,
        /// How many.
        len: usize,
    },
    /// Checkpoint barrier `n`: the sender's records before it belong to checkpoint `n`.
    Barrier(u64),
    /// The sender will send nothing more on this channel.
    EndOfInput,
}

/// One message on a channel (upstream subtask → downstream subtask).
///
/// Every message costs the sender one credit of the channel; the credit is the
/// [`OwnedSemaphorePermit`] carried inside, and it returns to the sender when the message is
/// dropped — after the receiver handled it, or with the receiver's mailbox if the receiver is
/// gone. So a channel never holds more messages than it has credits, whatever happens to the
/// receiver, and no credit can be forgotten.
pub struct DataMessage {
    /// The job epoch the message belongs to.
    pub epoch: u64,
    /// The receiver's input channel index.
    pub channel: u32,
    /// What it carries.
    pub event: Event,
    /// The credit this message holds.
    pub credit: Option<Credit>,
}

/// A channel credit carried by a message and returned when the message is dropped.
pub enum Credit {
    /// A permit of a local sender's semaphore.
    Local(OwnedSemaphorePermit),
    /// The credit of a sender on another node: dropping it tells that sender.
    Remote(RemoteCredit),
}

/// Runs its callback once, when dropped (returns a remote sender's credit).
pub struct RemoteCredit(Option<Box<dyn FnOnce() + Send>>);

impl RemoteCredit {
    /// A credit that calls `on_return` when it is dropped.
    pub fn new(on_return: impl FnOnce() + Send + 'static) -> Self {
        RemoteCredit(Some(Box::new(on_return)))
    }
}

impl Drop for RemoteCredit {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Message for DataMessage {
    type Result = ();
}

/// Counters of one subtask, reported when it finishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubtaskMetrics {
    /// The chain the subtask runs (operator names joined by ` -> `).
    pub chain: String,
    /// The subtask index.
    pub subtask: usize,
    /// Records received from upstream channels (for a source chain: records it produced).
    pub records_in: u64,
    /// Records handed to outgoing channels or written by a sink.
    pub records_out: u64,
    /// Batches received.
    pub batches_in: u64,
    /// Batches sent.
    pub batches_out: u64,
    /// How often the subtask had to wait for a credit (backpressure).
    pub credit_stalls: u64,
    /// How many times the subtask was restarted (by its actix `Supervisor`).
    pub restarts: u32,
    /// How many times it was re-created on another worker after its worker stopped.
    pub recreated: u32,
    /// Distinct keys in its keyed state when it finished (the load report for hot keys).
    pub distinct_keys: u64,
}

/// How a subtask starts over from a checkpoint (or from scratch) in a new epoch.
pub(crate) struct ResetOrder {
    pub epoch: u64,
    /// Its state in the checkpoint restored (`None`: start from nothing).
    pub snapshot: Option<TaskSnapshot>,
    /// The checkpoint restored, for the sinks' transactions.
    pub last_completed: Option<u64>,
    pub attempt: u32,
    pub backoff: Duration,
    /// Output targets that were re-created, with their new addresses.
    pub rewire: Vec<(TaskId, Recipient<DataMessage>)>,
}

/// What the job supervisor decided about a failed subtask.
pub(crate) enum Decision {
    /// Restart after `backoff` (attempt number `attempt`).
    Restart { attempt: u32, backoff: Duration },
    /// Start over from a checkpoint with the whole job (checkpointing on).
    Reset(Box<ResetOrder>),
    /// Do not restart: the job is failing.
    Abort,
}

/// Why a subtask stopped working.
#[derive(Debug)]
pub(crate) struct Failure {
    pub operator: String,
    pub cause: FailureCause,
    /// The fault was injected (chaos), not a real failure.
    pub injected: bool,
    /// The failing record is poison and the policy says fail the job.
    pub poison_attempts: Option<u32>,
}

/// A subtask ended its work (control; to the job supervisor).
pub(crate) struct TaskFinished {
    pub task: TaskId,
    pub metrics: SubtaskMetrics,
}
impl Message for TaskFinished {
    type Result = ();
}

/// A subtask failed and waits for a decision (control; to the job supervisor).
pub(crate) struct TaskFailed {
    pub task: TaskId,
    /// The epoch the subtask was in when it failed.
    pub epoch: u64,
    pub failure: Failure,
    pub reply: Option<oneshot::Sender<Decision>>,
}
impl Message for TaskFailed {
    type Result = ();
}

/// A subtask resumed work after a restart (control; to the job supervisor).
pub(crate) struct TaskResumed {
    pub task: TaskId,
}
impl Message for TaskResumed {
    type Result = ();
}

/// A subtask's actor was dropped before it finished: its worker thread stopped.
pub(crate) struct TaskLost {
    pub task: TaskId,
}
impl Message for TaskLost {
    type Result = ();
}

/// A subtask set a record aside as poison.
pub(crate) struct DeadLettered {
    pub letter: DeadLetter,
}
impl Message for DeadLettered {
    type Result = ();
}

/// A planned chaos stop is due: the supervisor stops the subtask from outside.
pub(crate) struct StopDue {
    pub task: TaskId,
}
impl Message for StopDue {
    type Result = ();
}

/// Control messages to a subtask.
pub(crate) enum Control {
    /// Fail at the next record with this fault.
    Inject(Fault),
    /// Arm a fault that fires once the subtask has handled `after` records.
    Arm { after: u64, fault: PlannedKind },
    /// Stop from outside (the actix `Supervisor` restarts the actor).
    Stop,
    /// Restart (one-for-all): rebuild the operators after `backoff`.
    Restart { attempt: u32, backoff: Duration },
    /// The subtask behind output channels to `target` was re-created at `to`.
    Rewire {
        target: TaskId,
        to: Recipient<DataMessage>,
    },
    /// These input channels will deliver nothing more (their sender finished).
    CloseInputs(Vec<usize>),
    /// Take checkpoint `n` now (sources; subtasks whose input has ended).
    Trigger(u64),
    /// Checkpoint `id` completed: commit; with `ack`, answer with `Committed`.
    Complete { id: u64, ack: bool },
    /// Start over from a checkpoint in a new epoch (recovery), then wait for `Go`.
    Reset(Box<ResetOrder>),
    /// Every subtask of `epoch` is reset: run.
    Go(u64),
}
impl Message for Control {
    type Result = ();
}

/// A fault planned by a chaos monkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedKind {
    /// The next record's operator panics.
    Panic,
    /// The next record's operator returns an error.
    Error,
    /// The subtask is stopped from outside.
    Stop,
    /// A worker thread (chosen by the job's seeded generator, never the last one) is stopped.
    StopWorker,
}

/// A subtask's snapshot for a checkpoint (to the job supervisor's coordinator).
pub(crate) struct CheckpointAck {
    pub task: TaskId,
    pub epoch: u64,
    pub id: u64,
    pub snapshot: TaskSnapshot,
}
impl Message for CheckpointAck {
    type Result = ();
}

/// A subtask's input ended: it will see no more barriers and needs direct triggers.
pub(crate) struct TaskDraining {
    pub task: TaskId,
    pub epoch: u64,
}
impl Message for TaskDraining {
    type Result = ();
}

/// A subtask finished its reset for `epoch` and waits for `Go`.
pub(crate) struct ResetDone {
    pub task: TaskId,
    pub epoch: u64,
}
impl Message for ResetDone {
    type Result = ();
}

/// A subtask processed its first record in `epoch` (measures restore time).
pub(crate) struct FirstRecord {
    pub epoch: u64,
}
impl Message for FirstRecord {
    type Result = ();
}

/// A subtask committed checkpoint `id` (answer to `Control::Complete { ack: true }`).
pub(crate) struct Committed {
    pub task: TaskId,
    pub id: u64,
}
impl Message for Committed {
    type Result = ();
}
