//! End-to-end latency of a keyed pipeline at fixed rates, with the default flush and in
//! latency mode, in one process and across two node processes.
//!
//! `cargo bench --bench latency -- [SECONDS] [RUNS] [--two-processes]` (defaults: 2 s per
//! rate, 3 runs; the medians of the runs' percentiles are printed; `--two-processes` runs
//! only the settings across two node processes).
//!
//! Pipeline: one source subtask emits records `(key, stamp)` at a fixed rate — 10 k, 100 k
//! and 1 M records/s, as fast as it can, and half of that maximum — each stamped with the
//! time it was created; `key_by` over 1,000 keys; a running `reduce` per key at
//! parallelism 2 that keeps the newest record's stamp; a sink chained to it records
//! `now − stamp` in an HDR histogram (`hdrhistogram`). The first 20 % of each run's records
//! are warm-up and not recorded. Two flush settings: the default (`flush_interval` 5 ms: a
//! partly filled batch waits at most that long) and latency mode (`flush_interval` zero: a
//! subtask sends what it has after each input batch and each source call).
//!
//! Across two processes: this binary started again as node `n2`; the source runs on `n1`,
//! one `reduce`/sink subtask on each node (placed so), and only the records that crossed
//! the link are measured. Stamps are the system clock's (one machine, one clock).
//!
//! Targets (issue 16): at 10 k records/s in latency mode p99 ≤ 0.1 ms in one process and
//! ≤ 1 ms across two; at half the maximum throughput with the default flush p99 ≤ 10 ms.

use hdrhistogram::Histogram;
use riffle::cluster::{JobOptions, Node, Secret};
use riffle::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

const KEYS: u64 = 1_000;
const SECRET: &[u8] = b"latency bench secret";
/// Set in the child process that runs node `n2`: `SEED_ADDR|JOBS`.
const ENV_NODE: &str = "RIFFLE_LATENCY_NODE";
/// Where the sinks write their histograms.
const ENV_DIR: &str = "RIFFLE_LATENCY_DIR";

/// Nanoseconds of the system clock (the same clock in both processes of the machine).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This process's node: 1 (`n1`, or a single process) or 2 (`n2`).
fn this_node() -> u8 {
    if std::env::var(ENV_NODE).is_ok() {
        2
    } else {
        1
    }
}

fn out_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var(ENV_DIR) {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::temp_dir().join(format!("riffle-latency-{}", std::process::id())),
    })
    .clone()
}

/// A record: index, creation stamp (ns), the node that created it.
type Rec = (u64, u64, u8);

/// Emits `n` records at `rate` records per second (`None`: as fast as it can).
struct Paced {
    n: u64,
    rate: Option<u64>,
    next: u64,
    started: Option<Instant>,
}

