//! Cluster nodes on 127.0.0.1: joining through a seed, learning the full mesh, refusing a
//! node without the secret, and seeing a node that shut down leave (it says so; a node that
//! dies without a word is declared down by the failure detector: `cluster_job`,
//! `cluster_partition`).

use riffle::cluster::{Node, Status};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"correct horse battery staple";
const WAIT: Duration = Duration::from_secs(10);

fn node(name: &str, seeds: &[String], secret: &[u8]) -> Node {
    Node::builder()
        .name(name)
        .cluster("test")
        .secret(riffle::cluster::Secret::new(secret).expect("secret"))
        .seeds(seeds.iter().cloned())
        .heartbeat(Duration::from_millis(20))
        .failure_timeout(Duration::from_millis(200))
        .start()
        .expect("node starts")
}

fn up(members: &[riffle::cluster::Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.status == Status::Up)
        .map(|m| m.node.clone())
        .collect()
}

#[test]
fn nodes_form_a_mesh_refuse_strangers_and_see_a_node_that_shut_down_leave() {
    let n1 = node("n1", &[], SECRET);
    let seed = vec![n1.local_addr().to_string()];
    let n2 = node("n2", &seed, SECRET);
    let n3 = node("n3", &seed, SECRET);
    // n2 and n3 only know the seed; they learn each other from its heartbeats.
    for (n, others) in [
        (&n1, ["n2", "n3"]),
        (&n2, ["n1", "n3"]),
        (&n3, ["n1", "n2"]),
    ] {
        let m = n.wait_members(WAIT, |m| up(m) == others);
        assert_eq!(up(&m), others, "full mesh");
    }

    let stranger = node("mallory", &seed, b"a wrong secret, guessed");
    let m = stranger.wait_members(Duration::from_millis(300), |m| !m.is_empty());
    assert!(m.is_empty(), "a node without the secret is refused: {m:?}");
    assert!(n1.members().iter().all(|m| m.node != "mallory"));
    drop(stranger);

    let stopped = Instant::now();
    n3.shutdown();
    let left = |m: &[riffle::cluster::Member]| {
        m.iter().any(|x| x.node == "n3" && x.status == Status::Left)
    };
    for n in [&n1, &n2] {
        let m = n.wait_members(WAIT, left);
        assert!(left(&m), "n3 said it left: {m:?}");
    }
    println!(
        "n3 seen leaving after {:?} (failure timeout 200 ms, heartbeat 20 ms)",
        stopped.elapsed()
    );
    assert_eq!(up(&n1.members()), ["n2"]);

    // A node that comes back rejoins as a fresh member.
    let n3 = node("n3", &seed, SECRET);
    let m = n1.wait_members(WAIT, |m| up(m) == ["n2", "n3"]);
    assert_eq!(up(&m), ["n2", "n3"]);
    drop(n3);
}

#[test]
fn a_node_needs_a_name_and_a_secret() {
    assert!(Node::builder()
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .start()
        .is_err());
    assert!(Node::builder().name("x").start().is_err());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let err = Node::builder()
        .name("x")
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .listen(&addr)
        .start();
    assert!(matches!(err, Err(riffle::cluster::NodeError::Bind { .. })));
}

#[test]
fn garbage_from_a_peer_never_takes_a_node_down() {
    use std::io::Write;
    let n1 = node("n1", &[], SECRET);
    let addr = n1.local_addr();
    // Oversized length, unknown tag, undecodable body, a truncated frame, random bytes.
    let attacks: Vec<Vec<u8>> = vec![
        vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 1],
        vec![2, 0, 0, 0, 1, 200],
        vec![5, 0, 0, 0, 1, 1, 0xC1, 0xC1, 0xC1],
        vec![100, 0, 0, 0, 1, 1, 0x90],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    for bytes in attacks {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&bytes);
        drop(s);
    }
    // The node still accepts and links a legitimate peer.
    let n2 = node("n2", &[addr.to_string()], SECRET);
    let m = n1.wait_members(WAIT, |m| up(m) == ["n2"]);
    assert_eq!(up(&m), ["n2"]);
    drop(n2);
}
