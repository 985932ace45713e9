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

/// Records the slow stage of [`blocked_job`] handles in all (replays included).
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Two sources feeding one slow stage (about 16 records a millisecond) and a count, with tiny
/// batches and credits: the sources are blocked on credits, a credit returning every few
/// milliseconds and blocking them again at once, for the whole run.
fn blocked_job(total: u64) -> (StreamEnv, CountHandle) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "blocked".to_string();
        c.batch_size = 32;
        c.credits = 2;
        c.workers = Some(2);
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)));
    });
    let count = env
        .sequence(0..total)
        .name("source")
        .parallelism(2)
        .rebalance()
        .map(|x: u64| {
            if SEEN.fetch_add(1, Ordering::SeqCst) % 16 == 0 {
                // The stage is slow on purpose; nothing waits on this sleep.
                std::thread::sleep(Duration::from_millis(1));
            }
            x
        })
        .name("slow")
        .parallelism(1)
        .count();
    (env, count)
}

#[test]
fn subtasks_blocked_on_credits_still_take_a_stop_a_reset_and_a_hold() {
    crate::common::init_logging();
    const TOTAL: u64 = 120_000;
    let (env, count) = blocked_job(TOTAL);
    let mut handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 2);
    let stalled = |what: &str| {
        let seen = SEEN.load(Ordering::SeqCst);
        println!("{what} while blocked: the slow stage had handled {seen} of {TOTAL} records");
        assert!(
            seen < TOTAL / 2,
            "{what} was only taken once the block had ended ({seen} of {TOTAL} handled)"
        );
    };
    // A stop for a blocked source, then a reset for the other one (the recovery it causes).
    let source = handle.chaos().find("source", 0).expect("source 0");
    handle.chaos().stop(source);
    // The recovery's epoch (1) ran: every subtask took its reset and its go.
    let p = handle.wait_until(|p| p.running_epoch >= 1);
    assert!(!p.ended, "the job ended before the recovery ran");
    stalled("a stop and a reset");
    // A hold: a rescale in place holds both blocked sources after a checkpoint.
    let r = handle.rescale("slow", 2).expect("rescale in place");
    assert!(r.in_place.is_some(), "the rescale ran in place: {r:?}");
    stalled("a hold");
    let result = handle.wait().expect("the job finishes");
    assert_eq!(count.get(), TOTAL, "every record counted exactly once");
    assert_eq!(result.recoveries.len(), 1, "{:?}", result.recoveries);
    let stalls: u64 = result.chain("source").iter().map(|m| m.credit_stalls).sum();
    println!("source credit stalls {stalls}");
    assert!(
        stalls > 100,
        "the sources were blocked on credits ({stalls} stalls)"
    );
}

/// Records the slow subtask of [`Mixed`] emitted so far, and the signal of each.
static SLOW_EMITTED: (std::sync::Mutex<u64>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// Where the fast subtask of [`Mixed`] was at its latest call.
static FAST_EMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Far more than the fast subtask emits in the windows between alignments before the stop
/// (about 200,000 here; 200,000 in all let it finish first on a faster machine).
const FAST_RECORDS: u64 = 2_000_000;
const SLOW_RECORDS: u64 = 4;
const SLOW_EVERY: Duration = Duration::from_millis(1_200);

/// Subtask 0 emits `FAST_RECORDS` records as fast as it may; subtask 1 emits `SLOW_RECORDS`,
/// one per call every 1.2 s. Replayable.
struct Mixed {
    slow: bool,
    next: u64,
}

impl Source for Mixed {
    type Out = u64;
    fn produce(&mut self, out: &mut Output<'_, u64>) -> Result<SourceStatus, UserError> {
        if self.slow {
            if self.next == SLOW_RECORDS {
                return Ok(SourceStatus::Finished);
            }
            // Slow on purpose: a checkpoint's barrier from this subtask comes only after it.
            std::thread::sleep(SLOW_EVERY);
            out.emit(FAST_RECORDS + self.next);
            self.next += 1;
            let mut n = SLOW_EMITTED.0.lock().expect("slow");
            *n = (*n).max(self.next);
            SLOW_EMITTED.1.notify_all();
            return Ok(SourceStatus::More);
        }
        FAST_EMITTED.store(self.next, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..out.budget() {
            if self.next == FAST_RECORDS {
                return Ok(SourceStatus::Finished);
            }
            out.emit(self.next);
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.next).map(Some)
    }
    fn seek(&mut self, position: &Position) -> Result<(), UserError> {
        self.next = position.decode()?;
        Ok(())
    }
}

#[test]
fn a_subtask_waiting_for_credits_held_by_an_alignment_takes_a_stop() {
    // A fast and a slow source subtask feed one stage. While a checkpoint is aligned there,
    // the fast subtask's channel is held (its credits with it) until the slow one's barrier
    // comes, up to 1.2 s later: the fast subtask waits for a credit all that time. A stop
    // sent to it then must be taken at once — waiting with `ctx.wait` held its mailbox until
    // the alignment ended, after the slow subtask's next record.
    crate::common::init_logging();
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "aligned".to_string();
        c.batch_size = 64;
        c.credits = 2;
        c.workers = Some(3);
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)));
    });
    let count = env
        .source(|info: &SubtaskInfo| Mixed {
            slow: info.index == 1,
            next: 0,
        })
        .name("mixed")
        .parallelism(2)
        .rebalance()
        .map(|x: u64| x)
        .name("join")
        .parallelism(1)
        .count();
    let handle = env.start().expect("start");
    let slow_at = |n: u64| {
        let g = SLOW_EMITTED.0.lock().expect("slow");
        *SLOW_EMITTED.1.wait_while(g, |e| *e < n).expect("slow")
    };
    slow_at(1);
    // Fault timing, not synchronisation: by now the next checkpoint is aligning at `join`.
    std::thread::sleep(Duration::from_millis(300));
    let fast = handle.chaos().find("mixed", 0).expect("fast subtask");
    let fast_at = FAST_EMITTED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fast_at < FAST_RECORDS,
        "the fast subtask finished its {FAST_RECORDS} records before the stop: nothing to test"
    );
    handle.chaos().stop(fast);
    let p = handle.wait_until(|p| p.epoch >= 1);
    let slow_now = *SLOW_EMITTED.0.lock().expect("slow");
    println!(
        "the waiting subtask took its stop at record {fast_at} of {FAST_RECORDS}, \
         with the slow one at record {slow_now} of {SLOW_RECORDS}"
    );
    assert!(!p.ended, "the job ended before the stop was taken");
    assert_eq!(
        slow_now, 1,
        "the stop was taken only once the alignment had ended (after the slow subtask's next record)"
    );
    let result = handle.wait().expect("the job finishes");
    assert_eq!(
        count.get(),
        FAST_RECORDS + SLOW_RECORDS,
        "every record counted once"
    );
    assert_eq!(result.recoveries.len(), 1, "{:?}", result.recoveries);
}
