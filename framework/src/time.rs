//! Event time: timestamps, watermarks and a subtask's event-time clock.
//!
//! A record's **timestamp** is when its event happened, in milliseconds, read from the record
//! by the function a [`WatermarkStrategy`] holds. A **watermark** `t` says that no record with
//! a timestamp at or below `t` will follow on that channel. Watermarks are generated per
//! subtask by [`DataStream::assign_timestamps_and_watermarks`](crate::DataStream) from the
//! timestamps it sees (the largest so far, less the allowed out-of-orderness), travel in band
//! on every channel — behind the records they cover, across nodes too — and each subtask's
//! **clock** is the minimum of the watermarks of its open inputs ([`InputClock`]): an input
//! that ended holds nothing back, so at the end of the input every clock reaches `i64::MAX`.
//! Clocks only move forward. Operators see the clock advance in
//! [`Operator::on_watermark`](crate::Operator::on_watermark).
//!
//! Generators' state and every subtask's clock are in checkpoints, and an idle input holds no
//! clock back until it sends again. Timestamps are read from the records themselves (a
//! stream remembers how, see `DataStream::with_timestamps`); timers are in the `timers`
//! module and windows, built on them, in the `window` module.

use crate::error::StageError;
use crate::exec::{next_state, BoxStage, RouteLayout, Stage, StageCx};
use crate::operator::SubtaskInfo;
use std::sync::Arc;
use std::time::Duration;

/// Reads a record's event timestamp (milliseconds).
pub type TimestampFn<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;

/// A custom watermark generator: given a record and its timestamp, the watermark it allows
/// (`None`: no change).
pub type GeneratorFn<T> = Arc<dyn Fn(&T, i64) -> Option<i64> + Send + Sync>;

/// How a stream's records get their timestamps and how watermarks are generated from them.
pub struct WatermarkStrategy<T> {
    pub(crate) timestamp: TimestampFn<T>,
    pub(crate) out_of_orderness: Duration,
    pub(crate) generator: Option<GeneratorFn<T>>,
    pub(crate) idleness: Option<Duration>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            timestamp: self.timestamp.clone(),
            out_of_orderness: self.out_of_orderness,
            generator: self.generator.clone(),
            idleness: self.idleness,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Timestamps that never decrease within a source subtask: the watermark is the largest
    /// timestamp seen, less one millisecond.
    pub fn monotonous(timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        Self::bounded_out_of_orderness(Duration::ZERO, timestamp)
    }

    /// Records arrive at most `bound` later than a record with a larger timestamp: the
    /// watermark is the largest timestamp seen less `bound` and one millisecond (as Flink's
    /// `forBoundedOutOfOrderness`).
    pub fn bounded_out_of_orderness(
        bound: Duration,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self {
        WatermarkStrategy {
            timestamp: Arc::new(timestamp),
            out_of_orderness: bound,
            generator: None,
            idleness: None,
        }
    }

    /// A custom generator: `generator(record, timestamp)` is called for every record and
    /// returns the watermark it allows, if any — e.g. punctuated watermarks from marker
    /// records, or a bound that depends on the record. The subtask sends the largest one so
    /// far once the records before it are final; it is in checkpoints like the built-in
    /// generators' state.
    pub fn for_generator(
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
        generator: impl Fn(&T, i64) -> Option<i64> + Send + Sync + 'static,
    ) -> Self {
        WatermarkStrategy {
            timestamp: Arc::new(timestamp),
            out_of_orderness: Duration::ZERO,
            generator: Some(Arc::new(generator)),
            idleness: None,
        }
    }

    /// A subtask that had no record for `timeout` (and is not held back by backpressure)
    /// marks its output idle: downstream clocks stop waiting for it until it sends again.
    /// Without it, one silent source subtask stops every clock downstream.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// What a record adds to the generator's state: its timestamp (built-in generators) or
    /// the watermark the custom generator allows for it.
    #[inline]
    pub(crate) fn observe(&self, record: &T) -> i64 {
        let ts = (self.timestamp)(record);
        match &self.generator {
            None => ts,
            Some(g) => g(record, ts).unwrap_or(i64::MIN),
        }
    }

    /// The watermark for the generator's state `max` (the largest timestamp seen, or the
    /// custom generator's largest watermark; `i64::MIN`: none yet).
    pub(crate) fn watermark_for(&self, max: i64) -> i64 {
        if max == i64::MIN || self.generator.is_some() {
            return max;
        }
        let bound = i64::try_from(self.out_of_orderness.as_millis()).unwrap_or(i64::MAX);
        max.saturating_sub(bound).saturating_sub(1)
    }
}

/// A subtask's event-time clock over its input channels: the minimum of the watermarks of
/// the open ones (an ended one holds nothing back). It never goes back, and it stays off —
/// no watermark goes out, not even at the end — until a watermark arrives: a job without
/// event time sends none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputClock {
    inputs: Vec<i64>,
    closed: Vec<bool>,
    /// Inputs marked idle (they hold nothing back until they send again).
    idle: Vec<bool>,
    current: i64,
    /// A watermark arrived on some input.
    on: bool,
}

