//! Timers of keyed operators: event-time and processing-time timers fire once each through
//! a crash (recovery from a checkpoint) and through a rescale in place (counted).
//!
//! Every record registers, for its key, an event-time timer at its timestamp + 50 and a
//! processing-time timer at a wall-clock time it carries (spread over the run, so that many
//! fire while it runs and the rest at the end of the input), and registers then deletes one
//! more timer of each kind. `on_timer` emits (key, time, domain). The committed output must
//! hold every distinct registered timer exactly once, and no deleted one.

use crate::common;

use riffle::prelude::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// (key, event timestamp, processing-time timer).
type Rec = (u32, i64, i64);
/// (key, time, 0 = event time / 1 = processing time).
type Fire = (u32, i64, u8);

const N: i64 = 40_000;

fn input(start: i64) -> Vec<Rec> {
    (0..N)
        .map(|i| {
            let key = (i.wrapping_mul(7919) % 300) as u32;
            // Event time in order up to 30 ms; processing timers 0–2 s after the start.
            let ts = 1_000 + i - (i * 13 % 31);
            (key, ts, start + (i * 2_000 / N))
        })
        .collect()
}

fn expected(input: &[Rec]) -> Vec<Fire> {
    let mut set = BTreeSet::new();
    for &(k, ts, pt) in input {
        set.insert((k, ts + 50, 0u8));
        set.insert((k, pt, 1u8));
    }
    set.into_iter().collect()
}

/// Registers the timers of every record; emits every timer that fires.
struct TimerOp;

impl KeyedOperator for TimerOp {
    type Key = u32;
    type In = Rec;
    type Out = Fire;
    type State = u64;
    fn process(
        &mut self,
        _key: &u32,
        seen: &mut u64,
        r: Rec,
        out: &mut Output<'_, Fire>,
    ) -> Result<(), UserError> {
        *seen += 1;
        let timers = out.timers()?;
        timers.register_event_time(r.1 + 50);
        timers.register_processing_time(r.2);
        // Registered and deleted at once: must never fire.
        timers.register_event_time(r.1 + 7);
        timers.delete_event_time(r.1 + 7);
        timers.register_processing_time(r.2 + 3);
        timers.delete_processing_time(r.2 + 3);
        Ok(())
    }
    fn on_timer(
        &mut self,
        key: &u32,
        _seen: &mut u64,
        timer: Timer,
        out: &mut Output<'_, Fire>,
    ) -> Result<(), UserError> {
        let domain = match timer.domain {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        };
        out.emit((*key, timer.time, domain));
        Ok(())
    }
}

fn job(env: &StreamEnv, input: Vec<Rec>) -> CollectHandle<Fire> {
    env.configure(|c| {
        c.batch_size = 64;
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)));
    });
    env.from_collection(input)
        .parallelism(1)
        .map(|r: Rec| {
            if r.1 % 400 == 0 {
                // Paced: the run spans the processing timers and the faults land mid-run.
                std::thread::sleep(Duration::from_millis(2));
            }
            r
        })
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            Duration::from_millis(30),
            |r: &Rec| r.1,
        ))
        .parallelism(1)
        .key_by(|r: &Rec| r.0)
        .process(|_: &SubtaskInfo| TimerOp)
        .name("timers")
        .parallelism(2)
        .collect()
}

fn check(got: Vec<Fire>, want: &[Fire], what: &str) {
    let got = common::sorted(got);
    let events = got.iter().filter(|f| f.2 == 0).count();
    let processing = got.len() - events;
    println!("{what}: {events} event-time and {processing} processing-time timers fired");
    let dup = got.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dup, 0, "{what}: timers fired twice");
    assert_eq!(got.len(), want.len(), "{what}: number of timers fired");
    assert!(
        got == want,
        "{what}: the fired timers differ from those registered"
    );
}

#[test]
fn timers_fire_once_each_through_a_crash() {
    common::init_logging();
    riffle::chaos::silence_injected_panics();
    let input = input(riffle::time::processing_time_now());
    let want = expected(&input);
    let env = StreamEnv::new();
    let out = job(&env, input);
    let handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 3);
    let task = handle.chaos().find("timers", 1).expect("timers 1");
    handle.chaos().crash(task, riffle::chaos::Fault::Panic);
    let result = handle.wait().expect("finishes");
    assert_eq!(result.recoveries.len(), 1, "{:?}", result.recoveries);
    assert!(
        result.recoveries[0].restored_from.is_some(),
        "recovered from a checkpoint"
    );
    check(out.take(), &want, "through a crash");
}

#[test]
fn timers_fire_once_each_through_a_rescale_in_place() {
    common::init_logging();
    let input = input(riffle::time::processing_time_now());
    let want = expected(&input);
    let env = StreamEnv::new();
    let out = job(&env, input);
    let mut handle = env.start().expect("start");
    for p in [3usize, 1] {
        handle.wait_until(|pr| pr.checkpoints >= 2);
        let r = handle.rescale("timers", p).expect("rescale");
        assert!(r.in_place.is_some(), "in place");
        println!(
            "timers -> {p}: {} of {} keys moved with their timers",
            r.state.keys_moved, r.state.keys
        );
        assert!(r.state.keys_moved > 0);
    }
    let result = handle.wait().expect("finishes");
    assert!(result.recoveries.is_empty(), "{:?}", result.recoveries);
    check(out.take(), &want, "through rescales 2 -> 3 -> 1");
}
