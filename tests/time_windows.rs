//! Windows against a sequential reference: tumbling, sliding and session windows with
//! reduce, aggregate and process, on generated input with bounded disorder and late records,
//! for window parallelisms 1, 2 and 4 (proptest over inputs and disorder).
//!
//! The reference ([`oracle`]) is written independently of the operator: it keeps every
//! accepted record and recomputes a window's value from them when it fires (no panes, no
//! accumulators, no timers). What makes the run comparable record for record is the
//! watermark: one source subtask emits the input in order with batches of one record, so the
//! window operator sees, before record `i`, exactly the watermark `max(ts[..i]) - bound - 1`,
//! whatever its parallelism; the reference uses the same.

use crate::common;

use proptest::prelude::*;
use riffle::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One generated record: key, timestamp, value.
pub type Rec = (u32, i64, i64);

/// The window kinds under test.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Tumbling windows of this size (ms).
    Tumbling(i64),
    /// Sliding windows of (size, slide) ms.
    Sliding(i64, i64),
    /// Session windows with this gap (ms).
    Session(i64),
}

impl Kind {
    fn assigner(self) -> WindowAssigner {
        let ms = |x: i64| Duration::from_millis(x as u64);
        match self {
            Kind::Tumbling(s) => WindowAssigner::tumbling(ms(s)),
            Kind::Sliding(s, d) => WindowAssigner::sliding(ms(s), ms(d)),
            Kind::Session(g) => WindowAssigner::session(ms(g)),
        }
    }
}

/// What a window computes in these tests.
#[derive(Clone, Copy, Debug)]
pub enum Func {
    /// reduce: the sum of values.
    Reduce,
    /// aggregate: (count, sum, max).
    Aggregate,
    /// process: the sorted values.
    Process,
}

/// A window's value in these tests, whatever the function.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Val {
    /// From reduce.
    Sum(i64),
    /// From aggregate.
    Stats(u64, i64, i64),
    /// From process.
    Sorted(Vec<i64>),
}

fn value_of(func: Func, values: &[i64]) -> Val {
    match func {
        Func::Reduce => Val::Sum(values.iter().sum()),
        Func::Aggregate => Val::Stats(
            values.len() as u64,
            values.iter().sum(),
            values.iter().copied().max().unwrap_or(i64::MIN),
        ),
        Func::Process => {
            let mut v = values.to_vec();
            v.sort_unstable();
            Val::Sorted(v)
        }
    }
}

/// (count, sum, max) over values.
pub struct Stats;
impl AggregateFunction<Rec> for Stats {
    type Acc = (u64, i64, i64);
    type Out = Val;
    fn create(&self) -> Self::Acc {
        (0, 0, i64::MIN)
    }
    fn add(&self, acc: &mut Self::Acc, r: Rec) {
        acc.0 += 1;
        acc.1 += r.2;
        acc.2 = acc.2.max(r.2);
    }
    fn merge(&self, acc: &mut Self::Acc, o: &Self::Acc) {
        acc.0 += o.0;
        acc.1 += o.1;
        acc.2 = acc.2.max(o.2);
    }
    fn result(&self, acc: &Self::Acc) -> Val {
        Val::Stats(acc.0, acc.1, acc.2)
    }
}

/// A window firing as compared: (key, start, end, firing, value).
pub type Fired = (u32, i64, i64, Firing, Val);

/// The input's settings.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The window kind.
    pub kind: Kind,
    /// The window function.
    pub func: Func,
    /// The watermark's out-of-orderness bound (ms).
    pub bound: i64,
    /// Allowed lateness (ms).
    pub lateness: i64,
}

