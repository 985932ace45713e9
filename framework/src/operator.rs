//! The operator traits users implement: [`Source`], [`Operator`], [`KeyedOperator`], [`Sink`].
//!
//! Operators are actor types: a user struct holds the operator's state and implements one of
//! these traits, and each parallel subtask of the operator runs one instance, built by a
//! factory (`Fn(&SubtaskInfo) -> O`), inside the actor of its chain's subtask (operators
//! joined by forward edges share one actor). Only the processing method is required; every
//! hook has a default that does the right thing when it is not needed.
//!
//! User code may fail by returning an error or by panicking. Either way the runtime catches it
//! where it calls the method, turns it into a typed failure naming the operator and subtask, and
//! the job reports it (no panic reaches the caller of `wait()`).

use crate::data::{Data, Key};
use crate::error::{StageError, UserError};
use crate::exec::{Stage, StageCx};
use crate::timers::{Timer, Timers};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// Which parallel instance of which operator a piece of user code runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// The operator's name.
    pub operator: Arc<str>,
    /// This subtask's index, `0..parallelism`.
    pub index: usize,
    /// How many subtasks the operator has.
    pub parallelism: usize,
    /// How many times this subtask has been (re)started before, 0 on the first run.
    pub attempt: u32,
}

/// Where an operator emits its records: the next operator of its chain, or the channels to
/// the downstream subtasks.
pub struct Output<'a, T> {
    next: &'a mut dyn Stage<T>,
    cx: &'a mut StageCx,
    failed: Option<StageError>,
    emitted: u64,
    failed_at: Option<u64>,
    skip: Option<u64>,
    skipped: Option<T>,
    timers: Option<&'a mut Timers>,
    /// In a source: `Some`, holding the largest watermark it emitted in this call, if any.
    watermark: Option<Option<i64>>,
    /// In a source: records emitted but not yet handed on (they go to the next stage a chunk
    /// at a time, one call per chunk instead of one per record), and the index of the first.
    chunk: Option<(&'a mut Vec<T>, u64)>,
}

/// How many records a source's output gathers before handing them on.
const SOURCE_CHUNK: usize = 256;

impl<'a, T> Output<'a, T> {
    /// An output that feeds `next`.
    pub(crate) fn new(next: &'a mut dyn Stage<T>, cx: &'a mut StageCx) -> Self {
        Output {
            next,
            cx,
            failed: None,
            emitted: 0,
            failed_at: None,
            skip: None,
            skipped: None,
            timers: None,
            watermark: None,
            chunk: None,
        }
    }

    /// An output of a source, which may emit watermarks and gathers its records in `chunk`
    /// (empty, kept by the caller between calls) before handing them on; the caller ends the
    /// call with [`Output::finish`].
    pub(crate) fn for_source(mut self, chunk: &'a mut Vec<T>) -> Self {
        self.watermark = Some(None);
        chunk.clear();
        self.chunk = Some((chunk, 0));
        self
    }

    /// Hands on the records a source's output still holds (see [`Output::for_source`]).
    pub(crate) fn finish(&mut self) {
        let Some((chunk, first)) = &mut self.chunk else {
            return;
        };
        if chunk.is_empty() {
            return;
        }
        if self.failed.is_some() {
            chunk.clear();
            return;
        }
        if let Err((i, e)) = self.next.push_many(chunk, self.cx) {
            chunk.clear();
            self.failed = Some(e);
            self.failed_at = Some(*first + i as u64);
        }
    }

    /// In a [`Source`]'s `produce`: says that no record with a timestamp at or below `t`
    /// will follow from this subtask (a source that knows its time emits its own watermarks,
    /// instead of an assigner downstream). It goes out after this call's records; a
    /// watermark not above the last one sent changes nothing. A source that seeks after a
    /// recovery emits its watermark again.
    ///
    /// # Errors
    /// Called outside a source (operators' time comes from their inputs' watermarks).
    pub fn emit_watermark(&mut self, t: i64) -> Result<(), UserError> {
        match &mut self.watermark {
            Some(w) => {
                *w = Some(w.map_or(t, |w| w.max(t)));
                Ok(())
            }
            None => Err(UserError::from(
                "only a source emits watermarks (an operator's time comes from its inputs)",
            )),
        }
    }

    /// The largest watermark a source emitted in this call.
    pub(crate) fn take_watermark(&mut self) -> Option<i64> {
        self.watermark.as_mut().and_then(Option::take)
    }

    /// An output of a keyed operator, whose calls may use `timers`.
    pub(crate) fn with_timers(mut self, timers: &'a mut Timers) -> Self {
        self.timers = Some(timers);
        self
    }

