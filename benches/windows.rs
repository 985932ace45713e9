//! Event-time windows against the keyed running sum, in one run.
//!
//! `cargo bench --bench windows -- [N] [RUNS]` (defaults: 10,000,000 records, 3 runs each;
//! medians are printed).
//!
//! Workload: record i = (key, timestamp, 1) with key = i·φ mod 1,000, 100 records per
//! millisecond of event time, each up to 50 ms out of order; two source subtasks (record i
//! from subtask i mod 2), watermarks with a 50 ms bound, windows at parallelism 2:
//! - **tumbling**: one-second windows, sum per key;
//! - **sliding**: one-minute windows every second (size/slide = 60), sum per key, kept as
//!   one-second panes;
//! - **keyed_sum**: the `keyed_sum` benchmark's job (running sum per key, one output per
//!   record) on the same machine, as the yardstick.
//!
//! Targets (issue 14): sliding ≥ 0.5 × tumbling, tumbling ≥ 0.5 × keyed_sum.

use riffle::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000;
const PER_MS: u64 = 100;
const DISORDER: u64 = 50;

type Rec = (u64, i64, u64);

#[inline]
fn record(i: u64) -> Rec {
    let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS;
    let ts = (i / PER_MS) as i64 - (i.wrapping_mul(13) % DISORDER) as i64;
    (key, ts, 1)
}

/// Subtask `s` of `p` emits records s, s + p, s + 2p, … of `0..n`.
struct Strided {
    next: u64,
    step: u64,
    n: u64,
}

impl Source for Strided {
    type Out = Rec;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.next = info.index as u64;
        self.step = info.parallelism as u64;
        Ok(())
    }
    fn produce(&mut self, out: &mut Output<'_, Rec>) -> Result<SourceStatus, UserError> {
        for _ in 0..out.budget() {
            if self.next >= self.n {
                return Ok(SourceStatus::Finished);
            }
            out.emit(record(self.next));
            self.next += self.step;
        }
        Ok(SourceStatus::More)
    }
}

#[derive(Clone, Copy)]
enum Job {
    Tumbling,
    Sliding,
    KeyedSum,
}

/// Runs one job; returns its time and (outputs, sum of output values).
fn run(job: Job, n: u64) -> (Duration, u64, u64) {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let count = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let (c, t) = (count.clone(), total.clone());
    let tally = move |v: u64| {
        c.fetch_add(1, Ordering::Relaxed);
        t.fetch_add(v, Ordering::Relaxed);
    };
    let source = env.source(move |_: &SubtaskInfo| Strided {
        next: 0,
        step: 1,
        n,
    });
    match job {
        Job::KeyedSum => {
            // The keyed_sum job: keyed running sum, one output per record.
            source
                .key_by(|r: &Rec| r.0)
                .sum(|r| r.2)
                .sink_fn(move |(_, _s): (u64, u64)| tally(1));
        }
        Job::Tumbling | Job::Sliding => {
            let assigner = match job {
                Job::Tumbling => WindowAssigner::tumbling(Duration::from_secs(1)),
                _ => WindowAssigner::sliding(Duration::from_secs(60), Duration::from_secs(1)),
            };
            source
                .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
                    Duration::from_millis(DISORDER),
                    |r: &Rec| r.1,
                ))
                .key_by(|r: &Rec| r.0)
                .window(assigner)
                .reduce(|a: &Rec, b: Rec| (a.0, a.1, a.2 + b.2))
                .results()
                .sink_fn(move |w| tally(w.value.2));
        }
    }
    let start = Instant::now();
    env.execute().expect("benchmark job failed");
    let took = start.elapsed();
    (
        took,
        count.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed),
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    println!(
        "windows: N = {n}, {KEYS} keys, {runs} runs each, median; {} cores",
        std::thread::available_parallelism()
            .map(|c| c.get())
            .unwrap_or(1)
    );
    let (mut tumbling, mut sliding, mut keyed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Interleaved, so that machine noise hits all three alike.
        let (d, fired, sum) = run(Job::Tumbling, n);
        assert_eq!(sum, n, "tumbling: every record is in exactly one window");
        assert!(fired > 0);
        tumbling.push(d);
        let (d, _, sum) = run(Job::Sliding, n);
        assert!(sum > n, "sliding: records are in many windows");
        sliding.push(d);
        let (d, outputs, _) = run(Job::KeyedSum, n);
        assert_eq!(outputs, n, "keyed_sum: one output per record");
        keyed.push(d);
    }
    let (t, s, k) = (median(tumbling), median(sliding), median(keyed));
    println!("  keyed_sum (running sum) {:>12.0} rec/s", rate(n, k));
    println!(
        "  tumbling 1 s            {:>12.0} rec/s | {:.2} x keyed_sum (target >= 0.5)",
        rate(n, t),
        k.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "  sliding 60 s / 1 s      {:>12.0} rec/s | {:.2} x tumbling (target >= 0.5)",
        rate(n, s),
        t.as_secs_f64() / s.as_secs_f64()
    );
}
