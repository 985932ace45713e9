//! Windows under a seeded chaos monkey: the oracle jobs of `time_windows` on a longer input,
//! with checkpoints every 50–100 ms and at least 100 injected faults (panics, errors, subtask
//! stops) and stopped worker threads. The committed output — every firing, late updates
//! included, and every late record — equals the failure-free run and the sequential
//! reference: every window fires exactly once with the right value.

use crate::common;
use crate::time_windows::{generate, job, oracle, run, Func, Kind, Setup};

use common::{chaos_restarts, seed, sorted};
use riffle::chaos::{ChaosMonkey, FaultKind};
use riffle::prelude::*;
use std::time::Duration;

fn chaos_run(seed: u64, setup: Setup) {
    common::init_logging();
    riffle::chaos::silence_injected_panics();
    let input = generate(seed, 40_000, 40, 4, setup.bound, 600);
    let (want, mut want_late) = oracle(setup, &input);
    want_late.sort();
    // The failure-free run, at the same parallelism, is the reference's too.
    let clean = run(setup, &input, 3, Some(Duration::from_millis(50)));
    assert!(
        clean == (want.clone(), want_late.clone()),
        "seed {seed}: the failure-free run differs from the reference"
    );
    let env = StreamEnv::new();
    let every = 50 + seed % 51;
    env.configure(|c| {
        c.batch_size = 1;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(every)));
        c.restart = chaos_restarts(RestartKind::OneForOne);
        c.workers = Some(4);
        c.seed = seed;
    });
    let (fired, late) = job(&env, setup, input, 3);
    let handle = env.start().expect("start");
    let chaos = handle.chaos();
    let driver = std::thread::spawn(move || {
        ChaosMonkey::new(seed)
            .faults(110)
            .kinds(&[FaultKind::Panic, FaultKind::Error, FaultKind::Stop])
            .drive(&chaos, 2, 2)
    });
    let result = handle
        .wait()
        .unwrap_or_else(|e| panic!("seed {seed}: job failed: {e}"));
    let report = driver.join().expect("chaos driver");
    let (got, got_late) = (sorted(fired.take()), sorted(late.take()));
    let restored = result
        .recoveries
        .iter()
        .filter(|r| r.restored_from.is_some())
        .count();
    println!(
        "seed {seed}, {setup:?}, checkpoints every {every} ms: {report:?}; {} faults fired, {} \
         workers stopped, {} recoveries ({restored} from a checkpoint), {} checkpoints, {} \
         firings, {} late records",
        result.faults_injected,
        result.workers_stopped,
        result.recoveries.len(),
        result.checkpoints.len(),
        got.len(),
        got_late.len()
    );
    assert!(
        result.faults_injected >= 100,
        "seed {seed}: only {} faults fired",
        result.faults_injected
    );
    assert!(
        result.recoveries.len() as u64 >= result.faults_injected,
        "seed {seed}: every fault caused a recovery"
    );
    assert!(
        restored > 0,
        "seed {seed}: never restored from a checkpoint"
    );
    assert_eq!(got_late, want_late, "seed {seed}: late records");
    assert_eq!(got.len(), want.len(), "seed {seed}: number of firings");
    assert!(
        got == want,
        "seed {seed}: the firings differ from the reference"
    );
}

fn setups() -> [Setup; 3] {
    [
        Setup {
            kind: Kind::Tumbling(200),
            func: Func::Reduce,
            bound: 60,
            lateness: 150,
        },
        Setup {
            kind: Kind::Sliding(300, 50),
            func: Func::Aggregate,
            bound: 60,
            lateness: 150,
        },
        Setup {
            kind: Kind::Session(40),
            func: Func::Process,
            bound: 60,
            lateness: 150,
        },
    ]
}

#[test]
fn windows_are_exact_under_chaos() {
    let seeds: Vec<u64> = match std::env::var("RIFFLE_CHAOS_SEED") {
        Ok(_) => vec![seed(0)],
        Err(_) => vec![5],
    };
    for s in seeds {
        for setup in setups() {
            chaos_run(s, setup);
        }
    }
}
