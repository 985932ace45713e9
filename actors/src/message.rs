//! Data-plane and control messages.

use actix::Message;
use riffle_framework::exec::Payload;
use riffle_framework::{StageError, TaskId};
use tokio::sync::OwnedSemaphorePermit;

/// What travels on a channel: records and the control events ordered with them.
pub enum Event {
    /// A batch of records (`Vec<T>` of the channel's record type).
    Batch {
        /// The records.
        payload: Payload,
        /// How many.
        len: usize,
    },
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
    pub credit: Option<OwnedSemaphorePermit>,
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
}

/// A subtask ended its work (control; sent to the job supervisor).
pub(crate) struct TaskFinished {
    pub task: TaskId,
    pub metrics: SubtaskMetrics,
}

impl Message for TaskFinished {
    type Result = ();
}

/// A subtask failed (control; sent to the job supervisor).
pub(crate) struct TaskFailed {
    pub task: TaskId,
    pub chain: String,
    pub error: StageError,
}

impl Message for TaskFailed {
    type Result = ();
}
