//! Word count across several node processes.
//!
//! ```text
//! # three node processes of this binary on 127.0.0.1, started and checked for you:
//! cargo run --release --example cluster_wordcount -- --local-cluster 3
//!
//! # or one node per command (on one machine or several); the node with the lowest id
//! # coordinates and runs the job once `--expect` nodes are up. First create the cluster's
//! # secret once and copy the file to every machine (it is the key to the cluster):
//! cargo run --release --example cluster_wordcount -- --new-secret wc.secret
//! cargo run --release --example cluster_wordcount -- --node n1 --listen 10.0.0.1:7100 \
//!     --secret-file wc.secret --encrypt --expect 3 --dir /shared/wc
//! cargo run --release --example cluster_wordcount -- --node n2 --listen 10.0.0.2:7100 \
//!     --seed 10.0.0.1:7100 --secret-file wc.secret --encrypt --expect 3 --dir /shared/wc
//! ```
//!
//! A node's settings may come from a TOML file, `--config node.toml`, with the long flags'
//! names as keys (flags on the command line win):
//!
//! ```toml
//! node = "n2"
//! listen = "10.0.0.2:7100"
//! seed = ["10.0.0.1:7100"]
//! secret-file = "wc.secret"
//! encrypt = true
//! expect = 3
//! dir = "/shared/wc"
//! http = "0.0.0.0:8081"
//! ```
//!
//! A node refuses to start without a secret: `--secret-file FILE`, or the environment
//! variable `RIFFLE_CLUSTER_SECRET`. `--local-cluster` generates a fresh secret for its nodes.
//! `--encrypt` encrypts every link (all nodes must agree).
//!
//! `--etcd URL` (every node the same, e.g. `--etcd http://10.0.0.9:2379`) makes the nodes
//! elect the coordinator on etcd instead of taking the lowest id: the leader runs the job,
//! and if it dies another node continues the job from its latest checkpoint; every node then
//! prints the outcome agreed in etcd. Without it, losing the coordinator ends the job.
//! `--etcd-ca FILE` talks to etcd over TLS (`https://` URL), `--etcd-cert`/`--etcd-key` add a
//! client certificate, `--etcd-user USER --etcd-password-file FILE` authenticate to an etcd
//! with auth enabled: then only the cluster's nodes can touch its election and job records.
//!
//! Every node registers the same job, "wordcount": generated lines of text, split into
//! words, keyed by word, a running count per word, written to `DIR/output` by a
//! transactional file sink, parallelism 6, checkpoints every 100 ms into `DIR/checkpoints`
//! (the directory must be shared by the nodes). The coordinator prints the placement, the
//! records each node handled, the traffic of each link and the top words; with
//! `--local-cluster` the parent checks the result against the counts computed directly.

use riffle::cluster::{ClusterError, JobOptions, Node, Secret};
use riffle::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable a node reads its secret from when no file is given.
const SECRET_ENV: &str = "RIFFLE_CLUSTER_SECRET";
const WORDS: &[&str] = &[
    "stream",
    "actor",
    "mailbox",
    "barrier",
    "checkpoint",
    "ring",
    "key",
    "node",
    "link",
    "credit",
    "epoch",
    "sink",
    "source",
    "window",
    "state",
    "record",
    "batch",
    "shard",
    "replica",
    "leader",
    "quorum",
    "commit",
    "abort",
    "retry",
    "backoff",
    "jitter",
    "seed",
];

