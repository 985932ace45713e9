//! Event time, first part: watermarks generated per source subtask, carried in band behind
//! the records they cover, and an operator's clock that is the minimum of its inputs.
//!
//! Four source subtasks emit contiguous ranges of timestamps (subtask 3 starts where
//! subtask 2 ends, and so on), so their watermarks are far apart all the time; a rebalance
//! mixes them into two probe subtasks. If a probe's clock were anything but the minimum of
//! its inputs — the newest watermark, say — the slow ranges' records would arrive behind a
//! watermark that already covered them. The probes count such records (none allowed), check
//! that their clock only moves forward, and that it ends at `i64::MAX` once every input
//! ended.

use crate::common;

use riffle::prelude::*;
use std::time::Duration;

const N: u64 = 400_000;

/// Checks the clock it is shown against the records it sees.
#[derive(Default)]
struct Probe {
    clock: i64,
    ticks: u64,
    late: u64,
    backwards: u64,
    records: u64,
}

/// What a probe saw: (records, clock ticks, records behind the clock, backward ticks, final
/// clock).
type Seen = (u64, u64, u64, u64, i64);

impl Operator for Probe {
    type In = u64;
    type Out = Seen;
    fn on_start(&mut self, _info: &SubtaskInfo) -> Result<(), UserError> {
        self.clock = i64::MIN;
        Ok(())
    }
    fn process(&mut self, x: u64, _out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        self.records += 1;
        if x as i64 <= self.clock {
            self.late += 1;
        }
        Ok(())
    }
    fn on_watermark(&mut self, t: i64, _out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        if t <= self.clock {
            self.backwards += 1;
        }
        self.clock = t;
        self.ticks += 1;
        Ok(())
    }
    fn snapshot(&self) -> Result<Option<Snapshot>, UserError> {
        // The clock it was shown is part of its state: after a recovery, the clock must go
        // on from there, never back.
        let state = (
            self.clock,
            self.ticks,
            self.late,
            self.backwards,
            self.records,
        );
        Snapshot::encode(&state).map(Some)
    }
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), UserError> {
        (
            self.clock,
            self.ticks,
            self.late,
            self.backwards,
            self.records,
        ) = snapshot.decode()?;
        Ok(())
    }
    fn on_close(&mut self, out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        out.emit((
            self.records,
            self.ticks,
            self.late,
            self.backwards,
            self.clock,
        ));
        Ok(())
    }
}

fn job(env: &StreamEnv) -> CollectHandle<Seen> {
    env.sequence(0..N)
        .parallelism(4)
        .map(|x: u64| {
            if x % 2_000 == 0 {
                // Paced, so that watermarks are generated all along.
                std::thread::sleep(Duration::from_millis(1));
            }
            x
        })
        .parallelism(4)
        .assign_timestamps_and_watermarks(WatermarkStrategy::monotonous(|x: &u64| *x as i64))
        .parallelism(4)
        .rebalance()
        .process(|_: &SubtaskInfo| Probe::default())
        .name("probe")
        .parallelism(2)
        .collect()
}

fn check(seen: &[Seen]) {
    assert_eq!(seen.len(), 2, "one report per probe subtask: {seen:?}");
    let records: u64 = seen.iter().map(|s| s.0).sum();
    assert_eq!(records, N, "every record reached a probe");
    for (i, &(records, ticks, late, backwards, last)) in seen.iter().enumerate() {
        println!("probe {i}: {records} records, {ticks} clock ticks, {late} behind the clock, {backwards} backwards, last {last}");
        assert_eq!(
            late, 0,
            "probe {i}: records arrived behind a watermark covering them"
        );
        assert_eq!(backwards, 0, "probe {i}: the clock went back");
        assert!(
            ticks > 10,
            "probe {i}: the clock moved along the run ({ticks} ticks)"
        );
        assert_eq!(
            last,
            i64::MAX,
            "probe {i}: the clock ends at the end of time"
        );
    }
}

#[test]
fn an_operators_clock_is_the_minimum_of_its_inputs_and_no_record_comes_behind_it() {
    common::init_logging();
    let env = StreamEnv::new();
    let seen = job(&env);
    env.execute().expect("the job runs");
    check(&seen.take());
}

#[test]
fn watermarks_stay_behind_their_records_through_checkpoints_and_a_recovery() {
    // The same job with checkpoints every 20 ms and one injected failure of a probe: the
    // job recovers from a checkpoint (the generators' state and every subtask's clock
    // restored); the probes saw no record behind their clock, and their clock never went
    // back — not even across the recovery (the clock they were shown is in their state).
    common::init_logging();
    let env = StreamEnv::new();
    env.configure(|c| {
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)));
    });
    let seen = job(&env);
    let handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 3);
    let probe = handle.chaos().find("probe", 0).expect("probe 0");
    handle.chaos().crash(probe, riffle::chaos::Fault::Panic);
    let result = handle.wait().expect("the job finishes");
    assert_eq!(result.recoveries.len(), 1, "{:?}", result.recoveries);
    check(&seen.take());
}

