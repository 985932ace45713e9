//! Timers of keyed operators: event-time and processing-time callbacks per key.
//!
//! A [`KeyedOperator`](crate::KeyedOperator) registers timers for the key at hand through
//! [`Output::timers`](crate::Output::timers) while it handles a record or a timer, and gets
//! [`KeyedOperator::on_timer`](crate::KeyedOperator::on_timer) with that key's state when a
//! timer is due: an **event-time** timer `t` when the subtask's clock (its watermark) reaches
//! `t`, a **processing-time** timer `t` when the wall clock (milliseconds since the Unix
//! epoch) reaches `t`. At the end of the input every pending timer fires, in time order.
//!
//! Timers are keyed state: a key has at most one timer per time and domain (registering it
//! again changes nothing), they are written with the key's state in every checkpoint and
//! savepoint, and they move with their key when the operator is rescaled, in place or from a
//! savepoint. A timer fires once: a timer that fired before a checkpoint is not in it, and
//! one that fired after it fires again only in the replay that rebuilds what it produced.

use crate::data::Key;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    /// The subtask's event-time clock (watermark).
    EventTime,
    /// The wall clock, in milliseconds since the Unix epoch.
    ProcessingTime,
}

/// A timer that fired: its time and its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The time it was registered for (milliseconds).
    pub time: i64,
    /// The clock it follows.
    pub domain: TimeDomain,
}

/// The wall clock in milliseconds since the Unix epoch (processing time).
pub fn processing_time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A keyed operator's view of time and its timers for the key at hand, from
/// [`Output::timers`](crate::Output::timers).
///
/// Changes take effect when the call that made them returns.
#[derive(Debug, Default)]
pub struct Timers {
    ops: Vec<(TimerOp, TimeDomain, i64)>,
    watermark: i64,
    clear: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerOp {
    Register,
    Delete,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            ops: Vec::new(),
            watermark: i64::MIN,
            clear: false,
        }
    }

    /// The subtask's event-time clock: no record at or below it arrives any more in order
    /// (`i64::MIN` before the first watermark).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The wall clock, milliseconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        processing_time_now()
    }

    /// Calls `on_timer` for this key when the watermark reaches `time`.
    pub fn register_event_time(&mut self, time: i64) {
        self.ops
            .push((TimerOp::Register, TimeDomain::EventTime, time));
    }

    /// Cancels this key's event-time timer at `time`, if there is one.
    pub fn delete_event_time(&mut self, time: i64) {
        self.ops
            .push((TimerOp::Delete, TimeDomain::EventTime, time));
    }

    /// Calls `on_timer` for this key when the wall clock reaches `time` (see
    /// [`Timers::now`]).
    pub fn register_processing_time(&mut self, time: i64) {
        self.ops
            .push((TimerOp::Register, TimeDomain::ProcessingTime, time));
    }

    /// Cancels this key's processing-time timer at `time`, if there is one.
    pub fn delete_processing_time(&mut self, time: i64) {
        self.ops
            .push((TimerOp::Delete, TimeDomain::ProcessingTime, time));
    }

    /// Drops this key's state when the call returns (its timers stay): the next record or
    /// timer of the key starts from `State::default()`, and the key no longer takes room in
    /// memory or in checkpoints.
    pub fn clear_state(&mut self) {
        self.clear = true;
    }

    pub(crate) fn set_watermark(&mut self, watermark: i64) {
        self.watermark = watermark;
    }

    /// Whether the last call changed nothing.
    #[inline]
    pub(crate) fn untouched(&self) -> bool {
        self.ops.is_empty() && !self.clear
    }
}

/// One key's pending timers (sorted times), as written in checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTimers {
    /// Event-time timers.
    pub event: Vec<i64>,
    /// Processing-time timers.
    pub processing: Vec<i64>,
}

impl KeyTimers {
    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.event.is_empty() && self.processing.is_empty()
    }

    fn times(&mut self, domain: TimeDomain) -> &mut Vec<i64> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }
}

/// Every pending timer of a keyed subtask: per key (what checkpoints hold and rescales move)
/// and indexed by time per domain (to find what is due). The index may hold deleted timers;
/// a timer fires only while its key still has it.
pub(crate) struct TimerStore<K> {
    per_key: FxHashMap<K, KeyTimers>,
    event: BTreeMap<i64, Vec<K>>,
    processing: BTreeMap<i64, Vec<K>>,
}

impl<K: Key> Default for TimerStore<K> {
    fn default() -> Self {
        TimerStore {
            per_key: FxHashMap::default(),
            event: BTreeMap::new(),
            processing: BTreeMap::new(),
        }
    }
}

impl<K: Key> TimerStore<K> {
    /// Applies what a call on `key` asked for; returns whether it asked to clear the
    /// key's state.
    pub(crate) fn apply(&mut self, key: &K, timers: &mut Timers) -> bool {
        for (op, domain, time) in timers.ops.drain(..) {
            match op {
                TimerOp::Register => self.register(key, domain, time),
                TimerOp::Delete => self.delete(key, domain, time),
            }
        }
        std::mem::take(&mut timers.clear)
    }

    fn register(&mut self, key: &K, domain: TimeDomain, time: i64) {
        let times = self.per_key.entry(key.clone()).or_default().times(domain);
        if let Err(at) = times.binary_search(&time) {
            times.insert(at, time);
            self.index(domain)
                .entry(time)
                .or_default()
                .push(key.clone());
        }
    }