/// The sequential reference: every firing and every late record.
pub fn oracle(setup: Setup, input: &[Rec]) -> (Vec<Fired>, Vec<Rec>) {
    let mut o = Oracle {
        setup,
        accepted: BTreeMap::new(),
        pending: BTreeSet::new(),
        fired_sessions: BTreeSet::new(),
        out: Vec::new(),
        late: Vec::new(),
    };
    let mut wm = i64::MIN;
    let mut max = i64::MIN;
    for &r in input {
        let now = if max == i64::MIN {
            i64::MIN
        } else {
            max - setup.bound - 1
        };
        o.advance(wm, now);
        wm = wm.max(now);
        o.record(r, wm);
        max = max.max(r.1);
    }
    o.advance(wm, i64::MAX);
    let mut out = o.out;
    out.sort();
    (out, o.late)
}

struct Oracle {
    setup: Setup,
    /// Accepted (not late) records per key: (ts, value).
    accepted: BTreeMap<u32, Vec<(i64, i64)>>,
    /// Tumbling/sliding windows with records that have not fired on time: (end, key, start).
    pending: BTreeSet<(i64, u32, i64)>,
    /// Session windows that fired: (key, start, end).
    fired_sessions: BTreeSet<(u32, i64, i64)>,
    out: Vec<Fired>,
    late: Vec<Rec>,
}

impl Oracle {
    fn windows(&self, ts: i64) -> Vec<(i64, i64)> {
        let (size, slide) = match self.setup.kind {
            Kind::Tumbling(s) => (s, s),
            Kind::Sliding(s, d) => (s, d),
            Kind::Session(_) => unreachable!("sessions are not aligned windows"),
        };
        let mut start = ts.div_euclid(slide) * slide;
        let mut v = Vec::new();
        while start + size > ts {
            v.push((start, start + size));
            start -= slide;
        }
        v
    }

    fn value(&self, key: u32, start: i64, end: i64) -> Val {
        let values: Vec<i64> = self.accepted[&key]
            .iter()
            .filter(|(ts, _)| *ts >= start && *ts < end)
            .map(|(_, v)| *v)
            .collect();
        value_of(self.setup.func, &values)
    }

    /// A key's sessions over its accepted records: (start, end).
    fn sessions(&self, key: u32) -> Vec<(i64, i64)> {
        let Kind::Session(gap) = self.setup.kind else {
            unreachable!()
        };
        let mut ts: Vec<i64> = self
            .accepted
            .get(&key)
            .map_or(Vec::new(), |v| v.iter().map(|(t, _)| *t).collect());
        ts.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for t in ts {
            match out.last_mut() {
                Some(last) if t <= last.1 => last.1 = last.1.max(t + gap),
                _ => out.push((t, t + gap)),
            }
        }
        out
    }

    /// The clock moves from `from` to `to`: windows whose end it passes fire on time.
    fn advance(&mut self, from: i64, to: i64) {
        if to <= from {
            return;
        }
        if let Kind::Session(_) = self.setup.kind {
            return self.advance_sessions(to);
        }
        while let Some(&(end, key, start)) = self.pending.first() {
            if end - 1 > to {
                break;
            }
            self.pending.pop_first();
            let v = self.value(key, start, end);
            self.out.push((key, start, end, Firing::OnTime, v));
        }
    }

    fn advance_sessions(&mut self, to: i64) {
        let lateness = self.setup.lateness;
        let keys: Vec<u32> = self.accepted.keys().copied().collect();
        for key in keys {
            for (s, e) in self.sessions(key) {
                if e - 1 <= to && self.fired_sessions.insert((key, s, e)) {
                    let v = self.value(key, s, e);
                    self.out.push((key, s, e, Firing::OnTime, v));
                }
                if (e - 1).saturating_add(lateness) <= to {
                    // Expired: its records are forgotten.
                    let recs = self.accepted.get_mut(&key).expect("key");
                    recs.retain(|(t, _)| *t < s || *t >= e);
                    self.fired_sessions.remove(&(key, s, e));
                }
            }
        }
    }

