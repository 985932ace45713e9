//! Stages that run user operators and sinks.

use super::{guarded, next_state, BoxStage, RouteLayout, Stage, StageCx};
use crate::data::Key;
use crate::error::StageError;
use crate::operator::{Encoded, Output};
use crate::operator::{KeyedOperator, KeyedStates, Operator, Sink, SubtaskInfo};
use crate::timers::{KeyTimers, TimeDomain, Timer, TimerStore, Timers};
use rustc_hash::FxHashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The hooks operator and keyed stages share: user `on_start` before the rest of the chain,
/// and pass-through for commits, rollbacks, completions and flushes.
macro_rules! chain_stage_hooks {
    () => {
        fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
            let (op, info) = (&mut self.op, &self.info);
            guarded(&info.operator, || op.on_start(info))?;
            self.next.open(cx)
        }
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

/// The outcome of a batch run under one `catch_unwind`: a downstream failure first, then this
/// operator's error or panic, each with the index of the record at hand.
fn batch_outcome<T>(
    operator: &str,
    out: &mut Output<'_, T>,
    r: std::thread::Result<Result<(), crate::UserError>>,
    at: usize,
) -> Result<(), (usize, StageError)> {
    if let Some(e) = out.take_failure() {
        return Err((at, e));
    }
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((at, StageError::from_error(operator, e))),
        Err(p) => Err((at, StageError::from_panic(operator, p))),
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
        guarded_emit(&self.info.operator, &mut *self.next, cx, None, |out| {
            op.process(record, out)
        })
        .map(drop)
    }
    fn push_all(&mut self, records: &[O::In], cx: &mut StageCx) -> Result<(), (usize, StageError)> {
        // One `catch_unwind` for the batch (later stages catch their own failures).
        let op = &mut self.op;
        let mut at = 0;
        let mut out = Output::new(&mut *self.next, cx);
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), crate::UserError> {
            for (i, record) in records.iter().enumerate() {
                at = i;
                op.process(record.clone(), &mut out)?;
                if out.failed() {
                    break;
                }
            }
            Ok(())
        }));
        batch_outcome(&self.info.operator, &mut out, r, at)
    }
    fn distinct_keys(&self) -> u64 {
        self.next.distinct_keys()
    }
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        let op = &self.op;
        let state = guarded(&self.info.operator, || op.snapshot())?;
        out.push(state.map(|s| s.0).unwrap_or_default());
        self.next.snapshot(checkpoint, out)
    }
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        let state = next_state(states, &self.info.operator)?;
        if !state.is_empty() {
            let op = &mut self.op;
            let snap = Encoded(state.clone());
            guarded(&self.info.operator, || op.restore(&snap))?;
        }
        self.next.restore(states, last_completed)
    }
    fn rekey(
        &mut self,
        keep: &dyn Fn(u64) -> bool,
        gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        // Operator state is not keyed: it stays (a rescale refuses chains that hold any).
        next_state(gained, &self.info.operator)?;
        self.next.rekey(keep, gained)
    }
    chain_stage_hooks!();
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, None, |out| {
            op.on_watermark(watermark, out)
        })?;
        self.next.on_watermark(watermark, cx)
    }
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.on_processing_time(now, cx)
    }
    fn resume_clock(&mut self, watermark: i64) {
        self.next.resume_clock(watermark);
    }
    fn on_idle(&mut self, cx: &mut StageCx) {
        self.next.on_idle(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let op = &mut self.op;
        guarded_emit(&self.info.operator, &mut *self.next, cx, None, |out| {
            op.on_close(out)
        })?;
        self.next.close(cx)
    }
}

/// A stage running a user [`KeyedOperator`], holding one state and the timers per key; `F`
/// is the key selector (shared by the operator's subtasks, called without indirection).
pub struct KeyedStage<O: KeyedOperator, F> {
    op: O,
    key_fn: Arc<F>,
    states: FxHashMap<O::Key, O::State>,
    timers: TimerStore<O::Key>,
    /// What the call at hand asked of its key's timers (applied when it returns).
    buf: Timers,
    info: SubtaskInfo,
    next: BoxStage<O::Out>,
}

/// One key's entry in a keyed operator's checkpoint state, as written: its routing hash
/// first (rescaling cuts the list by it), then key, state, and pending timers if any.
#[derive(serde::Serialize)]
struct EntryOut<'a, K, S> {
    hash: u64,
    key: &'a K,
    state: &'a S,
    #[serde(skip_serializing_if = "Option::is_none")]
    timers: Option<&'a KeyTimers>,
}

/// [`EntryOut`] as read back; entries written before timers existed have no timers.
#[derive(serde::Deserialize)]
struct EntryIn<K, S> {
    #[allow(dead_code)]
    hash: u64,
    key: K,
    state: S,
    #[serde(default)]
    timers: KeyTimers,
}

/// A keyed operator's decoded checkpoint entries.
type Entries<O> = Vec<EntryIn<<O as KeyedOperator>::Key, <O as KeyedOperator>::State>>;