impl Source for Paced {
    type Out = Rec;
    fn produce(&mut self, out: &mut Output<'_, Rec>) -> Result<SourceStatus, UserError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = match self.rate {
            Some(r) => (started.elapsed().as_nanos() as u64 * r / 1_000_000_000).min(self.n),
            None => self.n,
        };
        if self.next >= self.n {
            return Ok(SourceStatus::Finished);
        }
        if self.next >= due {
            return Ok(SourceStatus::Idle);
        }
        for _ in 0..out.budget() {
            if self.next >= due {
                break;
            }
            out.emit((self.next, now_ns(), this_node()));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
}

/// Records the latency of each record that crossed from another node (`remote`), or of
/// each record (not `remote`), after the warm-up; writes its histogram to a file of `job`'s
/// in [`out_dir`] at the end.
struct Measure {
    job: String,
    subtask: usize,
    remote: bool,
    warmup: u64,
    mine: Histogram<u64>,
}

impl Sink for Measure {
    type In = (Rec, u64);
    fn write(&mut self, ((i, stamp, from), _): (Rec, u64)) -> Result<(), UserError> {
        if i >= self.warmup && (!self.remote || from != this_node()) {
            let ns = now_ns().saturating_sub(stamp).max(1);
            self.mine.saturating_record(ns);
        }
        Ok(())
    }
    fn on_close(&mut self) -> Result<(), UserError> {
        let name = format!("{}.n{}.{}", self.job, this_node(), self.subtask);
        let text: String = self
            .mine
            .iter_recorded()
            .map(|v| format!("{} {}\n", v.value_iterated_to(), v.count_at_value()))
            .collect();
        std::fs::create_dir_all(out_dir())?;
        std::fs::write(out_dir().join(name), text)?;
        Ok(())
    }
}

/// Merges (and removes) the histograms the sinks of `job` wrote.
fn collect(job: &str) -> Histogram<u64> {
    let mut h = histogram();
    let prefix = format!("{job}.");
    for e in std::fs::read_dir(out_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some((v, c)) = l.split_once(' ') {
                if let (Ok(v), Ok(c)) = (v.parse::<u64>(), c.parse::<u64>()) {
                    h.saturating_record_n(v, c);
                }
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    h
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// The job `name`: `n` records at `rate` through `key_by` → `reduce` (parallelism 2) →
/// the measuring sink; `remote`: measure only the records that crossed nodes.
fn job(name: &str, n: u64, rate: Option<u64>, flush: Duration, remote: bool) -> StreamEnv {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = name.to_string();
        c.flush_interval = flush;
        c.workers = Some(if remote { 1 } else { 2 });
    });
    let job = name.to_string();
    env.source(move |_: &SubtaskInfo| Paced {
        n,
        rate,
        next: 0,
        started: None,
    })
    .name("paced")
    .parallelism(1)
    .map(|r: Rec| (r, 1u64))
    .key_by(|r: &(Rec, u64)| r.0 .0 % KEYS)
    .reduce(|acc, r| (r.0, acc.1 + r.1))
    .name("reduce")
    .parallelism(2)
    .sink(move |info: &SubtaskInfo| Measure {
        job: job.clone(),
        subtask: info.index,
        remote,
        warmup: n / 5,
        mine: histogram(),
    })
    .name("measure")
    .parallelism(2);
    env
}

/// One run in this process: the latency histogram and the records per second reached.
fn run(n: u64, rate: Option<u64>, flush: Duration) -> (Histogram<u64>, f64) {
    let started = Instant::now();
    job("latency-local", n, rate, flush, false)
        .execute()
        .expect("the latency job runs");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    (collect("latency-local"), rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a setting `runs` times; prints the medians of p50, p99, p99.9 (µs) and the rate.
fn setting(label: &str, runs: usize, mut run: impl FnMut() -> (Histogram<u64>, f64)) -> f64 {
    let mut p = [Vec::new(), Vec::new(), Vec::new()];
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (h, r) = run();
        for (v, q) in p.iter_mut().zip([0.5, 0.99, 0.999]) {
            v.push(h.value_at_quantile(q) as f64 / 1e3);
        }
        rates.push(r);
    }
    let [p50, p99, p999] = p.map(median);
    let reached = median(rates);
    println!("{label:<46} {reached:>12.0} {p50:>10.1} {p99:>10.1} {p999:>10.1}");
    reached
}

/// The two-process settings: (label, rate, flush).
fn cluster_settings() -> Vec<(String, u64, Duration)> {
    let mut v = Vec::new();
    for rate in [10_000u64, 100_000] {
        v.push((
            format!("2 processes, latency mode, {rate} rec/s"),
            rate,
            Duration::ZERO,
        ));
        let d = riffle::config::DEFAULT_FLUSH_INTERVAL;
        v.push((format!("2 processes, default flush, {rate} rec/s"), rate, d));
    }
    v
}

/// Node `id` with every two-process job registered (`secs` per run).
fn node(id: &str, secs: f64, seeds: Vec<String>) -> Node {
    let mut b = Node::builder()
        .name(id)
        .seeds(seeds)
        .secret(Secret::new(SECRET).expect("secret"));
    for (i, (_, rate, flush)) in cluster_settings().into_iter().enumerate() {
        let n = (rate as f64 * secs) as u64;
        let name = format!("cluster-{i}");
        b = b.register_job(&name.clone(), move || {
            job(&name, n, Some(rate), flush, true)
        });
    }
    b.start().expect("node starts")
}

/// The child process: node `n2`, until it hosted `jobs` jobs.
fn node_main(spec: &str) {
    let mut parts = spec.split('|');
    let seed = parts.next().unwrap_or_default().to_string();
    let secs: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let jobs: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let n2 = node("n2", secs, vec![seed]);
    for _ in 0..jobs {
        if n2.wait_hosted(Duration::from_secs(600)).is_none() {
            std::process::exit(1);
        }
    }
    n2.shutdown();
}

/// The two-process settings: `n2` in a child process; the source on `n1`, one measuring
/// subtask on each node.
fn two_processes(secs: f64, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    use riffle::internals::framework::TaskId;
    let n1 = node("n1", secs, Vec::new());
    let settings = cluster_settings();
    let spec = format!("{}|{secs}|{}", n1.local_addr(), settings.len() * runs);
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(ENV_NODE, spec)
        .env(ENV_DIR, out_dir())
        .spawn()?;
    if n1
        .wait_members(Duration::from_secs(30), |m| !m.is_empty())
        .is_empty()
    {
        let _ = child.kill();
        return Err("node n2 did not join".into());
    }
    let task = |chain, subtask| TaskId { chain, subtask };
    let sticky = vec![
        (task(0, 0), "n1".to_string()),
        (task(1, 0), "n2".to_string()),
        (task(1, 1), "n1".to_string()),
    ];
    for (i, (label, rate, _)) in settings.iter().enumerate() {
        let name = format!("cluster-{i}");
        setting(label, runs, || {
            let options = JobOptions {
                sticky: sticky.clone(),
                ..JobOptions::default()
            };
            let j = n1.run_job_with(&name, options).expect("job starts");
            assert_eq!(
                j.placement.get("n2").map(Vec::len),
                Some(1),
                "{:?}",
                j.placement
            );
            let r = j.wait().expect("the job runs");
            let n = (*rate as f64 * secs) as u64;
            (collect(&name), n as f64 / r.elapsed.as_secs_f64())
        });
    }
    let _ = child.wait();
    n1.shutdown();
    Ok(())
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
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cap = 5_000_000u64;
    let n_at = |rate: f64| ((rate * secs) as u64).clamp(10, cap);
    let default = riffle::config::DEFAULT_FLUSH_INTERVAL;
    println!(
        "latency of source -> key_by -> reduce (P=2) -> sink, {secs} s per rate, median of \
         {runs} runs, first 20 % warm-up"
    );
    println!(
        "{:<46} {:>12} {:>10} {:>10} {:>10}",
        "setting", "records/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    if std::env::args().any(|a| a == "--two-processes") {
        // Only the settings across two node processes (for profiling the hop).
        two_processes(secs, runs)?;
        let _ = std::fs::remove_dir_all(out_dir());
        return Ok(());
    }
    let mut max = 0.0;
    for (name, flush) in [
        ("default flush 5 ms", default),
        ("latency mode", Duration::ZERO),
    ] {
        for rate in [10_000u64, 100_000, 1_000_000] {
            let label = format!("1 process, {name}, {rate} rec/s");
            setting(&label, runs, || run(n_at(rate as f64), Some(rate), flush));
        }
        let label = format!("1 process, {name}, as fast as possible");
        let reached = setting(&label, runs, || run(n_at(2e6), None, flush));
        if flush == default {
            max = reached;
        }
    }
    let half = (max / 2.0) as u64;
    let label = format!("1 process, default flush, half max ({half}/s)");
    setting(&label, runs, || run(n_at(half as f64), Some(half), default));
    two_processes(secs, runs)?;
    let _ = std::fs::remove_dir_all(out_dir());
    Ok(())
}