    fn record(&mut self, r: Rec, wm: i64) {
        if let Kind::Session(_) = self.setup.kind {
            return self.session_record(r, wm);
        }
        let (key, ts, value) = r;
        let lateness = self.setup.lateness;
        let windows = self.windows(ts);
        if windows
            .iter()
            .all(|&(_, e)| (e - 1).saturating_add(lateness) <= wm)
        {
            self.late.push(r);
            return;
        }
        self.accepted.entry(key).or_default().push((ts, value));
        for (s, e) in windows {
            if e - 1 > wm {
                self.pending.insert((e, key, s));
            } else if (e - 1).saturating_add(lateness) > wm {
                let v = self.value(key, s, e);
                self.out.push((key, s, e, Firing::Late, v));
            }
        }
    }

    fn session_record(&mut self, r: Rec, wm: i64) {
        let (key, ts, value) = r;
        self.accepted.entry(key).or_default().push((ts, value));
        let (s, e) = self
            .sessions(key)
            .into_iter()
            .find(|&(s, e)| ts >= s && ts < e)
            .expect("the record's session");
        if (e - 1).saturating_add(self.setup.lateness) <= wm {
            // Too late: taken out again.
            let recs = self.accepted.get_mut(&key).expect("key");
            let at = recs
                .iter()
                .rposition(|x| *x == (ts, value))
                .expect("just added");
            recs.remove(at);
            self.late.push(r);
            return;
        }
        if e - 1 <= wm {
            let v = self.value(key, s, e);
            self.out.push((key, s, e, Firing::Late, v));
            self.fired_sessions.insert((key, s, e));
        }
    }
}

/// Input: `n` records over `keys` keys, time advancing 0–`step` ms per record, each record
/// up to `bound` ms out of order, and one in about 30 later than the bound (up to `late_by`
/// ms more; none with `late_by` 0).
pub fn generate(seed: u64, n: usize, keys: u32, step: i64, bound: i64, late_by: i64) -> Vec<Rec> {
    let mut rng = Rng(seed);
    let mut base = 1_000_000i64;
    (0..n)
        .map(|i| {
            base += rng.below(step as u64 + 1) as i64;
            let key = rng.below(keys as u64) as u32;
            let ts = if late_by > 0 && rng.below(30) == 0 {
                base - bound - 1 - rng.below(late_by as u64) as i64
            } else {
                base - rng.below(bound as u64 + 1) as i64
            };
            (key, ts, (i as i64 % 97) - 20)
        })
        .collect()
}

/// The window job over `input` at window parallelism `p`; returns the handles of firings
/// and late records.
pub fn job(
    env: &StreamEnv,
    setup: Setup,
    input: Vec<Rec>,
    p: usize,
) -> (CollectHandle<Fired>, CollectHandle<Rec>) {
    env.set_parallelism(p);
    let bound = Duration::from_millis(setup.bound as u64);
    let windowed = env
        .from_collection(input)
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            bound,
            |r: &Rec| r.1,
        ))
        .parallelism(1)
        .key_by(|r: &Rec| r.0)
        .window(setup.kind.assigner())
        .allowed_lateness(Duration::from_millis(setup.lateness as u64));
    match setup.func {
        Func::Reduce => finish(
            windowed.reduce(|a: &Rec, b: Rec| (a.0, a.1.max(b.1), a.2 + b.2)),
            |r: Rec| Val::Sum(r.2),
        ),
        Func::Aggregate => finish(windowed.aggregate(Stats), |v: Val| v),
        Func::Process => finish(
            windowed.process(|_k: &u32, _w: &TimeWindow, rs: &[Rec]| {
                let mut v: Vec<i64> = rs.iter().map(|r| r.2).collect();
                v.sort_unstable();
                Val::Sorted(v)
            }),
            |v: Val| v,
        ),
    }
}

fn finish<R: Data>(
    w: Windowed<u32, R, Rec>,
    val: fn(R) -> Val,
) -> (CollectHandle<Fired>, CollectHandle<Rec>) {
    let late = w.late_data().collect();
    let fired = w
        .results()
        .map(move |r| (r.key, r.window.start, r.window.end, r.firing, val(r.value)))
        .collect();
    (fired, late)
}

