//! Failures across nodes: a subtask hosted on another node that fails for good (a `Permanent`
//! error) fails the job at once, as it does in one process — its cause crosses the wire with
//! that mark instead of as plain text that would be retried; and without etcd, the hosts of
//! a coordinator that shut down (and said so) end their part at once instead of waiting for
//! its word.
//!
//! Two nodes run in this process. Each builds the job from its own registered definition, so
//! in the first test only the subtasks hosted on `n2` fail: a failure there must reach the
//! coordinator `n1`.

use riffle::cluster::{Node, Secret};
use riffle::errors::Permanent;
use riffle::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SECRET: &[u8] = b"cluster errors test secret";

/// Calls of the failing function on `n2`, for the permanent case and the ordinary one.
static CALLS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// `0..1000 → map → count`, parallelism 2; on the node whose definition has `fail`, the map
/// fails on every record (with a `Permanent` error when `permanent`).
fn job(fail: bool, permanent: bool) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "remote-failure".to_string();
        c.restart.backoff.initial = Duration::ZERO;
        c.restart.backoff.max = Duration::ZERO;
    });
    let calls = &CALLS[usize::from(permanent)];
    env.sequence(0..1000)
        .try_map(move |x: u64| -> Result<u64, UserError> {
            if !fail {
                return Ok(x);
            }
            calls.fetch_add(1, Ordering::SeqCst);
            Err(if permanent {
                Permanent::new("no such table").into()
            } else {
                "no such table".into()
            })
        })
        .name("lookup")
        .count();
    env
}

fn node(name: &str, seeds: Vec<String>, fail: bool, permanent: bool) -> Node {
    Node::builder()
        .name(name)
        .seeds(seeds)
        .secret(Secret::new(SECRET).expect("secret"))
        .register_job("lookup", move || job(fail, permanent))
        .start()
        .expect("node starts")
}

#[test]
fn a_permanent_error_on_another_node_fails_the_job_at_once() {
    crate::common::init_logging();
    for permanent in [true, false] {
        let n1 = node("n1", Vec::new(), false, permanent);
        let n2 = node("n2", vec![n1.local_addr().to_string()], true, permanent);
        let up = n1.wait_members(Duration::from_secs(30), |m| !m.is_empty());
        assert!(!up.is_empty(), "n2 joined");
        let j = n1.run_job("lookup").expect("the job starts");
        let on_n2 = j.placement.get("n2").map_or(0, |tasks| {
            tasks
                .iter()
                .filter(|t| j.chains[t.chain].contains("lookup"))
                .count() as u32
        });
        assert!(
            on_n2 > 0,
            "n2 hosts a subtask of the map: {:?}",
            j.placement
        );
        let outcome = j.wait();
        let calls = CALLS[usize::from(permanent)].load(Ordering::SeqCst);
        if permanent {
            let err = outcome.expect_err("the job fails");
            assert!(err.to_string().contains("no such table"), "{err}");
            assert!(
                calls <= on_n2,
                "each of n2's {on_n2} subtasks tried once, not again: {calls} calls"
            );
        } else {
            // Retried as the poison policy says (3 attempts per record) before it gives up:
            // the control case, so that the permanent one is known to differ by the mark.
            assert!(calls > on_n2, "an ordinary error is retried: {calls} calls");
            let _ = outcome;
        }
        n2.shutdown();
        n1.shutdown();
    }
}

/// A job that runs until it is stopped: `0..` paced (1 ms per 100 records), summed per key.
fn endless() -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| c.name = "endless".to_string());
    env.sequence(0..u64::MAX)
        .map(|x: u64| {
            if x % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            x
        })
        .key_by(|x: &u64| x % 100)
        .sum(|x: &u64| *x)
        .name("sum")
        .discard();
    env
}

/// Without etcd a host waits ten failure timeouts for a lost coordinator to come back and
/// tell the job's end; a coordinator that shut down (it said so) will not, so its hosts end
/// their part at once — and the coordinator's own part of the job stops with it. The failure timeout here is 20 s: the wait would be 200 s, and the
/// test gives the host 60 s.
#[test]
fn hosts_of_a_coordinator_that_shut_down_end_their_part_at_once() {
    crate::common::init_logging();
    let start = |name: &str, seeds: Vec<String>| {
        Node::builder()
            .name(name)
            .seeds(seeds)
            .secret(Secret::new(SECRET).expect("secret"))
            .failure_timeout(Duration::from_secs(20))
            .register_job("endless", endless)
            .start()
            .expect("node starts")
    };
    let n1 = start("n1", Vec::new());
    let n2 = start("n2", vec![n1.local_addr().to_string()]);
    let up = n1.wait_members(Duration::from_secs(30), |m| !m.is_empty());
    assert!(!up.is_empty(), "n2 joined");
    let j = n1.run_job("endless").expect("the job starts");
    assert!(j.placement.contains_key("n2"), "{:?}", j.placement);
    n1.shutdown();
    let end = n2
        .wait_hosted(Duration::from_secs(60))
        .expect("n2 ended its part without waiting out the grace");
    let error = end.error.expect("the job failed on n2");
    assert!(error.contains("n1"), "{error}");
    // Its own threads do not outlive the node (nobody could continue the job without it).
    let err = j.wait().expect_err("the job was cancelled");
    assert!(matches!(err, JobError::Cancelled { .. }), "{err:?}");
    n2.shutdown();
}
