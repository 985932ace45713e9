//! Data-plane and control messages.

use actix::prelude::*;
use riffle_framework::exec::Fault;
use riffle_framework::{ChannelEvent, DeadLetter, FailureCause, TaskId, TaskSnapshot};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

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
    /// What it carries (the same event type as every layer's: see [`ChannelEvent`]).
    pub event: ChannelEvent,
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The node that ran it last (empty in a single-process job).
    pub node: String,
}

/// How a subtask starts over from a checkpoint (or from scratch) in a new epoch.
///
/// Part of the runtime's control protocol; serialisable so that it can reach a subtask on
/// another node. Each subtask re-resolves the addresses of its output targets when it applies
/// the order (a target may have been re-created elsewhere).
#[derive(Debug, Serialize, Deserialize)]
pub struct ResetOrder {
    pub(crate) epoch: u64,
    /// Its state in the checkpoint restored (`None`: start from nothing).
    pub(crate) snapshot: Option<TaskSnapshot>,
    /// The checkpoint restored, for the sinks' transactions.
    pub(crate) last_completed: Option<u64>,
    pub(crate) attempt: u32,
    pub(crate) backoff: Duration,
}

/// What the job supervisor decided about a failed subtask.
#[derive(Debug, Serialize, Deserialize)]
pub enum Decision {
    /// Restart after `backoff` (attempt number `attempt`).
    Restart {
        /// The attempt number.
        attempt: u32,
        /// How long to wait first.
        backoff: Duration,
    },
    /// Start over from a checkpoint with the whole job (checkpointing on).
    Reset(Box<ResetOrder>),
    /// Do not restart: the job is failing.
    Abort,
}

/// Why a subtask stopped working.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    pub(crate) operator: String,
    #[serde(with = "cause_serde")]
    pub(crate) cause: FailureCause,
    /// The fault was injected (chaos), not a real failure.
    pub(crate) injected: bool,
    /// The failing record is poison and the policy says fail the job.
    pub(crate) poison_attempts: Option<u32>,
}

/// A failure cause on the wire: its kind and its message (user errors travel as text; one
/// that no restart can fix keeps that mark, see [`FailureCause::is_permanent`]).
mod cause_serde {
    use riffle_framework::{FailureCause, Permanent};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        Panic(String),
        Error(String),
        Permanent(String),
        Stopped,
        Internal(String),
    }

    pub fn serialize<S: Serializer>(c: &FailureCause, s: S) -> Result<S::Ok, S::Error> {
        match c {
            FailureCause::Panic(m) => Wire::Panic(m.clone()),
            FailureCause::Error(e) if c.is_permanent() => Wire::Permanent(e.to_string()),
            FailureCause::Error(e) => Wire::Error(e.to_string()),
            FailureCause::Stopped => Wire::Stopped,
            FailureCause::Internal(m) => Wire::Internal((*m).to_string()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FailureCause, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::Panic(m) => FailureCause::Panic(m),
            Wire::Error(m) => FailureCause::Error(m.into()),
            Wire::Permanent(m) => FailureCause::Error(Permanent::new(m).into()),
            Wire::Stopped => FailureCause::Stopped,
            Wire::Internal(m) => FailureCause::Error(format!("internal error: {m}").into()),
        })
    }
}

/// What a subtask tells its job supervisor (the control plane, subtask → job).
///
/// One serialisable enum so that a subtask on another node reports through the same
/// `Recipient<ToJob>` as a local one (the cluster layer forwards it over the wire).
#[derive(Debug, Serialize, Deserialize)]
pub enum ToJob {
    /// The subtask ended its work.
    Finished(TaskFinished),
    /// The subtask failed and waits for a [`Decision`].
    Failed(TaskFailed),
    /// The subtask resumed after a restart.
    Resumed(TaskResumed),
    /// The subtask's actor was dropped before it finished.
    Lost(TaskLost),
    /// A record was set aside as poison.
    DeadLettered(DeadLettered),
    /// A planned chaos stop is due.
    StopDue(StopDue),
    /// A checkpoint snapshot.
    Ack(CheckpointAck),
    /// The subtask's input ended.
    Draining(TaskDraining),
    /// The subtask finished a reset and waits for `Go`.
    ResetDone(ResetDone),
    /// The first record of an epoch was processed.
    FirstRecord(FirstRecord),
    /// A checkpoint was committed.
    Committed(Committed),
    /// The subtask moved to a new plan (rescale in place).
    Replanned(Replanned),
}

