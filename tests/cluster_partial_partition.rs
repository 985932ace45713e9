//! A partial partition: the link between the two worker nodes of a 3-node job is held (its
//! traffic delivered to nobody, the TCP connections left open, as on a network that drops
//! every packet of that link) for 0.5×, 2× and 5× the failure timeout, in both directions or
//! in one, with and without etcd — while both workers still reach the coordinator.
//!
//! Every link goes through a proxy of its own (node `i` dials node `j` through proxy
//! `(i, j)`), so the held link can be any pair; it is the pair of nodes that do not
//! coordinate. Whatever the duration, the job must end `Ok` with output equal to the
//! single-process run and every node must report the same outcome: either the link comes back
//! and the session resumes with the frames it kept, or the coordinator declares one of the two
//! workers lost and the job recovers from its checkpoint. Each trial says which it was.
//!
//! `RIFFLE_PARTIAL_TRIALS=N` runs N trials of each of the 12 cases (default 1).

use crate::common;

use common::etcd::Etcd;
use common::proxied::{Cluster, FAILURE_TIMEOUT, NAMES};
use std::time::{Duration, Instant};

fn sum_job() -> common::SumJob {
    common::SumJob::paced_trial()
}

/// One case: the hold's length in tenths of the failure timeout, both directions or one,
/// etcd or not.
#[derive(Clone, Copy, Debug)]
struct Case {
    tenths: u32,
    both: bool,
    etcd: bool,
}

/// Runs one trial of `case`; what it ended in ("resume" or "recovery (n lost)").
fn trial(case: Case, expected: &[String]) -> Option<String> {
    let etcd = if case.etcd {
        Some(Etcd::start()?)
    } else {
        None
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let job = sum_job();
    let cluster = Cluster::start(|b| {
        let d = dir.path().to_path_buf();
        let b = b.register_job("sum", move || job.build(&d));
        match &etcd {
            Some(e) => b.etcd([e.url.clone()]).lease_ttl(Duration::from_secs(1)),
            None => b,
        }
    });
    let coordinator = match &etcd {
        Some(_) => {
            let leader = cluster.nodes[0]
                .wait_leader(Duration::from_secs(20))
                .expect("a leader is elected");
            NAMES.iter().position(|n| *n == leader).expect("a node")
        }
        None => 0,
    };
    let workers: Vec<usize> = (0..3).filter(|&i| i != coordinator).collect();
    let (a, b) = (workers[0], workers[1]);
    let job = cluster.nodes[coordinator]
        .run_job("sum")
        .expect("job starts");
    for w in [a, b] {
        assert!(
            job.placement.get(NAMES[w]).is_some_and(|t| !t.is_empty()),
            "{} hosts subtasks: {:?}",
            NAMES[w],
            job.placement
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::checkpoint_published(dir.path()) {
        assert!(Instant::now() < deadline, "no checkpoint was committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A hang is a failure: past this, the process ends with the case named.
    let watchdog = common::watchdog(format!("{case:?}"), Duration::from_secs(120));
    let before = cluster.held_back(a, b);
    cluster.hold(a, b, case.both);
    // The fault itself lasts this long.
    std::thread::sleep(FAILURE_TIMEOUT * case.tenths / 10);
    cluster.release(a, b);
    assert!(
        cluster.held_back(a, b) > before,
        "{case:?}: the hold kept no traffic back"
    );
    let id = job.id();
    let result = job
        .wait()
        .unwrap_or_else(|e| panic!("{case:?}: the job failed: {e}"));
    common::assert_same_output(common::published_output(dir.path()), expected.to_vec());
    for w in [a, b] {
        let end = cluster.nodes[w]
            .wait_hosted_job(id, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{case:?}: {} reports no outcome", NAMES[w]));
        assert_eq!(
            end.error, None,
            "{case:?}: {} reports another outcome than its coordinator",
            NAMES[w]
        );
    }
    let ended = if result.nodes_lost.is_empty() {
        assert!(
            result.recoveries.is_empty(),
            "{case:?}: recoveries without a lost node: {:?}",
            result.recoveries
        );
        "resume".to_string()
    } else {
        format!(
            "recovery ({} lost, {} recoveries)",
            result.nodes_lost.join(", "),
            result.recoveries.len()
        )
    };
    for n in cluster.nodes {
        n.shutdown();
    }
    let _ = watchdog.send(());
    Some(ended)
}

#[test]
fn a_worker_link_held_past_the_failure_timeout_ends_in_one_decision_and_exact_output() {
    common::init_logging();
    let trials = common::trials("RIFFLE_PARTIAL_TRIALS");
    let expected = sum_job().single_process_output();
    assert_eq!(expected.len(), 600_000);
    for etcd in [false, true] {
        for both in [true, false] {
            for tenths in [5, 20, 50] {
                let case = Case { tenths, both, etcd };
                for t in 0..trials {
                    let Some(ended) = trial(case, &expected) else {
                        return;
                    };
                    println!(
                        "partial partition {}× the failure timeout, {}, {}, trial {t}: exact, {ended}",
                        f64::from(tenths) / 10.0,
                        if both { "both directions" } else { "one direction" },
                        if etcd { "with etcd" } else { "without etcd" },
                    );
                }
            }
        }
    }
}
