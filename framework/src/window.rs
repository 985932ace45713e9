//! Windows on keyed streams: tumbling, sliding and session windows in event or processing
//! time, with incremental aggregation, allowed lateness and a late-data side output.
//!
//! `key_by(..).window(assigner)` gives a `WindowedStream`; `reduce`, `aggregate` or
//! `process` turn it into a `Windowed` operator whose `results()` are [`WindowResult`]s
//! (key, bounds, value, and whether the firing was early, on time or late) and whose
//! `late_data()` is a stream of the records that came too late for every window they belong
//! to. Nothing is dropped silently.
//!
//! # How it is built
//! A window operator is a [`KeyedOperator`] whose per-key state holds the windows' contents
//! and whose timers say when they fire, so windows are in checkpoints and savepoints and move
//! with their keys on a rescale exactly as other keyed state does:
//! - **Tumbling and sliding windows keep panes.** The time axis is cut into panes of
//!   `gcd(size, slide)`; a record is added to one pane (one accumulator update, whatever the
//!   ratio of size to slide), and a window's value is the merge of its panes when it fires.
//!   One event-time timer per key is pending for the next window to fire, one more for the
//!   next cleanup with allowed lateness.
//! - **Session windows merge.** Each record opens `[t, t + gap)`; every session it touches
//!   (including one it only bridges to) is merged into one, accumulators included.
//! - A window fires **on time** when the clock passes its last millisecond (`end - 1`). With
//!   `allowed_lateness(d)` its state is kept until the clock passes `end - 1 + d`, and every
//!   record that arrives in that time fires a **late** update at once. A record whose every
//!   window is past that is emitted on the late-data output. [`Trigger`]s add **early**
//!   firings (every n records, or every interval of wall-clock time) before the on-time one.

use crate::data::{Data, Key};
use crate::error::UserError;
use crate::operator::{KeyedOperator, Output};
use crate::time::TimestampFn;
use crate::timers::{TimeDomain, Timer, Timers};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// A window's bounds in milliseconds: `start` included, `end` excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    /// The first millisecond in the window.
    pub start: i64,
    /// The first millisecond after the window.
    pub end: i64,
}

impl TimeWindow {
    /// The last millisecond in the window: the window fires on time when the clock reaches it.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }
}

/// Why a window fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Firing {
    /// Before the window's end, by a [`Trigger`].
    Early,
    /// When the clock passed the window's end.
    OnTime,
    /// An update after the on-time firing, for a record within the allowed lateness.
    Late,
}

/// One firing of one window of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window's bounds.
    pub window: TimeWindow,
    /// The window's value (reduce, aggregate or process result).
    pub value: R,
    /// Why it fired.
    pub firing: Firing,
}

/// What the window operator emits: a firing, or a record too late for all its windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WindowEvent<K, R, T> {
    /// A window fired.
    Fired(WindowResult<K, R>),
    /// A record later than the allowed lateness of every window it belongs to.
    Late(T),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Tumbling (`slide == size`) or sliding windows, kept in panes of `pane`.
    Sliding { size: i64, slide: i64, pane: i64 },
    /// Session windows closed after `gap` without records.
    Session { gap: i64 },
}

/// Which windows a record belongs to, and in which time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowAssigner {
    shape: Shape,
    domain: TimeDomain,
    /// The sizes are not all at least one millisecond, or the slide exceeds the size.
    invalid: Option<&'static str>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WindowAssigner {
    /// Back-to-back windows of `size`, aligned to the epoch: `[k*size, (k+1)*size)`.
    pub fn tumbling(size: Duration) -> Self {
        Self::sliding(size, size)
    }

    /// Windows of `size` starting every `slide` (`slide <= size`), aligned to the epoch; a
    /// record belongs to `size / slide` of them. Kept as panes, not as copies.
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        let (size, slide) = (millis(size), millis(slide));
        let invalid = if size < 1 || slide < 1 {
            Some("window size and slide must be at least one millisecond")
        } else if slide > size {
            Some("a slide longer than the size would drop the records between windows")
        } else {
            None
        };
        WindowAssigner {
            shape: Shape::Sliding {
                size: size.max(1),
                slide: slide.max(1),
                pane: gcd(size.max(1), slide.max(1)),
            },
            domain: TimeDomain::EventTime,
            invalid,
        }
    }

    /// Sessions of activity per key: a session ends `gap` after its last record; a record
    /// that bridges two sessions merges them.
    pub fn session(gap: Duration) -> Self {
        let gap = millis(gap);
        WindowAssigner {
            shape: Shape::Session { gap: gap.max(1) },
            domain: TimeDomain::EventTime,
            invalid: (gap < 1).then_some("the session gap must be at least one millisecond"),
        }
    }

    /// The same windows in processing time: a record's time is the wall clock when it
    /// arrives, and windows fire by the wall clock (nothing is ever late).
    pub fn processing_time(mut self) -> Self {
        self.domain = TimeDomain::ProcessingTime;
        self
    }
}

