//! Backpressure: a slow sink slows the source, and records in flight stay bounded.
//!
//! The documented bound (see `riffle_actors` and `JobConfig::credits`): on one channel at most
//! `credits` batches are sent and not yet handled, and the sender holds at most one more full
//! batch plus one partial batch, so produced − consumed < (credits + 2) × batch_size.

use riffle::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: u64 = 40_000;
const BATCH: usize = 256;
const CREDITS: usize = 2;

struct Counting {
    produced: Arc<AtomicU64>,
    next: u64,
}

impl Source for Counting {
    type Out = u64;
    fn produce(&mut self, out: &mut Output<'_, u64>) -> Result<SourceStatus, UserError> {
        for _ in 0..out.budget() {
            if self.next == N {
                return Ok(SourceStatus::Finished);
            }
            self.produced.fetch_add(1, Ordering::SeqCst);
            out.emit(self.next);
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
}

struct SlowSink {
    produced: Arc<AtomicU64>,
    consumed: u64,
    max_in_flight: Arc<AtomicU64>,
}

impl Sink for SlowSink {
    type In = u64;
    fn write(&mut self, _r: u64) -> Result<(), UserError> {
        self.consumed += 1;
        let in_flight = self.produced.load(Ordering::SeqCst) - self.consumed;
        self.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        if self.consumed % BATCH as u64 == 0 {
            // The sink is slow on purpose; nothing waits on this sleep.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

#[test]
fn a_slow_sink_bounds_records_in_flight() {
    let produced = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let env = StreamEnv::new();
    env.configure(|c| {
        c.batch_size = BATCH;
        c.credits = CREDITS;
        c.workers = Some(2);
    });
    let p = produced.clone();
    let (p2, m) = (produced.clone(), max_in_flight.clone());
    env.source(move |_: &SubtaskInfo| Counting {
        produced: p.clone(),
        next: 0,
    })
    .rebalance() // a real channel between the two, not a chain
    .sink(move |_: &SubtaskInfo| SlowSink {
        produced: p2.clone(),
        consumed: 0,
        max_in_flight: m.clone(),
    });
    let result = env.execute().expect("job");
    let bound = ((CREDITS + 2) * BATCH) as u64;
    let max = max_in_flight.load(Ordering::SeqCst);
    let stalls: u64 = result.chain("source").iter().map(|m| m.credit_stalls).sum();
    println!("max in flight {max} (bound {bound}), source credit stalls {stalls}");
    assert_eq!(produced.load(Ordering::SeqCst), N);
    assert!(max < bound, "{max} records in flight, bound {bound}");
    // The source really was held back (otherwise it would have produced everything at once).
    assert!(stalls > 0, "the source never waited for credit");
    assert!(
        max >= BATCH as u64,
        "the test never had a batch in flight ({max})"
    );
}
