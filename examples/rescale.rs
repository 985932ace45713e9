//! Rescaling a running keyed job: 4 → 5 → 8 → 3 subtasks, exactly, moving few keys.
//!
//! ```text
//! cargo run --release --example rescale
//! ```
//!
//! A running count per string key (parallelism 4) is stopped at a savepoint, restarted from
//! it at 5 subtasks, then 8, then 3, while the input streams on. At each step the keyed state is
//! split by the new consistent-hash ring; the example prints the fraction of keys that moved
//! next to what `hash mod N` and Flink-style key groups (max parallelism 128) would move for the
//! same keys, and the pause (stop → first record processed by the rescaled job). At the end the
//! committed output of all four runs is checked: every record counted once.

use riffle::prelude::*;
use riffle::{CheckpointConfig, FsStore, KeyRing, RestoreFrom};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const N: u64 = 3_000_000;
const KEYS: u64 = 20_000;

fn key(i: u64) -> String {
    format!("user-{}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS)
}

fn job(
    dir: &Path,
    p: usize,
    restore: Option<RestoreFrom>,
) -> (StreamEnv, riffle::CollectHandle<(String, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "rescale-example".to_string();
        c.batch_size = 128;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(25)).in_dir(dir));
        c.restore = restore;
    });
    let out = env
        .generate(N, key)
        .parallelism(2)
        .key_by(|k: &String| k.clone())
        .sum(|_| 1u64)
        .parallelism(p)
        .rebalance()
        .map(|r| r)
        .parallelism(2)
        .collect();
    (env, out)
}

/// Fractions of `keys` that change owner going from `a` to `b` subtasks.
fn movement(keys: &[u64], a: usize, b: usize) -> (f64, f64, f64) {
    let (ra, rb) = (KeyRing::new(a), KeyRing::new(b));
    let n = keys.len() as f64;
    let frac = |f: &dyn Fn(u64) -> bool| keys.iter().filter(|&&h| f(h)).count() as f64 / n;
    let ring = frac(&|h| ra.route_hash(h) != rb.route_hash(h));
    let modulo = frac(&|h| h % a as u64 != h % b as u64);
    let groups = frac(&|h| {
        let g = (h % 128) as usize;
        g * a / 128 != g * b / 128
    });
    (ring, modulo, groups)
}

fn main() -> Result<(), UserError> {
    let dir = std::env::temp_dir().join("riffle-rescale-example");
    let _ = std::fs::remove_dir_all(&dir);
    let hashes: Vec<u64> = (0..KEYS).map(|k| format!("user-{k}").key_hash()).collect();
    let steps = [4usize, 5, 8, 3];
    let mut outputs = Vec::new();
    let mut restore = None;
    let mut restore_path: Option<std::path::PathBuf> = None;
    // The step being printed: (from, to, ring, modulo, key groups, time to stop at the savepoint).
    let mut row: Option<(usize, usize, f64, f64, f64, Duration)> = None;
    println!(
        "{:>8}  {:>10} {:>10} {:>11} {:>10}  state moved (keys, bytes)",
        "step", "ring", "hash mod N", "key groups", "pause"
    );
    for (i, &p) in steps.iter().enumerate() {
        let (env, out) = job(&dir, p, restore.take());
        // What the restore will move: the keyed state whose owner changed on the new ring.
        let moved = match &restore_path {
            Some(sp) => {
                let report = env.build()?.adapt_checkpoint(FsStore::load_dir(sp)?)?.1;
                format!(
                    "{} keys, {} KiB",
                    report.keys_moved(),
                    report.bytes_moved() / 1024
                )
            }
            None => String::new(),
        };
        let started = Instant::now();
        let handle = env.start()?;
        let chaos = handle.chaos();
        if let Some((from, to, ring, modulo, groups, stopped)) = row.take() {
            // The pause: stopping at the savepoint, then starting this job until its first
            // record.
            chaos.wait_until(|pr| pr.restored_record);
            let pause = stopped + started.elapsed();
            println!(
                "{from:>3} -> {to:<2}  {ring:>10.3} {modulo:>10.3} {groups:>11.3} {:>7.1} ms  {moved}",
                pause.as_secs_f64() * 1e3
            );
        }
        if i + 1 == steps.len() {
            let result = handle.wait()?;
            outputs.push(out.take());
            println!(
                "last step at parallelism {p} ran to the end in {:?}",
                result.elapsed
            );
            break;
        }
        chaos.wait_until(|pr| pr.checkpoints >= 2);
        let stop = Instant::now();
        let (id, _) = handle.stop_with_savepoint()?;
        let stopped = stop.elapsed();
        outputs.push(out.take());
        let next = steps[i + 1];
        let (ring, modulo, groups) = movement(&hashes, p, next);
        row = Some((p, next, ring, modulo, groups, stopped));
        let sp = dir.join("rescale-example").join(format!("sp-{id}"));
        restore = Some(RestoreFrom::Path(sp.clone()));
        restore_path = Some(sp);
    }
    let mut finals: HashMap<String, u64> = HashMap::new();
    let mut updates = 0u64;
    for out in outputs {
        updates += out.len() as u64;
        for (k, n) in out {
            let e = finals.entry(k).or_default();
            *e = (*e).max(n);
        }
    }
    let mut expect: HashMap<String, u64> = HashMap::new();
    for i in 0..N {
        *expect.entry(key(i)).or_default() += 1;
    }
    if finals == expect && updates == N {
        println!("committed output over the four runs: {updates} updates, every record counted exactly once");
        Ok(())
    } else {
        Err(format!("output is not exact: {updates} updates for {N} records").into())
    }
}
