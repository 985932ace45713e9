//! Rescaling in place: only the rescaled operator, the routers in front of it and the inputs
//! behind it are touched; the rest of the job keeps running, nothing restarts, and the output
//! is exact. A job whose input partly finished is rescaled by a restart from a savepoint.

use crate::common;

use riffle::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

const N: u64 = 400_000;
const KEYS: u64 = 5_000;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

/// Each key's final count from a running count's updates, checked to be one per record.
fn finals(updates: &[(u64, u64)]) -> HashMap<u64, u64> {
    assert_eq!(updates.len() as u64, N, "every record counted exactly once");
    let mut finals: HashMap<u64, u64> = HashMap::new();
    for &(k, n) in updates {
        let e = finals.entry(k).or_default();
        *e = (*e).max(n);
    }
    finals
}

fn expected() -> HashMap<u64, u64> {
    let mut expect: HashMap<u64, u64> = HashMap::new();
    for i in 0..N {
        *expect.entry(key(i)).or_default() += 1;
    }
    expect
}

/// A job named `name` with checkpoints every 20 ms (in memory).
fn env(name: &str) -> StreamEnv {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = name.to_string();
        c.batch_size = 128;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)));
    });
    env
}

/// `(key, 1)` for every record, paced (1 ms per `every` records) so that rescales land while
/// input remains.
fn paced_records(env: &StreamEnv, every: u64) -> DataStream<(u64, u64)> {
    env.generate(N, move |i| {
        if i % every == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        (key(i), 1u64)
    })
}

/// A running count per key at parallelism `p`, collected.
fn count(records: DataStream<(u64, u64)>, p: usize) -> riffle::prelude::CollectHandle<(u64, u64)> {
    records
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(p)
        .collect()
}

#[test]
fn a_rescale_in_place_leaves_the_rest_of_the_job_running() {
    common::init_logging();
    let env = env("in-place");
    // Branch A: the keyed count that is rescaled.
    let counts = count(paced_records(&env, 1_000).name("a-source"), 4);
    // Branch B: an independent pipeline no rescale of `count` may touch.
    let copies = env
        .generate(N, |i| {
            if i % 1_000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            i
        })
        .name("b-source")
        .parallelism(2)
        .map(|i| i * 2)
        .name("b-map")
        .parallelism(2)
        .collect();
    let mut handle = env.start().expect("start");
    let b_tasks = handle
        .chaos()
        .tasks()
        .iter()
        .filter(|(c, _)| c.contains("b-map"))
        .count();
    assert_eq!(b_tasks, 2);
    let mut from = 4;
    // A chaos handle taken before the rescales addresses the subtasks after them too.
    let early = handle.chaos();
    for p in [6usize, 2] {
        let before = handle.chaos().tasks().len();
        handle.wait_until(|pr| pr.checkpoints >= 2);
        let r = handle.rescale("count", p).expect("rescale");
        let f = r.in_place.expect("in place");
        println!(
            "count {from} -> {p}: {:?}, {} of {} keys moved, pause {:.1} ms",
            f,
            r.state.keys_moved,
            r.state.keys,
            r.pause.as_secs_f64() * 1e3
        );
        // The two a-sources re-route, the count subtasks that stay re-key; branch B is not
        // touched.
        assert_eq!(f.rewired, 2 + from.min(p));
        assert_eq!(
            (f.started, f.retired),
            (p.saturating_sub(from), from.saturating_sub(p))
        );
        assert_eq!(f.untouched, b_tasks);
        assert_eq!(f.rewired + f.retired + f.untouched, before);
        assert_eq!(handle.chaos().tasks().len(), before + f.started - f.retired);
        assert_eq!(early.tasks(), handle.chaos().tasks());
        let (moved, ideal) = r.state.moved_vs_ideal();
        assert!(moved <= ideal * 1.25, "{moved:.3} > 1.25 × {ideal:.3}");
        from = p;
    }
    let result = handle.wait().expect("finishes");
    assert!(result.restarts.is_empty() && result.recoveries.is_empty());
    assert!(result
        .subtasks
        .iter()
        .all(|s| s.restarts == 0 && s.recreated == 0));
    assert_eq!(
        result
            .subtasks
            .iter()
            .filter(|s| s.chain.contains("count"))
            .count(),
        2,
        "the job finished at parallelism 2"
    );
    assert_eq!(finals(&counts.take()), expected());
    let mut copies = copies.take();
    copies.sort_unstable();
    assert!(copies.iter().copied().eq((0..N).map(|i| i * 2)));
}