impl InputClock {
    /// A clock over `channels` inputs that saw no watermark yet.
    pub fn new(channels: usize) -> Self {
        InputClock {
            inputs: vec![i64::MIN; channels],
            closed: vec![false; channels],
            idle: vec![false; channels],
            current: i64::MIN,
            on: false,
        }
    }

    /// A clock over `channels` inputs that resumes at `at` (a restored subtask's clock at
    /// its checkpoint; `None`: it had none): it never goes below it.
    pub fn resumed(channels: usize, at: Option<i64>) -> Self {
        let mut c = Self::new(channels);
        if let Some(t) = at {
            c.current = t;
            c.on = true;
        }
        c
    }

    /// The clock now (`i64::MIN` before any watermark).
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Watermark `t` arrived on channel `ch`: the clock's new time if it advanced.
    pub fn advance(&mut self, ch: usize, t: i64) -> Option<i64> {
        let w = self.inputs.get_mut(ch)?;
        *w = (*w).max(t);
        self.on = true;
        self.idle[ch] = false;
        self.recompute()
    }

    /// Channel `ch` went idle: it holds the clock back no more. The new time if it advanced.
    pub fn idle(&mut self, ch: usize) -> Option<i64> {
        *self.idle.get_mut(ch)? = true;
        self.recompute()
    }

    /// Channel `ch` sent records: it holds the clock again (at its last watermark).
    pub fn active(&mut self, ch: usize) {
        if let Some(i) = self.idle.get_mut(ch) {
            *i = false;
        }
    }

    /// Whether every input still open is idle (the subtask is idle too).
    pub fn all_idle(&self) -> bool {
        let mut open = self.closed.iter().zip(&self.idle).filter(|(c, _)| !**c);
        let mut any = false;
        let all = open.all(|(_, i)| {
            any = true;
            *i
        });
        any && all
    }

    /// Channel `ch` ended: it holds the clock back no more. The new time if it advanced.
    pub fn close(&mut self, ch: usize) -> Option<i64> {
        *self.closed.get_mut(ch)? = true;
        self.recompute()
    }

    /// The inputs changed (a rescale re-wired them): `closed` says which of the new ones
    /// ended. The time stays; new inputs hold it until their first watermark.
    pub fn rewire(&mut self, closed: &[bool]) {
        self.inputs = vec![i64::MIN; closed.len()];
        self.idle = vec![false; closed.len()];
        self.closed = closed.to_vec();
    }

    fn recompute(&mut self) -> Option<i64> {
        if !self.on {
            return None;
        }
        if self.all_idle() {
            // Nothing but idle inputs: the clock waits for one to speak again.
            return None;
        }
        let open = self
            .inputs
            .iter()
            .zip(self.closed.iter().zip(&self.idle))
            .filter(|(_, (c, i))| !**c && !**i)
            .map(|(w, _)| *w);
        let min = open.min().unwrap_or(i64::MAX);
        (min > self.current).then(|| {
            self.current = min;
            min
        })
    }
}

/// The stage [`DataStream::assign_timestamps_and_watermarks`](crate::DataStream) adds: reads
/// every record's timestamp and, once the records of a batch are final (committed), sends
/// the watermark they allow down the chain. Its state — the largest timestamp seen — is in
/// checkpoints, so the watermark does not go back after a recovery.
pub struct WatermarkStage<T> {
    strategy: WatermarkStrategy<T>,
    info: SubtaskInfo,
    next: BoxStage<T>,
    /// The largest timestamp of the records pushed since the last commit.
    pending: i64,
    /// The largest timestamp of committed records.
    max: i64,
    /// The last watermark sent.
    sent: i64,
    /// Records were pushed since the last commit.
    pushed: bool,
    /// When the last committed records were.
    last_records: std::time::Instant,
    /// The output is marked idle.
    idle: bool,
}