/// Runs the job once; returns sorted firings and sorted late records.
pub fn run(
    setup: Setup,
    input: &[Rec],
    p: usize,
    checkpoints: Option<Duration>,
) -> (Vec<Fired>, Vec<Rec>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.batch_size = 1;
        c.checkpoint = checkpoints.map(CheckpointConfig::every);
    });
    let (fired, late) = job(&env, setup, input.to_vec(), p);
    env.execute().expect("the window job runs");
    (common::sorted(fired.take()), common::sorted(late.take()))
}

fn check(setup: Setup, input: &[Rec]) -> Result<(), TestCaseError> {
    let (want, mut want_late) = oracle(setup, input);
    want_late.sort();
    prop_assert!(!want.is_empty());
    let late_firings = want.iter().filter(|w| w.3 == Firing::Late).count();
    println!(
        "{setup:?}: {} records, {} firings ({late_firings} late updates), {} late records",
        input.len(),
        want.len(),
        want_late.len()
    );
    for p in [1, 2, 4] {
        let (got, got_late) = run(setup, input, p, None);
        prop_assert_eq!(
            &got_late,
            &want_late,
            "late records, parallelism {}, {:?}",
            p,
            setup
        );
        if got != want {
            let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
            prop_assert!(
                false,
                "parallelism {p}, {setup:?}: {} firings, want {}; missing {missing:?}, extra {extra:?}",
                got.len(),
                want.len()
            );
        }
    }
    Ok(())
}

fn input_strategy() -> impl Strategy<Value = (u64, i64, i64)> {
    // (seed, time step per record, out-of-orderness bound)
    (any::<u64>(), 1i64..=20, 0i64..=200)
}

fn cases() -> ProptestConfig {
    let cases = std::env::var("RIFFLE_WINDOW_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    ProptestConfig::with_cases(cases)
}

fn setup(kind: Kind, func: Func, bound: i64) -> Setup {
    Setup {
        kind,
        func,
        bound,
        lateness: 150,
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn tumbling_reduce_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 6, step, bound, 400);
        check(setup(Kind::Tumbling(100), Func::Reduce, bound), &input)?;
    }

    #[test]
    fn tumbling_aggregate_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 6, step, bound, 400);
        check(setup(Kind::Tumbling(250), Func::Aggregate, bound), &input)?;
    }

    #[test]
    fn sliding_aggregate_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 6, step, bound, 900);
        check(setup(Kind::Sliding(300, 50), Func::Aggregate, bound), &input)?;
    }

    #[test]
    fn sliding_process_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1200, 6, step, bound, 400);
        check(setup(Kind::Sliding(200, 80), Func::Process, bound), &input)?;
    }

    #[test]
    fn session_reduce_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 12, step * 3, bound, 400);
        check(setup(Kind::Session(120), Func::Reduce, bound), &input)?;
    }

    #[test]
    fn tumbling_process_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1200, 6, step, bound, 400);
        check(setup(Kind::Tumbling(150), Func::Process, bound), &input)?;
    }

    #[test]
    fn sliding_reduce_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 6, step, bound, 700);
        check(setup(Kind::Sliding(240, 60), Func::Reduce, bound), &input)?;
    }

    #[test]
    fn session_aggregate_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1500, 12, step * 3, bound, 400);
        check(setup(Kind::Session(100), Func::Aggregate, bound), &input)?;
    }

    #[test]
    fn session_process_equals_the_reference((seed, step, bound) in input_strategy()) {
        let input = generate(seed, 1200, 12, step * 3, bound, 400);
        check(setup(Kind::Session(90), Func::Process, bound), &input)?;
    }
}

/// A seeded generator for the inputs (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// Emits its records one per call, each followed by its own watermark (the record's
/// timestamp less one): a source that knows its time.
struct SelfTimed {
    records: Vec<Rec>,
    next: usize,
}

