//! Checkpoints and exactly-once recovery: crash anything, the committed output stays exact.

use crate::common;

use common::{chaos_restarts, seed, sorted};
use riffle::chaos::{ChaosMonkey, FaultKind};
use riffle::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEYS: u64 = 1000;

/// Keyed running sum, parallelism 4; the sink runs at parallelism 2 (its own chain, so that
/// faults hit sinks too).
fn running_sum(env: &StreamEnv, n: u64) -> riffle::prelude::CollectHandle<(u64, u64)> {
    env.set_parallelism(4);
    env.generate(n, record)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .collect_with_parallelism(2)
}

/// Record `i` of the running sum's input.
fn record(i: u64) -> (u64, u64) {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS, 1u64)
}

/// The running sum's input from a source that, while `gate` is closed, holds (idle, so that
/// barriers still pass) once it reached the middle of its share: the job cannot end before
/// the test opens the gate.
fn gated_running_sum(
    env: &StreamEnv,
    n: u64,
    gate: Arc<AtomicBool>,
) -> riffle::prelude::CollectHandle<(u64, u64)> {
    env.set_parallelism(4);
    env.source(move |info: &SubtaskInfo| {
        let (i, p) = (info.index as u64, info.parallelism as u64);
        let (start, end) = (n * i / p, n * (i + 1) / p);
        Gated {
            next: start,
            hold_at: (start + end) / 2,
            end,
            gate: gate.clone(),
        }
    })
    .key_by(|r: &(u64, u64)| r.0)
    .sum(|r| r.1)
    .collect_with_parallelism(2)
}

/// See [`gated_running_sum`].
struct Gated {
    next: u64,
    hold_at: u64,
    end: u64,
    gate: Arc<AtomicBool>,
}

impl Source for Gated {
    type Out = (u64, u64);
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
        if self.next >= self.hold_at && !self.gate.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Idle);
        }
        for _ in 0..out.budget() {
            if self.next == self.end {
                return Ok(SourceStatus::Finished);
            }
            out.emit(record(self.next));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.next).map(Some)
    }
    fn seek(&mut self, p: &Position) -> Result<(), UserError> {
        self.next = p.decode()?;
        Ok(())
    }
}

trait CollectWith<T> {
    fn collect_with_parallelism(self, p: usize) -> riffle::prelude::CollectHandle<T>;
}

impl<T: Data> CollectWith<T> for DataStream<T> {
    fn collect_with_parallelism(self, p: usize) -> riffle::prelude::CollectHandle<T> {
        self.rebalance()
            .map(|x| x)
            .parallelism(p)
            .name("to_sink")
            .collect()
    }
}

fn check_final_sums(out: &[(u64, u64)], n: u64, seed: u64) {
    let mut finals: HashMap<u64, u64> = HashMap::new();
    for &(k, s) in out {
        let e = finals.entry(k).or_default();
        *e = (*e).max(s);
    }
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for i in 0..n {
        *counts
            .entry(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS)
            .or_default() += 1;
    }
    assert_eq!(
        finals, counts,
        "seed {seed}: the final sum per key must equal its record count"
    );
}

#[test]
fn checkpointing_without_faults_changes_nothing() {
    const N: u64 = 300_000;
    let clean_env = StreamEnv::new();
    let clean = running_sum(&clean_env, N);
    clean_env.execute().expect("clean");
    let env = StreamEnv::new();
    env.configure(|c| c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(5))));
    let out = running_sum(&env, N);
    let result = env.execute().expect("checkpointed run");
    println!(
        "checkpoints: {:?}",
        result
            .checkpoints
            .iter()
            .map(|c| (c.id, c.duration, c.bytes))
            .collect::<Vec<_>>()
    );
    assert!(
        !result.checkpoints.is_empty(),
        "the final checkpoint at least"
    );
    let out = out.take();
    check_final_sums(&out, N, 0);
    assert_eq!(sorted(out), sorted(clean.take()));
}

fn chaos_run(seed: u64) {
    common::init_logging();
    const N: u64 = 2_000_000;
    let clean_env = StreamEnv::new();
    let clean = running_sum(&clean_env, N);
    clean_env.execute().expect("clean");
    let clean = sorted(clean.take());

    let env = StreamEnv::new();
    env.configure(|c| {
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)));
        c.restart = chaos_restarts(RestartKind::OneForOne);
        c.workers = Some(5);
        c.seed = seed;
        // Small batches: many more messages and interleavings, and a slower job, so that the
        // bursts of faults outnumber the checkpoints it takes to finish.
        c.batch_size = 128;
    });
    let out = running_sum(&env, N);
    let job = env.start().expect("start");
    let chaos = job.chaos();
    // Bursts of faults, each sent once the previous recovery let the job run again; between
    // bursts the monkey waits for a checkpoint, so later recoveries restore real state.
    let driver = std::thread::spawn(move || {
        ChaosMonkey::new(seed)
            .faults(120)
            .kinds(&[FaultKind::Panic, FaultKind::Error, FaultKind::Stop])
            .drive(&chaos, 2, 3)
    });
    let result = job
        .wait()
        .unwrap_or_else(|e| panic!("seed {seed}: job failed: {e}"));
    let report = driver.join().expect("chaos driver");
    let out = out.take();
    let restored: Vec<u64> = result
        .recoveries
        .iter()
        .filter_map(|r| r.restored_from)
        .collect();
    let mut times: Vec<Duration> = result
        .recoveries
        .iter()
        .filter_map(|r| r.restore_time)
        .collect();
    times.sort();
    println!(
        "seed {seed}: {report:?}; {} faults fired, {} workers stopped, {} recoveries ({} from a \
         checkpoint, newest {:?}), {} checkpoints, median restore {:?}, {} committed updates",
        result.faults_injected,
        result.workers_stopped,
        result.recoveries.len(),
        restored.len(),
        restored.iter().max(),
        result.checkpoints.len(),
        times.get(times.len() / 2),
        out.len()
    );
    assert!(
        result.faults_injected >= 100,
        "seed {seed}: only {} faults fired",
        result.faults_injected
    );
    assert!(
        result.workers_stopped >= 3,
        "seed {seed}: only {} workers stopped",
        result.workers_stopped
    );
    let recoveries = result.recoveries.len() as u64;
    // The monkey sends a fault only once the previous recovery let the job run again, so
    // every fault that fired started a recovery of its own (worker stops add more).
    assert!(
        recoveries >= result.faults_injected + result.workers_stopped,
        "seed {seed}: {recoveries} recoveries for {} faults and {} worker stops",
        result.faults_injected,
        result.workers_stopped
    );
    assert!(
        result.total_restarts() >= result.faults_injected,
        "seed {seed}: {} restarts for {} faults",
        result.total_restarts(),
        result.faults_injected
    );
    assert!(
        restored.iter().any(|id| *id > 0),
        "seed {seed}: never restored from a checkpoint"
    );
    check_final_sums(&out, N, seed);
    assert_eq!(
        out.len(),
        clean.len(),
        "seed {seed}: number of committed updates"
    );
    assert!(
        sorted(out) == clean,
        "seed {seed}: committed output differs from the clean run"
    );
}

