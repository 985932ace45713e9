//! Rescaling a running keyed job: 4 → 5 → 8 → 3 subtasks, exactly, moving few keys.
//!
//! ```text
//! cargo run --release --example rescale
//! ```
//!
//! A running count per string key (parallelism 4) is rescaled with `JobHandle::rescale` to 5
//! subtasks, then 8, then 3, while the input streams on. Each step happens in place: the
//! sources hold after a checkpoint, only the keys whose owner on the new consistent-hash ring
//! changed move to their new subtask (the others stay where they are), the routers in front of
//! `count` and the inputs behind it re-wire, new subtasks start or leaving ones retire, and the
//! sources continue — no subtask restarts. The example prints the fraction of keys that moved
//! — measured on the state, and next to what `hash mod N` and Flink-style key groups (max
//! parallelism 128) would move for the same keys — the keyed state moved, the pause (hold →
//! first record processed by the rescaled operator) and which subtasks each step touched. At
//! the end the output collected over the whole run is checked: every record counted once.

use riffle::prelude::*;
use riffle::routing::KeyRing;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const N: u64 = 3_000_000;
const KEYS: u64 = 20_000;

fn key(i: u64) -> String {
    format!("user-{}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS)
}

fn job(dir: &Path) -> (StreamEnv, CollectHandle<(String, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "rescale-example".to_string();
        c.batch_size = 128;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(25)).in_dir(dir));
    });
    let out = env
        .generate(N, key)
        .parallelism(2)
        .key_by(|k: &String| k.clone())
        .sum(|_| 1u64)
        .name("count")
        .parallelism(4)
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

/// Rescales a running keyed job in place (4 -> 5 -> 8 -> 3 subtasks) and checks it stayed exact.
#[derive(clap::Parser)]
#[command(name = "rescale")]
struct Args {}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let Args {} = <Args as clap::Parser>::parse();
    riffle::cli::exit(run().map_err(|e| -> Box<dyn std::error::Error> { e }))
}

fn run() -> Result<(), UserError> {
    let dir = std::env::temp_dir().join("riffle-rescale-example");
    let _ = std::fs::remove_dir_all(&dir);
    let hashes: Vec<u64> = (0..KEYS).map(|k| format!("user-{k}").key_hash()).collect();
    println!(
        "{:>8}  {:>10} {:>10} {:>10} {:>11} {:>10}  state moved",
        "step", "ring", "(ideal)", "hash mod N", "key groups", "pause"
    );
    let (env, out) = job(&dir);
    let mut handle = env.start()?;
    let mut from = 4;
    for to in [5usize, 8, 3] {
        handle.wait_until(|pr| pr.checkpoints >= 2);
        let r = handle.rescale("count", to)?;
        let (ring, ideal) = r.state.moved_vs_ideal();
        let (_, modulo, groups) = movement(&hashes, from, to);
        let touched = match r.in_place {
            Some(f) => format!(
                "in place: {} re-wired, {} started, {} retired, {} untouched",
                f.rewired, f.started, f.retired, f.untouched
            ),
            None => "by a restart from a savepoint".to_string(),
        };
        println!(
            "{from:>3} -> {to:<2}  {ring:>10.3} {ideal:>10.3} {modulo:>10.3} {groups:>11.3} {:>7.1} ms  {} keys, {} KiB; {touched}",
            r.pause.as_secs_f64() * 1e3,
            r.state.keys_moved,
            r.state.bytes_moved / 1024
        );
        from = to;
    }
    let result = handle.wait()?;
    println!(
        "last step at parallelism {from} ran to the end ({} subtasks of `count`)",
        result.chain("count").len()
    );
    let mut finals: HashMap<String, u64> = HashMap::new();
    let out = out.take();
    let updates = out.len() as u64;
    for (k, n) in out {
        let e = finals.entry(k).or_default();
        *e = (*e).max(n);
    }
    let mut expect: HashMap<String, u64> = HashMap::new();
    for i in 0..N {
        *expect.entry(key(i)).or_default() += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if finals == expect && updates == N {
        println!("collected output: {updates} updates, every record counted exactly once");
        Ok(())
    } else {
        Err(format!("output is not exact: {updates} updates for {N} records").into())
    }
}