impl<O, F> KeyedStage<O, F>
where
    O: KeyedOperator,
    F: Fn(&O::In) -> O::Key + Send + Sync + 'static,
{
    /// Wraps `op`, keyed by `key_fn`, feeding `next`.
    pub fn new(op: O, key_fn: Arc<F>, info: SubtaskInfo, next: BoxStage<O::Out>) -> Self {
        KeyedStage {
            op,
            key_fn,
            states: FxHashMap::default(),
            timers: TimerStore::default(),
            buf: Timers::new(),
            info,
            next,
        }
    }

    /// Applies what the last call asked of `key`'s timers and state.
    #[inline]
    fn after_call(&mut self, key: &O::Key) {
        if !self.buf.untouched() && self.timers.apply(key, &mut self.buf) {
            self.states.remove(key);
        }
    }

    /// Fires `timer` of `key`.
    fn fire(&mut self, key: O::Key, timer: Timer, cx: &mut StageCx) -> Result<(), StageError> {
        let state = self.states.entry(key.clone()).or_default();
        let op = &mut self.op;
        let r = guarded_emit(
            &self.info.operator,
            &mut *self.next,
            cx,
            Some(&mut self.buf),
            |out| op.on_timer(&key, state, timer, out),
        );
        self.after_call(&key);
        r.map(drop)
    }

    /// Fires every timer of `domain` due at `now`, in time order.
    fn fire_due(
        &mut self,
        domain: TimeDomain,
        now: i64,
        cx: &mut StageCx,
    ) -> Result<(), StageError> {
        while let Some((key, timer)) = self.timers.pop_due(domain, now) {
            if domain == TimeDomain::ProcessingTime {
                cx.processing_fired += 1;
            }
            self.fire(key, timer, cx)?;
        }
        Ok(())
    }

    fn decode_entries(&self, bytes: &[u8]) -> Result<Entries<O>, StageError> {
        guarded(&self.info.operator, || Ok(rmp_serde::from_slice(bytes)?))
    }

    fn add_entries(&mut self, entries: Entries<O>) {
        for e in entries {
            if !e.timers.is_empty() {
                self.timers.insert(e.key.clone(), e.timers);
            }
            self.states.insert(e.key, e.state);
        }
    }
}

impl<O, F> Stage<O::In> for KeyedStage<O, F>
where
    O: KeyedOperator,
    F: Fn(&O::In) -> O::Key + Send + Sync + 'static,
{
    #[inline]
    fn push(&mut self, record: O::In, cx: &mut StageCx) -> Result<(), StageError> {
        let key = guarded(&self.info.operator, || Ok((self.key_fn)(&record)))?;
        let state = match self.states.get_mut(&key) {
            Some(s) => s,
            None => self.states.entry(key.clone()).or_default(),
        };
        let op = &mut self.op;
        let r = guarded_emit(
            &self.info.operator,
            &mut *self.next,
            cx,
            Some(&mut self.buf),
            |out| op.process(&key, state, record, out),
        );
        self.after_call(&key);
        r.map(drop)
    }
    fn push_all(&mut self, records: &[O::In], cx: &mut StageCx) -> Result<(), (usize, StageError)> {
        // One `catch_unwind` for the batch: a panic here is this operator's (later stages
        // catch their own and report through the output).
        let (op, key_fn, states, timers) = (
            &mut self.op,
            &self.key_fn,
            &mut self.states,
            &mut self.timers,
        );
        let mut at = 0;
        let mut out = Output::new(&mut *self.next, cx).with_timers(&mut self.buf);
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), crate::UserError> {
            for (i, record) in records.iter().enumerate() {
                at = i;
                let key = key_fn(record);
                let state = match states.get_mut(&key) {
                    Some(s) => s,
                    None => states.entry(key.clone()).or_default(),
                };
                let r = op.process(&key, state, record.clone(), &mut out);
                if let Some(buf) = out.timer_buf().filter(|b| !b.untouched()) {
                    if timers.apply(&key, buf) {
                        states.remove(&key);
                    }
                }
                r?;
                if out.failed() {
                    break;
                }
            }
            Ok(())
        }));
        batch_outcome(&self.info.operator, &mut out, r, at)
    }
    fn distinct_keys(&self) -> u64 {
        self.states.len() as u64 + self.next.distinct_keys()
    }
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        // Sorted by key hash, so that a range of the ring can be cut out for rescaling. A key
        // with timers but no state is written with the default state.
        let empty = O::State::default();
        let timers = &self.timers;
        let mut entries: Vec<EntryOut<'_, O::Key, O::State>> = self
            .states
            .iter()
            .map(|(k, s)| EntryOut {
                hash: k.key_hash(),
                key: k,
                state: s,
                timers: timers.of(k),
            })
            .collect();
        entries.extend(
            timers
                .keys()
                .filter(|k| !self.states.contains_key(*k))
                .map(|k| EntryOut {
                    hash: k.key_hash(),
                    key: k,
                    state: &empty,
                    timers: timers.of(k),
                }),
        );
        entries.sort_unstable_by_key(|e| e.hash);
        let bytes = guarded(&self.info.operator, || Ok(rmp_serde::to_vec(&entries)?))?;
        out.push(bytes);
        self.next.snapshot(checkpoint, out)
    }
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        let state = next_state(states, &self.info.operator)?;
        if !state.is_empty() {
            let entries = self.decode_entries(state)?;
            self.states.clear();
            self.timers = TimerStore::default();
            self.add_entries(entries);
        }
        self.next.restore(states, last_completed)
    }
    fn rekey(
        &mut self,
        keep: &dyn Fn(u64) -> bool,
        gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        let state = next_state(gained, &self.info.operator)?;
        self.states.retain(|k, _| keep(k.key_hash()));
        self.timers.retain(|k| keep(k.key_hash()));
        if !state.is_empty() {
            let entries = self.decode_entries(state)?;
            self.add_entries(entries);
        }
        self.next.rekey(keep, gained)
    }
    chain_stage_hooks!();
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.buf.set_watermark(watermark);
        self.fire_due(TimeDomain::EventTime, watermark, cx)?;
        self.next.on_watermark(watermark, cx)
    }
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.fire_due(TimeDomain::ProcessingTime, now, cx)?;
        self.next.on_processing_time(now, cx)
    }
    fn resume_clock(&mut self, watermark: i64) {
        self.buf.set_watermark(watermark);
        self.next.resume_clock(watermark);
    }
    fn on_idle(&mut self, cx: &mut StageCx) {
        self.next.on_idle(cx);
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        // The end of the input: every pending timer fires, in time order.
        while let Some((key, timer)) = self.timers.pop_any() {
            self.fire(key, timer, cx)?;
        }
        let (op, states) = (&mut self.op, &mut self.states);
        guarded_emit(&self.info.operator, &mut *self.next, cx, None, |out| {
            op.on_close(KeyedStates::new(states), out)
        })?;
        self.next.close(cx)
    }
}

