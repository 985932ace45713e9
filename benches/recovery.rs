//! Recovery cost: checkpoint duration, restore time and rescale pause with 100,000 keys.
//!
//! `cargo bench --bench recovery -- [RUNS]` (default 5). Each restore run: a keyed running sum
//! over 100,000 keys (parallelism 2, checkpoints every 50 ms in memory); once two checkpoints
//! have completed, a panic is injected into a keyed subtask; the job restores every subtask
//! from the latest checkpoint. Each rescale run: the same job's keyed operator goes from
//! parallelism 2 to 3, once in place (`JobHandle::rescale`: the sources hold after a
//! checkpoint, a third of the keys move, nothing restarts) and once by stopping at a savepoint
//! and starting again from it. Printed: the median restore time (failure → first record
//! processed again), the median checkpoint duration and size, and the median rescale pause of
//! each kind (request → first record processed by the rescaled operator), with their ratio.

use riffle::chaos::Fault;
use riffle::prelude::*;
use std::time::{Duration, Instant};

const KEYS: u64 = 100_000;
/// Long enough (a few hundred milliseconds at full speed) that the faults and rescales land
/// while input remains; a run where the job still ended first is run again.
const N: u64 = 60_000_000;

fn run() -> Option<(Duration, Vec<Duration>, usize)> {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)));
        c.restart.backoff.initial = Duration::ZERO;
    });
    let count = env
        .generate(N, |i| (i % KEYS, 1u64))
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .count();
    let job = env.start().expect("start");
    let chaos = job.chaos();
    chaos.wait_until(|p| p.checkpoints >= 2);
    let target = chaos.find("sum", 0).expect("keyed subtask");
    chaos.crash(target, Fault::Panic);
    let result = job.wait().expect("job");
    assert_eq!(count.get(), N, "exactly once");
    // `None` if the job ended before the fault fired.
    let restore = result.recoveries.iter().find_map(|r| r.restore_time)?;
    let durations = result.checkpoints.iter().map(|c| c.duration).collect();
    let bytes = result
        .checkpoints
        .iter()
        .map(|c| c.bytes)
        .max()
        .unwrap_or(0);
    Some((restore, durations, bytes))
}

fn rescale_job(dir: &std::path::Path, p: usize, restore: Option<RestoreFrom>) -> StreamEnv {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "rescale-bench".to_string();
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)).in_dir(dir));
        c.restore = restore;
    });
    env.generate(N, |i| (i % KEYS, 1u64))
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("sum")
        .parallelism(p)
        .discard();
    env
}

/// Rescale the running job's keyed operator from 2 to 3 in place: the pause it reports
/// (`None` if the job ended first).
fn rescale_in_place_pause() -> Option<Duration> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = rescale_job(dir.path(), 2, None).start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 2);
    let r = match handle.rescale("sum", 3) {
        Ok(r) => r,
        Err(JobError::JobEnded) => return None,
        Err(e) => panic!("rescale: {e}"),
    };
    assert!(r.in_place.is_some(), "rescaled in place");
    assert!(r.state.keys as u64 == KEYS, "all keys in the state");
    handle.wait().expect("rescaled job");
    Some(r.pause)
}

/// Stop at a savepoint at parallelism 2, restart at 3: the pause until the first record
/// (`None` if the job ended first).
fn rescale_pause() -> Option<Duration> {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = rescale_job(dir.path(), 2, None).start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 2);
    let stop = Instant::now();
    let id = match handle.stop_with_savepoint() {
        Ok((id, _)) => id,
        Err(JobError::JobEnded) => return None,
        Err(e) => panic!("stop with savepoint: {e}"),
    };
    let sp = dir.path().join("rescale-bench").join(format!("sp-{id}"));
    let next = rescale_job(dir.path(), 3, Some(RestoreFrom::Path(sp)))
        .start()
        .expect("restart");
    next.wait_until(|p| p.restored_record);
    let pause = stop.elapsed();
    next.wait().expect("rescaled job");
    Some(pause)
}

fn main() {
    riffle::chaos::silence_injected_panics();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut restores = Vec::new();
    let mut checkpoints = Vec::new();
    let mut bytes = 0;
    while restores.len() < runs {
        let Some((r, c, b)) = run() else { continue };
        eprintln!("    restore {:.2} ms", r.as_secs_f64() * 1e3);
        restores.push(r);
        checkpoints.extend(c);
        bytes = bytes.max(b);
    }
    restores.sort();
    checkpoints.sort();
    let mut pauses: Vec<Duration> = std::iter::repeat_with(rescale_pause)
        .flatten()
        .take(runs)
        .collect();
    pauses.sort();
    let mut in_place: Vec<Duration> = std::iter::repeat_with(rescale_in_place_pause)
        .flatten()
        .take(runs)
        .collect();
    in_place.sort();
    println!(
        "recovery ({KEYS} keys, {runs} runs): median restore {:.2} ms (min {:.2}, max {:.2}); \
         median checkpoint {:.2} ms over {} checkpoints; state {:.1} KiB",
        restores[restores.len() / 2].as_secs_f64() * 1e3,
        restores[0].as_secs_f64() * 1e3,
        restores[restores.len() - 1].as_secs_f64() * 1e3,
        checkpoints[checkpoints.len() / 2].as_secs_f64() * 1e3,
        checkpoints.len(),
        bytes as f64 / 1024.0
    );
    println!(
        "rescale 2 -> 3 ({KEYS} keys, {runs} runs, stop at a savepoint and restart): median pause \
         {:.1} ms (min {:.1}, max {:.1})",
        pauses[pauses.len() / 2].as_secs_f64() * 1e3,
        pauses[0].as_secs_f64() * 1e3,
        pauses[pauses.len() - 1].as_secs_f64() * 1e3
    );
    let (a, b) = (in_place[in_place.len() / 2], pauses[pauses.len() / 2]);
    println!(
        "rescale 2 -> 3 ({KEYS} keys, {runs} runs, in place): median pause {:.1} ms (min {:.1}, \
         max {:.1}); {:.2} × the restart's",
        a.as_secs_f64() * 1e3,
        in_place[0].as_secs_f64() * 1e3,
        in_place[in_place.len() - 1].as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64()
    );
}
