//! The execution side of an operator chain, independent of any actor library.
//!
//! A subtask runs one *chain*: operators joined by forward edges of equal parallelism. The
//! chain is a stack of [`Stage`]s, each pushing records into the next; its head is a source
//! driver or an input stage that unpacks batches, its tail a sink or a [`Router`] per outgoing
//! edge. Routers cut records into batches per output channel and queue them in the
//! [`StageCx`]; the runtime (riffle-actors) takes the queued batches and sends them as credits
//! allow. Every call into user code is made under `catch_unwind`, so a panic becomes a
//! [`StageError`] naming the operator.

use crate::data::Data;
use crate::error::{FailureCause, StageError};
use crate::operator::{KeyedOperator, Operator, Output, Sink, Source, SourceStatus, SubtaskInfo};
use crate::partition::Partitioner;
use rustc_hash::FxHashMap;
use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A batch of records of some type (`Vec<T>`), moved between subtasks without serialization.
pub type Payload = Box<dyn Any + Send>;

/// What a subtask queues for one of its output channels.
pub enum OutEvent {
    /// A batch of `len` records.
    Batch {
        /// The records (`Vec<T>`).
        payload: Payload,
        /// How many records.
        len: usize,
    },
    /// No more records will follow on this channel.
    EndOfInput,
}

impl std::fmt::Debug for OutEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutEvent::Batch { len, .. } => write!(f, "Batch({len})"),
            OutEvent::EndOfInput => write!(f, "EndOfInput"),
        }
    }
}

/// Per-subtask context the stages write into: the output queues and counters.
#[derive(Debug)]
pub struct StageCx {
    /// One queue per output channel, in the order of the task's channel list.
    pub queues: Vec<VecDeque<OutEvent>>,
    /// Records handed to routers or sinks.
    pub records_out: u64,
    /// Records per batch.
    pub batch_size: usize,
}

impl StageCx {
    /// A context with `channels` empty output queues.
    pub fn new(channels: usize, batch_size: usize) -> Self {
        StageCx {
            queues: (0..channels).map(|_| VecDeque::new()).collect(),
            records_out: 0,
            batch_size,
        }
    }

    /// Queues end-of-input on every output channel.
    pub fn end_all(&mut self) {
        for q in &mut self.queues {
            q.push_back(OutEvent::EndOfInput);
        }
    }
}

/// One step of an operator chain, accepting records of type `T`.
pub trait Stage<T>: Send {
    /// Handles one record.
    ///
    /// # Errors
    /// The failure of this or a later stage of the chain.
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError>;

    /// Runs `on_start` hooks, front to back.
    ///
    /// # Errors
    /// The first hook that failed.
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError>;

    /// Hands partly filled batches to the output queues.
    fn flush(&mut self, cx: &mut StageCx);

    /// End of input: runs `on_close` hooks front to back (they may still emit), then flushes.
    ///
    /// # Errors
    /// The first hook that failed.
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
}

/// A boxed stage.
pub type BoxStage<T> = Box<dyn Stage<T>>;

/// Runs a user call under `catch_unwind` and turns its outcome into a `StageError`.
#[inline]
fn guarded<R>(
    operator: &str,
    f: impl FnOnce() -> Result<R, crate::UserError>,
) -> Result<R, StageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(StageError::from_error(operator, e)),
        Err(p) => Err(StageError::from_panic(operator, p)),
    }
}

/// Runs a user call that emits into `next`, reporting a downstream failure first.
#[inline]
fn guarded_emit<T>(
    operator: &str,
    next: &mut dyn Stage<T>,
    cx: &mut StageCx,
    f: impl FnOnce(&mut Output<'_, T>) -> Result<(), crate::UserError>,
) -> Result<u64, StageError> {
    let mut out = Output::new(next, cx);
    let r = catch_unwind(AssertUnwindSafe(|| f(&mut out)));
    if let Some(e) = out.take_failure() {
        return Err(e);
    }
    match r {
        Ok(Ok(())) => Ok(out.emitted()),
        Ok(Err(e)) => Err(StageError::from_error(operator, e)),
        Err(p) => Err(StageError::from_panic(operator, p)),
    }
}

/// A stage running a user [`Operator`].
pub struct OperatorStage<O: Operator> {
    op: O,
    info: SubtaskInfo,
    next: BoxStage<O::Out>,
}

impl<O: Operator> OperatorStage<O> {
    /// Wraps `op`, feeding `next`.
    pub fn new(op: O, info: SubtaskInfo, next: BoxStage<O::Out>) -> Self {
        OperatorStage { op, info, next }
    }
}

impl<O: Operator> Stage<O::In> for OperatorStage<O> {
    #[inline]
    fn push(&mut self, record: O::In, cx: &mut StageCx) -> Result<(), StageError> {
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, |out| {
            op.process(record, out)
        })
        .map(drop)
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let (op, info) = (&mut self.op, &self.info);
        guarded(&info.operator, || op.on_start(info))?;
        self.next.open(cx)
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.next.flush(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, |out| {
            op.on_close(out)
        })?;
        self.next.close(cx)
    }
}

