//! Bad input from the network while a distributed job runs: random bytes, a truncated frame,
//! a frame announcing 4 GiB, an unknown tag, and — over an authenticated link — a valid data
//! frame for a subtask that does not exist. Each is refused or closes only its own link; the
//! job in progress finishes with exact output and no recovery, and the node's memory does not
//! jump (nothing is allocated from a claimed length).

use crate::common;

use riffle::cluster::{Node, Secret, Status};
use riffle::internals::cluster::wire::{
    encode, BatchBytes, EdgeAddress, Message, WireEvent, PROTOCOL_VERSION,
};
use riffle::internals::cluster::{handshake, HandshakeConfig, Role};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const SECRET: &[u8] = b"bad input test secret";

fn sum_job() -> common::SumJob {
    common::SumJob {
        records: 400_000,
        sources: 4,
        parallelism: 4,
        workers: 1,
        keys: 1_000,
        checkpoint_ms: 50,
        pace: 1_000,
        pace_ms: 1,
    }
}

/// This process's resident memory in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens an authenticated link as `id` and sends `bytes` on it.
async fn authenticated(addr: &str, id: &str, bytes: Vec<u8>) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let cfg = HandshakeConfig {
        cluster: "riffle".to_string(),
        node: id.to_string(),
        listen: "127.0.0.1:1".to_string(),
        secret: Secret::new(SECRET).expect("secret"),
        encrypt: false,
        timeout: Duration::from_secs(5),
        incarnation: 7,
    };
    if handshake(&mut s, &cfg, Role::Initiator { expect: None })
        .await
        .is_err()
    {
        return false;
    }
    // A fresh session first, so the garbage reaches the link's reader.
    let mut resume = Vec::new();
    let fresh = Message::Resume {
        session: 1,
        peer_session: 0,
        received: 0,
    };
    if encode(&fresh, &mut resume).is_err() || s.write_all(&resume).await.is_err() {
        return false;
    }
    let _ = s.write_all(&bytes).await;
    let _ = s.flush().await;
    true
}

#[test]
fn garbage_during_a_job_touches_only_its_own_link() {
    // It measures this process's memory: alone in a process of its own.
    common::isolated(
        "cluster_bad_input::garbage_during_a_job_touches_only_its_own_link",
        garbage_during_a_job,
    );
}

fn garbage_during_a_job() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = |name: &str, seeds: Vec<String>| {
        let d = dir.path().to_path_buf();
        Node::builder()
            .name(name)
            .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
            .seeds(seeds)
            .heartbeat(Duration::from_millis(50))
            .failure_timeout(Duration::from_millis(800))
            .register_job("sum", move || sum_job().build(&d))
            .start()
            .expect("node")
    };
    let n1 = node("n1", vec![]);
    let n2 = node("n2", vec![n1.local_addr().to_string()]);
    let linked = n1.wait_members(Duration::from_secs(10), |m| {
        m.iter().any(|x| x.node == "n2" && x.status == Status::Up)
    });
    assert!(!linked.is_empty(), "n1 and n2 linked");
    let job = n1.run_job("sum").expect("job starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::checkpoint_published(dir.path()) {
        assert!(Instant::now() < deadline, "no checkpoint committed");
        std::thread::sleep(Duration::from_millis(5));
    }

    let target = n2.local_addr().to_string();
    let before = rss_kib();
    // Before any handshake: a 4 GiB length, an unknown tag, a truncated frame, random bytes.
    let raw: Vec<Vec<u8>> = vec![
        vec![0xFF, 0xFF, 0xFF, 0xFF, PROTOCOL_VERSION, 6],
        vec![2, 0, 0, 0, PROTOCOL_VERSION, 200],
        vec![100, 0, 0, 0, PROTOCOL_VERSION, 6, 0x90],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    for bytes in raw {
        let mut s = std::net::TcpStream::connect(&target).expect("connect");
        let _ = s.write_all(&bytes);
    }
    // After a handshake with the secret: the same, and a data frame for no subtask.
    let mut bogus = Vec::new();
    encode(
        &Message::Data {
            edge: EdgeAddress {
                job: 7,
                epoch: 0,
                chain: 99,
                from: 0,
                to: 99,
                channel: 0,
            },
            event: WireEvent::Batch(BatchBytes(vec![0x91, 0x01])),
        },
        &mut bogus,
    )
    .expect("encode");
    let authenticated_attacks = vec![
        ("intruder-a", bogus),
        (
            "intruder-b",
            vec![0xFF, 0xFF, 0xFF, 0xFF, PROTOCOL_VERSION, 6],
        ),
        ("intruder-c", vec![2, 0, 0, 0, PROTOCOL_VERSION, 200]),
        ("intruder-d", vec![100, 0, 0, 0, PROTOCOL_VERSION, 6, 0x90]),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (id, bytes) in authenticated_attacks {
        assert!(
            rt.block_on(authenticated(&target, id, bytes)),
            "{id} got through the handshake"
        );
    }
    let grown = rss_kib().saturating_sub(before);
    println!("resident memory grew by {grown} KiB during the attacks");
    assert!(grown < 64 * 1024, "memory jumped by {grown} KiB");

    let result = job.wait().expect("the job finishes");
    assert!(result.recoveries.is_empty(), "{:?}", result.recoveries);
    assert!(result.nodes_lost.is_empty(), "{:?}", result.nodes_lost);
    common::assert_same_output(common::published_output(dir.path()), expected);
    let m = n1.members();
    assert!(
        m.iter().any(|x| x.node == "n2" && x.status == Status::Up),
        "n2 still up: {m:?}"
    );
}
