//! Attacks on a running cluster of node *processes* on 127.0.0.1, by a client written here.
//!
//! Each test starts three nodes (copies of this test binary; `node_process_entry` does nothing
//! unless `RIFFLE_SECURITY_NODE` is set), runs a paced keyed running sum with checkpoints
//! across them, attacks while it runs, and then requires that every attack was refused (seen
//! by the client *and* counted by the node), that the job finished without a recovery and
//! with output equal to the single-process run, that the attacked node's memory and threads
//! stayed within stated bounds (read from `/proc/PID/status`), and that the attacks happened
//! while the job was running.
//!
//! - `outsiders_without_the_secret_are_refused`: reflection of one node's handshake into
//!   another's across two connections (12 attempts), a claim of the node's own id, the replay
//!   of a handshake recorded on the wire, a hijack of a node's id right after its links were
//!   reset, and 64 half-sent 16 MiB frames before authentication.
//! - `a_member_cannot_command_jobs_it_does_not_coordinate`: a client *with* the secret sends
//!   200 forged `JobStart` frames, control, spawn, placement, decision and end frames for the
//!   running job to a node that hosts it, reports to the coordinator, claims a live member's
//!   id from another address, and floods 8,000 fake members; it is then forgotten.
//! - `a_node_near_its_open_file_limit_refuses_connections_not_jobs`: 1,100 handshakes left
//!   pending against a node whose open-file limit is 1,024 (set with `setrlimit` in the node
//!   process), from 110 loopback addresses; this cluster encrypts its links.
//!
//! Bounds stated and checked: the attacked node's resident memory grows by less than 32 MiB
//! (outsiders; 64 half-sent 16 MiB frames took a node of the first protocol from 6.5 MB to
//! 990 MB) or 64 MiB (members, and the open-file flood), its threads by at most 4 (200 forged
//! job starts took it to 606 threads), and its open files stay below its limit.

use crate::common;

use riffle::cluster::{Limits, Node, Secret, Status};
use riffle::internals::cluster::wire::{
    encode, read_frame, BatchBytes, EdgeAddress, Hello, Message, RefuseReason, WireEvent,
    PROTOCOL_VERSION,
};
use riffle::internals::framework::TaskId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &[u8] = b"security test secret";
const ENV_NODE: &str = "RIFFLE_SECURITY_NODE";

/// The job: long enough (paced) for every attack to land while it runs.
fn sum_job() -> common::SumJob {
    common::SumJob {
        records: 600_000,
        sources: 4,
        parallelism: 4,
        workers: 1,
        keys: 1_000,
        checkpoint_ms: 100,
        pace: 20,
        pace_ms: 1,
    }
}

/// A node process's settings, passed in `RIFFLE_SECURITY_NODE` as `key=value;…`.
#[derive(Clone, Debug, Default)]
struct Spec {
    name: String,
    listen: String,
    advertise: String,
    seed: String,
    expect: usize,
    dir: PathBuf,
    /// Open-file limit to set in the process (0: leave it).
    nofile: u64,
    /// Admission limits so wide that only the open-file reserve protects the node, and a
    /// 30 s handshake deadline.
    wide: bool,
    /// Encrypt the links.
    encrypt: bool,
}

impl Spec {
    fn encode(&self) -> String {
        format!(
            "{};{};{};{};{};{};{};{};{}",
            self.name,
            self.listen,
            self.advertise,
            self.seed,
            self.expect,
            self.dir.display(),
            self.nofile,
            u8::from(self.wide),
            u8::from(self.encrypt)
        )
    }

    fn decode(s: &str) -> Spec {
        let f: Vec<&str> = s.split(';').collect();
        Spec {
            name: f[0].to_string(),
            listen: f[1].to_string(),
            advertise: f[2].to_string(),
            seed: f[3].to_string(),
            expect: f[4].parse().expect("expect"),
            dir: PathBuf::from(f[5]),
            nofile: f[6].parse().expect("nofile"),
            wide: f[7] == "1",
            encrypt: f[8] == "1",
        }
    }
}

