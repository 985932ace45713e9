//! Failures of subtasks hosted on another node: one that no restart can fix (a `Permanent`
//! error) fails the job at once, as it does in one process — its cause crosses the wire with
//! that mark instead of as plain text that would be retried.
//!
//! Two nodes run in this process. Each builds the job from its own registered definition, so
//! only the subtasks hosted on `n2` fail: a failure there must reach the coordinator `n1`.

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
