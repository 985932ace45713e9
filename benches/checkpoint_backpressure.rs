//! Checkpoints under backpressure: how many checkpoints a consumer-bound job completes per
//! second, and how long each takes, with the default channel windows and with smaller ones.
//!
//! `cargo bench --bench checkpoint_backpressure -- [RECORDS] [RUNS]` (default 300,000 and 3).
//! The job: a sequence of RECORDS `u64` from 4 sources, summed per key (1,000 keys) at
//! parallelism 4, then a map that sleeps 1 ms for every hundredth sum — the slow part is
//! *after* the keyed exchange, so the channels into the keyed stage fill up to their credits —
//! and a counting sink; checkpoints every 100 ms, one worker thread. Aligned barriers travel
//! behind the data already in flight, so a checkpoint takes about as long as the consumer
//! needs to work through a full window of every channel: the time grows with
//! `credits × batch_bytes`. Each run alternates the default windows (4 credits × 32 KiB) with
//! small ones (2 credits × 4 KiB) and prints checkpoints per second and the median and longest
//! checkpoint of each; the last lines give the medians over the runs.
//!
//! Between nodes the windows are larger still (8 credits × 256 KiB per channel by default),
//! so the same job over 3 nodes completes fewer checkpoints per second than in one process.

use riffle::prelude::*;
use std::time::Duration;

/// One run; (checkpoints per second, median and longest checkpoint).
fn run(records: u64, small: bool) -> (f64, Duration, Duration) {
    let env = StreamEnv::new();
    env.set_parallelism(4);
    env.configure(|c| {
        c.workers = Some(1);
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(100)));
        if small {
            c.credits = 2;
            c.batch_bytes = 4 << 10;
        }
    });
    let count = env
        .sequence(0..records)
        .key_by(|x: &u64| *x % 1_000)
        .sum(|x: &u64| *x)
        .map(|(k, s): (u64, u64)| {
            if s % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            k
        })
        .count();
    let result = env.execute().expect("the job runs");
    assert_eq!(count.get(), records, "every record counted once");
    let mut d: Vec<Duration> = result.checkpoints.iter().map(|c| c.duration).collect();
    d.sort();
    let median = d.get(d.len() / 2).copied().unwrap_or_default();
    let longest = d.last().copied().unwrap_or_default();
    let rate = result.checkpoints.len() as f64 / result.elapsed.as_secs_f64();
    (rate, median, longest)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let records: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    println!("checkpoints every 100 ms, {records} records, consumer-bound");
    let (mut default_rates, mut small_rates) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for small in [false, true] {
            let (rate, med, max) = run(records, small);
            let side = if small { "2 × 4 KiB " } else { "4 × 32 KiB" };
            println!(
                "run {i}: windows {side}: {rate:5.2} checkpoints/s, median {:>5} ms, longest {:>5} ms",
                med.as_millis(),
                max.as_millis()
            );
            if small {
                small_rates.push(rate);
            } else {
                default_rates.push(rate);
            }
        }
    }
    println!(
        "median: {:.2} checkpoints/s with the default windows, {:.2} with small ones",
        median(default_rates),
        median(small_rates)
    );
}
