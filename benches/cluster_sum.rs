//! Keyed sum across two node processes versus one process.
//!
//! ```text
//! cargo bench --bench cluster_sum -- [N] [RUNS] [--encrypt] [--cluster-only]
//! ```
//! (defaults: 2000000 records, 3 runs)
//!
//! `--encrypt` encrypts the link between the two nodes (Noise transport, ChaCha20-Poly1305).
//! `--cluster-only` skips the one-process runs (no ratio): for profiling the cluster's data
//! path alone. `--shared-cores` lets both node processes use every core instead of binding
//! each to its own (see below).
//!
//! The job: `sequence(0..N) → key_by(x % 100000) → sum → discard`, parallelism 2, no
//! checkpoints. One process runs it with 2 worker threads; the cluster runs it on two node
//! processes (this binary started again as node `n2`) with 1 worker thread each, so both use
//! the machine's 2 cores. Each node process is bound to a core of its own (n1's threads to
//! core 0, n2 to core 1), as two one-core machines would run them; the one-process runs use
//! both cores. Reported per setup (median of RUNS): records/s; for the cluster the
//! bytes written on the links per record and the share of the cluster run's CPU time
//! (elapsed × 2 cores) that encoding and decoding the records that cross a link costs — the
//! codec's cost per record measured here, times the records that crossed (each source sends
//! a key to the node of the subtask that owns it; with the keys spread evenly that is the
//! share of keyed subtasks on the other node), and the writes node `n1` made on its
//! connection to `n2` (each a gathered buffer of frames) per 1,000 records it sent across,
//! with their size.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use riffle::cluster::Node;
use riffle::internals::framework::BatchCodec;
use riffle::prelude::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"cluster bench secret";
const ENV_NODE: &str = "RIFFLE_BENCH_NODE";

fn job(n: u64, workers: usize) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.name = "cluster-sum-bench".to_string();
        c.workers = Some(workers);
    });
    env.sequence(0..n)
        .key_by(|x: &u64| x % 100_000)
        .sum(|x: &u64| *x)
        .name("sum")
        .discard();
    env
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Codec cost per record: encode and decode batches like the ones that cross in the job
/// (4,096 of the sequence's numbers whose key the ring gives to subtask 1 of 2).
fn codec_ns_per_record() -> f64 {
    let codec = BatchCodec::of::<u64>();
    let ring = riffle::routing::KeyRing::new(2);
    let batch: Vec<u64> = (0u64..)
        .filter(|x| ring.route_hash((x % 100_000).key_hash()) == 1)
        .take(4096)
        .collect();
    let payload: riffle::internals::framework::exec::Payload = Box::new(batch);
    let rounds = 500;
    let t = Instant::now();
    for _ in 0..rounds {
        let bytes = codec.encode(&payload).expect("encode");
        let decoded = codec.decode(&bytes).expect("decode");
        std::hint::black_box(decoded);
    }
    t.elapsed().as_nanos() as f64 / (rounds as f64 * 4096.0)
}

/// Binds the calling thread, and the threads it starts from now on, to `cores`.
fn bind(cores: &[usize]) {
    let mut set = CpuSet::new();
    for &c in cores {
        let _ = set.set(c);
    }
    if let Err(e) = sched_setaffinity(Pid::from_raw(0), &set) {
        eprintln!("cannot bind to cores {cores:?}: {e}");
    }
}