/// Writes what the node knows to `dir/status-NAME` (atomically), for the test to read.
fn write_status(node: &Node, dir: &Path, job: Option<u64>) {
    let members: Vec<String> = node
        .members()
        .into_iter()
        .filter(|m| m.status == Status::Up)
        .map(|m| m.node)
        .collect();
    let r = node.refusals();
    let text = format!(
        "members={}\ncandidates={}\nconnections={}\nhandshakes={}\nlinks={}\nframes={}\nbad={}\njob={}\n",
        members.join(","),
        node.candidates(),
        r.connections,
        r.handshakes,
        r.links,
        r.frames,
        r.bad_frames,
        job.map_or(String::new(), |j| j.to_string()),
    );
    let tmp = dir.join(format!(".status-{}", node.name()));
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(format!("status-{}", node.name())));
    }
}

/// Entry point of a node process (a copy of this test binary); a no-op in a normal test run.
#[test]
fn node_process_entry() {
    let Ok(spec) = std::env::var(ENV_NODE) else {
        return;
    };
    common::init_logging();
    let s = Spec::decode(&spec);
    if s.nofile > 0 {
        rlimit::setrlimit(rlimit::Resource::NOFILE, s.nofile, s.nofile).expect("setrlimit");
    }
    let d = s.dir.clone();
    let mut b = Node::builder()
        .name(&s.name)
        .listen(&s.listen)
        .seeds((!s.seed.is_empty()).then(|| s.seed.clone()))
        .secret(Secret::new(SECRET).expect("secret"))
        .heartbeat(Duration::from_millis(50))
        .failure_timeout(Duration::from_millis(1000))
        .forget_after(Duration::from_secs(2))
        .encrypt(s.encrypt)
        .register_job("sum", move || sum_job().build(&d));
    if !s.advertise.is_empty() {
        b = b.advertise(&s.advertise);
    }
    if s.wide {
        b = b
            .limits(Limits {
                max_pending: 100_000,
                max_pending_per_addr: 100_000,
                max_connections: 100_000,
                ..Limits::default()
            })
            .handshake_timeout(Duration::from_secs(30));
    }
    let node = b.start().expect("node starts");
    let job_id = std::sync::Mutex::new(None);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let code = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                write_status(&node, &s.dir, *job_id.lock().expect("job id"));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let code = run_role(&node, &s, &job_id);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        code
    });
    write_status(&node, &s.dir, None);
    node.shutdown(); // the job's end reaches the other nodes first
    std::process::exit(code);
}

/// What a node process does: coordinate the job, host its share, or (`expect` 0) idle until
/// it is killed. Returns the exit code.
fn run_role(node: &Node, s: &Spec, job_id: &std::sync::Mutex<Option<u64>>) -> i32 {
    if s.expect == 0 {
        loop {
            std::thread::park();
        }
    }
    let peers = node.wait_members(Duration::from_secs(30), |m| m.len() + 1 >= s.expect);
    assert!(
        peers.len() + 1 >= s.expect,
        "{}: cluster did not form",
        s.name
    );
    if node.coordinator() != s.name {
        return match node.wait_hosted(Duration::from_secs(300)) {
            Some(e) if e.error.is_none() => 0,
            other => {
                eprintln!("{}: hosted job ended badly: {other:?}", s.name);
                1
            }
        };
    }
    let job = node.run_job("sum").expect("job starts");
    *job_id.lock().expect("job id") = Some(job.id());
    let result = job.wait().expect("job succeeds");
    let report = format!(
        "recoveries={} nodes_lost={} checkpoints={}\n",
        result.recoveries.len(),
        result.nodes_lost.join(","),
        result.checkpoints.len()
    );
    std::fs::write(s.dir.join("report"), report).expect("write report");
    0
}

