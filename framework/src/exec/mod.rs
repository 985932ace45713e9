//! The execution side of an operator chain, independent of any actor library.
//!
//! A subtask runs one *chain*: operators joined by forward edges of equal parallelism. The
//! chain is a stack of [`Stage`]s, each pushing records into the next; its head is a source
//! driver ([`ErasedSource`]) or an input stage ([`ErasedInput`]) that unpacks batches, its tail
//! a sink or a [`Router`] per outgoing edge. Routers cut records into batches per output channel
//! and queue them in the [`StageCx`]; the runtime (riffle-actors) takes the queued batches and
//! sends them as credits allow.
//!
//! # Failures and retries
//! Every call into user code is made under `catch_unwind`, so a panic becomes a [`StageError`]
//! naming the operator. The output of one unit of work — an input batch, or one `produce` call
//! of a source — is *staged*: routers and sinks hold it until the head [`Stage::commit`]s it
//! when the unit succeeded, or [`Stage::rollback`]s it when the unit failed. A failed batch can
//! therefore be retried on a fresh chain without duplicating any output, and a source can seek
//! back to where the failed `produce` started.

/// The hooks a stage in front of `self.next` passes on unchanged: commits, rollbacks,
/// completions, flushes, reroutes and batch limits.
macro_rules! pass_through_hooks {
    () => {
        fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
            self.next.commit(cx)
        }
        fn rollback(&mut self) {
            self.next.rollback();
        }
        fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError> {
            self.next.checkpoint_complete(checkpoint)
        }
        fn flush(&mut self, cx: &mut StageCx) {
            self.next.flush(cx);
        }
        fn reroute(&mut self, moves: &[(usize, RouteLayout)]) {
            self.next.reroute(moves);
        }
        fn batch_limits(&mut self, limits: &[usize]) {
            self.next.batch_limits(limits);
        }
    };
}

mod heads;
mod keyed;
mod router;
mod stages;

pub use heads::{
    BatchFailure, ChainHead, DeadRecord, ErasedInput, ErasedSource, InputStage, Produced,
    SourceDriver,
};
pub use keyed::KeyedStage;
pub(crate) use keyed::{AggregateStage, RunningAggregate};
pub use router::{Route, Router, Tee};
pub use stages::{OperatorStage, SinkStage};

use crate::error::{FailureCause, StageError};
use crate::event::ChannelEvent;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use crate::event::Payload;

/// Where one router of a chain writes (see [`Stage::reroute`]): its first output channel,
/// how many channels it has, and the key ring of a keyed edge.
#[derive(Clone, Debug)]
pub struct RouteLayout {
    /// The router's first channel in its subtask's output channel list.
    pub base: usize,
    /// How many channels (the receiving operator's parallelism; 1 for a forward edge).
    pub channels: usize,
    /// The key ring of a keyed edge.
    pub partitioner: Option<crate::partition::Routing>,
}

/// A fault to inject into the next record a chain handles (chaos testing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// The operator panics.
    Panic,
    /// The operator returns an error.
    Error,
}

/// The message of an injected panic or error.
pub const INJECTED_FAULT: &str = "chaos: injected fault";

/// Per-subtask context the stages write into: the output queues and counters. The runtime
/// reads the queues out and arms chaos faults through its methods.
#[derive(Debug)]
pub struct StageCx {
    /// One queue per output channel, in the order of the task's channel list.
    pub(crate) queues: Vec<VecDeque<ChannelEvent>>,
    /// Records handed to routers or sinks (committed or not).
    pub(crate) records_out: u64,
    /// How full a batch gets (and what a source is asked for per call).
    pub(crate) batching: crate::config::Batching,
    /// A fault to inject into the next unit of work (taken by the chain's head).
    inject: Option<Fault>,
    /// Set when an injected fault fired, so the runtime can tell it from a real failure.
    injected_fired: bool,
    /// Checkpointing is on: sinks stage their output at barriers (`pre_commit`) instead of
    /// flushing it after every unit of work.
    pub(crate) checkpointing: bool,
    /// Processing-time timers fired so far.
    pub(crate) processing_fired: u64,
}

impl StageCx {
    /// A context with `channels` empty output queues and batches of `batch_size` records.
    pub fn new(channels: usize, batch_size: usize) -> Self {
        Self::with_batching(channels, crate::config::Batching::records(batch_size))
    }

    /// A context with `channels` empty output queues and the job's `batching`.
    pub fn with_batching(channels: usize, batching: crate::config::Batching) -> Self {
        StageCx {
            queues: (0..channels).map(|_| VecDeque::new()).collect(),
            records_out: 0,
            batching,
            inject: None,
            injected_fired: false,
            checkpointing: false,
            processing_fired: 0,
        }
    }

    /// How many processing-time timers fired in this subtask so far.
    pub fn processing_fired(&self) -> u64 {
        self.processing_fired
    }

    /// Queues end-of-input on every output channel.
    pub fn end_all(&mut self) {
        for q in &mut self.queues {
            q.push_back(ChannelEvent::EndOfInput);
        }
    }

