//! A flood of failed handshakes from the honest nodes' own address (127.0.0.1, as processes
//! of one host or pods behind one address share one): 200 a second at every node while a
//! 3-node job runs, and the link between two workers reset in the middle of it. The honest
//! nodes must link again while the flood goes on (before, the address was locked out after 32
//! failures and the lockout renewed itself), the job must lose no node and end exact, and the
//! attacker's connections must be refused and counted.

use crate::common;

use common::proxied::{Cluster, NAMES};
use common::proxy::{PASS, RESET};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sum_job() -> common::SumJob {
    common::SumJob::paced_trial()
}

/// Connects to `addrs` in turn, `per_second` times a second, each time sending bytes that are
/// no hello and closing; counts the connections made.
fn flood(addrs: Vec<String>, per_second: u64, stop: Arc<AtomicBool>, made: Arc<AtomicU64>) {
    let every = Duration::from_secs(1) / per_second as u32;
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(mut s) = TcpStream::connect(&addrs[i % addrs.len()]) {
            let _ = s.write_all(&[0x10, 0, 0, 0, 0xee, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
            made.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[test]
fn failed_handshakes_from_the_nodes_address_lock_no_member_out() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let cluster = Cluster::start(|b| {
        let d = d.clone();
        b.register_job("sum", move || sum_job().build(&d))
    });
    let handshakes = |c: &Cluster| -> u64 {
        c.nodes
            .iter()
            .map(|n| n.refusals().handshakes + n.refusals().connections)
            .sum()
    };
    let job = cluster.nodes[0].run_job("sum").expect("job starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::checkpoint_published(dir.path()) {
        assert!(Instant::now() < deadline, "no checkpoint was committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused_before = handshakes(&cluster);
    let (stop, made) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.local_addr().to_string())
        .collect();
    let attacker = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || flood(addrs, 600, stop, made))
    };
    // Past the old lockout's 32 failures at every node.
    while made.load(Ordering::SeqCst) < 3 * 64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let links = |n: usize, peer: usize| -> u64 {
        cluster.nodes[n]
            .sessions()
            .iter()
            .find(|s| s.peer == NAMES[peer])
            .map_or(0, |s| s.links)
    };
    let before = links(1, 2);
    for p in cluster.link(1, 2) {
        p.set(RESET);
    }
    for p in cluster.link(1, 2) {
        p.set(PASS);
    }
    let relinked = cluster.nodes[1].wait_sessions(Duration::from_secs(10), |s| {
        s.iter().any(|s| s.peer == NAMES[2] && s.links > before)
    });
    let after = relinked
        .iter()
        .find(|s| s.peer == NAMES[2])
        .map_or(0, |s| s.links);
    assert!(
        after > before,
        "n2 and n3 link again during the flood ({before} links before the reset, {after} after)"
    );
    let result = job.wait().expect("the job finishes");
    stop.store(true, Ordering::SeqCst);
    attacker.join().expect("attacker");
    common::assert_same_output(common::published_output(dir.path()), expected);
    assert!(
        result.nodes_lost.is_empty() && result.recoveries.is_empty(),
        "no node was lost to the flood: {:?}, {} recoveries",
        result.nodes_lost,
        result.recoveries.len()
    );
    let made = made.load(Ordering::SeqCst);
    let refused = handshakes(&cluster) - refused_before;
    println!(
        "handshake flood: {made} attacker connections, {refused} refused and counted; n2–n3 linked again ({before} → {after} links); exact, no node lost"
    );
    assert!(
        refused >= made * 9 / 10,
        "the attacker's connections are refused and counted: {refused} of {made}"
    );
    for n in cluster.nodes {
        n.shutdown();
    }
}
