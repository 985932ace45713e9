//! Metrics as a real Prometheus sees them, and backpressure made visible.
//!
//! The HTTP server (`riffle::http::serve`) exposes `GET /metrics`; a real Prometheus server
//! scrapes it every 100 ms, and the test asks Prometheus's HTTP API, after the job ended,
//! for the source's `riffle_records_out_total`: it must equal the job's own count.
//! `promtool check metrics` must accept the exposition text. A job with a slow sink shows
//! the sink busy and its upstream backpressured in `/metrics`; a balanced job shows neither
//! backpressured.

use crate::common;
use crate::common::prometheus::{which, Prometheus};

use riffle::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn server() -> riffle::http::HttpServer {
    riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP server")
}

fn scrape(url: &str) -> String {
    ureq::get(&format!("{url}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("metrics text")
}

/// The value of the series `name` whose labels include every `labels` pair.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn prometheus_scrapes_the_records_a_job_counted() {
    common::init_logging();
    let http = server();
    let Some(prom) = Prometheus::start(&http.addr().to_string()) else {
        return;
    };
    const N: u64 = 300_000;
    let env = StreamEnv::new();
    env.configure(|c| c.name = "prom-job".to_string());
    env.set_parallelism(2);
    env.generate(N, |i| {
        if i % 2_000 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        i
    })
    .name("numbers")
    .rebalance()
    .map(|i| i * 2)
    .name("double")
    .count();
    let handle = env.start().expect("start");
    // Prometheus saw the job while it ran.
    let seen = prom.poll(Duration::from_secs(30), || {
        prom.query("sum(riffle_records_in_total{job=\"prom-job\"})")
            .filter(|v| *v > 0.0)
    });
    let result = handle.wait().expect("the job runs");
    assert!(seen.is_some(), "Prometheus scraped the running job");
    let own: u64 = result
        .subtasks
        .iter()
        .filter(|s| s.chain.starts_with("numbers"))
        .map(|s| s.records_out)
        .sum();
    assert_eq!(own, N, "the job's own count");
    let q = "sum(riffle_records_out_total{job=\"prom-job\",operator=~\"numbers.*\"})";
    let scraped = prom.poll(Duration::from_secs(30), || {
        prom.query(q).filter(|v| *v == own as f64)
    });
    println!(
        "Prometheus: {q} = {:?} (the job counted {own}); while running: {seen:?}",
        prom.query(q)
    );
    assert_eq!(
        scraped,
        Some(own as f64),
        "Prometheus has the job's own count"
    );
    // promtool accepts the exposition text.
    let promtool = which("promtool").expect("promtool comes with prometheus");
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape(&http.url()).as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sink that takes `per_record` for each record.
struct Slow {
    per_record: Duration,
}

impl Sink for Slow {
    type In = u64;
    fn write(&mut self, _r: u64) -> Result<(), UserError> {
        let until = Instant::now() + self.per_record;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

/// Runs `env` until `/metrics` shows `cond` (asked every 200 ms for up to `limit`); returns
/// the last text.
fn watch(url: &str, limit: Duration, cond: impl Fn(&str) -> bool) -> (bool, String) {
    let until = Instant::now() + limit;
    loop {
        let text = scrape(url);
        if cond(&text) {
            return (true, text);
        }
        if Instant::now() > until {
            return (false, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Emits numbers (paced by `pause_every` records, if set) until `stop` is set.
struct UntilStopped {
    stop: &'static AtomicBool,
    pause_every: Option<u64>,
    next: u64,
}

impl Source for UntilStopped {
    type Out = u64;
    fn produce(&mut self, out: &mut Output<'_, u64>) -> Result<SourceStatus, UserError> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Finished);
        }
        for _ in 0..out.budget() {
            self.next += 1;
            if self.pause_every.is_some_and(|n| self.next % n == 0) {
                std::thread::sleep(Duration::from_millis(1));
            }
            out.emit(self.next);
        }
        Ok(SourceStatus::More)
    }
}

/// Source `upstream` → rebalance → sink `sink`, each one subtask, in job `job`.
fn pipeline(
    job: &str,
    stop: &'static AtomicBool,
    pause_every: Option<u64>,
    per_record: Duration,
) -> StreamEnv {
    let env = StreamEnv::new();
    env.configure(|c| c.name = job.to_string());
    env.source(move |_: &SubtaskInfo| UntilStopped {
        stop,
        pause_every,
        next: 0,
    })
    .name("upstream")
    .parallelism(1)
    .rebalance()
    .sink(move |_: &SubtaskInfo| Slow { per_record })
    .name("sink")
    .parallelism(1);
    env
}

fn gauge<'a>(job: &'a str, name: &'a str, op: &'a str) -> impl Fn(&str) -> Option<f64> + 'a {
    move |t: &str| value(t, name, &[("job", job), ("operator", op)])
}

const BUSY: &str = "riffle_busy_ratio";
const BACKPRESSURED: &str = "riffle_backpressured_ratio";

#[test]
fn a_slow_sink_is_busy_and_its_upstream_backpressured() {
    common::init_logging();
    static STOP: AtomicBool = AtomicBool::new(false);
    let http = server();
    let handle = pipeline("slow-sink", &STOP, None, Duration::from_micros(20))
        .start()
        .expect("start");
    let busy = gauge("slow-sink", BUSY, "sink");
    let bp = gauge("slow-sink", BACKPRESSURED, "upstream");
    let (ok, text) = watch(&http.url(), Duration::from_secs(5), |t| {
        busy(t).is_some_and(|b| b >= 0.9) && bp(t).is_some_and(|b| b >= 0.5)
    });
    println!(
        "slow sink: busy {:?} of each second; its upstream: backpressured {:?}",
        busy(&text),
        bp(&text)
    );
    STOP.store(true, Ordering::SeqCst);
    handle.wait().expect("the job ends");
    assert!(
        ok,
        "within 5 s the sink is busy >= 0.9 (900 ms/s) and its upstream backpressured >= 0.5"
    );
}

#[test]
fn a_balanced_job_is_not_backpressured() {
    common::init_logging();
    static STOP: AtomicBool = AtomicBool::new(false);
    let http = server();
    let handle = pipeline("balanced", &STOP, Some(200), Duration::ZERO)
        .start()
        .expect("start");
    let bp_up = gauge("balanced", BACKPRESSURED, "upstream");
    let bp_sink = gauge("balanced", BACKPRESSURED, "sink");
    // Two publications at least (one per second), so that the figures cover a whole second.
    let (_, first) = watch(&http.url(), Duration::from_secs(5), |t| {
        bp_up(t).is_some() && bp_sink(t).is_some()
    });
    let started = Instant::now();
    let (_, text) = watch(&http.url(), Duration::from_secs(5), |_| {
        started.elapsed() > Duration::from_millis(2_100)
    });
    STOP.store(true, Ordering::SeqCst);
    handle.wait().expect("the job ends");
    println!(
        "balanced: upstream backpressured {:?}, sink {:?} of each second (first seen {:?})",
        bp_up(&text),
        bp_sink(&text),
        bp_up(&first)
    );
    assert!(
        bp_up(&text).is_some_and(|b| b < 100.0),
        "the upstream is not backpressured"
    );
    assert!(
        bp_sink(&text).is_some_and(|b| b < 100.0),
        "the sink is not backpressured"
    );
}

/// Emits records stamped two seconds behind the wall clock until `STOP_LAG` is set.
struct Behind;

static STOP_LAG: AtomicBool = AtomicBool::new(false);

impl Source for Behind {
    type Out = i64;
    fn produce(&mut self, out: &mut Output<'_, i64>) -> Result<SourceStatus, UserError> {
        if STOP_LAG.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Finished);
        }
        std::thread::sleep(Duration::from_millis(1));
        out.emit(riffle::time::processing_time_now() - 2_000);
        Ok(SourceStatus::More)
    }
}

#[test]
fn the_event_time_lag_is_the_watermark_behind_the_wall_clock() {
    common::init_logging();
    let http = server();
    let env = StreamEnv::new();
    env.configure(|c| c.name = "lagging".to_string());
    env.source(|_: &SubtaskInfo| Behind)
        .name("behind")
        .parallelism(1)
        .assign_timestamps_and_watermarks(WatermarkStrategy::monotonous(|t: &i64| *t))
        .parallelism(1)
        .rebalance()
        .map(|t| t)
        .name("downstream")
        .parallelism(1)
        .count();
    let handle = env.start().expect("start");
    let lag = gauge(
        "lagging",
        "riffle_event_time_lag_seconds",
        "downstream -> count",
    );
    let (ok, text) = watch(&http.url(), Duration::from_secs(10), |t| {
        lag(t).is_some_and(|l| l > 0.0)
    });
    STOP_LAG.store(true, Ordering::SeqCst);
    handle.wait().expect("the job ends");
    println!(
        "event-time lag downstream: {:?} s (records are 2 s behind)",
        lag(&text)
    );
    assert!(ok, "the lag is published");
    assert!(
        lag(&text).is_some_and(|l| (1.9..10.0).contains(&l)),
        "{:?}",
        lag(&text)
    );
}

#[test]
fn a_nodes_links_are_in_the_metrics() {
    common::init_logging();
    let http = server();
    let node = |name: &str, seeds: Vec<String>, via: Option<(String, String)>| {
        let mut b = riffle::cluster::Node::builder()
            .name(name)
            .cluster("metrics")
            .secret(
                riffle::cluster::Secret::new(b"metrics test secret, long enough").expect("secret"),
            )
            .seeds(seeds)
            .heartbeat(Duration::from_millis(20))
            .failure_timeout(Duration::from_millis(500));
        if let Some((to, proxy)) = via {
            b = b.dial_via(move |addr| {
                if addr == to {
                    proxy.clone()
                } else {
                    addr.to_string()
                }
            });
        }
        b.start().expect("node starts")
    };
    let a = node("links-a", Vec::new(), None);
    // b reaches a through a proxy that the test resets once.
    let proxy = common::proxy::Proxy::start(a.local_addr().to_string());
    let a_addr = a.local_addr().to_string();
    let b = node(
        "links-b",
        vec![a_addr.clone()],
        Some((a_addr, proxy.addr.clone())),
    );
    let from_a = [("from", "links-a"), ("to", "links-b")];
    let from_b = [("from", "links-b"), ("to", "links-a")];
    let bytes = |t: &str| value(t, "riffle_link_bytes_total", &from_a);
    let frames = |t: &str| value(t, "riffle_link_frames_total", &from_b);
    let rtt = |t: &str| value(t, "riffle_link_rtt_seconds", &from_a);
    let (ok, text) = watch(&http.url(), Duration::from_secs(10), |t| {
        bytes(t).is_some_and(|b| b > 0.0)
            && frames(t).is_some_and(|f| f > 0.0)
            && rtt(t).is_some_and(|r| r > 0.0)
    });
    println!(
        "link a -> b: {:?} bytes, round trip {:?} s; b -> a: {:?} frames",
        bytes(&text),
        rtt(&text),
        frames(&text)
    );
    assert!(
        ok,
        "both directions of the link are counted, and the round trip measured"
    );
    assert!(
        rtt(&text).is_some_and(|r| r < 1.0),
        "a round trip on 127.0.0.1"
    );
    assert_eq!(
        value(&text, "riffle_link_reconnects_total", &from_a),
        Some(0.0)
    );

    // A reset: the link is made again, and both sides count it.
    proxy.set(common::proxy::RESET);
    proxy.set(common::proxy::PASS);
    let reconnects = |t: &str, labels: &[(&str, &str)]| {
        value(t, "riffle_link_reconnects_total", labels).unwrap_or(0.0)
    };
    let (ok, text) = watch(&http.url(), Duration::from_secs(10), |t| {
        reconnects(t, &from_a) >= 1.0 && reconnects(t, &from_b) >= 1.0
    });
    drop((a, b));
    assert!(ok, "the reconnect is counted on both sides:\n{text}");
}