/// Idleness: source subtask 3 stays silent (not finished) until the test releases it.
static RELEASED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Records the sources emitted.
static EMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The newest clock a probe was shown, and its signal.
static CLOCK: (std::sync::Mutex<i64>, std::sync::Condvar) =
    (std::sync::Mutex::new(i64::MIN), std::sync::Condvar::new());

/// Subtasks 0–2 emit increasing timestamps, one record per millisecond, until released
/// (and 200 more); subtask 3 emits nothing until released, then 100 records far ahead.
struct Timed {
    index: usize,
    next: u64,
    left_after_release: u64,
}

impl Source for Timed {
    type Out = u64;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.index = info.index;
        self.left_after_release = if info.index == 3 { 100 } else { 200 };
        Ok(())
    }
    fn produce(&mut self, out: &mut Output<'_, u64>) -> Result<SourceStatus, UserError> {
        let released = RELEASED.load(std::sync::atomic::Ordering::SeqCst);
        if self.index == 3 && !released {
            return Ok(SourceStatus::Idle);
        }
        if released {
            if self.left_after_release == 0 {
                return Ok(SourceStatus::Finished);
            }
            self.left_after_release -= 1;
        }
        std::thread::sleep(Duration::from_millis(1));
        let base = if self.index == 3 { 1 << 40 } else { 0 };
        out.emit(base + self.next * 4 + self.index as u64);
        self.next += 1;
        EMITTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(SourceStatus::More)
    }
}

/// A probe that also publishes the clock it is shown.
struct Watching(Probe);

impl Operator for Watching {
    type In = u64;
    type Out = Seen;
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.0.on_start(info)
    }
    fn process(&mut self, x: u64, out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        self.0.process(x, out)
    }
    fn on_watermark(&mut self, t: i64, out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        let mut c = CLOCK.0.lock().expect("clock");
        *c = (*c).max(t);
        CLOCK.1.notify_all();
        drop(c);
        self.0.on_watermark(t, out)
    }
    fn on_close(&mut self, out: &mut Output<'_, Seen>) -> Result<(), UserError> {
        self.0.on_close(out)
    }
}

#[test]
fn a_silent_source_subtask_holds_no_clock_back_once_idle() {
    // With `with_idleness(200 ms)`, subtask 3's silence stops holding the probes' clocks
    // back after about the idle timeout (plus a flush interval, when the idle mark goes
    // out); when it speaks again its records are not behind the clock (they are far
    // ahead), and the job ends with every clock at the end of time.
    common::init_logging();
    const IDLE: Duration = Duration::from_millis(200);
    let env = StreamEnv::new();
    let seen = env
        .source(|_: &SubtaskInfo| Timed {
            index: 0,
            next: 0,
            left_after_release: 0,
        })
        .name("timed")
        .parallelism(4)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::monotonous(|x: &u64| *x as i64).with_idleness(IDLE),
        )
        .parallelism(4)
        .rebalance()
        .process(|_: &SubtaskInfo| Watching(Probe::default()))
        .name("probe")
        .parallelism(2)
        .collect();
    let started = std::time::Instant::now();
    let handle = env.start().expect("start");
    // The clock moves although subtask 3 has sent nothing at all.
    let first = {
        let g = CLOCK.0.lock().expect("clock");
        let (g, timeout) = CLOCK
            .1
            .wait_timeout_while(g, Duration::from_secs(30), |c| *c < 100)
            .expect("clock");
        assert!(
            !timeout.timed_out(),
            "the clock moved while subtask 3 was silent"
        );
        *g
    };
    let delay = started.elapsed();
    assert!(!RELEASED.load(std::sync::atomic::Ordering::SeqCst));
    println!(
        "the probes' clock reached {first} {} ms after the start, with subtask 3 silent (idle timeout {} ms)",
        delay.as_millis(),
        IDLE.as_millis()
    );
    RELEASED.store(true, std::sync::atomic::Ordering::SeqCst);
    handle.wait().expect("the job finishes");
    let seen = seen.take();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let records: u64 = seen.iter().map(|s| s.0).sum();
    assert_eq!(records, EMITTED.load(std::sync::atomic::Ordering::SeqCst));
    for (i, &(_, ticks, late, backwards, last)) in seen.iter().enumerate() {
        println!("probe {i}: {ticks} clock ticks, {late} behind the clock, last {last}");
        assert_eq!(late, 0, "probe {i}");
        assert_eq!(backwards, 0, "probe {i}");
        assert_eq!(last, i64::MAX, "probe {i}");
    }
}
