//! Checkpoints of a consumer-bound job: how many a job completes per second, and how long
//! each takes, with the default channel settings and with fewer credits or smaller batches.
//!
//! `cargo bench --bench checkpoint_backpressure -- [RECORDS] [RUNS]` (default 3,000,000 and
//! 3). The job: a sequence of RECORDS `u64` from 4 sources, summed per key (1,000 keys) at
//! parallelism 4, then a map that sleeps 1 ms for every thousandth sum — the slow part is
//! after the keyed exchange — and a counting sink; checkpoints every 100 ms, one worker
//! thread. Each run alternates three settings: the defaults (4 credits of 32 KiB batches), 1
//! credit of 32 KiB, and 4 credits of 4 KiB; it prints checkpoints per second and the median
//! and longest checkpoint of each, and the last line gives the medians over the runs.
//!
//! What it showed here (`-- 3000000 2`, medians of 2 runs): 3.19 checkpoints/s (median
//! checkpoint 240 ms) with the defaults, 3.27/s with 1 credit, 7.07/s (median 28 ms) with
//! 4 KiB batches: in this job the batch size, not the number of credits, sets how long a
//! checkpoint takes. Why is not established yet.

use riffle::prelude::*;
use std::time::Duration;

/// One setting of the channels: credits and batch bytes (`None`: the defaults).
type Setting = Option<(usize, usize)>;

/// One run; (checkpoints per second, median and longest checkpoint).
fn run(records: u64, setting: Setting) -> (f64, Duration, Duration) {
    let env = StreamEnv::new();
    env.set_parallelism(4);
    env.configure(|c| {
        c.workers = Some(1);
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(100)));
        if let Some((credits, bytes)) = setting {
            c.credits = credits;
            c.batch_bytes = bytes;
        }
    });
    let count = env
        .sequence(0..records)
        .key_by(|x: &u64| *x % 1_000)
        .sum(|x: &u64| *x)
        .map(|(k, s): (u64, u64)| {
            if s % 1_000 == 0 {
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
    let records: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    println!("checkpoints every 100 ms, {records} records, consumer-bound");
    let settings: [(&str, Setting); 3] = [
        ("4 credits × 32 KiB (defaults)", None),
        ("1 credit  × 32 KiB", Some((1, 32 << 10))),
        ("4 credits × 4 KiB", Some((4, 4 << 10))),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    for i in 0..runs {
        for (k, (name, setting)) in settings.iter().enumerate() {
            let (rate, med, max) = run(records, *setting);
            println!(
                "run {i}: {name:<30} {rate:5.2} checkpoints/s, median {:>5} ms, longest {:>5} ms",
                med.as_millis(),
                max.as_millis()
            );
            rates[k].push(rate);
        }
    }
    for ((name, _), r) in settings.iter().zip(rates) {
        println!("median: {name:<30} {:.2} checkpoints/s", median(r));
    }
}
