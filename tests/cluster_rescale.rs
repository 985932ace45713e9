//! Growing and shrinking a cluster under a running job: a keyed running sum runs on 3 node
//! processes with its keyed operator at 6 subtasks; a fourth node joins and
//! `ClusterJob::rescale` takes the operator to 8 subtasks in place (the new node starts
//! hosting the job and gets new subtasks; no other subtask moves or restarts);
//! `ClusterJob::drain` then moves the job off n4 and off n3 through savepoints (only their
//! subtasks move), and on 2 nodes the operator is rescaled in place to 4. The committed
//! output of the three runs equals the single-process run line for line.
//!
//! A second test SIGKILLs a node while a rescale in place holds the sources, and once right
//! after it switched plans: the job recovers on the two other nodes, the rescale completes and
//! the output is again equal to the single-process run.
//!
//! The coordinator n1 runs in the test process; n2, n3 and n4 are copies of the test binary
//! (`node_process_entry` does nothing unless `RIFFLE_TEST_RESCALE_NODE` is set) that host a
//! given number of jobs and exit.

use crate::common;

use riffle::cluster::{JobOptions, Node, Status};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const SECRET: &[u8] = b"cluster rescale test";
const ENV_NODE: &str = "RIFFLE_TEST_RESCALE_NODE";

fn sum_job() -> common::SumJob {
    common::SumJob {
        records: 1_000_000,
        sources: 4,
        parallelism: 6,
        workers: 1,
        keys: 1_000,
        checkpoint_ms: 50,
        // Paced (at least 1.25 s in all) so that each step stops while input remains.
        pace: 200,
        pace_ms: 1,
    }
}

fn node(name: &str, dir: &Path, seeds: Vec<String>) -> Node {
    let d = dir.to_path_buf();
    Node::builder()
        .name(name)
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .seeds(seeds)
        .heartbeat(Duration::from_millis(50))
        .failure_timeout(Duration::from_millis(400))
        .checkpoint_dir(dir.join("checkpoints"))
        .register_job("sum", move || sum_job().build(&d))
        .start()
        .expect("node starts")
}

/// Entry point of a node process; a no-op in a normal test run.
#[test]
fn node_process_entry() {
    let Ok(spec) = std::env::var(ENV_NODE) else {
        return;
    };
    common::init_logging();
    // name|seed|dir|jobs to host
    let f: Vec<&str> = spec.split('|').collect();
    let (name, seed, dir, jobs) = (f[0], f[1], PathBuf::from(f[2]), f[3]);
    let jobs: usize = jobs.parse().expect("jobs");
    let n = node(name, &dir, vec![seed.to_string()]);
    for _ in 0..jobs {
        match n.wait_hosted(Duration::from_secs(300)) {
            // A job stopped at a savepoint ends without an error too.
            Some(end) if end.error.is_none() => {}
            Some(end) => {
                eprintln!("{name}: {end:?}");
                std::process::exit(1);
            }
            None => std::process::exit(2),
        }
    }
    n.shutdown();
    std::process::exit(0);
}

fn spawn(name: &str, seed: &str, dir: &Path, jobs: usize) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "cluster_rescale::node_process_entry",
            "--exact",
            "--nocapture",
        ])
        .env(ENV_NODE, format!("{name}|{seed}|{}|{jobs}", dir.display()))
        .spawn()
        .expect("spawn node")
}

fn up(n: &Node, want: &[&str]) {
    let m = n.wait_members(Duration::from_secs(30), |m| {
        let ups: Vec<&str> = m
            .iter()
            .filter(|x| x.status == Status::Up)
            .map(|x| x.node.as_str())
            .collect();
        ups == want
    });
    let ups: Vec<&str> = m
        .iter()
        .filter(|x| x.status == Status::Up)
        .map(|x| x.node.as_str())
        .collect();
    assert_eq!(ups, want, "members seen by n1");
}

/// Starts the job with `options` and checks which nodes it is placed on.
fn start(n1: &Node, options: JobOptions, nodes: &[&str]) -> riffle::cluster::ClusterJob {
    let job = n1.run_job_with("sum", options).expect("job starts");
    placed_on(&job, nodes);
    job
}

fn placed_on(job: &riffle::cluster::ClusterJob, nodes: &[&str]) {
    let placed: Vec<&str> = job.placement.keys().map(String::as_str).collect();
    assert_eq!(
        placed, nodes,
        "every live node runs subtasks: {:?}",
        job.placement
    );
}