impl Message for ToJob {
    type Result = ();
}

impl ToJob {
    /// The subtask that sent it (`None` for messages about the job as a whole).
    pub fn task(&self) -> Option<TaskId> {
        match self {
            ToJob::Finished(m) => Some(m.task),
            ToJob::Failed(m) => Some(m.task),
            ToJob::Resumed(m) => Some(m.task),
            ToJob::Lost(m) => Some(m.task),
            ToJob::StopDue(m) => Some(m.task),
            ToJob::Ack(m) => Some(m.task),
            ToJob::Draining(m) => Some(m.task),
            ToJob::ResetDone(m) => Some(m.task),
            ToJob::Committed(m) => Some(m.task),
            ToJob::Replanned(m) => Some(m.task),
            ToJob::DeadLettered(_) | ToJob::FirstRecord(_) => None,
        }
    }

    /// Takes the reply channel of a failure report (to carry the answer over the wire).
    pub fn take_reply(&mut self) -> Option<oneshot::Sender<Decision>> {
        match self {
            ToJob::Failed(m) => m.reply.take(),
            _ => None,
        }
    }

    /// Whether this is a failure report that waits for an answer.
    pub fn wants_reply(&self) -> bool {
        matches!(self, ToJob::Failed(m) if m.wants_reply)
    }

    /// Gives a failure report that arrived over the wire a local reply channel.
    pub fn set_reply(&mut self, reply: oneshot::Sender<Decision>) {
        if let ToJob::Failed(m) = self {
            m.reply = Some(reply);
        }
    }
}

/// A subtask ended its work.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskFinished {
    pub(crate) task: TaskId,
    /// The epoch it finished in (a report of an older epoch is stale).
    pub(crate) epoch: u64,
    pub(crate) metrics: SubtaskMetrics,
}

/// A subtask failed and waits for a decision.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskFailed {
    pub(crate) task: TaskId,
    /// The epoch the subtask was in when it failed.
    pub(crate) epoch: u64,
    pub(crate) failure: Failure,
    /// Whether the subtask waits for a decision (the reply does not travel).
    pub(crate) wants_reply: bool,
    #[serde(skip)]
    pub(crate) reply: Option<oneshot::Sender<Decision>>,
}

/// A subtask resumed work after a restart.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskResumed {
    pub(crate) task: TaskId,
}

/// A subtask's actor was dropped before it finished: its worker thread stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskLost {
    pub(crate) task: TaskId,
}

/// A subtask set a record aside as poison.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLettered {
    pub(crate) letter: DeadLetter,
}

/// A planned chaos stop is due: the supervisor stops the subtask from outside.
#[derive(Debug, Serialize, Deserialize)]
pub struct StopDue {
    pub(crate) task: TaskId,
}

/// Control messages to a subtask (the control plane, job → subtask).
#[derive(Debug, Serialize, Deserialize)]
pub enum Control {
    /// Fail at the next record with this fault.
    Inject(Fault),
    /// Arm a fault that fires once the subtask has handled `after` records.
    Arm {
        /// Records handled before it fires.
        after: u64,
        /// What fires.
        fault: PlannedKind,
    },
    /// Stop from outside (the actix `Supervisor` restarts the actor).
    Stop,
    /// Restart (one-for-all): rebuild the operators after `backoff`.
    Restart {
        /// The attempt number.
        attempt: u32,
        /// How long to wait first.
        backoff: Duration,
    },
    /// The subtask behind output channels to `target` was re-created: resolve it again.
    Rewire {
        /// The re-created subtask.
        target: TaskId,
    },
    /// These input channels will deliver nothing more (their sender finished).
    CloseInputs(Vec<usize>),
    /// Take checkpoint `n` now (sources; subtasks whose input has ended).
    Trigger(u64),
    /// Checkpoint `id` completed: commit; with `ack`, answer with `Committed`.
    Complete {
        /// The checkpoint.
        id: u64,
        /// Answer with `Committed`.
        ack: bool,
    },
    /// Start over from a checkpoint in a new epoch (recovery), then wait for `Go`.
    Reset(Box<ResetOrder>),
    /// Every subtask of `epoch` is reset: run.
    Go(u64),
    /// Take checkpoint `n` like [`Control::Trigger`]; a source then produces nothing until
    /// [`Control::Release`] (a rescale in place waits for the job to be quiet).
    Hold(u64),
    /// A held source continues.
    Release,
    /// Rescale in place: move to a new plan (re-wire routers, inputs and outputs; a subtask
    /// of the rescaled chain also hands over and takes in keyed state).
    Replan(Box<ReplanOrder>),
    /// Checkpoint `n` is a rescale's: from its snapshot on, fire no processing-time timer
    /// (the keys that move are handed over as the checkpoint holds them) until
    /// [`Control::Replan`] or [`Control::Release`]. Sent to every non-source subtask before
    /// the sources get [`Control::Hold`].
    HoldTimers(u64),
    /// The subtask is not part of the job any more (its chain was scaled down): drop
    /// everything and ignore what follows.
    Retire,
}