/// The node processes of one test; killed when dropped.
struct Cluster {
    dir: PathBuf,
    names: Vec<String>,
    addrs: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            names: Vec::new(),
            addrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Starts a node process; `spec.dir` and `spec.listen` are filled in here.
    fn start(&mut self, mut spec: Spec) -> String {
        spec.dir = self.dir.clone();
        if spec.listen.is_empty() {
            spec.listen = free_addr();
        }
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args([
                "cluster_security::node_process_entry",
                "--exact",
                "--nocapture",
            ])
            .env(ENV_NODE, spec.encode())
            .spawn()
            .expect("spawn node");
        self.names.push(spec.name.clone());
        self.addrs.push(spec.listen.clone());
        self.children.push(child);
        spec.listen
    }

    /// n1 (the seed and coordinator), n2 and n3, running the job; `tweak` adjusts each
    /// node's spec.
    fn three(dir: &Path, tweak: impl Fn(&mut Spec)) -> Cluster {
        let mut c = Cluster::new(dir);
        let mut seed = String::new();
        for name in ["n1", "n2", "n3"] {
            let mut spec = Spec {
                name: name.into(),
                seed: seed.clone(),
                expect: 3,
                ..Spec::default()
            };
            tweak(&mut spec);
            let addr = c.start(spec);
            if seed.is_empty() {
                seed = addr;
            }
        }
        c
    }

    fn addr(&self, name: &str) -> String {
        let i = self.names.iter().position(|n| n == name).expect("node");
        self.addrs[i].clone()
    }

    fn pid(&self, name: &str) -> u32 {
        let i = self.names.iter().position(|n| n == name).expect("node");
        self.children[i].id()
    }

    /// A field of a node's status file, once it exists.
    fn status(&self, name: &str, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("status-{name}"))).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    }

    fn count(&self, name: &str, key: &str) -> u64 {
        self.status(name, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `cond` holds for node `name`'s status (or fails after `timeout`).
    fn wait(&self, name: &str, what: &str, timeout: Duration, cond: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "{name}: {what} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running job's id, once the coordinator started it and a checkpoint committed.
    fn running_job(&self) -> u64 {
        self.wait("n1", "the job starts", Duration::from_secs(60), |c| {
            c.status("n1", "job").is_some_and(|j| !j.is_empty())
                && common::checkpoint_published(&c.dir)
        });
        self.status("n1", "job")
            .and_then(|j| j.parse().ok())
            .expect("job id")
    }

    fn job_running(&mut self) -> bool {
        self.children[0].try_wait().expect("try_wait").is_none()
    }

    /// Waits for n1..n3 to exit; all must succeed; returns the coordinator's report.
    fn finish(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(240);
        for (i, c) in self.children.iter_mut().enumerate().take(3) {
            loop {
                if let Some(s) = c.try_wait().expect("try_wait") {
                    assert!(s.success(), "n{} exited with {s}", i + 1);
                    break;
                }
                assert!(Instant::now() < deadline, "n{} did not finish", i + 1);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::fs::read_to_string(self.dir.join("report")).expect("report")
    }
}

/// A field of `/proc/PID/status` in its unit (KiB for memory).
fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples a process's resident memory and threads until `stop` is set; the maxima.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(u64, u64, usize)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut rss, mut threads, mut files) = (0, 0, 0);
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                rss = rss.max(proc_status(pid, "VmRSS:"));
                threads = threads.max(proc_status(pid, "Threads:"));
                files = files.max(open_files(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            (rss, threads, files)
        });
        Sampler { stop, handle }
    }

    /// (peak resident KiB, peak threads, peak open files).
    fn stop(self) -> (u64, u64, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("sampler")
    }
}

fn hello(node: &str, listen: &str, nonce: u8) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: "riffle".into(),
        node: node.into(),
        listen: listen.into(),
        nonce: [nonce; 32],
        encrypt: false,
        incarnation: 7,
    })
}

async fn send(s: &mut TcpStream, m: &Message) {
    common::insider::send(s, m).await;
}

