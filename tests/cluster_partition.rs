//! A network partition, made by fault-injecting TCP proxies on 127.0.0.1 that the test
//! controls (pass-through, added delay, blackhole — accepts and forwards nothing —, reset).
//!
//! Three nodes run in this process; every link of n3 goes through a proxy (n3 advertises its
//! proxy and dials the others through theirs). The job (a keyed running sum with
//! checkpoints) starts with the proxies adding delay; once a checkpoint has been committed,
//! n3's proxies blackhole. The coordinator must detect n3 as lost and recover the job on n1
//! and n2 with output equal to the single-process run; n3 must see its coordinator as lost.
//! Healing the proxies lets n3 rejoin as a fresh member (a new handshake). A reset proxy
//! closes its connections, which the nodes survive too.

use crate::common;

use common::proxy::{Proxy, BLACKHOLE, DELAY, PASS, RESET};
use riffle::cluster::{Node, Status};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"partition test secret";

fn sum_job() -> common::SumJob {
    common::SumJob {
        records: 600_000,
        sources: 4,
        parallelism: 4,
        workers: 1,
        keys: 1_000,
        checkpoint_ms: 50,
        pace: 250,
        pace_ms: 1,
    }
}

fn node(
    name: &str,
    dir: &Path,
    f: impl FnOnce(riffle::cluster::NodeBuilder) -> riffle::cluster::NodeBuilder,
) -> Node {
    let d = dir.to_path_buf();
    f(Node::builder()
        .name(name)
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .heartbeat(Duration::from_millis(50))
        .failure_timeout(Duration::from_millis(400))
        .register_job("sum", move || sum_job().build(&d)))
    .start()
    .expect("node")
}

#[test]
fn a_blackholed_node_is_recovered_from_and_rejoins_when_healed() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    assert_eq!(expected.len(), 600_000);

    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = node("n1", dir.path(), |b| b);
    let n2 = node("n2", dir.path(), |b| b.seeds([n1.local_addr().to_string()]));
    // n3's links all pass through proxies: in front of n3 (advertised), and in front of n1
    // and n2 for the connections n3 makes.
    let n3_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let n3_addr = n3_listener.local_addr().expect("addr").to_string();
    drop(n3_listener);
    let p3 = Proxy::start(n3_addr.clone());
    let p1 = Proxy::start(n1.local_addr().to_string());
    let p2 = Proxy::start(n2.local_addr().to_string());
    let routes = [
        (n1.local_addr().to_string(), p1.addr.clone()),
        (n2.local_addr().to_string(), p2.addr.clone()),
    ];
    let n3 = node("n3", dir.path(), |b| {
        b.listen(&n3_addr)
            .advertise(&p3.addr)
            .seeds([p1.addr.clone()])
            .dial_via(move |a| {
                routes
                    .iter()
                    .find(|(real, _)| real == a)
                    .map_or_else(|| a.to_string(), |(_, via)| via.clone())
            })
    });
    let proxies = [&p1, &p2, &p3];
    let all_up = |n: &Node| {
        n.wait_members(Duration::from_secs(20), |m| {
            m.len() == 2 && m.iter().all(|x| x.status == Status::Up)
        })
    };
    for n in [&n1, &n2, &n3] {
        assert_eq!(all_up(n).len(), 2, "{} sees the other two", n.name());
    }

    for p in proxies {
        p.set(DELAY);
    }
    let job = n1.run_job("sum").expect("job starts");
    assert!(
        job.placement.get("n3").is_some_and(|t| !t.is_empty()),
        "n3 hosts subtasks: {:?}",
        job.placement
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::checkpoint_published(dir.path()) {
        assert!(Instant::now() < deadline, "no checkpoint was committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut = Instant::now();
    for p in proxies {
        p.set(BLACKHOLE);
    }
    let result = job.wait().expect("the job finishes on n1 and n2");
    assert_eq!(result.nodes_lost, vec!["n3".to_string()]);
    let recovery = result.recoveries.first().expect("a recovery");
    println!(
        "partition: n3 lost and the job recovered from checkpoint {:?} (cut {} ms before the job ended; restore {:?})",
        recovery.restored_from,
        cut.elapsed().as_millis(),
        recovery.restore_time
    );
    assert!(result.subtasks.iter().all(|s| s.node != "n3"));
    common::assert_same_output(common::published_output(dir.path()), expected);
    let orphan = n3
        .wait_hosted(Duration::from_secs(10))
        .expect("n3 stops its share of the job");
    assert!(
        orphan
            .error
            .as_deref()
            .is_some_and(|e| e.contains("coordinator")),
        "{orphan:?}"
    );

    // Heal: n3 comes back through a new handshake.
    for p in proxies {
        p.set(PASS);
    }
    for n in [&n1, &n2, &n3] {
        let m = all_up(n);
        assert!(
            m.len() == 2 && m.iter().all(|x| x.status == Status::Up),
            "{} sees everyone again after the heal: {m:?}",
            n.name()
        );
    }
    // A reset closes every proxied connection; the links are made again.
    p3.set(RESET);
    p3.set(PASS);
    for n in [&n1, &n2] {
        let m = n.wait_members(Duration::from_secs(10), |m| {
            m.iter().any(|x| x.node == "n3" && x.status == Status::Up)
        });
        assert!(m.iter().any(|x| x.node == "n3" && x.status == Status::Up));
    }
}