#[test]
fn a_job_grows_from_3_to_4_nodes_and_shrinks_to_2_exactly() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = node("n1", dir.path(), vec![]);
    let seed = n1.local_addr().to_string();
    // Jobs each node hosts: the first (rescaled in place) and one per drain it stays for.
    let mut children = vec![
        spawn("n2", &seed, dir.path(), 3),
        spawn("n3", &seed, dir.path(), 2),
    ];
    up(&n1, &["n2", "n3"]);
    let job = start(&n1, JobOptions::default(), &["n1", "n2", "n3"]);
    job.wait_until(|p| p.checkpoints >= 2);

    // Grow: n4 joins, and the keyed operator goes from 6 to 8 subtasks over the 4 nodes.
    children.push(spawn("n4", &seed, dir.path(), 1));
    up(&n1, &["n2", "n3", "n4"]);
    let before = job.placement.clone();
    let (job, r) = job.rescale("sum", 8).expect("rescale onto n4");
    let figures = r.in_place.expect("rescaled in place");
    assert_eq!((figures.started, figures.retired), (2, 0));
    placed_on(&job, &["n1", "n2", "n3", "n4"]);
    // In place: every subtask stays where it was; n4 takes new ones.
    let node_of =
        |p: &std::collections::BTreeMap<String, Vec<riffle::internals::framework::TaskId>>,
         t: &riffle::internals::framework::TaskId| {
            p.iter()
                .find(|(_, ts)| ts.contains(t))
                .map(|(n, _)| n.clone())
        };
    for t in before.values().flatten() {
        let (old, new) = (node_of(&before, t), node_of(&job.placement, t));
        assert_eq!(old, new, "{t:?} moved");
    }
    let (moved, ideal) = r.state.moved_vs_ideal();
    println!(
        "6 -> 8 on 4 nodes: {} of {} keys moved ({moved:.3}; ideal {ideal:.3}), pause {:.1} ms",
        r.state.keys_moved,
        r.state.keys,
        r.pause.as_secs_f64() * 1e3
    );
    assert_eq!((r.state.from, r.state.to), (6, 8));
    assert!(moved <= ideal * 1.25, "{:?}", r.state);
    // Shrink: drain n4, then n3 — each time only the drained node's subtasks move — and
    // finish on n1 and n2 with the keyed operator at 4 subtasks.
    let mut job = job;
    for (node, left) in [("n4", vec!["n1", "n2", "n3"]), ("n3", vec!["n1", "n2"])] {
        job.wait_until(|p| p.checkpoints >= 2);
        let before = job.placement.clone();
        let (next, r) = job.drain(node).expect("drain");
        placed_on(&next, &left);
        for t in before.values().flatten() {
            let (old, new) = (node_of(&before, t), node_of(&next.placement, t));
            assert!(
                old == new || old.as_deref() == Some(node),
                "draining {node}: {t:?} moved from {old:?} to {new:?}"
            );
        }
        println!(
            "drained {node} (pause {:.1} ms)",
            r.pause.as_secs_f64() * 1e3
        );
        job = next;
    }
    job.wait_until(|p| p.checkpoints >= 2);
    let (job, r) = job.rescale("sum", 4).expect("rescale to 4");
    placed_on(&job, &["n1", "n2"]);
    assert_eq!((r.state.from, r.state.to), (8, 4));
    assert_eq!(r.in_place.map(|f| f.retired), Some(4), "rescaled in place");
    let r = job.wait().expect("the last run finishes");
    assert!(r.recoveries.is_empty());
    assert_eq!(r.chain("sum").len(), 4, "the keyed operator ran at 4");
    for c in children {
        let status = c.wait_with_output().expect("wait").status;
        assert!(status.success(), "a node exits cleanly: {status:?}");
    }
    common::assert_same_output(common::published_output(dir.path()), expected);
}

/// When a node dies during a rescale in place.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// While the sources hold for the rescale's checkpoint.
    Holding,
    /// Right after the switch to the new plan (its subtasks may not have re-wired yet).
    Switched,
}

#[test]
fn a_node_killed_during_a_rescale_in_place_is_recovered_exactly() {
    use std::os::unix::process::ExitStatusExt;
    common::init_logging();
    let expected = sum_job().single_process_output();
    for at in [KillAt::Holding, KillAt::Switched] {
        let dir = tempfile::tempdir().expect("tempdir");
        let n1 = node("n1", dir.path(), vec![]);
        let seed = n1.local_addr().to_string();
        let n2 = spawn("n2", &seed, dir.path(), 1);
        let mut n3 = spawn("n3", &seed, dir.path(), 1);
        up(&n1, &["n2", "n3"]);
        let job = start(&n1, JobOptions::default(), &["n1", "n2", "n3"]);
        let chaos = job.chaos();
        chaos.wait_until(|p| p.checkpoints >= 2);
        // Kill n3 (SIGKILL) at the chosen step of the rescale, from another thread.
        let killer = std::thread::spawn(move || {
            chaos.wait_until(|p| match at {
                KillAt::Holding => p.rescales_held >= 1,
                KillAt::Switched => p.rescales_switched >= 1,
            });
            n3.kill().expect("SIGKILL n3");
            n3.wait().expect("wait n3")
        });
        let (job, r) = job.rescale("sum", 8).expect("rescale");
        let status = killer.join().expect("killer");
        assert_eq!(status.signal(), Some(9), "n3 died of SIGKILL: {status:?}");
        assert!(r.in_place.is_some(), "{at:?}: rescaled in place");
        assert_eq!((r.state.from, r.state.to), (6, 8));
        let result = job.wait().expect("the job finishes on n1 and n2");
        println!(
            "n3 killed ({at:?}): nodes lost {:?}, recoveries {}, pause {:.1} ms",
            result.nodes_lost,
            result.recoveries.len(),
            r.pause.as_secs_f64() * 1e3
        );
        assert_eq!(result.nodes_lost, vec!["n3".to_string()], "{at:?}");
        assert!(!result.recoveries.is_empty(), "{at:?}");
        assert_eq!(result.chain("sum").len(), 8, "{at:?}");
        assert!(
            result.subtasks.iter().all(|s| s.node != "n3"),
            "{at:?}: nothing ran on n3 at the end"
        );
        let status = n2.wait_with_output().expect("wait n2").status;
        assert!(status.success(), "n2 exits cleanly: {status:?}");
        common::assert_same_output(common::published_output(dir.path()), expected.clone());
        n1.shutdown();
    }
}