/// Reads frames until the node closes the connection or `wait` passes; `Err` if the node
/// sent anything a linked peer gets (it accepted the client).
async fn refused(s: &mut TcpStream, wait: Duration) -> Result<Vec<Message>, String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, read_frame(s, 1 << 20)).await {
        if !matches!(
            m,
            Message::Hello(_) | Message::Refused(_) | Message::Noise(_)
        ) {
            return Err(format!("accepted: the node sent {m:?}"));
        }
        got.push(m);
    }
    Ok(got)
}

/// Copies frames from `r` to `w` until `r` closes; `Err` if a frame shows that the node
/// behind `r` treated the connection as linked.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), String> {
    while let Ok(m) = read_frame(&mut r, 1 << 20).await {
        if !matches!(
            m,
            Message::Hello(_) | Message::Refused(_) | Message::Noise(_)
        ) {
            return Err(format!("accepted: a node sent {m:?}"));
        }
        let mut buf = Vec::new();
        encode(&m, &mut buf).expect("encode");
        if w.write_all(&buf).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Relays frames between two connections, both ways, until both close or `wait` passes;
/// `Err` if either node treated its side as linked.
async fn relay(a: TcpStream, b: TcpStream, wait: Duration) -> Result<(), String> {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let (x, y) = tokio::join!(
        tokio::time::timeout(wait, pipe(ar, bw)),
        tokio::time::timeout(wait, pipe(br, aw))
    );
    x.unwrap_or(Ok(()))?;
    y.unwrap_or(Ok(()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Checks the end: the job succeeded with no recovery and its output equals the clean run.
fn assert_exact(cluster: &mut Cluster, expected: Vec<String>) {
    let report = cluster.finish();
    println!("{report}");
    assert!(report.starts_with("recoveries=0 nodes_lost= "), "{report}");
    common::assert_same_output(common::published_output(&cluster.dir), expected);
}

#[test]
fn outsiders_without_the_secret_are_refused() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::three(dir.path(), |_| {});
    let _job = cluster.running_job();
    // n4 joins after the job started (it hosts nothing) and is reached through a proxy, so
    // its links can be reset without touching the job's data.
    let n4_listen = free_addr();
    let proxy = common::proxy::Proxy::start(n4_listen.clone());
    cluster.start(Spec {
        name: "n4".into(),
        listen: n4_listen,
        advertise: proxy.addr.clone(),
        seed: cluster.addr("n1"),
        expect: 0,
        ..Spec::default()
    });
    for n in ["n2", "n3"] {
        cluster.wait(n, "n4 linked", Duration::from_secs(20), |c| {
            c.status(n, "members").is_some_and(|m| m.contains("n4"))
        });
    }
    let (n1, n2, n3) = (cluster.addr("n1"), cluster.addr("n2"), cluster.addr("n3"));
    let n4 = cluster.addr("n4");
    let refusals = |c: &Cluster, n: &str| c.count(n, "handshakes") + c.count(n, "connections");
    let before = ["n1", "n2", "n3"].map(|n| refusals(&cluster, n));
    let sampler = Sampler::start(cluster.pid("n3"));
    let rss0 = proc_status(cluster.pid("n3"), "VmRSS:");
    let rt = runtime();
    rt.block_on(async {
        // Reflection: each node's answers are relayed into another node's connection (and
        // into a second connection to the same node), claiming the other's id: 12 attempts.
        for i in 0..12u8 {
            let (a, b, ida, idb) = match i % 3 {
                0 => (&n1, &n2, "n2", "n1"),
                1 => (&n2, &n3, "n3", "n2"),
                _ => (&n1, &n1, "n2", "n3"),
            };
            let (mut x, mut y) = (connect(a).await, connect(b).await);
            send(&mut x, &hello(ida, "127.0.0.1:1", i)).await;
            send(&mut y, &hello(idb, "127.0.0.1:2", i)).await;
            relay(x, y, Duration::from_secs(6))
                .await
                .unwrap_or_else(|e| panic!("reflection attempt {i}: {e}"));
        }
        // The node's own id.
        let mut s = connect(&n1).await;
        send(&mut s, &hello("n1", "127.0.0.1:1", 1)).await;
        let got = refused(&mut s, Duration::from_secs(6))
            .await
            .expect("self id");
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::Refused(RefuseReason::SelfId))),
            "a claim of the node's own id is refused as such: {got:?}"
        );
        // A handshake recorded on the wire (n2 or n3 dialling n4 through the proxy), replayed.
        let recorded = (0..4).find_map(|i| proxy.recorded(i).filter(|r| r.len() > 64));
        let recorded = recorded.expect("the proxy recorded a handshake");
        for target in [&n1, &n2, &n4] {
            let mut s = connect(target).await;
            let _ = s.write_all(&recorded).await;
            refused(&mut s, Duration::from_secs(6))
                .await
                .expect("a replayed handshake is refused");
        }
        // Hijack: n4's links are reset; at once, a client claims to be n4 (answering the
        // challenge with bytes it does not have the key for) to n2 and n3, ten times each.
        proxy.set(common::proxy::RESET);
        proxy.set(common::proxy::PASS);
        for i in 0..10u8 {
            for target in [&n2, &n3] {
                let mut s = connect(target).await;
                send(&mut s, &hello("n4", "127.0.0.1:1", i)).await;
                let _ = read_frame(&mut s, 1 << 20).await; // the node's hello
                send(&mut s, &Message::Noise(vec![i; 48])).await;
                refused(&mut s, Duration::from_secs(6))
                    .await
                    .expect("a hijack of n4's id is refused");
            }
        }
        // 64 frames announcing 16 MiB, half sent, before any handshake, all held open.
        let mut held = Vec::new();
        for _ in 0..64 {
            let mut s = connect(&n3).await;
            let mut frame = (16u32 << 20).to_le_bytes().to_vec();
            frame.extend([PROTOCOL_VERSION, 1]);
            frame.extend(vec![0x5A; 64 * 1024]);
            let _ = s.write_all(&frame).await;
            held.push(s);
        }
        for s in &mut held {
            refused(s, Duration::from_secs(6))
                .await
                .expect("a large frame before the handshake is refused");
        }
    });
    let (rss, threads, files) = sampler.stop();
    let grown_mib = rss.saturating_sub(rss0) / 1024;
    println!("n3 during the attacks: resident +{grown_mib} MiB (peak {rss} KiB), {threads} threads, {files} open files");
    assert!(grown_mib < 32, "n3's memory grew by {grown_mib} MiB");
    assert!(
        cluster.job_running(),
        "the attacks landed while the job ran (pace it more)"
    );
    // n4 is linked again through its proxy, and nobody else is a member.
    for n in ["n2", "n3"] {
        cluster.wait(n, "n4 relinked", Duration::from_secs(20), |c| {
            c.status(n, "members").is_some_and(|m| {
                m.split(',').filter(|x| !x.is_empty()).count() == 3 && m.contains("n4")
            })
        });
    }
    // Every attempt was counted by the node it hit (status files refresh every 50 ms).
    for (i, (n, least)) in [("n1", 12), ("n2", 16), ("n3", 10 + 64)]
        .into_iter()
        .enumerate()
    {
        cluster.wait(n, "the refusals counted", Duration::from_secs(10), |c| {
            refusals(c, n) >= before[i] + least
        });
    }
    let after = ["n1", "n2", "n3"].map(|n| refusals(&cluster, n));
    println!("refused connections and handshakes counted by n1, n2, n3: {before:?} -> {after:?}");
    assert_exact(&mut cluster, expected);
}