#[test]
fn a_job_whose_input_partly_finished_is_rescaled_by_a_restart() {
    common::init_logging();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "partly-finished".to_string();
        c.batch_size = 128;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir.path()));
    });
    let records = env.generate(N, |i| {
        // Only the first source subtask's share is paced: the second finishes at once.
        if i < N / 2 && i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        (key(i), 1u64)
    });
    let counts = count(records, 3);
    let mut handle = env.start().expect("start");
    let chaos = handle.chaos();
    let fast = chaos.find("generate", 1).expect("the second source");
    chaos.wait_until(|pr| !pr.active(fast) && pr.checkpoints >= 2);
    let r = handle.rescale("count", 5).expect("rescale");
    assert!(r.in_place.is_none(), "rescaled by a restart");
    assert!(r.before.is_some());
    assert_eq!((r.state.from, r.state.to), (3, 5));
    let mut updates = r.before.map(|_| counts.take()).unwrap_or_default();
    handle.wait().expect("finishes");
    updates.extend(counts.take());
    assert_eq!(finals(&updates), expected());
}

/// Where a fault lands in a rescale.
#[derive(Clone, Copy, Debug)]
enum When {
    /// While the sources hold for the rescale's checkpoint.
    Holding,
    /// Right after the switch to the new plan.
    Switched,
}

/// What the fault is.
#[derive(Clone, Copy, Debug)]
enum What {
    /// A keyed subtask is stopped from outside (restarted from the latest checkpoint).
    StopSubtask,
    /// A worker thread stops: its subtasks are re-created from the plan in force.
    StopWorker,
}

#[test]
fn a_fault_at_each_step_of_a_rescale_is_recovered_exactly() {
    common::init_logging();
    for (when, what, from, to) in [
        (When::Holding, What::StopSubtask, 3, 5),
        (When::Switched, What::StopSubtask, 3, 5),
        (When::Switched, What::StopSubtask, 5, 2),
        (When::Switched, What::StopWorker, 3, 5),
        (When::Holding, What::StopWorker, 5, 2),
    ] {
        let env = env("rescale-faults");
        env.configure(|c| {
            c.workers = Some(3);
            // Rare checkpoints: a recovery right after the switch restores the checkpoint the
            // rescale was aligned at, fitted to the new plan.
            c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(300)));
            c.restart = common::chaos_restarts(RestartKind::OneForAll);
        });
        let counts = count(paced_records(&env, 500), from);
        let mut handle = env.start().expect("start");
        let chaos = handle.chaos();
        chaos.wait_until(|pr| pr.checkpoints >= 1);
        // The keyed subtask 0 is the third task (after the two sources) in every plan.
        let victim = chaos.find("count", 0).expect("a keyed subtask");
        let faults = chaos.clone();
        let injector = std::thread::spawn(move || {
            faults.wait_until(|pr| match when {
                When::Holding => pr.rescales_held >= 1,
                When::Switched => pr.rescales_switched >= 1,
            });
            match what {
                What::StopSubtask => faults.stop(victim),
                What::StopWorker => faults.stop_worker(0),
            }
        });
        let r = handle.rescale("count", to).expect("rescale");
        injector.join().expect("injector");
        let result = handle.wait().expect("finishes");
        println!(
            "{when:?} / {what:?}, {from} -> {to}: {:?}; recoveries {}, workers stopped {}, pause {:.1} ms",
            r.in_place,
            result.recoveries.len(),
            result.workers_stopped,
            r.pause.as_secs_f64() * 1e3
        );
        assert!(r.in_place.is_some(), "{when:?} / {what:?}: in place");
        assert_eq!((r.state.from, r.state.to), (from, to));
        assert!(
            !result.recoveries.is_empty(),
            "{when:?} / {what:?}: the fault really happened"
        );
        assert_eq!(finals(&counts.take()), expected(), "{when:?} / {what:?}");
    }
}

