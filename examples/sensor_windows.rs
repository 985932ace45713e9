//! Event-time windows over sensor readings.
//!
//! ```text
//! cargo run --release --example sensor_windows
//! ```
//!
//! Four sensors report a temperature every two seconds of event time for ten minutes. The
//! readings arrive out of order (up to 5 s), a few arrive far too late, and sensor `s3` goes
//! silent after minute six. The job computes, per sensor and in event time:
//!
//! - one-minute tumbling averages,
//! - a five-minute maximum, sliding every minute (kept as one-minute panes, not copies),
//! - an alert when a sensor has been silent for 30 s (an event-time timer per sensor),
//!
//! and prints every window as it closes (bounds, sensor, value), every alert, and the
//! readings that came later than the allowed lateness of 10 s (the late-data output).

use riffle::prelude::*;
use std::time::Duration;

/// A reading: sensor, event time (ms), temperature.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Reading {
    sensor: String,
    time: i64,
    celsius: f64,
}

/// What the job prints, in the order it is produced.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Line {
    Average(WindowResult<String, f64>),
    Max(WindowResult<String, Reading>),
    Silent { sensor: String, since: i64 },
    Late(Reading),
}

/// A live feed: hands out each reading when its arrival time comes, one second of event
/// time every half millisecond (ten minutes in 300 ms), so that windows close while the job
/// runs.
struct Feed {
    readings: Vec<(i64, Reading)>,
    next: usize,
    start: std::time::Instant,
}

impl Feed {
    fn new(readings: Vec<(i64, Reading)>) -> Self {
        Feed {
            readings,
            next: 0,
            start: std::time::Instant::now(),
        }
    }
}

impl Source for Feed {
    type Out = Reading;
    fn produce(&mut self, out: &mut Output<'_, Reading>) -> Result<SourceStatus, UserError> {
        let now = self.start.elapsed().as_micros() as i64 * 2; // event-time ms
        let mut sent = 0;
        while let Some((arrival, r)) = self.readings.get(self.next) {
            if *arrival > now || sent == out.budget() {
                break;
            }
            out.emit(r.clone());
            self.next += 1;
            sent += 1;
        }
        Ok(match (self.next == self.readings.len(), sent) {
            (true, _) => SourceStatus::Finished,
            (false, 0) => SourceStatus::Idle,
            (false, _) => SourceStatus::More,
        })
    }
}

/// The readings with their arrival times: every 2 s per sensor, shuffled by up to 5 s, a
/// few far too late, `s3` silent from minute six on.
fn readings() -> Vec<(i64, Reading)> {
    let mut out = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..300i64 {
        for s in 0..4 {
            let time = step * 2_000 + s * 300;
            if s == 3 && time > 6 * 60_000 {
                continue;
            }
            let celsius = 20.0 + s as f64 + ((step % 60) as f64 / 10.0) + rand(10) as f64 / 10.0;
            // Event time as it happened; arrival order shuffled below.
            let arrival = time + rand(5_000) as i64;
            let arrival = if rand(60) == 0 {
                arrival + 45_000 // stuck in a buffer: far too late
            } else {
                arrival
            };
            out.push((
                arrival,
                Reading {
                    sensor: format!("s{s}"),
                    time,
                    celsius,
                },
            ));
        }
    }
    out.sort_by_key(|(arrival, _)| *arrival);
    out
}

/// The mean temperature of a window.
struct Mean;

