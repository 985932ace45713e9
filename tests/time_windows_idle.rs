//! Idleness with windows: one of four source subtasks is silent; with
//! `with_idleness(200 ms)` the event-time windows keep firing, and the delay the silence adds
//! is about the idle timeout (plus a watermark interval). The figure is printed; the
//! assertion only bounds it loosely (a busy CI machine stretches it).
//!
//! Event time here is the wall clock at emission, so a window `[s, e)` could fire at wall
//! time `e + bound` at the earliest; its delay is how much later it fired.

use crate::common;

use riffle::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

static RELEASED: AtomicBool = AtomicBool::new(false);
/// (window end, wall time it was seen at the sink) of every firing, and its signal.
static FIRED: (Mutex<Vec<(i64, i64)>>, Condvar) = (Mutex::new(Vec::new()), Condvar::new());

const IDLE: Duration = Duration::from_millis(200);
const BOUND: i64 = 5;
const WINDOW: u64 = 50;

/// Subtasks 0–2 emit one record per millisecond stamped with the wall clock until
/// released; subtask 3 emits nothing until released, then finishes.
struct Clocked {
    index: usize,
}

impl Source for Clocked {
    type Out = (u64, i64);
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.index = info.index;
        Ok(())
    }
    fn produce(&mut self, out: &mut Output<'_, (u64, i64)>) -> Result<SourceStatus, UserError> {
        if RELEASED.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Finished);
        }
        if self.index == 3 {
            return Ok(SourceStatus::Idle);
        }
        std::thread::sleep(Duration::from_millis(1));
        out.emit((self.index as u64, riffle::time::processing_time_now()));
        Ok(SourceStatus::More)
    }
}

#[test]
fn windows_keep_firing_while_one_source_subtask_is_silent() {
    common::init_logging();
    let env = StreamEnv::new();
    env.source(|_: &SubtaskInfo| Clocked { index: 0 })
        .name("clocked")
        .parallelism(4)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::bounded_out_of_orderness(
                Duration::from_millis(BOUND as u64),
                |r: &(u64, i64)| r.1,
            )
            .with_idleness(IDLE),
        )
        .parallelism(4)
        .key_by(|r: &(u64, i64)| r.0)
        .window(WindowAssigner::tumbling(Duration::from_millis(WINDOW)))
        .reduce(|a: &(u64, i64), b: (u64, i64)| (a.0, a.1.max(b.1)))
        .parallelism(2)
        .results()
        .sink_fn(|w| {
            let now = riffle::time::processing_time_now();
            let mut f = FIRED.0.lock().expect("fired");
            f.push((w.window.end, now));
            FIRED.1.notify_all();
        })
        .parallelism(1);
    let handle = env.start().expect("start");
    let fired = {
        let g = FIRED.0.lock().expect("fired");
        let (g, timeout) = FIRED
            .1
            .wait_timeout_while(g, Duration::from_secs(60), |f| f.len() < 30)
            .expect("fired");
        assert!(
            !timeout.timed_out(),
            "windows fired while subtask 3 was silent"
        );
        g.clone()
    };
    assert!(!RELEASED.load(Ordering::SeqCst));
    RELEASED.store(true, Ordering::SeqCst);
    handle.wait().expect("the job finishes");
    let mut delays: Vec<i64> = fired.iter().map(|&(end, at)| at - (end + BOUND)).collect();
    delays.sort_unstable();
    let (max, median) = (delays[delays.len() - 1], delays[delays.len() / 2]);
    println!(
        "{} windows of {WINDOW} ms fired while one of four source subtasks was silent; delay \
         after the earliest possible firing: max {max} ms (the first windows wait for the \
         idle timeout of {} ms), median {median} ms",
        fired.len(),
        IDLE.as_millis()
    );
    assert!(
        max < IDLE.as_millis() as i64 + 5_000,
        "the silence held windows back {max} ms"
    );
}