/// A source read twice (its routers share one output list, so rescaling the first consumer
/// shifts the second router's channels) feeding two keyed stages in a row: rescaling the
/// middle and the last keyed operator in place keeps every output exact.
#[test]
fn shared_routers_and_keyed_stages_in_a_row_rescale_exactly() {
    common::init_logging();
    let env = env("in-place-shapes");
    let records = paced_records(&env, 1_000).parallelism(2);
    // Consumer 1: a running count per key, then a running count of updates per key bucket.
    let buckets = records
        .clone()
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(3)
        .key_by(|r: &(u64, u64)| r.0 % 7)
        .fold(0u64, |n, _| *n += 1)
        .name("buckets")
        .parallelism(2)
        .collect();
    // Consumer 2: the records themselves, through the second router of the source.
    let copies = records.map(|r| r.0).name("copy").parallelism(3).collect();
    let mut handle = env.start().expect("start");
    for (op, p) in [
        ("count", 5usize),
        ("buckets", 3),
        ("count", 2),
        ("buckets", 1),
    ] {
        handle.wait_until(|pr| pr.checkpoints >= 2);
        let before = handle.progress().checkpoints;
        let r = handle.rescale(op, p).expect("rescale");
        let f = r.in_place.expect("in place");
        println!(
            "{op} -> {p}: {f:?}, {} of {} keys moved",
            r.state.keys_moved, r.state.keys
        );
        assert_eq!(r.state.to, p);
        handle.wait_until(|pr| pr.checkpoints >= before + 2);
    }
    let result = handle.wait().expect("finishes");
    assert!(result.restarts.is_empty() && result.recoveries.is_empty());
    // Bucket b's last count is the number of count updates (= records) whose key is in b.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (b, n) in buckets.take() {
        let e = last.entry(b).or_default();
        *e = (*e).max(n);
    }
    let mut expect: HashMap<u64, u64> = HashMap::new();
    for i in 0..N {
        *expect.entry(key(i) % 7).or_default() += 1;
    }
    assert_eq!(last, expect);
    let mut copies = copies.take();
    copies.sort_unstable();
    let mut want: Vec<u64> = (0..N).map(key).collect();
    want.sort_unstable();
    assert_eq!(copies, want);
}

/// Two operators with the same name: a rescale by that name is refused (it would otherwise
/// rescale whichever came first) and nothing changes.
#[test]
fn a_rescale_by_an_ambiguous_name_is_refused() {
    let env = StreamEnv::new();
    env.configure(|c| c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50))));
    env.sequence(0..1_000)
        .map(|x: u64| x + 1)
        .rebalance()
        .map(|x: u64| x * 2)
        .count();
    let mut handle = env.start().expect("start");
    let err = handle.rescale("map", 2).expect_err("ambiguous");
    assert!(
        matches!(&err, JobError::Graph(riffle::errors::GraphError::Rescale { reason, .. }) if reason.contains("several operators")),
        "{err:?}"
    );
    handle.wait().expect("the job runs on");
}

/// Set once the new subtask of [`StallingCount`] stalled its start.
static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How long the stalled start takes: past the rescale's deadline of 1 s.
const STALL: Duration = Duration::from_secs(3);

/// A running count per key whose subtask 2 — the one a rescale 2 → 3 adds — takes longer to
/// start than the rescale's deadline, once.
struct StallingCount;

