//! Restoring a savepoint at another parallelism: a keyed running sum saved at parallelism 4
//! continues exactly at 6 and at 2, and only the keys the new ring hands over move.

use crate::common::gated::Gated;
use riffle::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const N: u64 = 1_000_000;
const KEYS: u64 = 10_000;

/// Holds the first job's sources at the middle of their shares until the savepoint is taken
/// (the restored jobs find it open).
static GATE: AtomicBool = AtomicBool::new(false);
/// The first job's source subtasks that reached the hold.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The key of record `i` (what [`Gated`] emits).
fn key(i: u64) -> u64 {
    i % KEYS
}

fn job(
    dir: &Path,
    keyed_parallelism: usize,
    restore: Option<RestoreFrom>,
) -> (StreamEnv, riffle::prelude::CollectHandle<(u64, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "rescale".to_string();
        c.batch_size = 64;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir));
        c.restore = restore;
    });
    let out = env
        .source(|_: &SubtaskInfo| Gated::new(N, KEYS, &GATE).counting_holds(&HELD))
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .parallelism(keyed_parallelism)
        .rebalance()
        .map(|r| r)
        .parallelism(2)
        .collect();
    (env, out)
}

fn counts() -> HashMap<u64, u64> {
    let mut c = HashMap::new();
    for i in 0..N {
        *c.entry(key(i)).or_default() += 1;
    }
    c
}

#[test]
fn a_savepoint_at_parallelism_4_restores_exactly_at_6_and_at_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, first) = job(dir.path(), 4, None);
    let handle = env.start().expect("start");
    // The savepoint is taken while both sources hold at the middle of their input, so the
    // job cannot end before it, however fast the machine runs it.
    handle.wait_until(|p| p.checkpoints >= 2 && HELD.load(Ordering::SeqCst) == 2);
    let id = handle.savepoint().expect("savepoint");
    GATE.store(true, Ordering::SeqCst);
    handle.wait().expect("first job");
    let first = first.take();
    let mut all: HashMap<(u64, u64), u32> = HashMap::new();
    for u in &first {
        *all.entry(*u).or_default() += 1;
    }
    let sp = dir.path().join("rescale").join(format!("sp-{id}"));
    let saved = FsStore::load_dir(&sp).expect("savepoint loads");
    let expect = counts();

    for p in [6, 2] {
        let (env, out) = job(dir.path(), p, Some(RestoreFrom::Path(sp.clone())));
        let (_, report) = env
            .build()
            .expect("plan")
            .adapt_checkpoint(saved.clone())
            .expect("fits");
        let (keys, moved) = (report.keys(), report.keys_moved());
        // 4 → 6 and 4 → 2: a key keeps its subtask index with probability about min(4, M)/max(4, M).
        let ideal = 1.0 - 4.0_f64.min(p as f64) / 4.0_f64.max(p as f64);
        // `hash mod N` keeps a key when h % 4 == h % M: count over one period.
        let period = 4 * p;
        let stay = (0..period).filter(|r| r % 4 == r % p).count();
        println!(
            "4 -> {p}: {moved} of {keys} keys moved ({:.3}; ideal {:.3}; hash mod N moves {:.3})",
            moved as f64 / keys as f64,
            ideal,
            1.0 - stay as f64 / period as f64
        );
        assert!(keys > 0);
        assert!(
            (moved as f64) <= keys as f64 * ideal * 1.25 + 1.0,
            "4 -> {p}: {moved} of {keys} moved"
        );
        env.execute()
            .unwrap_or_else(|e| panic!("restore at {p}: {e}"));
        let out = out.take();
        assert!(
            !out.is_empty() && out.len() < first.len(),
            "4 -> {p}: starts midway"
        );
        let mut left = all.clone();
        for u in &out {
            let n = left
                .get_mut(u)
                .unwrap_or_else(|| panic!("4 -> {p}: {u:?} is not an update of the first job"));
            assert!(*n > 0, "4 -> {p}: {u:?} twice");
            *n -= 1;
        }
        let mut finals: HashMap<u64, u64> = HashMap::new();
        for (k, s) in out {
            let e = finals.entry(k).or_default();
            *e = (*e).max(s);
        }
        // The savepoint was taken at the middle of every source subtask's share, and each
        // second half holds every key: every key continues after it.
        assert_eq!(
            finals, expect,
            "4 -> {p}: the final sum per key is its record count"
        );
    }
}