/// A stage writing into a user [`Sink`].
///
/// Records are written as they come; the end of each successful unit of work calls
/// [`Sink::flush`]. When a unit fails, the runtime replaces the whole chain (sink included)
/// with fresh instances before retrying, so whatever the failed instance buffered since its
/// last flush is dropped with it: a sink that only makes records visible in `flush` (collect,
/// count, text file) never shows a failed unit's records. A sink that has effects in `write`
/// (print, `sink_fn`) repeats the failed unit's effects on retry.
pub struct SinkStage<S: Sink> {
    sink: S,
    info: SubtaskInfo,
    /// Records written in the current unit of work.
    written: u64,
}

impl<S: Sink> SinkStage<S> {
    /// Wraps `sink`.
    pub fn new(sink: S, info: SubtaskInfo) -> Self {
        SinkStage {
            sink,
            info,
            written: 0,
        }
    }
}

impl<S: Sink> Stage<S::In> for SinkStage<S> {
    #[inline]
    fn push(&mut self, record: S::In, _cx: &mut StageCx) -> Result<(), StageError> {
        self.written += 1;
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.write(record))
    }
    fn open(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        let (sink, info) = (&mut self.sink, &self.info);
        guarded(&info.operator, || sink.on_start(info))
    }
    fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let written = std::mem::take(&mut self.written);
        if written == 0 {
            return Ok(());
        }
        cx.records_out += written;
        if cx.checkpointing {
            // Staged at the next barrier (`pre_commit`), visible when that checkpoint completes.
            return Ok(());
        }
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.flush())
    }
    fn rollback(&mut self) {
        // The chain is rebuilt before the unit is retried; this instance is dropped.
        self.written = 0;
    }
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.pre_commit(checkpoint))?;
        out.push(Vec::new());
        Ok(())
    }
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        next_state(states, &self.info.operator)?;
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.recover(last_completed))
    }
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError> {
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.commit(checkpoint))
    }
    fn rekey(
        &mut self,
        _keep: &dyn Fn(u64) -> bool,
        gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        next_state(gained, &self.info.operator).map(drop)
    }
    fn flush(&mut self, _cx: &mut StageCx) {}
    fn on_watermark(&mut self, _watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
        // What timers and watermark hooks wrote before it is final.
        self.commit(cx)
    }
    fn on_processing_time(&mut self, _now: i64, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn resume_clock(&mut self, _watermark: i64) {}
    fn on_idle(&mut self, _cx: &mut StageCx) {}
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.commit(cx)?;
        let sink = &mut self.sink;
        guarded(&self.info.operator, || sink.on_close())
    }
}

/// Runs a user call that emits into `next`, reporting a downstream failure first; returns how
/// many records the call emitted.
#[inline]
fn guarded_emit<T>(
    operator: &str,
    next: &mut dyn Stage<T>,
    cx: &mut StageCx,
    timers: Option<&mut Timers>,
    f: impl FnOnce(&mut Output<'_, T>) -> Result<(), crate::UserError>,
) -> Result<u64, StageError> {
    let mut out = Output::new(next, cx);
    if let Some(t) = timers {
        out = out.with_timers(t);
    }
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
