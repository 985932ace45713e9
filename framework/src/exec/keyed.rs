//! Stages that keep state per key: [`KeyedStage`] runs a user [`KeyedOperator`] (state and
//! timers per key, any number of records out per record in), [`AggregateStage`] a built-in
//! running aggregation (`sum`, `reduce`, `fold`: one record out per record in, which lets it
//! hand its results on a batch at a time). Both keep their keys in a [`KeyedTable`], which
//! writes, reads and cuts the checkpoint entries in one format.

use super::stages::{batch_outcome, chain_stage_hooks, guarded_emit};
use super::{guarded, next_state, BoxStage, RouteLayout, Stage, StageCx};
use crate::data::{Data, Key};
use crate::error::StageError;
use crate::operator::{KeyedOperator, KeyedStates, Output, SubtaskInfo};
use crate::timers::{KeyTimers, TimeDomain, Timer, TimerStore, Timers};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

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

/// The state of `$key` in the map `$states`, created with `Default` the first time the key is
/// seen: a lookup, and on a miss an insert (the key's clone stays off the common path). A
/// macro, since a function returning the hit's borrow would not pass the borrow checker.
macro_rules! state_of {
    ($states:expr, $key:expr) => {
        match $states.get_mut($key) {
            Some(s) => s,
            None => $states.entry($key.clone()).or_default(),
        }
    };
}

/// The keys of a keyed stage: one state and the pending timers per key.
pub(crate) struct KeyedTable<K, S> {
    states: FxHashMap<K, S>,
    timers: TimerStore<K>,
}

impl<K: Key, S: Default + Serialize + DeserializeOwned> KeyedTable<K, S> {
    fn new() -> Self {
        KeyedTable {
            states: FxHashMap::default(),
            timers: TimerStore::default(),
        }
    }

    /// How many keys hold state.
    fn len(&self) -> u64 {
        self.states.len() as u64
    }

    /// Forgets `key`'s state if it equals `S::default()` (compared by its encoding; a state
    /// that cannot be encoded is kept).
    fn drop_if_default(&mut self, key: &K) {
        let Some(state) = self.states.get(key) else {
            return;
        };
        let default = rmp_serde::to_vec(&S::default());
        if matches!((rmp_serde::to_vec(state), default), (Ok(a), Ok(b)) if a == b) {
            self.states.remove(key);
        }
    }

    /// The checkpoint entry: every key sorted by its hash, so that a range of the ring can be
    /// cut out for rescaling. A key with timers but no state is written with the default state.
    fn encode(&self, operator: &str) -> Result<Vec<u8>, StageError> {
        let empty = S::default();
        let timers = &self.timers;
        let mut entries: Vec<EntryOut<'_, K, S>> = self
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
        guarded(operator, || Ok(rmp_serde::to_vec(&entries)?))
    }

    /// Replaces every key with those of a checkpoint entry (an empty entry keeps the table).
    fn restore(&mut self, bytes: &[u8], operator: &str) -> Result<(), StageError> {
        if !bytes.is_empty() {
            let entries = Self::decode(bytes, operator)?;
            self.states.clear();
            self.timers = TimerStore::default();
            self.add(entries);
        }
        Ok(())
    }

    /// Rescale in place: keeps the keys whose hash `keep` accepts and adds those of `gained`.
    fn rekey(
        &mut self,
        keep: &dyn Fn(u64) -> bool,
        gained: &[u8],
        operator: &str,
    ) -> Result<(), StageError> {
        self.states.retain(|k, _| keep(k.key_hash()));
        self.timers.retain(|k| keep(k.key_hash()));
        if !gained.is_empty() {
            let entries = Self::decode(gained, operator)?;
            self.add(entries);
        }
        Ok(())
    }

    fn decode(bytes: &[u8], operator: &str) -> Result<Vec<EntryIn<K, S>>, StageError> {
        guarded(operator, || Ok(rmp_serde::from_slice(bytes)?))
    }

    fn add(&mut self, entries: Vec<EntryIn<K, S>>) {
        for e in entries {
            if !e.timers.is_empty() {
                self.timers.insert(e.key.clone(), e.timers);
            }
            self.states.insert(e.key, e.state);
        }
    }
}