/// A move to a new plan during a rescale in place (see [`Control::Replan`]).
///
/// Serialisable, so it names the plan by version and by the rescale steps that build it from
/// the job's first plan; a host that has not seen that version builds it from the steps.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplanOrder {
    /// The plan version (the number of rescale steps since the job started).
    pub(crate) version: u64,
    /// Every rescale step since the job started, as (operator, parallelism).
    pub(crate) steps: Vec<(String, usize)>,
    /// The epoch the rescale happened in; a subtask reset since then already restored its
    /// state in the new shape and takes in nothing.
    pub(crate) epoch: u64,
    /// For a subtask of the rescaled chain: per state entry, the keyed entries it gains.
    pub(crate) gained: Option<Vec<Vec<u8>>>,
}
impl Message for Control {
    type Result = ();
}

/// A fault planned by a chaos monkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointAck {
    pub(crate) task: TaskId,
    pub(crate) epoch: u64,
    pub(crate) id: u64,
    pub(crate) snapshot: TaskSnapshot,
}

/// A subtask's input ended: it will see no more barriers and needs direct triggers.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskDraining {
    pub(crate) task: TaskId,
    pub(crate) epoch: u64,
}

/// A subtask finished its reset for `epoch` and waits for `Go`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResetDone {
    pub(crate) task: TaskId,
    pub(crate) epoch: u64,
}

/// A subtask processed its first record in `epoch` (measures restore time).
#[derive(Debug, Serialize, Deserialize)]
pub struct FirstRecord {
    pub(crate) epoch: u64,
}

/// A subtask committed checkpoint `id` (answer to `Control::Complete { ack: true }`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Committed {
    pub(crate) task: TaskId,
    pub(crate) id: u64,
}

/// A subtask moved to plan `version` (answer to [`Control::Replan`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Replanned {
    pub(crate) task: TaskId,
    pub(crate) version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use riffle_framework::{ConnectorError, Permanent};

    fn over_the_wire(cause: FailureCause) -> FailureCause {
        let failure = Failure {
            operator: "read".into(),
            cause,
            injected: false,
            poison_attempts: None,
        };
        let bytes = rmp_serde::to_vec(&failure).expect("encodes");
        let back: Failure = rmp_serde::from_slice(&bytes).expect("decodes");
        back.cause
    }

    /// A missing input file: an error no restart can fix.
    fn missing() -> ConnectorError {
        ConnectorError::ReadFile {
            path: "in.txt".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    #[test]
    fn a_cause_no_restart_can_fix_stays_permanent_across_the_wire() {
        for cause in [
            FailureCause::Error(missing().into()),
            FailureCause::Error(Permanent::new("no such table").into()),
        ] {
            assert!(cause.is_permanent());
            let back = over_the_wire(cause);
            assert!(back.is_permanent(), "{back}");
        }
        let back = over_the_wire(FailureCause::Error(missing().into()));
        assert_eq!(back.to_string(), format!("returned error: {}", missing()));
        for cause in [
            FailureCause::Error("a passing hiccup".into()),
            FailureCause::Panic("boom".into()),
            FailureCause::Stopped,
        ] {
            assert!(!over_the_wire(cause).is_permanent());
        }
    }
}