/// Early firings before a window's on-time one (which always happens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trigger {
    count: Option<u64>,
    every: Option<i64>,
}

impl Trigger {
    /// Fires a window early each time it has received another `n` records.
    pub fn count(n: u64) -> Self {
        Trigger {
            count: Some(n.max(1)),
            every: None,
        }
    }

    /// Fires every window that has records early, every `interval` of wall-clock time
    /// (event-time windows only).
    pub fn every(interval: Duration) -> Self {
        Trigger {
            count: None,
            every: Some(millis(interval).max(1)),
        }
    }
}

/// An incremental aggregation for `WindowedStream::aggregate`: records are added to an
/// accumulator as they come, accumulators of panes or merged sessions are merged, and the
/// result is read when the window fires.
pub trait AggregateFunction<T>: Send + Sync + 'static {
    /// The accumulator (window state).
    type Acc: Data;
    /// The window's value.
    type Out: Data;
    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one record.
    fn add(&self, acc: &mut Self::Acc, value: T);
    /// Adds everything `other` holds to `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    /// The value of a window holding `acc`.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// What a window computes, over accumulators (the three user forms are adapters).
pub(crate) trait WindowFunction<K, T>: Send + Sync + 'static {
    type Acc: Data;
    type Out: Data;
    fn create(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, value: T);
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    fn result(&self, key: &K, window: &TimeWindow, acc: &Self::Acc) -> Option<Self::Out>;
}

pub(crate) struct ReduceFn<F>(pub F);
impl<K, T: Data, F: Fn(&T, T) -> T + Send + Sync + 'static> WindowFunction<K, T> for ReduceFn<F> {
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, value: T) {
        *acc = Some(match acc.take() {
            Some(a) => (self.0)(&a, value),
            None => value,
        });
    }
    fn merge(&self, acc: &mut Option<T>, other: &Option<T>) {
        if let Some(o) = other {
            <Self as WindowFunction<K, T>>::add(self, acc, o.clone());
        }
    }
    fn result(&self, _key: &K, _window: &TimeWindow, acc: &Option<T>) -> Option<T> {
        acc.clone()
    }
}

pub(crate) struct AggregateFn<A>(pub A);
impl<K, T, A: AggregateFunction<T>> WindowFunction<K, T> for AggregateFn<A> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> A::Acc {
        self.0.create()
    }
    fn add(&self, acc: &mut A::Acc, value: T) {
        self.0.add(acc, value);
    }
    fn merge(&self, acc: &mut A::Acc, other: &A::Acc) {
        self.0.merge(acc, other);
    }
    fn result(&self, _key: &K, _window: &TimeWindow, acc: &A::Acc) -> Option<A::Out> {
        Some(self.0.result(acc))
    }
}

pub(crate) struct ProcessFn<F>(pub F);
impl<K, T: Data, R: Data, F> WindowFunction<K, T> for ProcessFn<F>
where
    F: Fn(&K, &TimeWindow, &[T]) -> R + Send + Sync + 'static,
{
    type Acc = Vec<T>;
    type Out = R;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, value: T) {
        acc.push(value);
    }
    fn merge(&self, acc: &mut Vec<T>, other: &Vec<T>) {
        acc.extend_from_slice(other);
    }
    fn result(&self, key: &K, window: &TimeWindow, acc: &Vec<T>) -> Option<R> {
        Some((self.0)(key, window, acc))
    }
}