/// The hooks of a stage that keeps its keys in `self.table`: the key count, and its
/// checkpoint entry written, restored and cut for a rescale in place (one entry, in chain
/// order, before the rest of the chain's).
macro_rules! keyed_table_hooks {
    () => {
        fn distinct_keys(&self) -> u64 {
            self.table.len() + self.next.distinct_keys()
        }
        fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
            out.push(self.table.encode(&self.info.operator)?);
            self.next.snapshot(checkpoint, out)
        }
        fn restore(
            &mut self,
            states: &mut std::slice::Iter<'_, Vec<u8>>,
            last_completed: Option<u64>,
        ) -> Result<(), StageError> {
            let state = next_state(states, &self.info.operator)?;
            self.table.restore(state, &self.info.operator)?;
            self.next.restore(states, last_completed)
        }
        fn rekey(
            &mut self,
            keep: &dyn Fn(u64) -> bool,
            gained: &mut std::slice::Iter<'_, Vec<u8>>,
        ) -> Result<(), StageError> {
            let state = next_state(gained, &self.info.operator)?;
            self.table.rekey(keep, state, &self.info.operator)?;
            self.next.rekey(keep, gained)
        }
    };
}

/// A stage running a user [`KeyedOperator`], holding one state and the timers per key; `F`
/// is the key selector (shared by the operator's subtasks, called without indirection).
pub struct KeyedStage<O: KeyedOperator, F> {
    op: O,
    key_fn: Arc<F>,
    table: KeyedTable<O::Key, O::State>,
    /// What the call at hand asked of its key's timers (applied when it returns).
    buf: Timers,
    info: SubtaskInfo,
    next: BoxStage<O::Out>,
}

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
            table: KeyedTable::new(),
            buf: Timers::new(),
            info,
            next,
        }
    }

    /// Applies what the last call asked of `key`'s timers and state.
    #[inline]
    fn after_call(&mut self, key: &O::Key) {
        if !self.buf.untouched() && self.table.timers.apply(key, &mut self.buf) {
            self.table.states.remove(key);
        }
    }

    /// Fires `timer` of `key`. A key without state (never written, or cleared) is handed
    /// `State::default()`, and keeps no state unless the call changed it: a timer left over
    /// after `clear_state` must not bring the key back into memory and checkpoints.
    fn fire(&mut self, key: O::Key, timer: Timer, cx: &mut StageCx) -> Result<(), StageError> {
        let stateless = !self.table.states.contains_key(&key);
        let r = self.fire_with_state(&key, timer, cx);
        if stateless {
            self.table.drop_if_default(&key);
        }
        r
    }

    fn fire_with_state(
        &mut self,
        key: &O::Key,
        timer: Timer,
        cx: &mut StageCx,
    ) -> Result<(), StageError> {
        let state = self.table.states.entry(key.clone()).or_default();
        let op = &mut self.op;
        let r = guarded_emit(
            &self.info.operator,
            &mut *self.next,
            cx,
            Some(&mut self.buf),
            |out| op.on_timer(key, state, timer, out),
        );
        self.after_call(key);
        r.map(drop)
    }

    /// Fires every timer of `domain` due at `now`, in time order.
    fn fire_due(
        &mut self,
        domain: TimeDomain,
        now: i64,
        cx: &mut StageCx,
    ) -> Result<(), StageError> {
        while let Some((key, timer)) = self.table.timers.pop_due(domain, now) {
            if domain == TimeDomain::ProcessingTime {
                cx.processing_fired += 1;
            }
            self.fire(key, timer, cx)?;
        }
        Ok(())
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
        let state = state_of!(self.table.states, &key);
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
            &mut self.table.states,
            &mut self.table.timers,
        );
        let mut at = 0;
        let mut out = Output::new(&mut *self.next, cx).with_timers(&mut self.buf);
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), crate::UserError> {
            for (i, record) in records.iter().enumerate() {
                at = i;
                let key = key_fn(record);
                let state = state_of!(states, &key);
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
    keyed_table_hooks!();
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
        while let Some((key, timer)) = self.table.timers.pop_any() {
            self.fire(key, timer, cx)?;
        }
        let (op, states) = (&mut self.op, &mut self.table.states);
        guarded_emit(&self.info.operator, &mut *self.next, cx, None, |out| {
            op.on_close(KeyedStates::new(states), out)
        })?;
        self.next.close(cx)
    }
}