/// The words of line `i` (deterministic).
fn line(i: u64) -> String {
    let n = 3 + (i % 5) as usize;
    (0..n)
        .map(|j| {
            let h = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17).wrapping_add(j as u64 * 7919);
            WORDS[(h % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job every node registers.
fn wordcount(dir: &Path, lines: u64) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(6);
    env.configure(|c| {
        c.name = "cluster-wordcount".to_string();
        // Stored where the node says (`Node::builder().checkpoint_dir(..)`).
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(100)));
    });
    env.generate(lines, line)
        .name("lines")
        .flat_map(|l: String| l.split(' ').map(String::from).collect::<Vec<_>>())
        .name("tokenize")
        .key_by(|w: &String| w.clone())
        .sum(|_| 1u64)
        .name("count")
        .map(|(w, n): (String, u64)| format!("{w} {n}"))
        .name("format")
        .write_text_file(dir.join("output"));
    env
}

/// Word count across several node processes (see the file's docs for a cluster of
/// machines).
#[derive(clap::Parser)]
#[command(name = "cluster_wordcount")]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["local_cluster", "node", "new_secret", "config"])))]
struct Args {
    /// Start N node processes of this binary on 127.0.0.1 and check their result.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16))]
    local_cluster: Option<u64>,
    /// Run one node with this id.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The address the node listens on for its peers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A node to join through (repeat for several).
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Nodes to wait for before the job starts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    expect: u64,
    /// How long to wait for them, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    join_timeout: u64,
    /// Checkpoints and output (shared by the nodes).
    #[arg(long, default_value_os_t = std::env::temp_dir().join(format!("riffle-cluster-wordcount-{}", std::process::id())))]
    dir: PathBuf,
    /// The cluster's secret (else the environment variable RIFFLE_CLUSTER_SECRET).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Write a new cluster secret to FILE and exit.
    #[arg(long, value_name = "FILE")]
    new_secret: Option<PathBuf>,
    /// Encrypt every link (all nodes must agree).
    #[arg(long)]
    encrypt: bool,
    /// Elect the coordinator on etcd at this URL (`https://…` with --etcd-ca).
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// Talk to etcd over TLS, trusting the CA certificate in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// This node's certificate (PEM) for an etcd that checks client certificates.
    #[arg(long, value_name = "FILE")]
    etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, value_name = "FILE")]
    etcd_key: Option<PathBuf>,
    /// The etcd user to authenticate as (etcd's auth enabled); its password is read from
    /// --etcd-password-file.
    #[arg(long, value_name = "USER")]
    etcd_user: Option<String>,
    /// The file holding --etcd-user's password (its first line).
    #[arg(long, value_name = "FILE")]
    etcd_password_file: Option<PathBuf>,
    /// The node's HTTP server (metrics, REST API, console); `off` for none. With
    /// --local-cluster every node serves on a free port of 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR|off")]
    http: String,
    /// Keep the node (and its HTTP server) up this many seconds after the job ended, or
    /// until SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    linger: u64,
    /// Lines of generated text the job counts (every node must agree).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    lines: u64,
    /// Continue the job from the latest checkpoint or savepoint in DIR (after a stop).
    #[arg(long)]
    resume: bool,
    /// Read the node's settings from a TOML file (keys as the long flags: `node`,
    /// `listen`, `seed` (a list), `expect`, `join-timeout`, `dir`, `secret-file`,
    /// `encrypt`, `etcd`, `etcd-ca`, `etcd-cert`, `etcd-key`, `etcd-user`,
    /// `etcd-password-file`, `http`, `linger`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The settings a `--config` file may hold (see [`Args::config`]).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    node: Option<String>,
    listen: Option<String>,
    seed: Option<Vec<String>>,
    expect: Option<u64>,
    join_timeout: Option<u64>,
    dir: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    encrypt: Option<bool>,
    etcd: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    http: Option<String>,
    linger: Option<u64>,
}