/// A window operator's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowSpec {
    pub assigner: WindowAssigner,
    pub lateness: i64,
    pub trigger: Trigger,
}

/// The panes of one key's tumbling or sliding windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pane<A> {
    acc: A,
    count: u64,
}

/// One session of one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session<A> {
    window: TimeWindow,
    acc: A,
    count: u64,
    /// It fired (on time or late) and has had no record since that moved its end.
    fired: bool,
}

/// One key's windows: the keyed state of a window operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "A: Serialize + DeserializeOwned")]
pub struct WindowState<A> {
    panes: BTreeMap<i64, Pane<A>>,
    sessions: Vec<Session<A>>,
    /// Every window ending at or before it is past: fired on time, or empty when the clock
    /// passed it (tumbling and sliding windows).
    done: i64,
    /// The on-time timer last registered.
    timer: i64,
    /// An early-firing timer is pending.
    early: bool,
}

impl<A> Default for WindowState<A> {
    fn default() -> Self {
        WindowState {
            panes: BTreeMap::new(),
            sessions: Vec::new(),
            done: i64::MIN,
            timer: i64::MIN,
            early: false,
        }
    }
}

/// The window operator: a keyed operator over [`WindowState`].
pub(crate) struct WindowOperator<K, T, F> {
    pub f: Arc<F>,
    pub spec: WindowSpec,
    pub timestamp: Option<TimestampFn<T>>,
    /// Records sent to the late-data output by this subtask.
    pub late: u64,
    pub operator: Arc<str>,
    pub _k: PhantomData<fn(K)>,
}

type Out<'a, K, F, T> = Output<'a, WindowEvent<K, <F as WindowFunction<K, T>>::Out, T>>;

/// `floor(a / b)` for `b > 0`.
fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

impl<K: Key, T: Data, F: WindowFunction<K, T>> WindowOperator<K, T, F> {
    fn emit(
        &self,
        key: &K,
        window: TimeWindow,
        acc: &F::Acc,
        firing: Firing,
        out: &mut Out<'_, K, F, T>,
    ) {
        if let Some(value) = self.f.result(key, &window, acc) {
            out.emit(WindowEvent::Fired(WindowResult {
                key: key.clone(),
                window,
                value,
                firing,
            }));
        }
    }

    /// The record's time and the clock it is judged against.
    fn times(&self, record: &T, timers: &Timers) -> (i64, i64) {
        match (self.spec.assigner.domain, &self.timestamp) {
            (TimeDomain::EventTime, Some(ts)) => (ts(record), timers.watermark()),
            _ => {
                let now = timers.now();
                (now, now.saturating_sub(1))
            }
        }
    }

    fn register(&self, timers: &mut Timers, time: i64) {
        match self.spec.assigner.domain {
            TimeDomain::EventTime => timers.register_event_time(time),
            TimeDomain::ProcessingTime => timers.register_processing_time(time),
        }
    }

    fn late_record(&mut self, record: T, out: &mut Out<'_, K, F, T>) {
        self.late += 1;
        out.emit(WindowEvent::Late(record));
    }

    /// Arms the early-firing timer (trigger `every`) if it is not armed.
    fn arm_early(&self, state: &mut WindowState<F::Acc>, timers: &mut Timers) {
        if let Some(every) = self.spec.trigger.every {
            if !state.early {
                state.early = true;
                let now = timers.now();
                timers.register_processing_time(floor_div(now, every) * every + every);
            }
        }
    }
}

/// Sliding (and tumbling) windows over panes.
impl<K: Key, T: Data, F: WindowFunction<K, T>> WindowOperator<K, T, F> {
    fn sliding(&self) -> (i64, i64, i64) {
        match self.spec.assigner.shape {
            Shape::Sliding { size, slide, pane } => (size, slide, pane),
            Shape::Session { gap } => (gap, gap, gap),
        }
    }

    /// The end of the first window that holds pane `ps`.
    fn first_end(&self, ps: i64) -> i64 {
        let (size, slide, _) = self.sliding();
        (floor_div(ps.saturating_sub(size), slide) + 1)
            .saturating_mul(slide)
            .saturating_add(size)
    }