/// A running aggregation per key that turns each record into exactly one result, from the
/// key's state (the built-in `sum`, `reduce` and `fold`). Knowing that, its stage needs no
/// [`Output`]: it gathers a batch's results and hands them on in one call, and the index of a
/// result that fails downstream is the index of its input record.
pub(crate) trait RunningAggregate: Send + 'static {
    /// The key type.
    type Key: Key;
    /// Input records.
    type In: Data;
    /// Results.
    type Out: Data;
    /// Per-key state, created with `Default` the first time a key is seen.
    type State: Default + Serialize + DeserializeOwned + Send + 'static;

    /// Adds `record` to `key`'s state and returns the result to emit (a panic fails the
    /// subtask like an operator's).
    fn apply(&mut self, key: &Self::Key, state: &mut Self::State, record: Self::In) -> Self::Out;
}

/// How many results an [`AggregateStage`] gathers before handing them on. Small, so that the
/// next stage's stores overlap the aggregation's state lookups instead of queueing behind
/// them (measured: 1,024 → 64 took the sink from 11 % to 3 % of the time; 32 is another 2 %
/// faster than 64; 16 and 128 are slower).
const HANDOFF: usize = 32;

/// A stage running a [`RunningAggregate`]: one state per key (no timers), results handed on
/// a batch at a time.
pub(crate) struct AggregateStage<A: RunningAggregate, F> {
    agg: A,
    key_fn: Arc<F>,
    table: KeyedTable<A::Key, A::State>,
    /// The results of the batch at hand (empty between batches; its allocation is kept).
    results: Vec<A::Out>,
    info: SubtaskInfo,
    next: BoxStage<A::Out>,
}