#[test]
fn keyed_running_sum_is_exact_under_chaos() {
    match std::env::var("RIFFLE_CHAOS_SEED") {
        Ok(_) => chaos_run(seed(0)),
        Err(_) => [11, 22, 33].into_iter().for_each(chaos_run),
    }
}

#[test]
fn a_savepoint_starts_another_job_where_it_was_taken() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    // The first job's sources hold at the middle of their shares until the savepoint is
    // taken (a signal, so that the job cannot end first on a busy machine).
    let gate = Arc::new(AtomicBool::new(false));
    let make = |restore: Option<riffle::prelude::RestoreFrom>, open: bool| {
        let env = StreamEnv::new();
        env.configure(|c| {
            c.name = "savepoints".to_string();
            c.batch_size = 64;
            c.checkpoint =
                Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir.path()));
            c.restore = restore;
        });
        let gate = if open {
            Arc::new(AtomicBool::new(true))
        } else {
            gate.clone()
        };
        let out = gated_running_sum(&env, N, gate);
        (env, out)
    };
    let (env, first) = make(None, false);
    let job = env.start().expect("start");
    job.wait_until(|p| p.checkpoints >= 1);
    let id = job.savepoint().expect("savepoint");
    gate.store(true, Ordering::SeqCst);
    let path = job.savepoint_dir(id).expect("checkpoints in a directory");
    job.wait().expect("first job");
    assert_eq!(path, dir.path().join("savepoints").join(format!("sp-{id}")));
    assert!(
        path.join("_metadata").exists(),
        "savepoint {id} is kept at {}",
        path.display()
    );

    let (env, second) = make(Some(riffle::prelude::RestoreFrom::Path(path)), true);
    let result = env.execute().expect("job from the savepoint");
    let (first, second) = (first.take(), second.take());
    println!(
        "savepoint {id}: the first job committed {} updates, the job restored from it {} (restored \
         in {:?})",
        first.len(),
        second.len(),
        result.elapsed
    );
    assert!(
        !second.is_empty() && second.len() < first.len(),
        "the second job starts midway"
    );
    // The second job continues the first one's state: each of its updates is one the first
    // job made too, and its final sum per key is the true count (not a count from zero).
    let mut rest: HashMap<(u64, u64), u32> = HashMap::new();
    for u in &first {
        *rest.entry(*u).or_default() += 1;
    }
    for u in &second {
        let n = rest
            .get_mut(u)
            .unwrap_or_else(|| panic!("{u:?} is not an update of the first job"));
        assert!(*n > 0, "{u:?} came twice");
        *n -= 1;
    }
    check_final_sums(&second, N, 0);
}

#[test]
fn latest_or_fresh_starts_fresh_then_resumes_where_the_job_was() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let make = || {
        let env = StreamEnv::new();
        env.configure(|c| {
            c.name = "latest-or-fresh".to_string();
            c.checkpoint =
                Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir.path()));
            c.restore = Some(riffle::prelude::RestoreFrom::LatestOrFresh(
                dir.path().to_path_buf(),
            ));
        });
        let out = running_sum(&env, N);
        (env, out)
    };
    // No checkpoint yet: the job starts fresh and counts everything.
    let (env, out) = make();
    env.execute().expect("a fresh start");
    let first = out.take();
    assert_eq!(first.len() as u64, N);
    check_final_sums(&first, N, 0);
    // Its final checkpoint covers all of its input: started again, it resumes from there and
    // has nothing left to count (a fresh start would count everything again).
    let (env, out) = make();
    env.execute().expect("a resumed start");
    assert!(out.take().is_empty(), "the job resumed from its checkpoint");
    // With `Latest` an empty directory is an error, which says so.
    let empty = tempfile::tempdir().expect("tempdir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "latest-or-fresh".to_string();
        c.checkpoint =
            Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(empty.path()));
        c.restore = Some(riffle::prelude::RestoreFrom::Latest(
            empty.path().to_path_buf(),
        ));
    });
    let _out = running_sum(&env, N);
    let err = env.execute().expect_err("nothing to restore");
    assert!(err.to_string().contains("no complete checkpoint"), "{err}");
}