impl KeyedOperator for StallingCount {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64);
    type State = u64;

    fn process(
        &mut self,
        key: &u64,
        state: &mut u64,
        record: (u64, u64),
        out: &mut Output<'_, (u64, u64)>,
    ) -> Result<(), UserError> {
        *state += record.1;
        out.emit((*key, *state));
        Ok(())
    }

    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        if info.index == 2 && !STALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(STALL);
        }
        Ok(())
    }
}

#[test]
fn a_new_subtask_that_never_confirms_a_rescale_makes_the_job_recover_exactly() {
    // A rescale in place whose new subtask does not report ready within the rescale's
    // deadline (1 s here; its start stalls 3 s): the sources must not stay held and the job
    // must not hang — it recovers from the rescaled checkpoint and finishes exactly.
    common::init_logging();
    let env = env("stalled-rescale");
    env.configure(|c| {
        c.ready_timeout = Duration::from_secs(15);
        if let Some(cp) = &mut c.checkpoint {
            cp.rescale_timeout = Duration::from_secs(1);
        }
    });
    let counts = paced_records(&env, 1_000)
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .process(|_: &SubtaskInfo| StallingCount)
        .name("count")
        .parallelism(2)
        .collect();
    let mut handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 2);
    let asked = std::time::Instant::now();
    let r = handle.rescale("count", 3);
    println!(
        "rescale 2 -> 3 with a stalled new subtask: {:?} after {} ms",
        r.as_ref().map(|r| r.in_place.is_some()),
        asked.elapsed().as_millis()
    );
    let result = handle.wait().expect("the job finishes");
    assert!(
        STALLED.load(std::sync::atomic::Ordering::SeqCst),
        "the new subtask's start stalled"
    );
    println!("recoveries: {:?}", result.recoveries);
    assert!(
        !result.recoveries.is_empty(),
        "the subtask that never confirmed made the job recover"
    );
    assert_eq!(finals(&counts.take()), expected());
}

/// How many subtasks of the gated source reached its hold.
static GATED_HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Set by the test to let the gated source emit the second halves.
static GATED_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn a_rescale_of_a_job_with_no_input_ready_is_answered_without_waiting_for_a_record() {
    use std::sync::atomic::Ordering::SeqCst;
    common::init_logging();
    let timeout = Duration::from_secs(30);
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "idle-rescale".to_string();
        c.batch_size = 128;
        let mut cp = CheckpointConfig::every(Duration::from_millis(20));
        cp.rescale_timeout = timeout;
        c.checkpoint = Some(cp);
    });
    // Records `(i % KEYS, 1)`, idle halfway through each source subtask's share until opened.
    let records = env.source(|_: &SubtaskInfo| {
        common::gated::Gated::new(N, KEYS, &GATED_OPEN).counting_holds(&GATED_HELD)
    });
    let counts = count(records, 2);
    let mut handle = env.start().expect("start");
    // The first half is through and checkpointed; the source has nothing ready.
    let idle_from = handle
        .wait_until(|_| GATED_HELD.load(SeqCst) == 2)
        .checkpoints;
    handle.wait_until(|pr| pr.checkpoints >= idle_from + 2);
    let r = handle.rescale("count", 3).expect("rescale");
    assert!(r.in_place.is_some(), "rescaled in place");
    assert_eq!((r.state.from, r.state.to), (2, 3));
    // Before, the answer waited for a record and came only at the rescale's deadline.
    assert!(
        r.pause < timeout,
        "answered before the rescale's deadline ({timeout:?}): pause {:?}",
        r.pause
    );
    GATED_OPEN.store(true, SeqCst);
    handle.wait().expect("finishes at parallelism 3");
    let each: HashMap<u64, u64> = (0..KEYS).map(|k| (k, N / KEYS)).collect();
    assert_eq!(
        finals(&counts.take()),
        each,
        "every key counted N / KEYS times"
    );
}