    /// Queues watermark `t` on output channels `channels` (a router's range); a watermark
    /// last in a queue, not sent yet, is replaced rather than followed (it says less).
    pub fn watermark(&mut self, channels: std::ops::Range<usize>, t: i64) {
        for q in &mut self.queues[channels] {
            match q.back_mut() {
                Some(ChannelEvent::Watermark(w)) => *w = (*w).max(t),
                _ => q.push_back(ChannelEvent::Watermark(t)),
            }
        }
    }

    /// Queues the idle mark on output channels `channels` (once: a mark last in a queue is
    /// not repeated).
    pub fn idle(&mut self, channels: std::ops::Range<usize>) {
        for q in &mut self.queues[channels] {
            if !matches!(q.back(), Some(ChannelEvent::Idle)) {
                q.push_back(ChannelEvent::Idle);
            }
        }
    }

    /// Queues checkpoint barrier `n` on every output channel.
    pub fn barrier_all(&mut self, n: u64) {
        for q in &mut self.queues {
            q.push_back(ChannelEvent::Barrier(n));
        }
    }

    /// The output queue of channel `i`.
    ///
    /// # Panics
    /// If the subtask has no channel `i`.
    pub fn queue_mut(&mut self, i: usize) -> &mut VecDeque<ChannelEvent> {
        &mut self.queues[i]
    }

    /// Whether every output queue is empty.
    pub fn queues_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Takes every output queue out (the subtask's channels are being rebuilt); add them back
    /// with [`StageCx::add_queue`].
    pub fn take_queues(&mut self) -> Vec<VecDeque<ChannelEvent>> {
        std::mem::take(&mut self.queues)
    }

    /// Adds an output channel's queue after the others.
    pub fn add_queue(&mut self, queue: VecDeque<ChannelEvent>) {
        self.queues.push(queue);
    }

    /// Records handed to routers or sinks so far.
    pub fn records_out(&self) -> u64 {
        self.records_out
    }

    /// Tells the sinks whether checkpointing is on.
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Arms `fault` for the next unit of work (chaos testing).
    pub fn arm(&mut self, fault: Fault) {
        self.inject = Some(fault);
    }

    /// Whether a fault is armed.
    pub fn armed(&self) -> bool {
        self.inject.is_some()
    }

    /// Forgets an armed fault and whether one fired.
    pub fn disarm(&mut self) {
        self.inject = None;
        self.injected_fired = false;
    }

    /// Whether an injected fault fired since the last call (and forgets it).
    pub fn take_fired(&mut self) -> bool {
        std::mem::take(&mut self.injected_fired)
    }

    /// Drops everything queued and the count of records out (a recovery restarts from a
    /// checkpoint).
    pub fn clear(&mut self) {
        self.queues.iter_mut().for_each(VecDeque::clear);
        self.records_out = 0;
        self.inject = None;
        self.injected_fired = false;
    }

    /// The chaos hook of a chain's head, once per unit of work: with no fault armed it is one
    /// load and one branch that predicts not-taken; an armed fault fires out of line (see
    /// [`fire`]), as a failure of the chain's first operator `operator`.
    #[inline(always)]
    fn chaos_hook(&mut self, operator: &str) -> Result<(), StageError> {
        if self.inject.is_none() {
            return Ok(());
        }
        Err(self.fire(operator))
    }

    /// Fires the armed fault (inside `catch_unwind`), marking that it fired.
    #[cold]
    #[inline(never)]
    fn fire(&mut self, operator: &str) -> StageError {
        self.injected_fired = true;
        let fault = self.inject.take();
        guarded(operator, || raise(fault))
            .err()
            .unwrap_or_else(|| internal(operator, "injected fault did not fire"))
    }
}

/// One step of an operator chain, accepting records of type `T`.
pub trait Stage<T>: Send {
    /// Handles one record.
    ///
    /// # Errors
    /// The failure of this or a later stage of the chain.
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError>;