    /// The end of the last window that holds pane `ps`.
    fn last_end(&self, ps: i64) -> i64 {
        let (size, slide, _) = self.sliding();
        floor_div(ps, slide)
            .saturating_mul(slide)
            .saturating_add(size)
    }

    /// The end of the last window past at clock `wm` (its last millisecond is at or below).
    fn done_end(&self, wm: i64) -> i64 {
        if wm == i64::MIN {
            return i64::MIN;
        }
        let (size, slide, _) = self.sliding();
        floor_div(wm.saturating_add(1).saturating_sub(size), slide)
            .saturating_mul(slide)
            .saturating_add(size)
    }

    /// The end of the next window after `done` that holds a pane.
    fn next_end(&self, state: &WindowState<F::Acc>) -> Option<i64> {
        let (size, slide, _) = self.sliding();
        let from = state.done.saturating_add(slide).saturating_sub(size);
        let (&ps, _) = state.panes.range(from..).next()?;
        Some(state.done.saturating_add(slide).max(self.first_end(ps)))
    }

    /// The merged accumulator of window `w`.
    fn window_acc<'s>(
        &self,
        state: &'s WindowState<F::Acc>,
        w: TimeWindow,
    ) -> (std::borrow::Cow<'s, F::Acc>, u64) {
        let mut panes = state.panes.range(w.start..w.end);
        let Some((_, first)) = panes.next() else {
            return (std::borrow::Cow::Owned(self.f.create()), 0);
        };
        let Some((_, second)) = panes.next() else {
            return (std::borrow::Cow::Borrowed(&first.acc), first.count);
        };
        let mut acc = first.acc.clone();
        let mut count = first.count + second.count;
        self.f.merge(&mut acc, &second.acc);
        for (_, p) in panes {
            self.f.merge(&mut acc, &p.acc);
            count += p.count;
        }
        (std::borrow::Cow::Owned(acc), count)
    }

    fn fire_window(
        &self,
        key: &K,
        state: &WindowState<F::Acc>,
        w: TimeWindow,
        firing: Firing,
        out: &mut Out<'_, K, F, T>,
    ) {
        let (acc, count) = self.window_acc(state, w);
        if count > 0 {
            self.emit(key, w, &acc, firing, out);
        }
    }

    fn sliding_record(
        &mut self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        record: T,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        let (ts, wm) = self.times(&record, out.timers()?);
        let (size, slide, pane) = self.sliding();
        if self.spec.assigner.domain == TimeDomain::EventTime {
            // Every window past the watermark has fired (its timer came first). Wall-clock
            // timers fire on a tick, so in processing time only they move `done`.
            state.done = state.done.max(self.done_end(wm));
        }
        let last_start = floor_div(ts, slide).saturating_mul(slide);
        if last_start
            .saturating_add(size - 1)
            .saturating_add(self.spec.lateness)
            <= wm
        {
            self.late_record(record, out);
            return Ok(());
        }
        let ps = floor_div(ts, pane).saturating_mul(pane);
        let mut new_pane = false;
        let p = state.panes.entry(ps).or_insert_with(|| {
            new_pane = true;
            Pane {
                acc: self.f.create(),
                count: 0,
            }
        });
        self.f.add(&mut p.acc, record);
        p.count += 1;
        let first_end = self.first_end(ps);
        if first_end <= state.done || self.spec.trigger.count.is_some() {
            self.record_windows(key, state, (first_end, last_start, wm), out);
        }
        // Timers change only with the set of panes.
        if new_pane {
            self.arm_sliding(state, out.timers()?);
        }
        Ok(())
    }

    /// Every window of a record just added, oldest first (its first end, its last start):
    /// late updates for those past, early firings by count for the others.
    fn record_windows(
        &self,
        key: &K,
        state: &WindowState<F::Acc>,
        (mut end, last_start, wm): (i64, i64, i64),
        out: &mut Out<'_, K, F, T>,
    ) {
        let (size, slide, _) = self.sliding();
        while end.saturating_sub(size) <= last_start {
            let w = TimeWindow {
                start: end - size,
                end,
            };
            if end <= state.done {
                if w.max_timestamp().saturating_add(self.spec.lateness) > wm {
                    self.fire_window(key, state, w, Firing::Late, out);
                }
            } else if let Some(n) = self.spec.trigger.count {
                let (acc, count) = self.window_acc(state, w);
                if count % n == 0 {
                    self.emit(key, w, &acc, Firing::Early, out);
                }
            }
            end = end.saturating_add(slide);
        }
    }

    /// Registers the timer of the next window to fire, and the next cleanup; with no pane
    /// left the key's state goes.
    fn arm_sliding(&self, state: &mut WindowState<F::Acc>, timers: &mut Timers) {
        let Some((&first, _)) = state.panes.iter().next() else {
            timers.clear_state();
            return;
        };
        if let Some(end) = self.next_end(state) {
            if state.timer != end - 1 {
                state.timer = end - 1;
                self.register(timers, end - 1);
            }
        }
        if self.spec.lateness > 0 {
            let cleanup = self.last_end(first) - 1 + self.spec.lateness;
            self.register(timers, cleanup);
        }
        if state.done < self.last_end(*state.panes.keys().next_back().unwrap_or(&first)) {
            self.arm_early(state, timers);
        }
    }

    fn sliding_timer(
        &self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        wm: i64,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        let (size, _, _) = self.sliding();
        while let Some(end) = self.next_end(state) {
            if end - 1 > wm {
                break;
            }
            let w = TimeWindow {
                start: end - size,
                end,
            };
            self.fire_window(key, state, w, Firing::OnTime, out);
            state.done = end;
        }
        state.done = state.done.max(self.done_end(wm));
        let lateness = self.spec.lateness;
        while let Some(entry) = state.panes.first_entry() {
            if (self.last_end(*entry.key()) - 1).saturating_add(lateness) > wm {
                break;
            }
            entry.remove();
        }
        self.arm_sliding(state, out.timers()?);
        Ok(())
    }

    fn sliding_early(&self, key: &K, state: &WindowState<F::Acc>, out: &mut Out<'_, K, F, T>) {
        let (size, slide, _) = self.sliding();
        let Some(mut end) = self.next_end(state) else {
            return;
        };
        let last = state.panes.keys().next_back().copied().unwrap_or(i64::MIN);
        while end - size <= last {
            let w = TimeWindow {
                start: end - size,
                end,
            };
            self.fire_window(key, state, w, Firing::Early, out);
            end = end.saturating_add(slide);
        }
    }
}