    /// The timers and clocks of the key at hand, in a [`KeyedOperator`]'s `process` and
    /// `on_timer` (see the crate's `timers` module docs).
    ///
    /// # Errors
    /// Called outside a keyed operator, where no key is at hand.
    pub fn timers(&mut self) -> Result<&mut Timers, UserError> {
        self.timers.as_deref_mut().ok_or_else(|| {
            UserError::from("timers exist only in keyed operators (key_by(..).process)")
        })
    }

    /// The keyed operator's timers (the runtime's side of [`Output::timers`]).
    pub(crate) fn timer_buf(&mut self) -> Option<&mut Timers> {
        self.timers.as_deref_mut()
    }

    /// Holds back the record emitted at index `skip` of this output (a poison record being
    /// set aside on replay); see [`Output::take_skipped`].
    pub(crate) fn skipping(mut self, skip: Option<u64>) -> Self {
        self.skip = skip;
        self
    }

    /// Emits every record of `records`, in order: the same as [`Output::emit`] for each, but
    /// in a source the records are gathered a chunk at a time without per-record bookkeeping
    /// (a generator's loop becomes a plain copy into the chunk).
    #[inline]
    pub fn emit_all(&mut self, records: impl IntoIterator<Item = T>) {
        let mut records = records.into_iter();
        while self.skip.is_none() && self.failed.is_none() {
            let emitted = self.emitted;
            let Some((chunk, first)) = &mut self.chunk else {
                break;
            };
            if chunk.is_empty() {
                *first = emitted;
            }
            let before = chunk.len();
            let room = SOURCE_CHUNK.saturating_sub(before);
            if records.size_hint().1.is_some_and(|n| n <= room) {
                // All of them fit: extending by the iterator itself keeps its exact length
                // (a counted loop for ranges and maps of them).
                chunk.extend(records);
                self.emitted += (chunk.len() - before) as u64;
                if chunk.len() >= SOURCE_CHUNK {
                    self.finish();
                }
                return;
            }
            chunk.extend(records.by_ref().take(room));
            let (len, added) = (chunk.len(), chunk.len() - before);
            self.emitted += added as u64;
            if len < SOURCE_CHUNK {
                return; // `records` has run out
            }
            self.finish();
        }
        for record in records {
            self.emit(record);
        }
    }

    /// Emits one record downstream.
    ///
    /// If an operator chained after this one fails on the record, the failure is kept and
    /// reported when the current call returns; later emits of the same call are dropped,
    /// because the whole subtask fails.
    #[inline]
    pub fn emit(&mut self, record: T) {
        let index = self.emitted;
        self.emitted += 1;
        if self.failed.is_some() {
            return;
        }
        if self.skip == Some(index) {
            // Records before it go on first, so that the chunk's indexes stay contiguous.
            self.finish();
            self.skipped = Some(record);
            return;
        }
        if let Some((chunk, first)) = &mut self.chunk {
            if chunk.is_empty() {
                *first = index;
            }
            chunk.push(record);
            let full = chunk.len() >= SOURCE_CHUNK;
            if full {
                self.finish();
            }
            return;
        }
        if let Err(e) = self.next.push(record, self.cx) {
            self.failed = Some(e);
            self.failed_at = Some(index);
        }
    }

    /// How many records fit in a source's chunk before it is handed on (see
    /// [`Output::emit_all`]); 0 outside a source.
    pub(crate) fn room(&self) -> usize {
        self.chunk
            .as_ref()
            .map_or(0, |(chunk, _)| SOURCE_CHUNK.saturating_sub(chunk.len()))
    }

    /// How many records a source should emit per call to [`Source::produce`]: a batch of its
    /// record type (see [`crate::JobConfig::batch_bytes`]).
    pub fn budget(&self) -> usize {
        self.cx.batching.records_of::<T>()
    }

    /// How many records were emitted through this output.
    pub(crate) fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The index of the emitted record whose processing downstream failed.
    pub(crate) fn failed_at(&self) -> Option<u64> {
        self.failed_at
    }

    /// The record held back by [`Output::skipping`], if it was emitted.
    pub(crate) fn take_skipped(&mut self) -> Option<T> {
        self.skipped.take()
    }

    /// Whether a downstream chained operator failed during this call.
    pub(crate) fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The failure of a downstream chained operator, if one happened during this call.
    pub(crate) fn take_failure(&mut self) -> Option<StageError> {
        self.failed.take()
    }
}

/// The state of every key a keyed subtask holds, as [`KeyedOperator::on_close`] sees it.
pub struct KeyedStates<'a, K, S> {
    states: &'a mut FxHashMap<K, S>,
}