/// A key extractor shared by the subtasks of a keyed operator.
pub type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A stage running a user [`KeyedOperator`], holding one state per key.
pub struct KeyedStage<O: KeyedOperator> {
    op: O,
    key_fn: KeyFn<O::In, O::Key>,
    states: FxHashMap<O::Key, O::State>,
    info: SubtaskInfo,
    next: BoxStage<O::Out>,
}

impl<O: KeyedOperator> KeyedStage<O> {
    /// Wraps `op`, keyed by `key_fn`, feeding `next`.
    pub fn new(
        op: O,
        key_fn: KeyFn<O::In, O::Key>,
        info: SubtaskInfo,
        next: BoxStage<O::Out>,
    ) -> Self {
        KeyedStage {
            op,
            key_fn,
            states: FxHashMap::default(),
            info,
            next,
        }
    }
}

impl<O: KeyedOperator> Stage<O::In> for KeyedStage<O> {
    #[inline]
    fn push(&mut self, record: O::In, cx: &mut StageCx) -> Result<(), StageError> {
        let key = guarded(&self.info.operator, || Ok((self.key_fn)(&record)))?;
        let state = match self.states.get_mut(&key) {
            Some(s) => s,
            None => self.states.entry(key.clone()).or_default(),
        };
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, |out| {
            op.process(&key, state, record, out)
        })
        .map(drop)
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let (op, info) = (&mut self.op, &self.info);
        guarded(&info.operator, || op.on_start(info))?;
        self.next.open(cx)
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.next.flush(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, |out| {
            op.on_close(out)
        })?;
        self.next.close(cx)
    }
}

/// A stage writing into a user [`Sink`].
pub struct SinkStage<S: Sink> {
    sink: S,
    info: SubtaskInfo,
}

impl<S: Sink> SinkStage<S> {
    /// Wraps `sink`.
    pub fn new(sink: S, info: SubtaskInfo) -> Self {
        SinkStage { sink, info }
    }
}

impl<S: Sink> Stage<S::In> for SinkStage<S> {
    #[inline]
    fn push(&mut self, record: S::In, cx: &mut StageCx) -> Result<(), StageError> {
        cx.records_out += 1;
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.write(record))
    }
    fn open(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        let (sink, info) = (&mut self.sink, &self.info);
        guarded(&info.operator, || sink.on_start(info))
    }
    fn flush(&mut self, _cx: &mut StageCx) {}
    fn close(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.on_close())
    }
}

/// How a router picks the channel of a record.
pub enum Route<T> {
    /// Everything to the one channel (subtask i → subtask i).
    Forward,
    /// Round robin over the channels.
    Rebalance,
    /// A copy to every channel.
    Broadcast,
    /// By key hash through a partitioner.
    Key {
        /// Computes the record's key hash.
        hash: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
        /// Maps the hash to a channel.
        partitioner: Arc<dyn Partitioner>,
    },
}

/// The tail of a chain for one outgoing edge: cuts records into per-channel batches.
pub struct Router<T> {
    route: Route<T>,
    base: usize,
    buffers: Vec<Vec<T>>,
    next_rr: usize,
    batch_size: usize,
}

impl<T: Data> Router<T> {
    /// A router over output queues `base..base + channels`. Round robin starts at `start`.
    pub fn new(
        route: Route<T>,
        base: usize,
        channels: usize,
        batch_size: usize,
        start: usize,
    ) -> Self {
        let channels = channels.max(1);
        Router {
            route,
            base,
            buffers: (0..channels)
                .map(|_| Vec::with_capacity(batch_size))
                .collect(),
            next_rr: start % channels,
            batch_size,
        }
    }

    #[inline]
    fn buffer(&mut self, ch: usize, record: T, cx: &mut StageCx) {
        let buf = &mut self.buffers[ch];
        buf.push(record);
        if buf.len() >= self.batch_size {
            let full = std::mem::replace(buf, Vec::with_capacity(self.batch_size));
            let len = full.len();
            cx.queues[self.base + ch].push_back(OutEvent::Batch {
                payload: Box::new(full),
                len,
            });
        }
    }
}