impl ConfigFile {
    /// Reads `path`; a bad file is one line naming the file, the line and the problem.
    fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                1 + text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
            });
            format!("--config {}, line {line}: {}", path.display(), e.message())
        })
    }

    /// Fills in what the command line did not give (`given(id)`: the flag was given).
    fn under(self, a: &mut Args, given: impl Fn(&str) -> bool) {
        fn set<T>(to: &mut T, v: Option<T>, given: bool) {
            if let (Some(v), false) = (v, given) {
                *to = v;
            }
        }
        set(&mut a.node, self.node.map(Some), given("node"));
        set(&mut a.listen, self.listen, given("listen"));
        set(&mut a.seeds, self.seed, given("seeds"));
        set(&mut a.expect, self.expect, given("expect"));
        set(
            &mut a.join_timeout,
            self.join_timeout,
            given("join_timeout"),
        );
        set(&mut a.dir, self.dir, given("dir"));
        set(
            &mut a.secret_file,
            self.secret_file.map(Some),
            given("secret_file"),
        );
        set(&mut a.encrypt, self.encrypt, given("encrypt"));
        set(&mut a.etcd, self.etcd.map(Some), given("etcd"));
        set(&mut a.etcd_ca, self.etcd_ca.map(Some), given("etcd_ca"));
        set(
            &mut a.etcd_cert,
            self.etcd_cert.map(Some),
            given("etcd_cert"),
        );
        set(&mut a.etcd_key, self.etcd_key.map(Some), given("etcd_key"));
        set(
            &mut a.etcd_user,
            self.etcd_user.map(Some),
            given("etcd_user"),
        );
        set(
            &mut a.etcd_password_file,
            self.etcd_password_file.map(Some),
            given("etcd_password_file"),
        );
        set(&mut a.http, self.http, given("http"));
        set(&mut a.linger, self.linger, given("linger"));
    }
}

/// The etcd TLS and user of the command line, on `builder`; a file that cannot be read is
/// an error naming it.
fn etcd_settings(
    mut builder: riffle::cluster::NodeBuilder,
    a: &Args,
) -> Result<riffle::cluster::NodeBuilder, Box<dyn std::error::Error>> {
    if let Some(ca) = &a.etcd_ca {
        let identity = a.etcd_cert.as_deref().zip(a.etcd_key.as_deref());
        builder = builder.etcd_tls(riffle::cluster::EtcdTls::from_files(ca, identity)?);
    }
    if let (Some(user), Some(file)) = (&a.etcd_user, &a.etcd_password_file) {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read --etcd-password-file {}: {e}", file.display()))?;
        let password = text.lines().next().unwrap_or_default().to_string();
        builder = builder.etcd_auth(user.clone(), password);
    }
    Ok(builder)
}

/// The command line, with a `--config` file's settings under it.
fn parse() -> Result<Args, String> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut a = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    if let Some(path) = a.config.clone() {
        let given =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        ConfigFile::load(&path)?.under(&mut a, given);
    }
    check_etcd_flags(&a)?;
    Ok(a)
}