impl Source for SelfTimed {
    type Out = Rec;
    fn produce(&mut self, out: &mut Output<'_, Rec>) -> Result<SourceStatus, UserError> {
        let Some(&r) = self.records.get(self.next) else {
            return Ok(SourceStatus::Finished);
        };
        out.emit(r);
        out.emit_watermark(r.1 - 1)?;
        self.next += 1;
        Ok(SourceStatus::More)
    }
}

/// Records of key 1: the third is behind the watermark the second allowed (far too late
/// for its window), so it can only come out as late data if that watermark arrived.
const TIMED: [Rec; 4] = [(1, 100, 1), (1, 1_500, 0), (1, 200, 5), (1, 1_700, 2)];

fn windows_of(stream: DataStream<Rec>) -> (CollectHandle<(i64, i64)>, CollectHandle<Rec>) {
    let w = stream
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling(Duration::from_secs(1)))
        .reduce(|a: &Rec, b: Rec| (a.0, a.1, a.2 + b.2));
    let late = w.late_data().collect();
    (
        w.results().map(|r| (r.window.start, r.value.2)).collect(),
        late,
    )
}

#[test]
fn a_source_that_emits_its_own_watermarks_drives_windows_and_lateness() {
    let env = StreamEnv::new();
    env.set_parallelism(1);
    let stream = env
        .source(|_: &SubtaskInfo| SelfTimed {
            records: TIMED.to_vec(),
            next: 0,
        })
        .with_timestamps(|r: &Rec| r.1);
    let (fired, late) = windows_of(stream);
    env.configure(|c| c.batch_size = 1);
    env.execute().expect("runs");
    assert_eq!(common::sorted(fired.take()), vec![(0, 1), (1_000, 2)]);
    assert_eq!(
        late.take(),
        vec![(1, 200, 5)],
        "behind the source's watermark"
    );
}

#[test]
fn a_custom_generator_makes_punctuated_watermarks() {
    // Only records with value 0 carry a watermark (their timestamp): the record after the
    // marker at 1,500 is late, exactly as with the source's own watermarks.
    let env = StreamEnv::new();
    env.set_parallelism(1);
    env.configure(|c| c.batch_size = 1);
    let stream = env
        .from_collection(TIMED.to_vec())
        .assign_timestamps_and_watermarks(WatermarkStrategy::for_generator(
            |r: &Rec| r.1,
            |r: &Rec, ts| (r.2 == 0).then_some(ts),
        ));
    let (fired, late) = windows_of(stream);
    env.execute().expect("runs");
    assert_eq!(common::sorted(fired.take()), vec![(0, 1), (1_000, 2)]);
    assert_eq!(
        late.take(),
        vec![(1, 200, 5)],
        "behind the marker's watermark"
    );
}

#[test]
fn a_count_trigger_fires_early_every_n_records_and_on_time_at_the_end() {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| c.batch_size = 1);
    let input: Vec<Rec> = vec![
        (1, 100, 1),
        (1, 200, 2),
        (1, 300, 3),
        (2, 150, 10),
        (1, 1_200, 7),
    ];
    let fired = env
        .from_collection(input)
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::monotonous(|r: &Rec| r.1))
        .parallelism(1)
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling(Duration::from_secs(1)))
        .trigger(Trigger::count(2))
        .reduce(|a: &Rec, b: Rec| (a.0, a.1, a.2 + b.2))
        .results()
        .map(|w| (w.key, w.window.start, w.firing, w.value.2))
        .collect();
    env.execute().expect("runs");
    assert_eq!(
        common::sorted(fired.take()),
        vec![
            (1, 0, Firing::Early, 3),
            (1, 0, Firing::OnTime, 6),
            (1, 1_000, Firing::OnTime, 7),
            (2, 0, Firing::OnTime, 10),
        ]
    );
}

static EARLY_SEEN: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// Emits two records of one window, then waits (idle) until an early firing was seen.
struct TwoThenWait {
    sent: usize,
}