/// Opens an authenticated link to `addr` as `id` (a client that holds the secret).
async fn insider(addr: &str, id: &str, listen: &str) -> TcpStream {
    common::insider::insider(addr, id, listen, SECRET).await
}

/// Every job frame a node without authority could send about `job` to a node hosting it.
fn forged_frames(job: u64) -> Vec<Message> {
    let t = TaskId {
        chain: 0,
        subtask: 0,
    };
    let mut v: Vec<Message> = (0..200u64)
        .map(|i| Message::JobStart {
            job: 1_000 + i,
            name: "sum".into(),
            coordinator: "n1".into(),
            placement: vec![(t, "n2".into())],
            parallelism: None,
            rescaled: Vec::new(),
            epoch: 0,
        })
        .collect();
    v.push(Message::JobStart {
        job: 999,
        name: "sum".into(),
        coordinator: "zz-insider".into(),
        placement: vec![(t, "n2".into())],
        parallelism: None,
        rescaled: Vec::new(),
        epoch: 0,
    });
    v.push(Message::Spawn {
        job,
        task: t,
        spec: vec![0x90],
    });
    v.push(Message::Control {
        job,
        task: t,
        body: vec![0x90],
    });
    v.push(Message::Decision {
        job,
        task: t,
        body: vec![0x90],
    });
    v.push(Message::Placement {
        job,
        moves: vec![(t, "zz-insider".into())],
    });
    v.push(Message::StatsRequest { job });
    v.push(Message::JobEnd {
        job,
        error: Some("forged".into()),
    });
    v
}