/// The etcd flags that only work together.
fn check_etcd_flags(a: &Args) -> Result<(), String> {
    let tls_or_user = a.etcd_ca.is_some() || a.etcd_cert.is_some() || a.etcd_user.is_some();
    if tls_or_user && a.etcd.is_none() {
        return Err("--etcd-ca, --etcd-cert and --etcd-user need --etcd URL".into());
    }
    if a.etcd_cert.is_some() != a.etcd_key.is_some() {
        return Err("--etcd-cert and --etcd-key go together".into());
    }
    if a.etcd_cert.is_some() && a.etcd_ca.is_none() {
        return Err("--etcd-cert needs --etcd-ca (TLS to etcd)".into());
    }
    if a.etcd_user.is_some() != a.etcd_password_file.is_some() {
        return Err("--etcd-user and --etcd-password-file go together".into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    match parse() {
        Ok(a) => riffle::cli::exit(run(a)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(riffle::cli::EXIT_USAGE)
        }
    }
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &a.new_secret {
        Secret::generate()?.write_new_file(path)?;
        println!("wrote a new cluster secret to {}", path.display());
        return Ok(());
    }
    match (&a.local_cluster, &a.node) {
        (Some(n), _) => local_cluster(*n as usize, &a),
        (None, Some(name)) => run_node(name, &a),
        (None, None) => Err("use --local-cluster N, or --node NAME (on the command line or in --config; see --help)".into()),
    }
}

/// The node's secret: from `--secret-file`, else from the environment; never a default.
fn secret(a: &Args) -> Result<Secret, Box<dyn std::error::Error>> {
    if let Some(path) = &a.secret_file {
        return Ok(Secret::from_file(path)?);
    }
    Secret::from_env(SECRET_ENV).map_err(|e| {
        format!(
            "no cluster secret ({e}): pass --secret-file FILE or set {SECRET_ENV}; \
             create a file with --new-secret FILE"
        )
        .into()
    })
}

/// Starts `n` node processes of this binary on free ports of 127.0.0.1 and checks the result.
/// The nodes share a secret generated for this run, in a file only its owner can read.
fn local_cluster(n: usize, a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = a.dir.as_path();
    if !a.resume {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir)?;
    let secret_file = dir.join("cluster.secret");
    // A fresh secret for every run (also a resumed one).
    let _ = std::fs::remove_file(&secret_file);
    Secret::generate()?.write_new_file(&secret_file)?;
    // Each node listens on a port it takes itself (a port picked here and freed could be
    // taken by another process before the node binds it); the first says which it took,
    // and the others join through it.
    let exe = std::env::current_exe()?;
    let (first, seed, relay) = start_first_node(node_command(&exe, 1, n, a, &secret_file))?;
    let mut children: Vec<Child> = vec![first];
    for i in 2..=n {
        let mut cmd = node_command(&exe, i, n, a, &secret_file);
        cmd.args(["--seed", &seed]);
        children.push(cmd.spawn()?);
    }
    // A stop signal goes on to every node.
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    riffle::cli::on_stop_signal(move || {
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    })?;
    let mut failed = Vec::new();
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            failed.push(format!("n{} exited with {status}", i + 1));
        }
    }
    let _ = relay.join();
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    let got = final_counts(&dir.join("output"))?;
    let mut want: HashMap<String, u64> = HashMap::new();
    for i in 0..a.lines {
        for w in line(i).split(' ') {
            *want.entry(w.to_string()).or_default() += 1;
        }
    }
    if got != want && riffle::cli::stop_requested() {
        println!("\nstopped; continue with --resume --dir {}", dir.display());
        return Ok(());
    }
    if got != want {
        return Err(format!(
            "counts differ from the direct computation: got {} words",
            got.len()
        )
        .into());
    }
    println!("\nchecked: the {n}-node result equals the counts computed directly");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The command that runs node `n{i}` of a local cluster of `n` nodes (binary `exe`), listening on a free
/// port of 127.0.0.1 (without a seed).
fn node_command(exe: &Path, i: usize, n: usize, a: &Args, secret_file: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--node", &format!("n{i}")])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--expect", &n.to_string()])
        .arg("--secret-file")
        .arg(secret_file)
        .arg("--dir")
        .arg(&a.dir);
    if a.encrypt {
        cmd.arg("--encrypt");
    }
    if let Some(url) = &a.etcd {
        cmd.args(["--etcd", url]);
    }
    for (flag, file) in [
        ("--etcd-ca", &a.etcd_ca),
        ("--etcd-cert", &a.etcd_cert),
        ("--etcd-key", &a.etcd_key),
        ("--etcd-password-file", &a.etcd_password_file),
    ] {
        if let Some(f) = file {
            cmd.arg(flag).arg(f);
        }
    }
    if let Some(user) = &a.etcd_user {
        cmd.args(["--etcd-user", user]);
    }
    let http = if a.http == "off" {
        "off"
    } else {
        "127.0.0.1:0"
    };
    cmd.args(["--http", http]);
    cmd.args(["--linger", &a.linger.to_string()]);
    cmd.args(["--lines", &a.lines.to_string()]);
    if a.resume {
        cmd.arg("--resume");
    }
    cmd
}

/// Starts the first node with its stdout piped, echoes that stdout until the node says
/// where it listens, and returns the node, that address (the others' seed) and the thread
/// that echoes the rest.
fn start_first_node(
    mut cmd: Command,
) -> Result<(Child, String, std::thread::JoinHandle<()>), Box<dyn std::error::Error>> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the first node's stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seed = None;
    for line in lines.by_ref().map_while(Result::ok) {
        println!("{line}");
        if let Some(addr) = line.split_once(LISTENING).map(|(_, a)| a.trim()) {
            seed = Some(addr.to_string());
            break;
        }
    }
    let relay = std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("{line}");
        }
    });
    match seed {
        Some(seed) => Ok((child, seed, relay)),
        None => {
            let status = child.wait()?;
            Err(format!("n1 exited with {status} before it listened for peers").into())
        }
    }
}