/// Session windows.
impl<K: Key, T: Data, F: WindowFunction<K, T>> WindowOperator<K, T, F> {
    fn gap(&self) -> i64 {
        match self.spec.assigner.shape {
            Shape::Session { gap } => gap,
            Shape::Sliding { size, .. } => size,
        }
    }

    fn session_record(
        &mut self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        record: T,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        let (ts, wm) = self.times(&record, out.timers()?);
        let new = TimeWindow {
            start: ts,
            end: ts.saturating_add(self.gap()),
        };
        let touches = |s: &Session<F::Acc>, w: &TimeWindow| {
            s.window.start <= w.end && s.window.end >= w.start
        };
        // Sessions never touch each other, so the ones the new window touches are exactly
        // the ones their union touches.
        let mut merged = new;
        for s in state.sessions.iter().filter(|s| touches(s, &new)) {
            merged.start = merged.start.min(s.window.start);
            merged.end = merged.end.max(s.window.end);
        }
        let lateness = self.spec.lateness;
        if merged.max_timestamp().saturating_add(lateness) <= wm {
            self.late_record(record, out);
            return Ok(());
        }
        // Merge every session the new one touches (they all lie inside `merged`).
        let mut acc = self.f.create();
        let mut count = 1;
        let mut kept = Vec::with_capacity(state.sessions.len());
        for s in state.sessions.drain(..) {
            if touches(&s, &merged) {
                self.f.merge(&mut acc, &s.acc);
                count += s.count;
            } else {
                kept.push(s);
            }
        }
        self.f.add(&mut acc, record);
        let past = merged.max_timestamp() <= wm;
        if past {
            self.emit(key, merged, &acc, Firing::Late, out);
        } else if self.spec.trigger.count.is_some_and(|n| count % n == 0) {
            self.emit(key, merged, &acc, Firing::Early, out);
        }
        let at = kept.partition_point(|s| s.window.start < merged.start);
        kept.insert(
            at,
            Session {
                window: merged,
                acc,
                count,
                fired: past,
            },
        );
        state.sessions = kept;
        self.arm_sessions(state, out.timers()?);
        Ok(())
    }