    /// Handles a batch of records in order (a copy of each); stages override it to save a call
    /// per record.
    ///
    /// # Errors
    /// The index of the record that failed, with the failure.
    fn push_all(&mut self, records: &[T], cx: &mut StageCx) -> Result<(), (usize, StageError)>
    where
        T: Clone,
    {
        for (i, r) in records.iter().enumerate() {
            self.push(r.clone(), cx).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Handles the records of `records` in order, taking them (the vector is left empty,
    /// its allocation kept for the caller). Sources hand their records on this way, a chunk
    /// at a time; routers override it with one loop per chunk.
    ///
    /// # Errors
    /// The index in `records` of the record that failed, with the failure (the records
    /// after it are dropped: the unit of work fails and is rolled back).
    fn push_many(
        &mut self,
        records: &mut Vec<T>,
        cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        for (i, r) in records.drain(..).enumerate() {
            self.push(r, cx).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Runs `on_start` hooks, front to back.
    ///
    /// # Errors
    /// The first hook that failed.
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError>;

    /// Makes everything pushed since the last commit final: routers queue their full batches,
    /// sinks write.
    ///
    /// # Errors
    /// A sink that failed while writing (what it wrote before failing stays written).
    fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError>;

    /// Forgets everything pushed since the last commit.
    fn rollback(&mut self);

    /// How many distinct keys the keyed operators of this stage and the rest of the chain hold
    /// (for load reports; 0 without keyed state).
    fn distinct_keys(&self) -> u64 {
        0
    }

    /// Queues partly filled (committed) batches.
    fn flush(&mut self, cx: &mut StageCx);

    /// The subtask's event-time clock advanced to `watermark`: operators run their
    /// `on_watermark` hooks front to back (what they emit is final), and routers queue
    /// everything they hold and then the watermark on their channels, so that no record
    /// follows a watermark it was sent before. Called between batches, never inside one.
    ///
    /// # Errors
    /// The first hook that failed.
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError>;

    /// The wall clock reads `now` (milliseconds since the Unix epoch): keyed operators fire
    /// their processing-time timers due by then, front to back; what they emit is committed
    /// by the chain's head like a unit of work.
    ///
    /// # Errors
    /// The first timer that failed.
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError>;

    /// A restored chain's event-time clock resumes at `watermark` (its checkpoint's): keyed
    /// operators take it as their current watermark; nothing fires and nothing is sent.
    fn resume_clock(&mut self, watermark: i64);

    /// The subtask's inputs (or its source) went idle: routers queue everything they hold
    /// and then the idle mark on their channels; other stages pass it on.
    fn on_idle(&mut self, cx: &mut StageCx);

    /// Rescale in place: the router whose first output channel is `old` in one of `moves`
    /// `(old, layout)` takes the new layout (its first channel, channel count and key ring);
    /// other stages pass the call on. Records still buffered are routed again.
    fn reroute(&mut self, _moves: &[(usize, RouteLayout)]) {}

    /// Routers take, per output queue, the records at which a batch is full (`limits[q]` for
    /// queue `q`; a queue without an entry keeps the job's batch size): the runtime makes
    /// batches to other nodes larger, since each one costs a frame, a write and wake-ups on
    /// both sides. Other stages pass the call on.
    fn batch_limits(&mut self, _limits: &[usize]) {}

    /// Rescale in place: keyed operators keep only the keys whose hash `keep` accepts and take
    /// in the entries of `gained` (one entry per state entry, in chain order, encoded as
    /// [`Stage::snapshot`] writes them; an empty entry adds nothing). Stages that hold a state
    /// entry take one.
    ///
    /// # Errors
    /// A gained entry that does not decode, or `gained` does not match the chain.
    fn rekey(
        &mut self,
        _keep: &dyn Fn(u64) -> bool,
        _gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        Ok(())
    }

    /// Appends the state of this stage and of the rest of the chain at `checkpoint`: one entry
    /// per operator or sink, in chain order (empty when it has none). Sinks pre-commit.
    ///
    /// # Errors
    /// A hook that failed.
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError>;

    /// Restores the entries written by [`Stage::snapshot`] (taken in the same order) into a
    /// freshly opened chain; sinks recover their transactions up to `last_completed`.
    ///
    /// # Errors
    /// State that does not decode, or a hook that failed.
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError>;

    /// `checkpoint` completed: sinks commit what they staged under it.
    ///
    /// # Errors
    /// A sink that failed to commit.
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError>;

    /// End of input: runs `on_close` hooks front to back (they may still emit), then commits
    /// and flushes everything, so that only end-of-input is left to send.
    ///
    /// # Errors
    /// The first hook that failed.
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
}

/// A boxed stage.
pub type BoxStage<T> = Box<dyn Stage<T>>;

/// The next state entry of a chain being restored.
pub(crate) fn next_state<'a>(
    states: &mut std::slice::Iter<'a, Vec<u8>>,
    operator: &str,
) -> Result<&'a Vec<u8>, StageError> {
    states.next().ok_or_else(|| StageError {
        operator: operator.to_string(),
        cause: crate::error::FailureCause::Internal("the checkpoint does not match the chain"),
    })
}

/// A failure of Riffle's own (an invariant broke) in `operator`.
pub(crate) fn internal(operator: &str, what: &'static str) -> StageError {
    StageError {
        operator: operator.to_string(),
        cause: FailureCause::Internal(what),
    }
}

/// Raises an injected fault (call it under `catch_unwind`).
fn raise(fault: Option<Fault>) -> Result<(), crate::UserError> {
    match fault {
        None => Ok(()),
        Some(Fault::Panic) => panic!("{INJECTED_FAULT} (panic)"),
        Some(Fault::Error) => Err(format!("{INJECTED_FAULT} (error)").into()),
    }
}

/// Runs a user call under `catch_unwind` and turns its outcome into a `StageError`.
#[inline]
pub(crate) fn guarded<R>(
    operator: &str,
    f: impl FnOnce() -> Result<R, crate::UserError>,
) -> Result<R, StageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(StageError::from_error(operator, e)),
        Err(p) => Err(StageError::from_panic(operator, p)),
    }
}