    fn delete(&mut self, key: &K, domain: TimeDomain, time: i64) {
        let Some(t) = self.per_key.get_mut(key) else {
            return;
        };
        let times = t.times(domain);
        if let Ok(at) = times.binary_search(&time) {
            times.remove(at);
        }
        if t.is_empty() {
            self.per_key.remove(key);
        }
    }

    fn index(&mut self, domain: TimeDomain) -> &mut BTreeMap<i64, Vec<K>> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// The earliest timer of `domain` due at `now` (time at or below it), taken out of the
    /// store; `None` when nothing is due.
    pub(crate) fn pop_due(&mut self, domain: TimeDomain, now: i64) -> Option<(K, Timer)> {
        loop {
            let mut first = self.index(domain).first_entry()?;
            let time = *first.key();
            if time > now {
                return None;
            }
            let Some(key) = first.get_mut().pop() else {
                first.remove();
                continue;
            };
            if first.get().is_empty() {
                first.remove();
            }
            // Fires only if the key still has it (it may have been deleted).
            let Some(t) = self.per_key.get_mut(&key) else {
                continue;
            };
            let times = t.times(domain);
            let Ok(at) = times.binary_search(&time) else {
                continue;
            };
            times.remove(at);
            if t.is_empty() {
                self.per_key.remove(&key);
            }
            return Some((key, Timer { time, domain }));
        }
    }

    /// The earliest pending timer of either domain (for the end of the input).
    pub(crate) fn pop_any(&mut self) -> Option<(K, Timer)> {
        loop {
            let e = self.event.keys().next().copied();
            let p = self.processing.keys().next().copied();
            let (domain, time) = match (e, p) {
                (None, None) => return None,
                (Some(e), Some(p)) if p < e => (TimeDomain::ProcessingTime, p),
                (Some(e), _) => (TimeDomain::EventTime, e),
                (None, Some(p)) => (TimeDomain::ProcessingTime, p),
            };
            if let Some(fired) = self.pop_due(domain, time) {
                return Some(fired);
            }
            // Only deleted timers at that time: the index entry is gone now; look again.
        }
    }

    /// The pending timers of `key`.
    pub(crate) fn of(&self, key: &K) -> Option<&KeyTimers> {
        self.per_key.get(key)
    }

    /// Every key that has timers.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.per_key.keys()
    }

    /// How many keys have timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.per_key.len()
    }

    /// Adds `key`'s timers (restored from a checkpoint or gained in a rescale).
    pub(crate) fn insert(&mut self, key: K, timers: KeyTimers) {
        for &t in &timers.event {
            self.event.entry(t).or_default().push(key.clone());
        }
        for &t in &timers.processing {
            self.processing.entry(t).or_default().push(key.clone());
        }
        self.per_key.insert(key, timers);
    }

    /// Keeps the timers of the keys `keep` accepts (rescale in place); the index is rebuilt.
    pub(crate) fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        let all = std::mem::take(&mut self.per_key);
        self.event.clear();
        self.processing.clear();
        for (k, t) in all {
            if keep(&k) {
                self.insert(k, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(ops: &[(u64, TimerOp, TimeDomain, i64)]) -> TimerStore<u64> {
        let mut s = TimerStore::default();
        for &(k, op, d, t) in ops {
            let mut timers = Timers::new();
            timers.ops.push((op, d, t));
            s.apply(&k, &mut timers);
        }
        s
    }

    #[test]
    fn fires_due_timers_in_time_order_once() {
        use TimeDomain::EventTime as E;
        use TimerOp::Register as R;
        let mut s = store_with(&[(1, R, E, 30), (2, R, E, 10), (1, R, E, 10), (2, R, E, 10)]);
        let mut fired = Vec::new();
        while let Some((k, t)) = s.pop_due(E, 20) {
            fired.push((t.time, k));
        }
        fired.sort_unstable();
        assert_eq!(fired, vec![(10, 1), (10, 2)]);
        assert_eq!(s.pop_due(E, 29), None);
        assert_eq!(s.pop_due(E, 30).map(|(k, t)| (k, t.time)), Some((1, 30)));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn deleted_timers_do_not_fire_and_a_registered_again_one_fires_once() {
        use TimeDomain::{EventTime as E, ProcessingTime as P};
        use TimerOp::{Delete as D, Register as R};
        let mut s = store_with(&[(1, R, E, 5), (1, D, E, 5), (2, R, P, 5), (2, D, P, 5)]);
        assert_eq!(s.pop_any(), None);
        let mut s = store_with(&[(1, R, E, 5), (1, D, E, 5), (1, R, E, 5)]);
        assert!(s.pop_due(E, 5).is_some());
        assert_eq!(s.pop_due(E, 5), None);
    }

    #[test]
    fn retain_keeps_only_accepted_keys() {
        use TimeDomain::{EventTime as E, ProcessingTime as P};
        use TimerOp::Register as R;
        let mut s = store_with(&[(1, R, E, 5), (2, R, P, 6), (3, R, E, 7)]);
        s.retain(|k| *k != 2);
        let mut fired = Vec::new();
        while let Some((k, t)) = s.pop_any() {
            fired.push((k, t.time));
        }
        assert_eq!(fired, vec![(1, 5), (3, 7)]);
    }
}