impl<T> WatermarkStage<T> {
    /// Generates watermarks by `strategy` in front of `next`.
    pub fn new(strategy: WatermarkStrategy<T>, info: SubtaskInfo, next: BoxStage<T>) -> Self {
        WatermarkStage {
            strategy,
            info,
            next,
            pending: i64::MIN,
            max: i64::MIN,
            sent: i64::MIN,
            pushed: false,
            last_records: std::time::Instant::now(),
            idle: false,
        }
    }

    fn note(&mut self, record: &T) {
        self.pending = self.pending.max(self.strategy.observe(record));
        self.pushed = true;
    }

    /// Sends the watermark the committed records allow, if it advanced.
    fn emit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let w = self.strategy.watermark_for(self.max);
        if w > self.sent {
            self.sent = w;
            self.next.on_watermark(w, cx)?;
        }
        Ok(())
    }
}

impl<T: crate::Data> Stage<T> for WatermarkStage<T> {
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError> {
        self.note(&record);
        self.next.push(record, cx)
    }
    fn push_all(&mut self, records: &[T], cx: &mut StageCx) -> Result<(), (usize, StageError)> {
        for r in records {
            self.note(r);
        }
        self.next.push_all(records, cx)
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        // Silence counts from the start of the subtask, not from its construction.
        self.last_records = std::time::Instant::now();
        self.next.open(cx)
    }
    fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.commit(cx)?;
        self.max = self.max.max(self.pending);
        if std::mem::take(&mut self.pushed) {
            // Records again: the output is active (its records and watermark say so).
            self.last_records = std::time::Instant::now();
            self.idle = false;
        }
        self.emit(cx)
    }
    fn rollback(&mut self) {
        self.pending = self.max;
        self.pushed = false;
        self.next.rollback();
    }
    fn distinct_keys(&self) -> u64 {
        self.next.distinct_keys()
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.next.flush(cx);
        let Some(timeout) = self.strategy.idleness else {
            return;
        };
        // Idle: no record for the timeout, and nothing waiting to be sent (a subtask held
        // back by backpressure is not idle).
        if !self.idle && self.last_records.elapsed() >= timeout && cx.queues_empty() {
            self.idle = true;
            self.next.on_idle(cx);
        }
    }
    fn on_watermark(&mut self, _watermark: i64, _cx: &mut StageCx) -> Result<(), StageError> {
        // Upstream time does not pass an assigner: it makes its own.
        Ok(())
    }
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.on_processing_time(now, cx)
    }
    fn resume_clock(&mut self, _watermark: i64) {
        // Downstream of an assigner, time is this stage's own (restored with its state).
    }
    fn on_idle(&mut self, _cx: &mut StageCx) {
        // Nor does upstream idleness: this stage knows when its own records stop.
    }
    fn reroute(&mut self, moves: &[(usize, RouteLayout)]) {
        self.next.reroute(moves);
    }
    fn batch_limits(&mut self, limits: &[usize]) {
        self.next.batch_limits(limits);
    }
    fn rekey(
        &mut self,
        keep: &dyn Fn(u64) -> bool,
        gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        next_state(gained, &self.info.operator)?;
        self.next.rekey(keep, gained)
    }
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        out.push(self.max.to_le_bytes().to_vec());
        self.next.snapshot(checkpoint, out)
    }
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        let state = next_state(states, &self.info.operator)?;
        if let Ok(b) = <[u8; 8]>::try_from(state.as_slice()) {
            self.max = i64::from_le_bytes(b);
            self.pending = self.max;
            // The restored watermark goes out with the first batch's commit.
        }
        self.next.restore(states, last_completed)
    }
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError> {
        self.next.checkpoint_complete(checkpoint)
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.commit(cx)?;
        self.max = self.max.max(self.pending);
        // End of input: nothing more will come from here.
        self.sent = i64::MAX;
        self.next.on_watermark(i64::MAX, cx)?;
        self.next.close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_the_minimum_of_the_open_inputs_and_never_goes_back() {
        let mut c = InputClock::new(3);
        assert_eq!(c.advance(0, 10), None, "two inputs saw nothing yet");
        assert_eq!(c.advance(1, 5), None);
        assert_eq!(c.advance(2, 7), Some(5));
        assert_eq!(
            c.advance(1, 3),
            None,
            "an input's watermark never goes back"
        );
        assert_eq!(c.advance(1, 20), Some(7));
        assert_eq!(c.close(2), Some(10), "an ended input holds nothing back");
        assert_eq!(c.close(0), Some(20));
        assert_eq!(c.close(1), Some(i64::MAX), "every input ended");
        assert_eq!(c.current(), i64::MAX);
        assert_eq!(c.advance(9, 1), None, "an unknown channel changes nothing");
    }

    #[test]
    fn a_resumed_clock_never_goes_below_its_checkpoint() {
        let mut c = InputClock::resumed(2, Some(100));
        assert_eq!(c.current(), 100);
        assert_eq!(c.advance(0, 90), None);
        assert_eq!(
            c.advance(1, 100),
            None,
            "inputs replayed from the checkpoint"
        );
        assert_eq!(
            c.advance(0, 120),
            None,
            "input 1 is still at the checkpoint's time"
        );
        assert_eq!(c.advance(1, 130), Some(120));
        let mut off = InputClock::resumed(1, None);
        assert_eq!(
            off.close(0),
            None,
            "a subtask without a clock stays without one"
        );
    }

    #[test]
    fn idle_inputs_hold_the_clock_back_no_more_until_they_speak_again() {
        let mut c = InputClock::new(3);
        c.advance(0, 10);
        c.advance(1, 20);
        assert_eq!(c.current(), i64::MIN, "input 2 saw nothing yet");
        assert_eq!(c.idle(2), Some(10), "input 2 idle: the others set the time");
        assert!(!c.all_idle());
        c.active(2);
        assert_eq!(c.advance(0, 30), None, "input 2 holds the clock again");
        assert_eq!(c.advance(2, 25), Some(20));
        assert_eq!(c.idle(0), None);
        assert_eq!(c.idle(1), Some(25));
        assert_eq!(c.idle(2), None, "all idle: the clock waits");
        assert!(c.all_idle());
        assert_eq!(c.close(0), None);
        assert_eq!(c.advance(1, 40), Some(40), "a watermark wakes its input");
        assert!(!c.all_idle());
    }

    #[test]
    fn a_clock_that_never_saw_a_watermark_stays_off() {
        let mut c = InputClock::new(2);
        assert_eq!(c.close(0), None);
        assert_eq!(
            c.close(1),
            None,
            "no event time here: nothing to send at the end"
        );
        assert_eq!(c.current(), i64::MIN);
    }

    #[test]
    fn a_rewired_clock_keeps_its_time_until_the_new_inputs_catch_up() {
        let mut c = InputClock::new(2);
        c.advance(0, 10);
        c.advance(1, 12);
        assert_eq!(c.current(), 10);
        c.rewire(&[false, false, false]);
        assert_eq!(c.advance(2, 4), None, "the time never goes back");
        assert_eq!(c.advance(0, 15), None);
        assert_eq!(c.advance(1, 15), None);
        assert_eq!(c.advance(2, 11), Some(11));
    }

    #[test]
    fn the_strategy_subtracts_the_bound_and_one_millisecond() {
        let s =
            WatermarkStrategy::<i64>::bounded_out_of_orderness(Duration::from_millis(100), |t| *t);
        assert_eq!(s.watermark_for(i64::MIN), i64::MIN);
        assert_eq!(s.watermark_for(1_000), 899);
        assert_eq!(
            WatermarkStrategy::<i64>::monotonous(|t| *t).watermark_for(5),
            4
        );
        assert_eq!(s.watermark_for(i64::MIN + 3), i64::MIN);
        // A custom generator's watermarks are taken as they are.
        let punctuated =
            WatermarkStrategy::<(i64, bool)>::for_generator(|r| r.0, |r, ts| r.1.then_some(ts));
        assert_eq!(punctuated.observe(&(7, false)), i64::MIN);
        assert_eq!(punctuated.observe(&(7, true)), 7);
        assert_eq!(punctuated.watermark_for(7), 7);
    }
}
