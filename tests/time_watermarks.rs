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