impl<T: Data> Stage<T> for Router<T> {
    #[inline]
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError> {
        cx.records_out += 1;
        let n = self.buffers.len();
        match &self.route {
            Route::Forward => self.buffer(0, record, cx),
            Route::Rebalance => {
                let ch = self.next_rr;
                self.next_rr = if ch + 1 == n { 0 } else { ch + 1 };
                self.buffer(ch, record, cx);
            }
            Route::Broadcast => {
                for ch in 1..n {
                    self.buffer(ch, record.clone(), cx);
                }
                self.buffer(0, record, cx);
            }
            Route::Key { hash, partitioner } => {
                let ch = partitioner.route(hash(&record));
                self.buffer(ch.min(n - 1), record, cx);
            }
        }
        Ok(())
    }
    fn open(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn flush(&mut self, cx: &mut StageCx) {
        for (ch, buf) in self.buffers.iter_mut().enumerate() {
            if !buf.is_empty() {
                let full = std::mem::replace(buf, Vec::with_capacity(self.batch_size));
                let len = full.len();
                cx.queues[self.base + ch].push_back(OutEvent::Batch {
                    payload: Box::new(full),
                    len,
                });
            }
        }
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.flush(cx);
        Ok(())
    }
}

/// Feeds every record to several stages (a stream consumed by several operators).
pub struct Tee<T> {
    branches: Vec<BoxStage<T>>,
}

impl<T: Data> Tee<T> {
    /// A tee over `branches` (at least one).
    pub fn new(branches: Vec<BoxStage<T>>) -> Self {
        Tee { branches }
    }
}

impl<T: Data> Stage<T> for Tee<T> {
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError> {
        if let Some((last, rest)) = self.branches.split_last_mut() {
            for b in rest {
                b.push(record.clone(), cx)?;
            }
            last.push(record, cx)?;
        }
        Ok(())
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches.iter_mut().try_for_each(|b| b.open(cx))
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.branches.iter_mut().for_each(|b| b.flush(cx));
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches.iter_mut().try_for_each(|b| b.close(cx))
    }
}

/// The head of a chain that receives batches from upstream subtasks, type-erased so that the
/// runtime can hold any chain.
pub trait ErasedInput: Send {
    /// Pushes every record of `payload` (a `Vec<T>`) through the chain; returns the count.
    ///
    /// # Errors
    /// A failure of an operator in the chain, or an internal error if the payload is not of
    /// the chain's input type.
    fn push_batch(&mut self, payload: Payload, cx: &mut StageCx) -> Result<usize, StageError>;
    /// See [`Stage::open`].
    ///
    /// # Errors
    /// The first hook that failed.
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
    /// See [`Stage::flush`].
    fn flush(&mut self, cx: &mut StageCx);
    /// See [`Stage::close`].
    ///
    /// # Errors
    /// The first hook that failed.
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
}

/// [`ErasedInput`] for a chain whose first stage takes `T`.
pub struct InputStage<T> {
    next: BoxStage<T>,
    name: Arc<str>,
}

impl<T: Data> InputStage<T> {
    /// Unpacks batches of `T` into `next`.
    pub fn new(next: BoxStage<T>, name: Arc<str>) -> Self {
        InputStage { next, name }
    }
}

impl<T: Data> ErasedInput for InputStage<T> {
    fn push_batch(&mut self, payload: Payload, cx: &mut StageCx) -> Result<usize, StageError> {
        let batch = payload.downcast::<Vec<T>>().map_err(|_| StageError {
            operator: self.name.to_string(),
            cause: FailureCause::Internal("batch of the wrong record type"),
        })?;
        let len = batch.len();
        for record in *batch {
            self.next.push(record, cx)?;
        }
        Ok(len)
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.open(cx)
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.next.flush(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.close(cx)
    }
}

/// The head of a chain that starts with a source, type-erased.
pub trait ErasedSource: Send {
    /// Asks the source for up to one batch of records; returns its status and how many
    /// records it emitted.
    ///
    /// # Errors
    /// A failure of the source or of an operator chained after it.
    fn produce(&mut self, cx: &mut StageCx) -> Result<(SourceStatus, u64), StageError>;
    /// Runs `on_start` of the source and the chain.
    ///
    /// # Errors
    /// The first hook that failed.
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
    /// See [`Stage::flush`].
    fn flush(&mut self, cx: &mut StageCx);
    /// Runs `on_close` of the source and the chain.
    ///
    /// # Errors
    /// The first hook that failed.
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
}

/// [`ErasedSource`] for a user [`Source`].
pub struct SourceDriver<S: Source> {
    source: S,
    info: SubtaskInfo,
    next: BoxStage<S::Out>,
}

impl<S: Source> SourceDriver<S> {
    /// Drives `source` into `next`.
    pub fn new(source: S, info: SubtaskInfo, next: BoxStage<S::Out>) -> Self {
        SourceDriver { source, info, next }
    }
}

impl<S: Source> ErasedSource for SourceDriver<S> {
    fn produce(&mut self, cx: &mut StageCx) -> Result<(SourceStatus, u64), StageError> {
        let source = &mut self.source;
        let mut status = SourceStatus::More;
        let emitted = guarded_emit(&self.info.operator, &mut *self.next, cx, |out| {
            status = source.produce(out)?;
            Ok(())
        })?;
        Ok((status, emitted))
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let (source, info) = (&mut self.source, &self.info);
        guarded(&info.operator, || source.on_start(info))?;
        self.next.open(cx)
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.next.flush(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let source = &mut self.source;
        guarded(&self.info.operator, || source.on_close())?;
        self.next.close(cx)
    }
}