/// What a node prints, followed by its address, once it listens for peers.
const LISTENING: &str = ": listening for peers at ";

/// The final count of every word: the largest running count in the published output.
fn final_counts(dir: &Path) -> std::io::Result<HashMap<String, u64>> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with("part-") || name.ends_with(".inprogress") {
            continue;
        }
        for l in std::fs::read_to_string(&path)?.lines() {
            if let Some((w, n)) = l.split_once(' ') {
                let n: u64 = n.parse().unwrap_or(0);
                let e = counts.entry(w.to_string()).or_default();
                *e = (*e).max(n);
            }
        }
    }
    Ok(counts)
}

/// Runs one node: the coordinator submits the job and reports; the others host their share.
/// A node that does not coordinate: hosts its share until the job ended, and reports that
/// end (with etcd, the one agreed there, whichever node led the job to it).
fn follow(node: &Node, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let end = node
        .wait_hosted(Duration::from_secs(600))
        .ok_or("no job ended within 10 minutes")?;
    let error = match node.wait_job_end("wordcount", Duration::from_secs(10)) {
        Ok(agreed) => agreed.err(),
        Err(ClusterError::NoEtcd) => end.error,
        Err(e) => Some(e.to_string()),
    };
    match error {
        None => Ok(()),
        Some(e) => Err(format!("{name}: the job failed: {e}").into()),
    }
}

fn run_node(name: &str, a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let _http = serve_http(name, &a.http)?;
    let (dir, lines) = (a.dir.clone(), a.lines);
    let mut builder = Node::builder()
        .name(name)
        .listen(&a.listen)
        .seeds(a.seeds.clone())
        .secret(secret(a)?)
        .encrypt(a.encrypt)
        .checkpoint_dir(a.dir.join("checkpoints"))
        .register_job("wordcount", move || wordcount(&dir, lines));
    if let Some(url) = &a.etcd {
        builder = etcd_settings(builder.etcd([url.as_str()]), a)?;
    }
    let node = builder.start()?;
    println!("{name}{LISTENING}{}", node.local_addr());
    // A stop signal: the coordinator stops a running job with a savepoint (the other nodes
    // then see it end); a lingering node ends.
    let running: Running = Arc::default();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (slot, me) = (running.clone(), name.to_string());
    riffle::cli::on_stop_signal(move || {
        let control = slot.lock().ok().and_then(|c| c.clone());
        if let Some(c) = control {
            match c.savepoint_blocking(true) {
                Ok(id) => {
                    let at = c.savepoint_dir(id).unwrap_or_default();
                    println!("{me}: stopped the job at savepoint {id} ({})", at.display());
                }
                Err(e) => eprintln!("{me}: could not stop the job with a savepoint: {e}"),
            }
        }
        let _ = stop_tx.send(());
    })?;
    let done = coordinate_or_follow(&node, name, a, &running);
    if done.is_ok() && a.linger > 0 {
        println!(
            "{name}: lingering {} s (SIGTERM or Ctrl-C ends it)",
            a.linger
        );
        let _ = stop_rx.recv_timeout(Duration::from_secs(a.linger));
    }
    done
}

/// The node's HTTP server on `addr` (`off`: none); says where it listens.
fn serve_http(
    name: &str,
    addr: &str,
) -> Result<Option<riffle::http::HttpServer>, Box<dyn std::error::Error>> {
    let server = riffle::cli::serve_http(addr)?;
    if let Some(s) = &server {
        println!(
            "{name}: HTTP at {} (console: {}/console/)",
            s.url(),
            s.url()
        );
    }
    Ok(server)
}

