//! Windows and their pending timers through rescales: a windowed operator rescaled in place
//! mid-window (4 → 6 → 3), and one stopped with a savepoint at 4 and restored at 3 and at 6.
//! Every window fires once with the right value (the sequential reference's).
//!
//! The input has bounded disorder and no record behind the watermark: after a rescale a new
//! channel's watermark is re-established from the source (it may lag, never lead), so the
//! firings' values do not depend on where the rescale lands; lateness decisions would (as in
//! Flink), which is why the oracle tests cover them without rescales.

use crate::time_windows::{generate, oracle, Fired, Func, Kind, Rec, Setup, Stats, Val};

use riffle::prelude::*;
use std::path::Path;
use std::time::Duration;

const SETUP: Setup = Setup {
    kind: Kind::Sliding(400, 100),
    func: Func::Aggregate,
    bound: 80,
    lateness: 0,
};

fn input() -> Vec<Rec> {
    generate(77, 60_000, 500, 2, SETUP.bound, 0)
}

/// The sliding-window job: one paced source (so that rescales land mid-run), windows at
/// `p`, named `windows`.
fn job(
    name: &str,
    p: usize,
    dir: Option<&Path>,
    restore: Option<RestoreFrom>,
) -> (StreamEnv, CollectHandle<Fired>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = name.to_string();
        c.batch_size = 64;
        let every = CheckpointConfig::every(Duration::from_millis(20));
        c.checkpoint = Some(match dir {
            Some(d) => every.in_dir(d),
            None => every,
        });
        c.restore = restore;
    });
    let fired = env
        .from_collection(input())
        .parallelism(1)
        .map(|r: Rec| {
            if r.2 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            r
        })
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            Duration::from_millis(SETUP.bound as u64),
            |r: &Rec| r.1,
        ))
        .parallelism(1)
        .key_by(|r: &Rec| r.0)
        .window(WindowAssigner::sliding(
            Duration::from_millis(400),
            Duration::from_millis(100),
        ))
        .aggregate(Stats)
        .name("windows")
        .parallelism(p)
        .results()
        .map(|w| (w.key, w.window.start, w.window.end, w.firing, w.value))
        .parallelism(p)
        .collect();
    (env, fired)
}

fn want() -> Vec<Fired> {
    let (want, late) = oracle(SETUP, &input());
    assert!(late.is_empty(), "the input has no late record");
    assert!(want.iter().all(|w| w.3 == Firing::OnTime));
    want
}

fn assert_same(mut got: Vec<Fired>, want: &[Fired], what: &str) {
    got.sort();
    let dup = got.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dup, 0, "{what}: windows fired twice");
    assert_eq!(got.len(), want.len(), "{what}: number of firings");
    assert!(got == want, "{what}: firings differ from the reference");
    let sum: i64 = got
        .iter()
        .map(|w| match w.4 {
            Val::Stats(_, s, _) => s,
            _ => 0,
        })
        .sum();
    println!(
        "{what}: {} windows fired once each (value sum {sum})",
        got.len()
    );
}

#[test]
fn a_window_rescaled_in_place_4_to_6_to_3_fires_every_window_once() {
    crate::common::init_logging();
    let (env, fired) = job("windows-in-place", 4, None, None);
    let mut handle = env.start().expect("start");
    for p in [6usize, 3] {
        handle.wait_until(|pr| pr.checkpoints >= 2);
        let r = handle.rescale("windows", p).expect("rescale");
        let moved = r.in_place.is_some();
        println!(
            "windows -> {p}: in place {moved}, {} of {} keys moved ({} bytes), pause {:.1} ms",
            r.state.keys_moved,
            r.state.keys,
            r.state.bytes_moved,
            r.pause.as_secs_f64() * 1e3
        );
        assert!(moved, "rescaled in place");
        assert!(r.state.keys_moved > 0, "window state moved with its keys");
    }
    let result = handle.wait().expect("finishes");
    assert!(result.recoveries.is_empty(), "{:?}", result.recoveries);
    assert_same(fired.take(), &want(), "in place 4 -> 6 -> 3");
}

#[test]
fn a_window_savepoint_at_4_restores_exactly_at_3_and_at_6() {
    crate::common::init_logging();
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, first) = job("windows-savepoint", 4, Some(dir.path()), None);
    let handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 3);
    let (id, _) = handle.stop_with_savepoint().expect("stop with a savepoint");
    let first = first.take();
    let sp = dir
        .path()
        .join("windows-savepoint")
        .join(format!("sp-{id}"));
    let want = want();
    assert!(
        !first.is_empty() && first.len() < want.len(),
        "stopped midway: {} of {} firings",
        first.len(),
        want.len()
    );
    for p in [3, 6] {
        let (env, rest) = job(
            "windows-savepoint",
            p,
            Some(dir.path()),
            Some(RestoreFrom::Path(sp.clone())),
        );
        env.execute()
            .unwrap_or_else(|e| panic!("restore at {p}: {e}"));
        let mut all = first.clone();
        all.extend(rest.take());
        assert_same(all, &want, &format!("savepoint at 4, restored at {p}"));
    }
}