#[test]
fn a_member_cannot_command_jobs_it_does_not_coordinate() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::three(dir.path(), |_| {});
    let job = cluster.running_job();
    let (n1, n2) = (cluster.addr("n1"), cluster.addr("n2"));
    let frames0 = ["n1", "n2"].map(|n| cluster.count(n, "frames"));
    let links0 = cluster.count("n2", "links");
    let threads0 = proc_status(cluster.pid("n2"), "Threads:");
    let rss0 = proc_status(cluster.pid("n2"), "VmRSS:");
    let sampler = Sampler::start(cluster.pid("n2"));
    let rt = runtime();
    let forged = forged_frames(job);
    let n_forged = forged.len() as u64;
    let closed = free_addr(); // nobody listens here
    rt.block_on(async {
        let mut to_n2 = insider(&n2, "zz-insider", &closed).await;
        for m in &forged {
            send(&mut to_n2, m).await;
        }
        // Reports and link figures for the job, to its coordinator, from a node outside it.
        let mut to_n1 = insider(&n1, "zz-insider", &closed).await;
        send(
            &mut to_n1,
            &Message::Report {
                job,
                body: vec![0x90],
            },
        )
        .await;
        send(
            &mut to_n1,
            &Message::Stats {
                job,
                links: Vec::new(),
            },
        )
        .await;
        // A live member's id, claimed from another address: refused after the handshake.
        let mut s = insider(&n2, "n3", &closed).await;
        let got = refused(&mut s, Duration::from_secs(6))
            .await
            .expect("n3's id is refused");
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::Refused(RefuseReason::DuplicateNode))),
            "{got:?}"
        );
        // 8,000 fake members, announced to n1 and n2 in heartbeats.
        let members: Vec<(String, String)> = (0..8_000)
            .map(|i| (format!("fake-{i:04}"), closed.clone()))
            .collect();
        for s in [&mut to_n1, &mut to_n2] {
            send(
                s,
                &Message::Heartbeat {
                    seq: 1,
                    members: members.clone(),
                    figures: Vec::new(),
                },
            )
            .await;
        }
        // Held open until both nodes counted every refusal.
        let want = (frames0[0] + 2, frames0[1] + n_forged);
        let deadline = Instant::now() + Duration::from_secs(20);
        while (cluster.count("n1", "frames"), cluster.count("n2", "frames")) < want {
            assert!(
                Instant::now() < deadline,
                "refusals counted: {:?} < {want:?}",
                (cluster.count("n1", "frames"), cluster.count("n2", "frames"))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in ["n1", "n2"] {
            let c = cluster.count(n, "candidates");
            assert!(
                c <= 64,
                "{n} keeps at most 64 unverified candidates, has {c}"
            );
        }
    });
    let (rss, threads, _) = sampler.stop();
    println!("n2 during the attacks: {threads} threads at most ({threads0} before), peak resident {rss} KiB ({rss0} before)");
    assert!(
        rss.saturating_sub(rss0) < 64 * 1024,
        "n2's memory stayed within 64 MiB of growth"
    );
    assert!(
        threads <= threads0 + 4,
        "forged job starts started threads: {threads0} -> {threads}"
    );
    assert_eq!(
        cluster.count("n1", "frames"),
        frames0[0] + 2,
        "n1 refused exactly the 2 frames"
    );
    assert_eq!(
        cluster.count("n2", "frames"),
        frames0[1] + n_forged,
        "n2 refused every forged frame"
    );
    assert!(
        cluster.count("n2", "links") > links0,
        "n2 counted the duplicate id"
    );
    assert!(
        cluster.job_running(),
        "the attacks landed while the job ran (pace it more)"
    );
    // No fake became a member; the insider, gone, is declared down and then forgotten; the
    // candidates it named expire.
    for n in ["n1", "n2", "n3"] {
        cluster.wait(n, "the insider forgotten", Duration::from_secs(30), |c| {
            c.status(n, "members").is_some_and(|m| {
                m == if n == "n1" {
                    "n2,n3"
                } else if n == "n2" {
                    "n1,n3"
                } else {
                    "n1,n2"
                }
            }) && c.count(n, "candidates") == 0
        });
    }
    assert_exact(&mut cluster, expected);
}

