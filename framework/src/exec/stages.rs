//! Stages that run user operators and sinks.

use super::{guarded, next_state, BoxStage, RouteLayout, Stage, StageCx};
use crate::error::StageError;
use crate::operator::{Encoded, Output};
use crate::operator::{Operator, Sink, SubtaskInfo};
use crate::timers::Timers;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The hooks of a stage that runs a user operator in front of `self.next`: the operator's
/// `on_start` before the rest of the chain, and the pass-through hooks.
macro_rules! chain_stage_hooks {
    () => {
        fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
            let (op, info) = (&mut self.op, &self.info);
            guarded(&info.operator, || op.on_start(info))?;
            self.next.open(cx)
        }
        pass_through_hooks!();
    };
}
pub(super) use chain_stage_hooks;

/// The outcome of a batch run under one `catch_unwind`: a downstream failure first, then this
/// operator's error or panic, each with the index of the record at hand.
pub(super) fn batch_outcome<T>(
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
    fn push_many(
        &mut self,
        records: &mut Vec<S::In>,
        _cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        // One `catch_unwind` for the chunk; the drain outlives a panic, so what it has left
        // names the record at hand.
        let (len, sink) = (records.len(), &mut self.sink);
        let mut drain = records.drain(..);
        let r = catch_unwind(AssertUnwindSafe(|| {
            for record in &mut drain {
                sink.write(record)?;
            }
            Ok(())
        }));
        let left = drain.len();
        drop(drain);
        let written = len - left;
        self.written += written as u64;
        let at = written.saturating_sub(1);
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((at, StageError::from_error(&self.info.operator, e))),
            Err(p) => Err((at, StageError::from_panic(&self.info.operator, p))),
        }
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
pub(super) fn guarded_emit<T>(
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