impl<'a, K: Key, S> KeyedStates<'a, K, S> {
    pub(crate) fn new(states: &'a mut FxHashMap<K, S>) -> Self {
        KeyedStates { states }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no key was seen.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state of `key`.
    pub fn get(&self, key: &K) -> Option<&S> {
        self.states.get(key)
    }

    /// Every key with its state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.states.iter()
    }

    /// Every key with its state, to change, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut S)> {
        self.states.iter_mut()
    }
}

/// What a source says after [`Source::produce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records are ready; call again soon.
    More,
    /// Nothing is ready now (e.g. a socket has no data); call again after a short pause.
    Idle,
    /// The source is exhausted; end-of-input follows downstream.
    Finished,
}

/// Bytes encoded with rmp-serde: a source's [`Position`] or an operator's [`Snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Encoded(pub Vec<u8>);

impl Encoded {
    /// Encodes `value`.
    ///
    /// # Errors
    /// The value cannot be serialized.
    pub fn encode<T: Serialize>(value: &T) -> Result<Self, UserError> {
        Ok(Encoded(rmp_serde::to_vec(value)?))
    }

    /// Decodes bytes written by [`Encoded::encode`].
    ///
    /// # Errors
    /// The bytes do not decode as a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, UserError> {
        Ok(rmp_serde::from_slice(&self.0)?)
    }
}

/// Where a replayable source is in its input.
///
/// The runtime keeps a source subtask's position outside the source (and in every checkpoint),
/// so a restarted source — a fresh instance from the factory — resumes where the failed one was.
pub type Position = Encoded;

/// An operator's own state, written at a checkpoint by `snapshot` and handed back to a fresh
/// instance by `restore`.
pub type Snapshot = Encoded;

/// A source of records. Each subtask is one instance, which splits the work by its
/// [`SubtaskInfo`] (index and parallelism).
///
/// A *replayable* source also implements [`Source::position`] and [`Source::seek`]: after a
/// failure the runtime builds a fresh instance, starts it and seeks it to the position from
/// before the failed `produce` call, so no record is lost or repeated.
pub trait Source: Send + 'static {
    /// The records it produces.
    type Out: Data;

    /// Emits up to `out.budget()` records and says whether more will come.
    ///
    /// # Errors
    /// An error fails the subtask (and, until restarts exist, the job).
    fn produce(&mut self, out: &mut Output<'_, Self::Out>) -> Result<SourceStatus, UserError>;

    /// Called once before the first `produce`, e.g. to open a file or a socket.
    ///
    /// # Errors
    /// An error fails the subtask before it emits anything.
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once after the source finished.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_close(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    /// The position of the next record this instance would emit; `None` (the default) means
    /// the source cannot replay, and a restarted instance starts over from `on_start`.
    ///
    /// # Errors
    /// The position cannot be encoded.
    fn position(&self) -> Result<Option<Position>, UserError> {
        Ok(None)
    }

    /// Moves a started instance to `position` (one returned by [`Source::position`]).
    ///
    /// # Errors
    /// The position is invalid or the input cannot be reached.
    fn seek(&mut self, _position: &Position) -> Result<(), UserError> {
        Err("this source cannot seek".into())
    }
}

/// A one-input operator. Only [`Operator::process`] is required.
///
/// ```
/// use riffle_framework::{Operator, Output, UserError};
///
/// /// Emits each line's length, and the total when the input ends.
/// #[derive(Default)]
/// struct Lengths { total: usize }
///
/// impl Operator for Lengths {
///     type In = String;
///     type Out = usize;
///     fn process(&mut self, line: String, out: &mut Output<'_, usize>) -> Result<(), UserError> {
///         self.total += line.len();
///         out.emit(line.len());
///         Ok(())
///     }
///     fn on_close(&mut self, out: &mut Output<'_, usize>) -> Result<(), UserError> {
///         out.emit(self.total);
///         Ok(())
///     }
/// }
/// ```
pub trait Operator: Send + 'static {
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;

    /// Handles one record, emitting any number of outputs.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn process(
        &mut self,
        record: Self::In,
        out: &mut Output<'_, Self::Out>,
    ) -> Result<(), UserError>;

    /// Called once before the first record.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        Ok(())
    }

    /// Called when the subtask's event-time clock advances to `watermark` (milliseconds):
    /// no record with a timestamp at or below it will arrive any more. May emit; the
    /// watermark is forwarded after it returns. Default: nothing.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_watermark(
        &mut self,
        _watermark: i64,
        _out: &mut Output<'_, Self::Out>,
    ) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once when every input has ended; may emit final records.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_close(&mut self, _out: &mut Output<'_, Self::Out>) -> Result<(), UserError> {
        Ok(())
    }

    /// The operator's own state at a checkpoint (default: none). Keyed state held by the
    /// runtime is saved without this hook.
    ///
    /// # Errors
    /// The state cannot be encoded; the checkpoint fails (the job goes on).
    fn snapshot(&self) -> Result<Option<Snapshot>, UserError> {
        Ok(None)
    }

    /// Restores what [`Self::snapshot`] wrote into a fresh instance, after `on_start`.
    ///
    /// # Errors
    /// The state cannot be decoded; the subtask fails.
    fn restore(&mut self, _snapshot: &Snapshot) -> Result<(), UserError> {
        Ok(())
    }
}

