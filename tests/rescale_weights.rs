//! Hot keys, first step: a keyed operator's ring can be weighted per subtask. Giving subtask
//! 0 a quarter share moves keys away from it (the load report shows it), the results stay
//! exact, and a savepoint taken with one set of weights restores exactly under another —
//! only the keys whose owner changed move.

use riffle::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const N: u64 = 1_000_000;
const KEYS: u64 = 4_000;

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

fn job(
    dir: &Path,
    weights: Option<Vec<u32>>,
    restore: Option<RestoreFrom>,
) -> (StreamEnv, riffle::prelude::CollectHandle<(u64, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "weights".to_string();
        c.batch_size = 64;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir));
        c.restore = restore;
        if let Some(w) = weights {
            c.ring_weights.insert("sum".to_string(), w);
        }
    });
    let out = env
        .generate(N, |i| {
            // Paced (at least 0.25 s) so that a savepoint is taken before the input ends.
            if i % 2_000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            (key(i), 1u64)
        })
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("sum")
        .parallelism(4)
        .rebalance()
        .map(|r| r)
        .parallelism(2)
        .collect();
    (env, out)
}

fn finals(out: Vec<(u64, u64)>) -> HashMap<u64, u64> {
    let mut f: HashMap<u64, u64> = HashMap::new();
    for (k, s) in out {
        let e = f.entry(k).or_default();
        *e = (*e).max(s);
    }
    f
}

fn expected() -> HashMap<u64, u64> {
    let mut c = HashMap::new();
    for i in 0..N {
        *c.entry(key(i)).or_default() += 1;
    }
    c
}

/// Distinct keys per subtask of the `sum` chain.
fn keys_per_subtask(r: &JobResult) -> Vec<u64> {
    let mut v: Vec<(usize, u64)> = r
        .chain("sum")
        .iter()
        .map(|m| (m.subtask, m.distinct_keys))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|x| x.1).collect()
}

#[test]
fn a_weighted_ring_moves_keys_off_a_hot_subtask_and_stays_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, out) = job(&dir.path().join("even"), None, None);
    let even = keys_per_subtask(&env.execute().expect("even run"));
    assert_eq!(finals(out.take()), expected());

    let (env, out) = job(
        &dir.path().join("weighted"),
        Some(vec![25, 100, 100, 100]),
        None,
    );
    let weighted = keys_per_subtask(&env.execute().expect("weighted run"));
    assert_eq!(finals(out.take()), expected());
    println!("distinct keys per subtask: even {even:?}, subtask 0 at 25 % {weighted:?}");
    let share = |v: &[u64]| v[0] as f64 / v.iter().sum::<u64>() as f64;
    // 25 of 325 weight units: about 7.7 % of the keys instead of 25 %.
    assert!(share(&even) > 0.2, "{even:?}");
    assert!(share(&weighted) < 0.11, "{weighted:?}");
    assert!(share(&weighted) > 0.04, "{weighted:?}");
}

#[test]
fn a_savepoint_restores_exactly_under_other_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, first) = job(dir.path(), Some(vec![25, 100, 100, 100]), None);
    let handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 2);
    let id = handle.savepoint().expect("savepoint");
    handle.wait().expect("first job");
    let first = first.take();
    let sp = dir.path().join("weights").join(format!("sp-{id}"));
    let saved = FsStore::load_dir(&sp).expect("savepoint loads");

    let (env, out) = job(dir.path(), None, Some(RestoreFrom::Path(sp)));
    let (_, report) = env
        .build()
        .expect("plan")
        .adapt_checkpoint(saved)
        .expect("fits");
    let (keys, moved) = (report.keys(), report.keys_moved());
    println!("weights 25/100/100/100 -> even: {moved} of {keys} keys moved");
    // Subtask 0 takes back its share (about 25 % − 7.7 % of the keys); nothing else moves.
    assert!(keys > 0 && moved > 0, "{report:?}");
    assert!((moved as f64) < keys as f64 * 0.25, "{moved} of {keys}");
    env.execute().expect("restored run");
    let out = out.take();
    assert!(!out.is_empty() && out.len() < first.len(), "starts midway");
    let mut updates: HashMap<(u64, u64), u32> = HashMap::new();
    for u in &first {
        *updates.entry(*u).or_default() += 1;
    }
    for u in &out {
        let n = updates
            .get_mut(u)
            .unwrap_or_else(|| panic!("{u:?} is not an update of the first job"));
        assert!(*n > 0, "{u:?} twice");
        *n -= 1;
    }
    assert_eq!(finals(out), expected());
}
