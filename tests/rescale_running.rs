//! Rescaling a running job: a keyed running count over 2,000,000 records is rescaled
//! 4 → 5 → 8 → 3 while its input streams — in place through `JobHandle::rescale` (one step
//! coincides with a crash of a keyed subtask), and by stopping at savepoints and restarting
//! at the new parallelism (one step preceded by a recovered crash). Every record is counted
//! exactly once, and every step moves at most 1.25 × the ideal share of the keys.

use crate::common;

use riffle::chaos::Fault;
use riffle::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const N: u64 = 2_000_000;
const KEYS: u64 = 20_000;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

fn job(
    dir: &Path,
    p: usize,
    restore: Option<PathBuf>,
) -> (StreamEnv, riffle::prelude::CollectHandle<(u64, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "running".to_string();
        c.batch_size = 256;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir));
        c.restore = restore.map(RestoreFrom::Path);
        c.restart = common::chaos_restarts(RestartKind::OneForAll);
    });
    let out = env
        .generate(N, |i| {
            // Paced (about 0.5 s per run) so that every step stops while input remains.
            if i % 2_000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            (key(i), 1u64)
        })
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(p)
        .rebalance()
        .map(|r| r)
        .parallelism(2)
        .collect();
    (env, out)
}

/// A running count emits one update per record: exactly N updates, and each key's last
/// count is its number of records.
fn assert_counted_once(updates: Vec<(u64, u64)>) {
    assert_eq!(updates.len() as u64, N, "every record counted exactly once");
    let mut finals: HashMap<u64, u64> = HashMap::new();
    for (k, n) in updates {
        let e = finals.entry(k).or_default();
        *e = (*e).max(n);
    }
    let mut expect: HashMap<u64, u64> = HashMap::new();
    for i in 0..N {
        *expect.entry(key(i)).or_default() += 1;
    }
    assert_eq!(finals, expect);
}

#[test]
fn a_running_job_rescaled_4_5_8_3_counts_every_record_once() {
    common::init_logging();
    riffle::chaos::silence_injected_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let steps = [4usize, 5, 8, 3];
    let mut restore: Option<PathBuf> = None;
    let mut updates: Vec<(u64, u64)> = Vec::new();
    for (i, &p) in steps.iter().enumerate() {
        let (env, out) = job(dir.path(), p, restore.clone());
        if let Some(sp) = &restore {
            let from = steps[i - 1];
            let report = env
                .build()
                .expect("plan")
                .adapt_checkpoint(FsStore::load_dir(sp).expect("savepoint"))
                .expect("fits")
                .1;
            let c = report.chains.first().expect("the keyed chain moved");
            let (moved, ideal) = c.moved_vs_ideal();
            println!(
                "{from} -> {p}: {} of {} keys moved ({moved:.3}; ideal {ideal:.3}), {} KiB of state",
                c.keys_moved,
                c.keys,
                c.bytes_moved / 1024
            );
            assert!(
                moved <= ideal * 1.25,
                "{from} -> {p}: {moved:.3} > 1.25 × {ideal:.3}"
            );
        }
        let handle = env.start().expect("start");
        let chaos = handle.chaos();
        if i + 1 == steps.len() {
            handle.wait().expect("the last run finishes");
            updates.extend(out.take());
            break;
        }
        chaos.wait_until(|pr| pr.checkpoints >= 2);
        if p == 5 {
            // A crash right before this rescale: recovered, then the savepoint.
            let task = chaos.find("count", 1).expect("a keyed subtask");
            chaos.crash(task, Fault::Panic);
            chaos.wait_until(|pr| pr.epoch >= 1 && pr.running_epoch >= 1);
            chaos.wait_until(|pr| pr.checkpoints >= 3);
        }
        let (id, result) = handle.stop_with_savepoint().expect("savepoint");
        if p == 5 {
            assert_eq!(result.recoveries.len(), 1, "the crash was recovered");
        }
        updates.extend(out.take());
        restore = Some(dir.path().join("running").join(format!("sp-{id}")));
    }
    assert_counted_once(updates);
}

#[test]
fn job_handle_rescale_keeps_the_job_running_and_exact() {
    common::init_logging();
    riffle::chaos::silence_injected_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, out) = job(dir.path(), 4, None);
    let mut handle = env.start().expect("start");
    // Nothing stops for a request that cannot be met.
    assert!(matches!(
        handle.rescale("no such operator", 3),
        Err(JobError::Graph(_))
    ));
    let mut from = 4;
    for p in [5usize, 8, 3] {
        handle.wait_until(|pr| pr.checkpoints >= 2);
        if p == 8 {
            // A crash that coincides with this rescale: it fires at the keyed subtask's next
            // record, while the rescale holds the sources or right after it switched; either
            // way the job recovers from the latest checkpoint and the rescale completes.
            let chaos = handle.chaos();
            let task = chaos.find("count", 1).expect("a keyed subtask");
            chaos.crash(task, Fault::Panic);
        }
        let r = handle.rescale("count", p).expect("rescale");
        let (moved, ideal) = r.state.moved_vs_ideal();
        println!(
            "rescale {from} -> {p}: {} of {} keys ({moved:.3}; ideal {ideal:.3}), {} KiB moved, pause {:.1} ms",
            r.state.keys_moved,
            r.state.keys,
            r.state.bytes_moved / 1024,
            r.pause.as_secs_f64() * 1e3
        );
        assert_eq!((r.state.from, r.state.to), (from, p));
        assert!(r.state.keys > 0 && moved <= ideal * 1.25, "{:?}", r.state);
        let figures = r.in_place.expect("rescaled in place");
        println!("  {figures:?}");
        assert!(r.before.is_none());
        from = p;
    }
    let result = handle.wait().expect("finishes at parallelism 3");
    assert_eq!(result.recoveries.len(), 1, "the crash was recovered");
    let updates = out.take();
    assert_counted_once(updates);
}
