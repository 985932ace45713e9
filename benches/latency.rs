//! End-to-end latency of a keyed pipeline at fixed rates, with the default flush and in
//! latency mode, in one process.
//!
//! `cargo bench --bench latency -- [SECONDS] [RUNS]` (defaults: 2 s per rate, 3 runs; the
//! medians of the runs' percentiles are printed).
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
//! Targets (issue 16): at 10 k records/s in latency mode p99 ≤ 0.1 ms; at half the maximum
//! throughput with the default flush p99 ≤ 10 ms.

use hdrhistogram::Histogram;
use riffle::prelude::*;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000;

/// Nanoseconds since the first call in this process (one clock for sources and sinks).
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Emits `n` records `(i, stamp)` at `rate` records per second (`None`: as fast as it can).
struct Paced {
    n: u64,
    rate: Option<u64>,
    next: u64,
    started: Option<Instant>,
}

impl Source for Paced {
    type Out = (u64, u64);
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
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
            out.emit((self.next, now_ns()));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
}

/// Records each record's latency (after the warm-up) in its subtask's histogram; merges it
/// into the run's at the end.
struct Measure {
    warmup: u64,
    mine: Histogram<u64>,
    all: Arc<Mutex<Histogram<u64>>>,
}

impl Sink for Measure {
    type In = (u64, u64, u64);
    fn write(&mut self, (i, stamp, _): (u64, u64, u64)) -> Result<(), UserError> {
        if i >= self.warmup {
            let ns = now_ns().saturating_sub(stamp).max(1);
            self.mine.saturating_record(ns);
        }
        Ok(())
    }
    fn on_close(&mut self) -> Result<(), UserError> {
        let mut all = self.all.lock().map_err(|_| "histogram lock poisoned")?;
        all.add(&self.mine).map_err(|e| format!("merge: {e}"))?;
        Ok(())
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// One run: `n` records at `rate`; the latency histogram and the records per second reached.
fn run(n: u64, rate: Option<u64>, flush: Duration) -> (Histogram<u64>, f64) {
    let all = Arc::new(Mutex::new(histogram()));
    let sink = all.clone();
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "latency".to_string();
        c.flush_interval = flush;
    });
    env.source(move |_: &SubtaskInfo| Paced {
        n,
        rate,
        next: 0,
        started: None,
    })
    .name("paced")
    .parallelism(1)
    .map(|(i, stamp): (u64, u64)| (i, stamp, 1u64))
    .key_by(|r: &(u64, u64, u64)| r.0 % KEYS)
    .reduce(|acc, r| (r.0, r.1, acc.2 + r.2))
    .name("reduce")
    .parallelism(2)
    .sink(move |_: &SubtaskInfo| Measure {
        warmup: n / 5,
        mine: histogram(),
        all: sink.clone(),
    })
    .name("measure")
    .parallelism(2);
    let started = Instant::now();
    env.execute().expect("the latency job runs");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let h = all.lock().expect("histogram").clone();
    (h, rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a setting `runs` times; prints the medians of p50, p99, p99.9 (µs) and the rate.
fn setting(label: &str, n: u64, rate: Option<u64>, flush: Duration, runs: usize) -> f64 {
    let mut p = [Vec::new(), Vec::new(), Vec::new()];
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (h, r) = run(n, rate, flush);
        for (v, q) in p.iter_mut().zip([0.5, 0.99, 0.999]) {
            v.push(h.value_at_quantile(q) as f64 / 1e3);
        }
        rates.push(r);
    }
    let [p50, p99, p999] = p.map(median);
    let reached = median(rates);
    println!(
        "{label:<34} {:>12.0} {p50:>10.1} {p99:>10.1} {p999:>10.1}",
        reached
    );
    reached
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cap = 5_000_000u64;
    let latency_mode = Duration::ZERO;
    let default = riffle::config::DEFAULT_FLUSH_INTERVAL;
    println!(
        "latency of source -> key_by -> reduce (P=2) -> sink, one process, {secs} s per rate, \
         median of {runs} runs, first 20 % warm-up"
    );
    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>10}",
        "setting", "records/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    let mut max = 0.0;
    for (name, flush) in [
        ("default flush 5 ms", default),
        ("latency mode", latency_mode),
    ] {
        for rate in [10_000u64, 100_000, 1_000_000] {
            let n = ((rate as f64 * secs) as u64).min(cap);
            setting(&format!("{name}, {rate} rec/s"), n, Some(rate), flush, runs);
        }
        let n = ((2_000_000.0 * secs) as u64).min(cap);
        let reached = setting(
            &format!("{name}, as fast as possible"),
            n,
            None,
            flush,
            runs,
        );
        if flush == default {
            max = reached;
        }
    }
    let half = (max / 2.0) as u64;
    let n = ((half as f64 * secs) as u64).min(cap);
    setting(
        &format!("default flush 5 ms, half max ({half} rec/s)"),
        n,
        Some(half),
        default,
        runs,
    );
}