fn node_main(spec: &str) {
    if std::env::var("RIFFLE_BENCH_SHARED").is_err() {
        bind(&[1]);
    }
    let encrypt = std::env::var("RIFFLE_BENCH_ENCRYPT").is_ok();
    let (seed, runs) = spec.split_once('|').expect("seed|runs");
    let runs: usize = runs.parse().expect("runs");
    let n: u64 = std::env::var("RIFFLE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let node = Node::builder()
        .name("n2")
        .seeds([seed.to_string()])
        .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
        .encrypt(encrypt)
        .register_job("sum", move || job(n, 1))
        .start()
        .expect("node n2");
    for _ in 0..runs {
        if node.wait_hosted(Duration::from_secs(300)).is_none() {
            std::process::exit(1);
        }
    }
    node.shutdown();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(spec) = std::env::var(ENV_NODE) {
        node_main(&spec);
        return Ok(());
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let encrypt = std::env::args().any(|a| a == "--encrypt");
    let cluster_only = std::env::args().any(|a| a == "--cluster-only");
    let shared = std::env::args().any(|a| a == "--shared-cores");
    let all: Vec<usize> =
        (0..std::thread::available_parallelism().map_or(1, |c| c.get())).collect();
    // Node n1's threads (made while this thread is bound) run on core 0, n2 on core 1: two
    // one-core machines. The one-process runs use every core.
    let on_core_0 = |f: &mut dyn FnMut()| {
        if !shared && all.len() >= 2 {
            bind(&[0]);
        }
        f();
        bind(&all);
    };
    let mut started = None;
    on_core_0(&mut || {
        started = Some(
            Node::builder()
                .name("n1")
                .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
                .encrypt(encrypt)
                .register_job("sum", move || job(n, 1))
                .start(),
        )
    });
    let node = started.ok_or("node n1 did not start")??;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ENV_NODE, format!("{}|{runs}", node.local_addr()))
        .env("RIFFLE_BENCH_N", n.to_string());
    if encrypt {
        cmd.env("RIFFLE_BENCH_ENCRYPT", "1");
    }
    if shared || all.len() < 2 {
        cmd.env("RIFFLE_BENCH_SHARED", "1");
    }
    let mut child = cmd.spawn()?;
    let up = node.wait_members(Duration::from_secs(30), |m| !m.is_empty());
    if up.is_empty() {
        let _ = child.kill();
        return Err("node n2 did not join".into());
    }
    let codec_ns = codec_ns_per_record();
    let (mut single, mut cluster, mut bytes, mut share) = (vec![], vec![], vec![], vec![]);
    let (mut writes_per_k, mut bytes_per_write, mut direct) = (vec![], vec![], vec![]);
    let n1_writes = |node: &Node| {
        node.link_writes()
            .into_iter()
            .filter(|w| w.peer == "n2")
            .fold((0, 0, 0), |(w, b, d), l| {
                (w + l.writes, b + l.bytes, d + l.direct)
            })
    };
    for _ in 0..runs {
        if !cluster_only {
            let r = job(n, 2).execute()?;
            single.push(n as f64 / r.elapsed.as_secs_f64());
        }

        let before = n1_writes(&node);
        let mut ran = None;
        on_core_0(&mut || ran = Some(node.run_job("sum")));
        let j = ran.ok_or("the job did not start")??;
        // Keyed subtasks on the other node, as seen from each node.
        let placement = j.placement.clone();
        let on = |node: &str| {
            placement
                .get(node)
                .map_or(0, |v| v.iter().filter(|t| t.chain == 1).count())
        };
        let keyed = (on("n1") + on("n2")).max(1) as f64;
        let r = j.wait()?;
        let elapsed = r.elapsed.as_secs_f64();
        cluster.push(n as f64 / elapsed);
        let crossed: f64 = r
            .subtasks
            .iter()
            .filter(|s| s.chain.starts_with("sequence"))
            .map(|s| {
                let other = if s.node == "n1" { on("n2") } else { on("n1") };
                s.records_out as f64 * other as f64 / keyed
            })
            .sum();
        let after = n1_writes(&node);
        let (writes, written) = (after.0 - before.0, after.1 - before.1);
        direct.push((after.2 - before.2) as f64 * 100.0 / writes.max(1) as f64);
        let from_n1: f64 = r
            .subtasks
            .iter()
            .filter(|s| s.chain.starts_with("sequence") && s.node == "n1")
            .map(|s| s.records_out as f64 * on("n2") as f64 / keyed)
            .sum();
        writes_per_k.push(writes as f64 * 1000.0 / from_n1.max(1.0));
        bytes_per_write.push(written as f64 / (writes.max(1)) as f64);
        let wire: u64 = r.links.iter().map(|l| l.bytes).sum();
        bytes.push(wire as f64 / n as f64);
        share.push(crossed * codec_ns / (elapsed * 2.0 * 1e9));
    }
    let _ = child.wait();
    let c = median(cluster);
    let s = if cluster_only { c } else { median(single) };
    let links = if encrypt { "encrypted" } else { "plain" };
    println!("cluster_sum: N = {n}, {runs} runs, medians; 2 cores; {links} links");
    println!("  1 process,  2 workers:          {:>12.0} rec/s", s);
    println!(
        "  2 processes, 1 worker each:    {:>12.0} rec/s   ratio {:.2}",
        c,
        c / s
    );
    println!(
        "  bytes on the wire per record:  {:>12.2}  (all frames, both directions)",
        median(bytes)
    );
    println!(
        "  n1 -> n2 writes:               {:>12.2} per 1,000 records that crossed, {:.0} bytes per write, {:.0} % by the sending thread",
        median(writes_per_k),
        median(bytes_per_write),
        median(direct)
    );
    println!(
        "  codec: {codec_ns:.1} ns per record (encode + decode); share of the cluster run's CPU: {:.1} %",
        median(share) * 100.0
    );
    Ok(())
}
