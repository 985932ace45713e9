//! Latency mode (`flush_interval` zero): a subtask sends what it has after each input batch
//! and each source call instead of waiting for the flush tick, and the output stays exact
//! through a crash.

use crate::common;

use riffle::chaos::FaultKind;
use riffle::prelude::*;
use std::time::Duration;

/// Emits one record `(i % 7, 1)` per call, then is idle until its next call: a trickle.
struct Trickle {
    next: u64,
    n: u64,
    idle: bool,
}

impl Source for Trickle {
    type Out = (u64, u64);
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
        if self.next == self.n {
            return Ok(SourceStatus::Finished);
        }
        self.idle = !self.idle;
        if self.idle {
            return Ok(SourceStatus::Idle);
        }
        out.emit((self.next % 7, 1));
        self.next += 1;
        Ok(SourceStatus::More)
    }
}

/// The trickle through a keyed sum: the job's flush interval `flush`, the source's own
/// `own` if given.
fn trickle(n: u64, flush: Duration, own: Option<Duration>) -> JobResult {
    let env = StreamEnv::new();
    env.configure(|c| c.flush_interval = flush);
    let source = env
        .source(move |_: &SubtaskInfo| Trickle {
            next: 0,
            n,
            idle: false,
        })
        .parallelism(1)
        .name("trickle");
    let source = match own {
        Some(d) => source.buffer_timeout(d),
        None => source,
    };
    source
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .parallelism(2)
        .collect();
    env.execute().expect("runs")
}

#[test]
fn every_record_of_a_trickle_leaves_in_a_batch_of_its_own() {
    const N: u64 = 150;
    let sent = |r: &JobResult| -> u64 {
        r.subtasks
            .iter()
            .filter(|s| s.chain.starts_with("trickle"))
            .map(|s| s.batches_out)
            .sum()
    };
    let eager = trickle(N, Duration::ZERO, None);
    assert_eq!(sent(&eager), N, "latency mode: one batch per record");
    // With a flush tick far longer than the run, the trickle leaves in few batches.
    let minute = Duration::from_secs(60);
    let batched = trickle(N, minute, None);
    assert!(sent(&batched) < N / 10, "{} batches", sent(&batched));
    // Latency mode for the source's operator alone.
    let own = trickle(N, minute, Some(Duration::ZERO));
    assert_eq!(sent(&own), N, "the source's buffer timeout");
}

#[test]
fn latency_mode_is_exact_through_a_crash() {
    common::init_logging();
    riffle::chaos::silence_injected_panics();
    const N: u64 = 200_000;
    let dir = tempfile::tempdir().expect("dir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.flush_interval = Duration::ZERO;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(10)).in_dir(dir.path()));
    });
    let out = env
        .sequence(0..N)
        .parallelism(2)
        .map(|i| (i % 100, 1u64))
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(2)
        .collect();
    let job = env.start().expect("start");
    let chaos = job.chaos();
    let count1 = chaos.find("count", 1).expect("count[1]");
    chaos.arm(count1, 20_000, FaultKind::Panic);
    let result = job.wait().expect("recovers and finishes");
    assert!(!result.recoveries.is_empty(), "the crash happened");
    let finals = common::final_sums(out.take());
    assert_eq!(finals.len(), 100);
    assert!(finals.values().all(|&n| n == N / 100), "exact");
}