impl AggregateFunction<Reading> for Mean {
    type Acc = (f64, u64);
    type Out = f64;
    fn create(&self) -> (f64, u64) {
        (0.0, 0)
    }
    fn add(&self, acc: &mut (f64, u64), r: Reading) {
        acc.0 += r.celsius;
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (f64, u64), other: &(f64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(f64, u64)) -> f64 {
        acc.0 / acc.1.max(1) as f64
    }
}

/// Alerts when a sensor has sent nothing for 30 s of event time.
struct SilenceAlarm;

const SILENCE: i64 = 30_000;

impl KeyedOperator for SilenceAlarm {
    type Key = String;
    type In = Reading;
    type Out = Line;
    /// The newest reading's time.
    type State = i64;
    fn process(
        &mut self,
        _sensor: &String,
        last: &mut i64,
        r: Reading,
        out: &mut Output<'_, Line>,
    ) -> Result<(), UserError> {
        if r.time > *last {
            let timers = out.timers()?;
            if *last > 0 {
                timers.delete_event_time(*last + SILENCE);
            }
            timers.register_event_time(r.time + SILENCE);
            *last = r.time;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        sensor: &String,
        last: &mut i64,
        timer: Timer,
        out: &mut Output<'_, Line>,
    ) -> Result<(), UserError> {
        // At the end of the input every timer fires; only a real silence is an alert.
        if timer.time == *last + SILENCE && out.timers()?.watermark() < i64::MAX {
            out.emit(Line::Silent {
                sensor: sensor.clone(),
                since: *last,
            });
        }
        Ok(())
    }
}

fn clock(ms: i64) -> String {
    format!("{:02}:{:02}", ms / 60_000, ms % 60_000 / 1_000)
}

fn print(line: Line) {
    match line {
        Line::Average(w) => println!(
            "[{} - {}) {}  1-min average {:.2} °C{}",
            clock(w.window.start),
            clock(w.window.end),
            w.key,
            w.value,
            if w.firing == Firing::Late {
                "  (late update)"
            } else {
                ""
            }
        ),
        Line::Max(w) => println!(
            "[{} - {}) {}  5-min maximum {:.2} °C at {}{}",
            clock(w.window.start),
            clock(w.window.end),
            w.key,
            w.value.celsius,
            clock(w.value.time),
            if w.firing == Firing::Late {
                "  (late update)"
            } else {
                ""
            }
        ),
        Line::Silent { sensor, since } => println!(
            "ALERT {sensor} silent for 30 s (last reading at {})",
            clock(since)
        ),
        Line::Late(r) => println!(
            "late reading, past the averages' 10 s lateness: {} at {} ({:.2} °C)",
            r.sensor,
            clock(r.time),
            r.celsius
        ),
    }
}

/// Event-time windows, timers and late data over simulated sensor readings.
#[derive(clap::Parser)]
#[command(name = "sensor_windows")]
struct Args {}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let Args {} = <Args as clap::Parser>::parse();
    riffle::cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let readings = env
        .source(|_: &SubtaskInfo| Feed::new(readings()))
        .name("sensors")
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            Duration::from_secs(5),
            |r: &Reading| r.time,
        ))
        .parallelism(1);

    let averages = readings
        .clone()
        .key_by(|r: &Reading| r.sensor.clone())
        .window(WindowAssigner::tumbling(Duration::from_secs(60)))
        .allowed_lateness(Duration::from_secs(10))
        .aggregate(Mean)
        .name("average");
    let late = averages.late_data().map(Line::Late);
    let averages = averages.results().map(Line::Average);

    let maxima = readings
        .clone()
        .key_by(|r: &Reading| r.sensor.clone())
        .window(WindowAssigner::sliding(
            Duration::from_secs(300),
            Duration::from_secs(60),
        ))
        .allowed_lateness(Duration::from_secs(10))
        .reduce(|a: &Reading, b: Reading| if b.celsius > a.celsius { b } else { a.clone() })
        .name("maximum")
        .results()
        .map(Line::Max);

    let alerts = readings
        .key_by(|r: &Reading| r.sensor.clone())
        .process(|_: &SubtaskInfo| SilenceAlarm)
        .name("silence");

    for stream in [averages, maxima, alerts, late] {
        stream.rebalance().sink_fn(print).parallelism(1);
    }
    let result = env.execute()?;
    println!("done in {:.0} ms", result.elapsed.as_secs_f64() * 1e3);
    Ok(())
}