impl<A, F> AggregateStage<A, F>
where
    A: RunningAggregate,
    F: Fn(&A::In) -> A::Key + Send + Sync + 'static,
{
    /// Wraps `agg`, keyed by `key_fn`, feeding `next`.
    pub(crate) fn new(agg: A, key_fn: Arc<F>, info: SubtaskInfo, next: BoxStage<A::Out>) -> Self {
        AggregateStage {
            agg,
            key_fn,
            table: KeyedTable::new(),
            results: Vec::new(),
            info,
            next,
        }
    }

    /// [`AggregateStage::run`] over records handed over by value, a `HANDOFF` at a time
    /// (`push_all` cuts its slice itself instead: a piece of a slice is an exact-length
    /// iterator the loop can own, a `take` of a drain is not).
    #[inline(always)]
    fn run_chunked<I: ExactSizeIterator<Item = A::In>>(
        &mut self,
        records: I,
        cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        let len = records.len();
        let mut records = records;
        let mut base = 0;
        while base < len {
            let n = HANDOFF.min(len - base);
            self.run(records.by_ref().take(n), cx)
                .map_err(|(i, e)| (base + i, e))?;
            base += n;
        }
        Ok(())
    }

    /// Aggregates `records` into `self.results` under one `catch_unwind`, then hands the
    /// results on in one call. A panic stops the batch at the record at hand; the results
    /// before it are handed on first (the unit of work fails and is rolled back either way).
    #[inline(always)]
    fn run<I: ExactSizeIterator<Item = A::In>>(
        &mut self,
        records: I,
        cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        let len = records.len();
        let (agg, key_fn, states, results) = (
            &mut self.agg,
            &*self.key_fn,
            &mut self.table.states,
            &mut self.results,
        );
        // `results` is empty here: it is cleared after every hand-off.
        results.reserve(len);
        // The iterator moves into the loop (its position stays in registers): the record at
        // hand when a panic strikes is the one after the last result.
        // `extend` over an exact-length iterator keeps the results' length in a register and
        // writes it back once, also when a panic unwinds through it (a store less per record).
        let r = catch_unwind(AssertUnwindSafe(|| {
            results.extend(records.map(|record| {
                let key = key_fn(&record);
                let state = state_of!(states, &key);
                agg.apply(&key, state, record)
            }));
        }));
        let failed = r.err().map(|p| {
            let at = self.results.len();
            (at, StageError::from_panic(&self.info.operator, p))
        });
        let handed = self.next.push_many(&mut self.results, cx);
        self.results.clear();
        match (handed, failed) {
            (Err(e), _) | (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        }
    }
}

impl<A, F> Stage<A::In> for AggregateStage<A, F>
where
    A: RunningAggregate,
    F: Fn(&A::In) -> A::Key + Send + Sync + 'static,
{
    fn push(&mut self, record: A::In, cx: &mut StageCx) -> Result<(), StageError> {
        let (agg, key_fn, states) = (&mut self.agg, &*self.key_fn, &mut self.table.states);
        let result = guarded(&self.info.operator, || {
            let key = key_fn(&record);
            let state = state_of!(states, &key);
            Ok(agg.apply(&key, state, record))
        })?;
        self.next.push(result, cx)
    }
    fn push_all(&mut self, records: &[A::In], cx: &mut StageCx) -> Result<(), (usize, StageError)> {
        for (n, part) in records.chunks(HANDOFF).enumerate() {
            self.run(part.iter().cloned(), cx)
                .map_err(|(i, e)| (n * HANDOFF + i, e))?;
        }
        Ok(())
    }
    fn push_many(
        &mut self,
        records: &mut Vec<A::In>,
        cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        self.run_chunked(records.drain(..), cx)
    }
    keyed_table_hooks!();
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.open(cx)
    }
    pass_through_hooks!();
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
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
        self.next.close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::SinkStage;
    use crate::operator::Sink;
    use std::sync::Mutex;

    /// A running sum of `u64` records per key `record % 10` that panics on record 13.
    struct Touchy;
    impl RunningAggregate for Touchy {
        type Key = u64;
        type In = u64;
        type Out = (u64, u64);
        type State = u64;
        fn apply(&mut self, key: &u64, sum: &mut u64, record: u64) -> (u64, u64) {
            assert!(record != 13, "unlucky record");
            *sum += record;
            (*key, *sum)
        }
    }

    /// A sink keeping what it is written; it fails on the result `(7, 7)` when `fail_on_7`.
    struct Keep {
        seen: Arc<Mutex<Vec<(u64, u64)>>>,
        fail_on_7: bool,
    }
    impl Sink for Keep {
        type In = (u64, u64);
        fn write(&mut self, r: (u64, u64)) -> Result<(), crate::UserError> {
            if self.fail_on_7 && r == (7, 7) {
                return Err("seven".into());
            }
            self.seen.lock().map_err(|_| "poisoned")?.push(r);
            Ok(())
        }
    }

    fn info(operator: &str) -> SubtaskInfo {
        SubtaskInfo {
            operator: Arc::from(operator),
            index: 0,
            parallelism: 1,
            attempt: 0,
        }
    }

    type Seen = Arc<Mutex<Vec<(u64, u64)>>>;
    type Summing = AggregateStage<Touchy, fn(&u64) -> u64>;

    fn summing(fail_on_7: bool) -> (Summing, Seen) {
        let seen = Seen::default();
        let sink = Keep {
            seen: seen.clone(),
            fail_on_7,
        };
        let next: BoxStage<(u64, u64)> = Box::new(SinkStage::new(sink, info("sink")));
        let key_fn: fn(&u64) -> u64 = |r| r % 10;
        let stage = AggregateStage::new(Touchy, Arc::new(key_fn), info("sum"), next);
        (stage, seen)
    }

    #[test]
    fn a_running_aggregate_emits_one_result_per_record_in_order() {
        let (mut stage, seen) = summing(false);
        let mut cx = StageCx::new(0, 4);
        stage.push_all(&[1, 11, 2, 21], &mut cx).expect("pushed");
        let mut more = vec![1, 12];
        stage.push_many(&mut more, &mut cx).expect("pushed");
        stage.push(3, &mut cx).expect("pushed");
        let want = [(1, 1), (1, 12), (2, 2), (1, 33), (1, 34), (2, 14), (3, 3)];
        assert_eq!(*seen.lock().expect("seen"), want);
        assert_eq!(stage.distinct_keys(), 3);
    }

    #[test]
    fn a_panicking_aggregate_names_its_record_after_handing_on_the_results_before_it() {
        let (mut stage, seen) = summing(false);
        let mut cx = StageCx::new(0, 4);
        let (at, e) = stage.push_all(&[1, 2, 13, 4], &mut cx).expect_err("panics");
        assert_eq!((at, &*e.operator), (2, "sum"));
        assert_eq!(*seen.lock().expect("seen"), [(1, 1), (2, 2)]);
        let (at, _) = stage
            .push_many(&mut vec![5, 13], &mut cx)
            .expect_err("panics");
        assert_eq!(at, 1);
        // Past the first hand-off: the index counts from the start of the batch.
        let long: Vec<u64> = (0..200).map(|i| if i == 130 { 13 } else { 20 }).collect();
        let before = seen.lock().expect("seen").len();
        let (at, _) = stage.push_all(&long, &mut cx).expect_err("panics");
        assert_eq!(at, 130);
        assert_eq!(seen.lock().expect("seen").len() - before, 130);
        // The same for records handed over by value.
        let before = seen.lock().expect("seen").len();
        let (at, _) = stage
            .push_many(&mut long.clone(), &mut cx)
            .expect_err("panics");
        assert_eq!(at, 130);
        assert_eq!(seen.lock().expect("seen").len() - before, 130);
    }

    #[test]
    fn a_failing_sink_names_the_input_record_of_its_result() {
        let (mut stage, seen) = summing(true);
        let mut cx = StageCx::new(0, 4);
        let (at, e) = stage
            .push_all(&[1, 2, 7, 4], &mut cx)
            .expect_err("the sink fails");
        assert_eq!((at, &*e.operator), (2, "sink"));
        assert_eq!(*seen.lock().expect("seen"), [(1, 1), (2, 2)]);
    }

    #[test]
    fn aggregate_state_survives_a_snapshot_and_a_rekey() {
        let (mut stage, _) = summing(false);
        let mut cx = StageCx::new(0, 4);
        stage.push_all(&[1, 2, 3, 11], &mut cx).expect("pushed");
        let mut entries = Vec::new();
        stage.snapshot(1, &mut entries).expect("snapshot");
        let (mut restored, seen) = summing(false);
        restored
            .restore(&mut entries.iter(), None)
            .expect("restored");
        restored.push(21, &mut cx).expect("pushed");
        assert_eq!(*seen.lock().expect("seen"), [(1, 33)]);
        // Keep only key 1 (by its hash), and gain nothing.
        let one = 1u64.key_hash();
        let gained = [Vec::new(), Vec::new()];
        restored
            .rekey(&|h| h == one, &mut gained.iter())
            .expect("rekeyed");
        assert_eq!(restored.distinct_keys(), 1);
    }

    /// Counts per key `record % 10`, sets a timer at 100 and clears the key's state at once;
    /// the timer of key 3 writes its state, the others only read it.
    struct Forgetful;
    impl KeyedOperator for Forgetful {
        type Key = u64;
        type In = u64;
        type Out = (u64, u64);
        type State = u64;
        fn process(
            &mut self,
            _key: &u64,
            count: &mut u64,
            _record: u64,
            out: &mut Output<'_, (u64, u64)>,
        ) -> Result<(), crate::UserError> {
            *count += 1;
            let timers = out.timers()?;
            timers.register_event_time(100);
            timers.clear_state();
            Ok(())
        }
        fn on_timer(
            &mut self,
            key: &u64,
            count: &mut u64,
            _timer: Timer,
            out: &mut Output<'_, (u64, u64)>,
        ) -> Result<(), crate::UserError> {
            if *key == 3 {
                *count = 42;
            }
            out.emit((*key, *count));
            Ok(())
        }
    }

    #[test]
    fn a_timer_of_a_cleared_key_keeps_no_state_unless_it_writes_one() {
        let seen = Seen::default();
        let sink = Keep {
            seen: seen.clone(),
            fail_on_7: false,
        };
        let next: BoxStage<(u64, u64)> = Box::new(SinkStage::new(sink, info("sink")));
        let key_fn: fn(&u64) -> u64 = |r| r % 10;
        let mut stage = KeyedStage::new(Forgetful, Arc::new(key_fn), info("forget"), next);
        let mut cx = StageCx::new(0, 4);
        for r in [1, 2, 3] {
            stage.push(r, &mut cx).expect("pushed");
        }
        assert_eq!(stage.distinct_keys(), 0, "every key cleared its state");
        stage.on_watermark(100, &mut cx).expect("timers fired");
        let mut fired = seen.lock().expect("seen").clone();
        fired.sort_unstable();
        assert_eq!(fired, [(1, 0), (2, 0), (3, 42)]);
        assert_eq!(
            stage.distinct_keys(),
            1,
            "only the key whose timer wrote its state holds one"
        );
    }
}