    fn arm_sessions(&self, state: &mut WindowState<F::Acc>, timers: &mut Timers) {
        if state.sessions.is_empty() {
            timers.clear_state();
            return;
        }
        let mut open = false;
        for s in &state.sessions {
            if s.fired {
                if self.spec.lateness > 0 {
                    self.register(timers, s.window.max_timestamp() + self.spec.lateness);
                }
            } else {
                open = true;
                self.register(timers, s.window.max_timestamp());
            }
        }
        if open {
            self.arm_early(state, timers);
        }
    }

    fn session_timer(
        &self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        wm: i64,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        for s in state.sessions.iter_mut() {
            if !s.fired && s.window.max_timestamp() <= wm {
                s.fired = true;
                self.emit(key, s.window, &s.acc, Firing::OnTime, out);
            }
        }
        let lateness = self.spec.lateness;
        state
            .sessions
            .retain(|s| s.window.max_timestamp().saturating_add(lateness) > wm);
        self.arm_sessions(state, out.timers()?);
        Ok(())
    }
}

impl<K: Key, T: Data, F: WindowFunction<K, T>> KeyedOperator for WindowOperator<K, T, F> {
    type Key = K;
    type In = T;
    type Out = WindowEvent<K, F::Out, T>;
    type State = WindowState<F::Acc>;

    fn process(
        &mut self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        record: T,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        match self.spec.assigner.shape {
            Shape::Sliding { .. } => self.sliding_record(key, state, record, out),
            Shape::Session { .. } => self.session_record(key, state, record, out),
        }
    }

    fn on_timer(
        &mut self,
        key: &K,
        state: &mut WindowState<F::Acc>,
        timer: Timer,
        out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        let domain = self.spec.assigner.domain;
        if timer.domain != domain {
            // An early-firing timer (processing time, event-time windows).
            state.early = false;
            match self.spec.assigner.shape {
                Shape::Sliding { .. } => {
                    self.sliding_early(key, state, out);
                    self.arm_sliding(state, out.timers()?);
                }
                Shape::Session { .. } => {
                    for s in state.sessions.iter().filter(|s| !s.fired) {
                        self.emit(key, s.window, &s.acc, Firing::Early, out);
                    }
                    self.arm_sessions(state, out.timers()?);
                }
            }
            return Ok(());
        }
        let timers = out.timers()?;
        let wm = match domain {
            TimeDomain::EventTime => timers.watermark().max(timer.time),
            TimeDomain::ProcessingTime => timers.now().saturating_sub(1).max(timer.time),
        };
        match self.spec.assigner.shape {
            Shape::Sliding { .. } => self.sliding_timer(key, state, wm, out),
            Shape::Session { .. } => self.session_timer(key, state, wm, out),
        }
    }

    fn on_close(
        &mut self,
        _states: crate::operator::KeyedStates<'_, K, WindowState<F::Acc>>,
        _out: &mut Out<'_, K, F, T>,
    ) -> Result<(), UserError> {
        if self.late > 0 {
            tracing::info!(operator = %self.operator, late = self.late, "records sent to the late-data output");
        }
        Ok(())
    }
}

impl WindowSpec {
    /// Why these settings cannot run, if they cannot.
    pub(crate) fn check(&self, has_timestamps: bool) -> Option<&'static str> {
        let a = &self.assigner;
        if let Some(reason) = a.invalid {
            return Some(reason);
        }
        if a.domain == TimeDomain::EventTime && !has_timestamps {
            return Some(
                "event-time windows need timestamps: call assign_timestamps_and_watermarks() \
                 or with_timestamps() on the stream before key_by()",
            );
        }
        if a.domain == TimeDomain::ProcessingTime && self.trigger.every.is_some() {
            return Some("early firing every interval needs event-time windows");
        }
        None
    }
}