/// Waits for the expected nodes, then runs the job (the coordinator) or hosts its share.
fn coordinate_or_follow(
    node: &Node,
    name: &str,
    a: &Args,
    running: &Running,
) -> Result<(), Box<dyn std::error::Error>> {
    let expect = a.expect as usize;
    let timeout = Duration::from_secs(a.join_timeout);
    let peers = node.wait_members(timeout, |m| m.len() + 1 >= expect);
    if peers.len() + 1 < expect {
        return Err(format!(
            "{name}: only {} of {expect} nodes joined within {} s",
            peers.len() + 1,
            a.join_timeout
        )
        .into());
    }
    if a.etcd.is_some() {
        let leader = node
            .wait_leader(Duration::from_secs(30))
            .ok_or("no leader was elected on etcd within 30 s")?;
        if leader != name {
            return follow(node, name);
        }
        println!("{name} leads the cluster (elected on etcd)");
    } else if node.coordinator() != name {
        return follow(node, name);
    }
    coordinate(node, name, a, running)
}

/// The job this node coordinates, while it runs.
type Running = Arc<Mutex<Option<JobControl>>>;

/// The coordinator: runs the job and reports.
fn coordinate(
    node: &Node,
    name: &str,
    a: &Args,
    running: &Running,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = JobOptions {
        restore: a
            .resume
            .then(|| RestoreFrom::Latest(a.dir.join("checkpoints"))),
        ..JobOptions::default()
    };
    let job = node.run_job_with("wordcount", options)?;
    if let Ok(mut slot) = running.lock() {
        *slot = Some(job.control());
    }
    println!("placement (node: subtasks):");
    for (n, tasks) in &job.placement {
        let names: Vec<String> = tasks
            .iter()
            .map(|t| format!("{}[{}]", job.chains[t.chain], t.subtask))
            .collect();
        println!("  {n}: {}", names.join(", "));
    }
    let result = match job.wait() {
        Ok(result) => result,
        Err(JobError::Cluster(ClusterError::Fenced { reason, .. })) => {
            // Another leader continues the job (this node may win the election again): its
            // outcome is the one agreed in etcd.
            println!("{name}: fenced ({reason}); waiting for the job's agreed end");
            return match node.wait_job_end("wordcount", Duration::from_secs(600))? {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("{name}: the job failed (as agreed in etcd): {e}").into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    if let Ok(mut slot) = running.lock() {
        *slot = None;
    }
    if let Some(sp) = result.stopped_at_savepoint {
        println!("{name}: stopped at savepoint {sp}; continue with --resume --dir DIR");
        return Ok(());
    }
    match node.wait_job_end("wordcount", Duration::from_secs(10)) {
        Ok(Ok(())) | Err(ClusterError::NoEtcd) => {}
        Ok(Err(e)) => return Err(format!("{name}: the job failed (as agreed in etcd): {e}").into()),
        Err(e) => return Err(format!("{name}: no agreed end of the job: {e}").into()),
    }
    println!("\nper node (records in, batches in, credit stalls):");
    for f in result.per_node() {
        println!(
            "  {}: {:>9} records, {:>6} batches, {:>5} stalls",
            f.node, f.records_in, f.batches_in, f.credit_stalls
        );
    }
    println!("\nper link (bytes, frames, data frames, credit frames):");
    for l in &result.links {
        println!(
            "  {} -> {}: {:>10} bytes, {:>6} frames, {:>6} data, {:>6} credit",
            l.from, l.to, l.bytes, l.frames, l.data_frames, l.credit_frames
        );
    }
    println!(
        "\n{} checkpoints, {} recoveries, {} ms",
        result.checkpoints.len(),
        result.recoveries.len(),
        result.elapsed.as_millis()
    );
    let counts = final_counts(&a.dir.join("output"))?;
    let mut top: Vec<(&String, &u64)> = counts.iter().collect();
    top.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
    println!("\ntop words:");
    for (w, n) in top.iter().take(5) {
        println!("  {n:>8}  {w}");
    }
    Ok(())
}