/// An operator on a keyed stream. The runtime owns one `State` per key and hands the record's
/// state to [`KeyedOperator::process`]; that is what lets state move by key when the operator
/// is rescaled.
pub trait KeyedOperator: Send + 'static {
    /// The key type (matches the stream's `key_by`).
    type Key: Key;
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;
    /// Per-key state, created with `Default` the first time a key is seen.
    type State: Default + Serialize + DeserializeOwned + Send + 'static;

    /// Handles one record of `key`, with that key's state.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn process(
        &mut self,
        key: &Self::Key,
        state: &mut Self::State,
        record: Self::In,
        out: &mut Output<'_, Self::Out>,
    ) -> Result<(), UserError>;

    /// Called once before the first record.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        Ok(())
    }

    /// A timer this operator registered for `key` (through [`Output::timers`]) is due, with
    /// the key's state. Event-time timers fire when the watermark reaches their time, before
    /// the watermark goes on downstream; processing-time timers when the wall clock does;
    /// every pending timer fires at the end of the input. May emit and register timers.
    /// A key without state (never written, or cleared with [`Timers::clear_state`]) is handed
    /// `State::default()` and still holds no state afterwards unless the call changed it.
    /// Default: nothing.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_timer(
        &mut self,
        _key: &Self::Key,
        _state: &mut Self::State,
        _timer: Timer,
        _out: &mut Output<'_, Self::Out>,
    ) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once when every input has ended, with the state of every key this subtask
    /// holds; may emit final records (e.g. one total per key).
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_close(
        &mut self,
        _states: KeyedStates<'_, Self::Key, Self::State>,
        _out: &mut Output<'_, Self::Out>,
    ) -> Result<(), UserError> {
        Ok(())
    }

    /// The operator's own state at a checkpoint (default: none). Keyed state held by the
    /// runtime is saved without this hook.
    ///
    /// # Errors
    /// The state cannot be encoded; the checkpoint fails (the job goes on).
    fn snapshot(&self) -> Result<Option<Snapshot>, UserError> {
        Ok(None)
    }

    /// Restores what [`Self::snapshot`] wrote into a fresh instance, after `on_start`.
    ///
    /// # Errors
    /// The state cannot be decoded; the subtask fails.
    fn restore(&mut self, _snapshot: &Snapshot) -> Result<(), UserError> {
        Ok(())
    }
}

/// The end of a stream. Only [`Sink::write`] is required.
pub trait Sink: Send + 'static {
    /// Records it accepts.
    type In: Data;

    /// Writes one record.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn write(&mut self, record: Self::In) -> Result<(), UserError>;

    /// Called once before the first record (open files, connections).
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        Ok(())
    }

    /// Called after the records of each completed unit of work (an input batch) were
    /// written: make them durable or visible. A restarted subtask gets a fresh instance, so
    /// what a sink only buffers is lost unless flushed here.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn flush(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    /// Called once when every input has ended (after a last `flush` or `pre_commit`).
    ///
    /// # Errors
    /// An error fails the subtask.
    fn on_close(&mut self) -> Result<(), UserError> {
        Ok(())
    }

    /// Two-phase commit, phase one (only with checkpointing on, instead of `flush`): stage
    /// everything written since the last `pre_commit` under `checkpoint`, durably, without
    /// making it visible. Default: `flush` (visible at once: at-least-once).
    ///
    /// # Errors
    /// An error fails the subtask (and so the checkpoint).
    fn pre_commit(&mut self, _checkpoint: u64) -> Result<(), UserError> {
        self.flush()
    }

    /// Two-phase commit, phase two: `checkpoint` completed; make everything staged under it
    /// and earlier visible. Must be idempotent.
    ///
    /// # Errors
    /// An error fails the subtask; the commit is retried by `recover`.
    fn commit(&mut self, _checkpoint: u64) -> Result<(), UserError> {
        Ok(())
    }

    /// Called after `on_start` when the subtask starts from a checkpoint, or from nothing:
    /// commit what was staged under `last_completed` and earlier (idempotently) and drop what
    /// was staged under later checkpoints.
    ///
    /// # Errors
    /// An error fails the subtask.
    fn recover(&mut self, _last_completed: Option<u64>) -> Result<(), UserError> {
        Ok(())
    }
}