#[test]
fn a_node_near_its_open_file_limit_refuses_connections_not_jobs() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    // n2's only protection is its open-file reserve: no pending or per-address limits. The
    // cluster encrypts its links, so the job's data crosses them sealed.
    let mut cluster = Cluster::three(dir.path(), |s| {
        s.encrypt = true;
        if s.name == "n2" {
            s.nofile = 1024;
            s.wide = true;
        }
    });
    let _job = cluster.running_job();
    let pid = cluster.pid("n2");
    let limit = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    assert!(
        limit
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "n2 runs with an open-file limit of 1024: {limit}"
    );
    // This client needs more than 1,100 files itself.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard.min(8192), hard).expect("setrlimit");
    let n2 = cluster.addr("n2");
    let port: u16 = n2
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let sampler = Sampler::start(pid);
    let rss0 = proc_status(pid, "VmRSS:");
    let rt = runtime();
    let (held, turned_away, closed) = rt.block_on(async {
        let mut held = Vec::new();
        let mut turned_away = 0;
        let t0 = Instant::now();
        for i in 0..1_100u32 {
            // 110 loopback addresses, 10 connections each.
            let ip = std::net::Ipv4Addr::new(127, 0, 1, (i / 10 + 1) as u8);
            match connect_from(ip, port).await {
                Some(s) => held.push(s),
                None => turned_away += 1,
            }
        }
        println!("connected in {:?}", t0.elapsed());
        // The node answers the ones it turns away with `Refused(Busy)` and closes them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut closed = 0;
        for s in &held {
            let mut b = [0u8; 64];
            if s.try_read(&mut b).is_ok() {
                closed += 1;
            }
        }
        (held, turned_away, closed)
    });
    let (rss, threads, files) = sampler.stop();
    drop(held);
    cluster.wait("n2", "the refusals counted", Duration::from_secs(10), |c| {
        c.count("n2", "connections") >= 100
    });
    let refused = cluster.count("n2", "connections");
    println!(
        "1,100 pending handshakes: {closed} closed by n2 (it counted {refused} refusals), {turned_away} not connected; n2 peaked at {files} open files (limit 1024), {threads} threads, +{} MiB",
        rss.saturating_sub(rss0) / 1024
    );
    assert!(files < 1024, "n2 stayed below its open-file limit: {files}");
    assert!(
        refused >= 100,
        "n2 refused connections near its limit: {refused}"
    );
    assert!(
        rss.saturating_sub(rss0) / 1024 < 64,
        "n2's memory stayed bounded"
    );
    assert!(
        cluster.job_running(),
        "the attacks landed while the job ran (pace it more)"
    );
    assert_exact(&mut cluster, expected);
}