impl Source for TwoThenWait {
    type Out = Rec;
    fn produce(&mut self, out: &mut Output<'_, Rec>) -> Result<SourceStatus, UserError> {
        if self.sent < 2 {
            self.sent += 1;
            out.emit((1, 100 * self.sent as i64, self.sent as i64));
            return Ok(SourceStatus::More);
        }
        let seen = *EARLY_SEEN.0.lock().map_err(|_| "poisoned")?;
        Ok(if seen {
            SourceStatus::Finished
        } else {
            SourceStatus::Idle
        })
    }
}

#[test]
fn an_interval_trigger_fires_an_open_window_early_by_the_wall_clock() {
    // Event time stands still (the source waits), so only the wall-clock trigger can fire
    // the window before its end; the source ends when the sink saw an early firing.
    let env = StreamEnv::new();
    env.set_parallelism(1);
    let fired = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = fired.clone();
    env.source(|_: &SubtaskInfo| TwoThenWait { sent: 0 })
        .with_timestamps(|r: &Rec| r.1)
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling(Duration::from_secs(1)))
        .trigger(Trigger::every(Duration::from_millis(20)))
        .reduce(|a: &Rec, b: Rec| (a.0, a.1, a.2 + b.2))
        .results()
        .sink_fn(move |w| {
            f.lock().expect("fired").push((w.firing, w.value.2));
            if w.firing == Firing::Early {
                *EARLY_SEEN.0.lock().expect("seen") = true;
                EARLY_SEEN.1.notify_all();
            }
        });
    let handle = env.start().expect("start");
    {
        let g = EARLY_SEEN.0.lock().expect("seen");
        let (_g, t) = EARLY_SEEN
            .1
            .wait_timeout_while(g, Duration::from_secs(30), |s| !*s)
            .expect("seen");
        assert!(!t.timed_out(), "the open window fired early");
    }
    handle.wait().expect("runs");
    let fired = fired.lock().expect("fired").clone();
    assert!(fired.contains(&(Firing::Early, 3)), "{fired:?}");
    assert_eq!(fired.last(), Some(&(Firing::OnTime, 3)), "{fired:?}");
}

#[test]
fn processing_time_windows_count_every_record_once() {
    const N: u64 = 3_000;
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| c.batch_size = 16);
    let fired = env
        .generate(N, |i| {
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            (i % 7, 1u64)
        })
        .key_by(|r: &(u64, u64)| r.0)
        .window(WindowAssigner::tumbling(Duration::from_millis(10)).processing_time())
        .reduce(|a: &(u64, u64), b: (u64, u64)| (a.0, a.1 + b.1))
        .results()
        .map(|w| (w.firing, w.value.1))
        .collect();
    env.execute().expect("runs");
    let fired = fired.take();
    assert!(fired.iter().all(|f| f.0 == Firing::OnTime));
    assert!(
        fired.len() > 7,
        "windows of several wall-clock slices: {}",
        fired.len()
    );
    assert_eq!(
        fired.iter().map(|f| f.1).sum::<u64>(),
        N,
        "every record once"
    );
}

#[test]
fn a_window_without_timestamps_or_with_a_bad_size_is_refused_at_build() {
    let env = StreamEnv::new();
    env.from_collection(vec![(1u32, 1i64, 1i64)])
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::tumbling(Duration::from_secs(1)))
        .reduce(|a: &Rec, _b: Rec| *a)
        .results()
        .sink_fn(drop);
    let err = env.build().expect_err("no timestamps");
    assert!(err.to_string().contains("need timestamps"), "{err}");
    let env = StreamEnv::new();
    env.from_collection(vec![(1u32, 1i64, 1i64)])
        .with_timestamps(|r: &Rec| r.1)
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::sliding(
            Duration::from_secs(1),
            Duration::from_secs(2),
        ))
        .reduce(|a: &Rec, _b: Rec| *a)
        .results()
        .sink_fn(drop);
    let err = env.build().expect_err("slide > size");
    assert!(err.to_string().contains("slide"), "{err}");
}