/// Connects from `ip` (a loopback address) to 127.0.0.1:`port`; `None` if it fails.
async fn connect_from(ip: std::net::Ipv4Addr, port: u16) -> Option<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4().ok()?;
    s.bind(std::net::SocketAddr::from((ip, 0))).ok()?;
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tokio::time::timeout(Duration::from_secs(2), s.connect(target))
        .await
        .ok()?
        .ok()
}

/// Reads what the node sends on an insider's link until it closes it; `true` if it did
/// within `wait`.
async fn closed_by_node(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, read_frame(s, 1 << 20)).await {
            Ok(Ok(_)) => continue, // its resume and heartbeats
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// How soon a node closes a link on which a bad frame came, both halves: well within the
/// failure timeout (1 s), after which a link whose reading half alone had closed would end
/// too (the node kept writing heartbeats on it until then).
const WHOLE_LINK_CLOSES: Duration = Duration::from_millis(500);

#[test]
fn a_frame_naming_what_does_not_exist_closes_its_link_and_nothing_else() {
    common::init_logging();
    let expected = sum_job().single_process_output();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::three(dir.path(), |_| {});
    let job = cluster.running_job();
    let bad0: u64 = ["n1", "n2", "n3"]
        .iter()
        .map(|n| cluster.count(n, "bad"))
        .sum();
    let closed = free_addr();
    let edge = |job: u64, chain: u32, to: u32, channel: u32| EdgeAddress {
        job,
        epoch: 0,
        chain,
        from: 0,
        to,
        channel,
    };
    let data = |e: EdgeAddress| Message::Data {
        edge: e,
        event: WireEvent::Batch(BatchBytes(vec![0x90])),
    };
    let rt = runtime();
    let closures = rt.block_on(async {
        let mut closures = 0u64;
        // A job nobody runs.
        let mut s = insider(&cluster.addr("n2"), "zz-bad-job", &closed).await;
        send(&mut s, &data(edge(job ^ 0x5555, 1, 0, 0))).await;
        assert!(
            closed_by_node(&mut s, WHOLE_LINK_CLOSES).await,
            "data for an unknown job closes the link"
        );
        closures += 1;
        // The running job, a chain it does not have.
        let mut s = insider(&cluster.addr("n2"), "zz-bad-task", &closed).await;
        send(&mut s, &data(edge(job, 99, 0, 0))).await;
        assert!(
            closed_by_node(&mut s, WHOLE_LINK_CLOSES).await,
            "data for an unknown subtask closes the link"
        );
        closures += 1;
        // Every keyed subtask of the job, on a channel it does not have: the nodes hosting
        // one close the link.
        let mut hosting = 0;
        for n in ["n1", "n2", "n3"] {
            let mut s = insider(&cluster.addr(n), &format!("zz-bad-channel-{n}"), &closed).await;
            for to in 0..sum_job().parallelism as u32 {
                send(&mut s, &data(edge(job, 1, to, 999))).await;
            }
            if closed_by_node(&mut s, WHOLE_LINK_CLOSES).await {
                hosting += 1;
            }
        }
        assert!(
            hosting >= 1,
            "a node hosting a keyed subtask closed the link"
        );
        closures + hosting
    });
    // Counted by the nodes (status files refresh every 50 ms).
    cluster.wait(
        "n2",
        "the bad frames counted",
        Duration::from_secs(10),
        |c| {
            ["n1", "n2", "n3"]
                .iter()
                .map(|n| c.count(n, "bad"))
                .sum::<u64>()
                >= bad0 + closures
        },
    );
    println!("bad frames: {closures} links closed, counted by the nodes");
    assert!(cluster.job_running(), "the frames landed while the job ran");
    assert_exact(&mut cluster, expected);
}
