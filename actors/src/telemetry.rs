//! Metrics of running jobs, through the `metrics` facade, in Prometheus's conventions.
//!
//! Nothing is recorded until a recorder is installed: [`install_prometheus`] installs
//! `metrics-exporter-prometheus`'s (once per process) and returns the handle that renders the
//! exposition text (`GET /metrics` of the HTTP server). Without one the calls below cost an
//! atomic load each, once a second per subtask.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `riffle_records_in_total` | counter | job, job_id, operator, subtask, node | records the subtask took in |
//! | `riffle_records_out_total` | counter | job, job_id, operator, subtask, node | records it handed on |
//! | `riffle_batches_in_total`, `riffle_batches_out_total` | counter | same | batches |
//! | `riffle_remote_bytes_in_total`, `riffle_remote_bytes_out_total` | counter | same | batch bytes from and to subtasks on other nodes (cluster) |
//! | `riffle_credit_stalls_total` | counter | same | times it waited for a credit |
//! | `riffle_input_queue_length` | gauge | same | data messages waiting in it |
//! | `riffle_busy_ratio` | gauge | same | share of time handling records (× 1000: Flink's busyTimeMsPerSecond) |
//! | `riffle_backpressured_ratio` | gauge | same | share of time waiting for credits (backPressuredTimeMsPerSecond) |
//! | `riffle_idle_ratio` | gauge | same | the rest (idleTimeMsPerSecond) |
//! | `riffle_checkpoint_alignment_seconds` | gauge | same | the last checkpoint's barrier alignment at the subtask (first input to last) |
//! | `riffle_event_time_lag_seconds` | gauge | same | wall clock minus the subtask's watermark (subtasks with event time) |
//! | `riffle_checkpoints_completed_total`, `riffle_checkpoints_failed_total` | counter | job, job_id | checkpoints |
//! | `riffle_checkpoint_duration_seconds`, `riffle_checkpoint_size_bytes` | gauge | job, job_id | of the last completed |
//! | `riffle_restarts_total`, `riffle_recoveries_total` | counter | job, job_id | subtask restarts, job recoveries |
//! | `riffle_rescales_total`, `riffle_rescale_pause_seconds` | counter, gauge | job, job_id | rescales in place, the last one's pause |
//! | `riffle_dead_letters_total` | counter | job, job_id | poison records set aside |
//! | `riffle_link_bytes_total`, `riffle_link_frames_total` | counter | from, to | what a node wrote on its link to a peer (cluster) |
//! | `riffle_link_reconnects_total` | counter | from, to | links made again to the peer after the first |
//! | `riffle_link_rtt_seconds` | gauge | from, to | the last heartbeat round trip |
//!
//! `job` is the job's name, `job_id` its id ([`ExecutionPlan::instance`], the REST API's
//! `/jobs/{id}`): jobs of one name running side by side keep their series apart.
//!
//! The three shares are measured over the last publishing interval (one second) and add up
//! to 1. Prometheus wants base units, so they are ratios; times 1000 they are Flink's
//! milliseconds per second.

use metrics::{Counter, Gauge, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use riffle_framework::ExecutionPlan;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static PROMETHEUS: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
static NODE: OnceLock<String> = OnceLock::new();

/// How often a subtask publishes its figures.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder as this process's `metrics` recorder (the first call;
/// later calls return the same handle).
///
/// # Errors
/// Another `metrics` recorder was installed first.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    PROMETHEUS
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
            describe();
            Ok(handle)
        })
        .clone()
}

/// Whether a metric is a counter or a gauge.
enum Kind {
    Counter,
    Gauge,
}

/// Every metric: kind, name, unit, help text.
const METRICS: &[(Kind, &str, metrics::Unit, &str)] = {
    use metrics::Unit;
    &[
        (
            Kind::Counter,
            "riffle_link_bytes_total",
            Unit::Bytes,
            "Bytes a node wrote on its link to a peer (whole frames).",
        ),
        (
            Kind::Counter,
            "riffle_link_frames_total",
            Unit::Count,
            "Frames a node wrote on its link to a peer.",
        ),
        (
            Kind::Counter,
            "riffle_link_reconnects_total",
            Unit::Count,
            "Links a node made again to a peer after its first.",
        ),
        (
            Kind::Gauge,
            "riffle_link_rtt_seconds",
            Unit::Seconds,
            "The last heartbeat round trip on a node's link to a peer.",
        ),
        (
            Kind::Counter,
            "riffle_rescales_total",
            Unit::Count,
            "Rescales in place done.",
        ),
        (
            Kind::Gauge,
            "riffle_rescale_pause_seconds",
            Unit::Seconds,
            "How long the last rescale in place paused the rescaled operator.",
        ),
        (
            Kind::Counter,
            "riffle_dead_letters_total",
            Unit::Count,
            "Poison records set aside as dead letters.",
        ),
        (
            Kind::Gauge,
            "riffle_checkpoint_alignment_seconds",
            Unit::Seconds,
            "How long the last checkpoint's barriers took to align at a subtask (first to last input).",
        ),
        (
            Kind::Gauge,
            "riffle_event_time_lag_seconds",
            Unit::Seconds,
            "How far a subtask's event-time clock (watermark) is behind the wall clock.",
        ),
        (
            Kind::Counter,
            "riffle_records_in_total",
            Unit::Count,
            "Records a subtask took in.",
        ),
        (
            Kind::Counter,
            "riffle_records_out_total",
            Unit::Count,
            "Records a subtask handed on (to channels or sinks).",
        ),
        (
            Kind::Counter,
            "riffle_batches_in_total",
            Unit::Count,
            "Batches a subtask took in.",
        ),
        (
            Kind::Counter,
            "riffle_batches_out_total",
            Unit::Count,
            "Batches a subtask sent.",
        ),
        (
            Kind::Counter,
            "riffle_remote_bytes_in_total",
            Unit::Bytes,
            "Batch bytes a subtask received from subtasks on other nodes.",
        ),
        (
            Kind::Counter,
            "riffle_remote_bytes_out_total",
            Unit::Bytes,
            "Batch bytes a subtask sent to subtasks on other nodes.",
        ),
        (
            Kind::Counter,
            "riffle_credit_stalls_total",
            Unit::Count,
            "Times a subtask waited for a credit of a downstream channel.",
        ),
        (
            Kind::Gauge,
            "riffle_input_queue_length",
            Unit::Count,
            "Data messages waiting in a subtask.",
        ),
        (
            Kind::Gauge,
            "riffle_busy_ratio",
            Unit::Percent,
            "Share of the last second a subtask spent handling records.",
        ),
        (
            Kind::Gauge,
            "riffle_backpressured_ratio",
            Unit::Percent,
            "Share of the last second a subtask waited for credits.",
        ),
        (
            Kind::Gauge,
            "riffle_idle_ratio",
            Unit::Percent,
            "Share of the last second a subtask had nothing to do.",
        ),
        (
            Kind::Counter,
            "riffle_checkpoints_completed_total",
            Unit::Count,
            "Checkpoints completed.",
        ),
        (
            Kind::Counter,
            "riffle_checkpoints_failed_total",
            Unit::Count,
            "Checkpoints that failed or timed out.",
        ),
        (
            Kind::Gauge,
            "riffle_checkpoint_duration_seconds",
            Unit::Seconds,
            "Duration of the last completed checkpoint.",
        ),
        (
            Kind::Gauge,
            "riffle_checkpoint_size_bytes",
            Unit::Bytes,
            "State size of the last completed checkpoint.",
        ),
        (
            Kind::Counter,
            "riffle_restarts_total",
            Unit::Count,
            "Subtask restarts.",
        ),
        (
            Kind::Counter,
            "riffle_recoveries_total",
            Unit::Count,
            "Job recoveries from a checkpoint or from the start.",
        ),
    ]
};

/// The help text and unit of every metric.
fn describe() {
    for (kind, name, unit, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *unit, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *unit, *help),
        }
    }
}

/// The Prometheus handle, if [`install_prometheus`] installed it.
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS.get().and_then(|r| r.as_ref().ok()).cloned()
}

/// Names this process's node in the `node` label (first call wins; default `local`).
pub fn set_node_name(name: &str) {
    let _ = NODE.set(name.to_string());
}

/// This process's node name (the `node` label).
pub fn node_name() -> String {
    node()
}

fn node() -> String {
    NODE.get().cloned().unwrap_or_else(|| "local".to_string())
}

/// One subtask's latest figures, as it published them (each second): what the REST API
/// and the console show, with or without a metrics recorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveFigures {
    /// Records taken in so far.
    pub records_in: u64,
    /// Records handed on so far.
    pub records_out: u64,
    /// Records taken in per second over the last interval.
    pub rate_in: f64,
    /// Records handed on per second over the last interval.
    pub rate_out: f64,
    /// Share of the last interval spent handling records (0..1).
    pub busy: f64,
    /// Share of the last interval spent waiting for credits (0..1).
    pub backpressured: f64,
    /// Data messages waiting in it.
    pub queue: usize,
}

type LiveKey = (String, String, usize);

fn live_table() -> &'static dashmap::DashMap<LiveKey, LiveFigures> {
    static LIVE: OnceLock<dashmap::DashMap<LiveKey, LiveFigures>> = OnceLock::new();
    LIVE.get_or_init(dashmap::DashMap::new)
}

/// The latest figures of subtask `subtask` of `operator` (a chain's name) in the job whose id
/// is `job` ([`ExecutionPlan::instance`]), if it published any in this process (or a peer
/// node sent them, see [`forward_live`]).
pub fn live(job: &str, operator: &str, subtask: usize) -> Option<LiveFigures> {
    let key = (job.to_string(), operator.to_string(), subtask);
    live_table().get(&key).map(|f| *f)
}

/// Forgets the live figures of the job whose id is `job` (the registry forgets ended jobs
/// beyond its limit).
pub fn forget_job(job: &str) {
    live_table().retain(|k, _| k.0 != job);
}

/// A subtask's figures as they travel between nodes: job id, operator, subtask, figures.
pub type LiveUpdate = (String, String, u32, LiveFigures);

static FORWARD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn outbox() -> &'static std::sync::Mutex<std::collections::HashMap<LiveKey, LiveFigures>> {
    static OUT: OnceLock<std::sync::Mutex<std::collections::HashMap<LiveKey, LiveFigures>>> =
        OnceLock::new();
    OUT.get_or_init(Default::default)
}

/// From now on, keeps what this process's subtasks publish for [`take_live_updates`] too (a
/// cluster node sends it to its peers, so that a job's coordinator shows the figures of
/// subtasks on other nodes).
pub fn forward_live() {
    FORWARD.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// What this process's subtasks published since the last call (the latest per subtask).
pub fn take_live_updates() -> Vec<LiveUpdate> {
    let mut out = outbox().lock().unwrap_or_else(|e| e.into_inner());
    out.drain()
        .map(|((job, op, s), f)| (job, op, s as u32, f))
        .collect()
}

/// Figures a peer node sent for one of its subtasks.
pub fn put_live(update: LiveUpdate) {
    let (job, op, s, f) = update;
    live_table().insert((job, op, s as usize), f);
}

/// The counter `name` of subtask `subtask` of `operator` (a chain) in the job `plan` runs,
/// on this process's node: for figures counted outside the subtask (the cluster layer counts
/// the bytes of its remote channels).
pub fn subtask_counter(
    name: &'static str,
    plan: &ExecutionPlan,
    operator: &str,
    subtask: usize,
) -> metrics::Counter {
    metrics::counter!(name, subtask_labels(plan, operator, subtask).iter())
}

/// The labels of a subtask's series: job, job_id, operator, subtask, node.
fn subtask_labels(plan: &ExecutionPlan, operator: &str, subtask: usize) -> [Label; 5] {
    let [job, job_id] = job_labels(plan);
    [
        job,
        job_id,
        Label::new("operator", operator.to_string()),
        Label::new("subtask", subtask.to_string()),
        Label::new("node", node()),
    ]
}

/// The labels of a job's series: its name and its id.
fn job_labels(plan: &ExecutionPlan) -> [Label; 2] {
    [
        Label::new("job", plan.config().name.clone()),
        Label::new("job_id", plan.instance().to_string()),
    ]
}

/// The metric handles of one subtask.
pub(crate) struct SubtaskTelemetry {
    key: LiveKey,
    last: (u64, u64),
    records_in: Counter,
    records_out: Counter,
    batches_in: Counter,
    batches_out: Counter,
    stalls: Counter,
    queue: Gauge,
    busy: Gauge,
    backpressured: Gauge,
    idle: Gauge,
    lag: Gauge,
    alignment: Gauge,
    clock: TimeSplit,
}

/// Figures a subtask publishes.
pub(crate) struct SubtaskFigures {
    pub records_in: u64,
    pub records_out: u64,
    pub batches_in: u64,
    pub batches_out: u64,
    pub credit_stalls: u64,
    pub queue: usize,
    /// The subtask's event-time clock, if it has one.
    pub watermark: Option<i64>,
}

impl SubtaskTelemetry {
    pub(crate) fn new(plan: &ExecutionPlan, operator: &str, subtask: usize) -> Self {
        let labels = subtask_labels(plan, operator, subtask);
        let c = |name: &'static str| metrics::counter!(name, labels.iter());
        let g = |name: &'static str| metrics::gauge!(name, labels.iter());
        SubtaskTelemetry {
            key: (plan.instance().to_string(), operator.to_string(), subtask),
            last: (0, 0),
            records_in: c("riffle_records_in_total"),
            records_out: c("riffle_records_out_total"),
            batches_in: c("riffle_batches_in_total"),
            batches_out: c("riffle_batches_out_total"),
            stalls: c("riffle_credit_stalls_total"),
            queue: g("riffle_input_queue_length"),
            busy: g("riffle_busy_ratio"),
            backpressured: g("riffle_backpressured_ratio"),
            idle: g("riffle_idle_ratio"),
            lag: g("riffle_event_time_lag_seconds"),
            alignment: g("riffle_checkpoint_alignment_seconds"),
            clock: TimeSplit::new(),
        }
    }

    /// A checkpoint's barriers aligned at this subtask, `took` after the first arrived.
    pub(crate) fn aligned(&mut self, took: Duration) {
        self.alignment.set(took.as_secs_f64());
    }

    /// The subtask's time split (busy, backpressured), to measure into.
    pub(crate) fn clock(&mut self) -> &mut TimeSplit {
        &mut self.clock
    }

    /// Counts the work that ran from `started` to `ended` as busy time and says whether a
    /// publication is due at `ended` (a busy actor's interval timer can lag: actix handles up
    /// to 256 messages before it looks at its timers, so the data path asks too). One clock
    /// reading per unit of work serves both.
    #[inline]
    pub(crate) fn worked(&mut self, started: Instant, ended: Instant) -> bool {
        self.clock.busy(ended.saturating_duration_since(started));
        ended.saturating_duration_since(self.clock.since) >= PUBLISH_INTERVAL
    }

    /// Publishes `f` and the time split since the last call.
    pub(crate) fn publish(&mut self, f: &SubtaskFigures) {
        self.records_in.absolute(f.records_in);
        self.records_out.absolute(f.records_out);
        self.batches_in.absolute(f.batches_in);
        self.batches_out.absolute(f.batches_out);
        self.stalls.absolute(f.credit_stalls);
        self.queue.set(f.queue as f64);
        if let Some(w) = f.watermark {
            let now = riffle_framework::timers::processing_time_now();
            self.lag.set(now.saturating_sub(w) as f64 / 1000.0);
        }
        let wall = self.clock.since.elapsed();
        if wall < PUBLISH_INTERVAL / 2 {
            // Published again soon after the last time (the data path and the interval
            // timer both publish): the counters are new, the shares and rates of so short a
            // span would be noise.
            let mut l = live_table().entry(self.key.clone()).or_default();
            (l.records_in, l.records_out, l.queue) = (f.records_in, f.records_out, f.queue);
            let live = *l;
            drop(l);
            self.forward(live);
            return;
        }
        let wall = wall.as_secs_f64();
        let (busy, backpressured) = self.clock.take_per_second();
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / wall;
        let live = LiveFigures {
            records_in: f.records_in,
            records_out: f.records_out,
            rate_in: rate(f.records_in, self.last.0),
            rate_out: rate(f.records_out, self.last.1),
            busy: busy / 1000.0,
            backpressured: backpressured / 1000.0,
            queue: f.queue,
        };
        self.last = (f.records_in, f.records_out);
        live_table().insert(self.key.clone(), live);
        self.forward(live);
        self.busy.set(busy / 1000.0);
        self.backpressured.set(backpressured / 1000.0);
        self.idle
            .set(((1000.0 - busy - backpressured) / 1000.0).max(0.0));
    }
}

impl SubtaskTelemetry {
    /// Keeps `live` for the peers, on a cluster node (see [`forward_live`]).
    fn forward(&self, live: LiveFigures) {
        if FORWARD.load(std::sync::atomic::Ordering::Relaxed) {
            let mut out = outbox().lock().unwrap_or_else(|e| e.into_inner());
            out.insert(self.key.clone(), live);
        }
    }
}

/// Where a subtask's time goes: busy (handling records) and backpressured (waiting for a
/// credit), accumulated since the last [`TimeSplit::take_per_second`].
pub(crate) struct TimeSplit {
    since: Instant,
    busy: Duration,
    blocked: Duration,
    blocked_since: Option<Instant>,
}

impl TimeSplit {
    fn new() -> Self {
        TimeSplit {
            since: Instant::now(),
            busy: Duration::ZERO,
            blocked: Duration::ZERO,
            blocked_since: None,
        }
    }

    /// Adds busy time.
    #[inline]
    pub(crate) fn busy(&mut self, d: Duration) {
        self.busy += d;
    }

    /// The subtask starts waiting for a credit (if it was not already).
    pub(crate) fn blocked(&mut self) {
        self.blocked_since.get_or_insert_with(Instant::now);
    }

    /// A credit came back.
    pub(crate) fn unblocked(&mut self) {
        if let Some(t) = self.blocked_since.take() {
            self.blocked += t.elapsed();
        }
    }

    /// Busy and backpressured milliseconds per second since the last call; starts anew.
    fn take_per_second(&mut self) -> (f64, f64) {
        let now = Instant::now();
        if let Some(t) = self.blocked_since {
            self.blocked += now.duration_since(t);
            self.blocked_since = Some(now);
        }
        let wall = now.duration_since(self.since).as_secs_f64().max(1e-9);
        let per_second = |d: Duration| (d.as_secs_f64() / wall * 1000.0).min(1000.0);
        let (busy, blocked) = (per_second(self.busy), per_second(self.blocked));
        self.since = now;
        self.busy = Duration::ZERO;
        self.blocked = Duration::ZERO;
        (busy, blocked.min(1000.0 - busy))
    }
}

/// The metric handles of one job (its supervisor's).
pub(crate) struct JobTelemetry {
    pub checkpoints_completed: Counter,
    pub checkpoints_failed: Counter,
    pub checkpoint_duration: Gauge,
    pub checkpoint_size: Gauge,
    pub restarts: Counter,
    pub recoveries: Counter,
    pub rescales: Counter,
    pub rescale_pause: Gauge,
    pub dead_letters: Counter,
}

impl JobTelemetry {
    pub(crate) fn new(plan: &ExecutionPlan) -> Self {
        let labels = job_labels(plan);
        JobTelemetry {
            checkpoints_completed: metrics::counter!(
                "riffle_checkpoints_completed_total",
                labels.iter()
            ),
            checkpoints_failed: metrics::counter!("riffle_checkpoints_failed_total", labels.iter()),
            checkpoint_duration: metrics::gauge!(
                "riffle_checkpoint_duration_seconds",
                labels.iter()
            ),
            checkpoint_size: metrics::gauge!("riffle_checkpoint_size_bytes", labels.iter()),
            restarts: metrics::counter!("riffle_restarts_total", labels.iter()),
            recoveries: metrics::counter!("riffle_recoveries_total", labels.iter()),
            rescales: metrics::counter!("riffle_rescales_total", labels.iter()),
            rescale_pause: metrics::gauge!("riffle_rescale_pause_seconds", labels.iter()),
            dead_letters: metrics::counter!("riffle_dead_letters_total", labels.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_split_adds_up_to_a_second_per_second() {
        let mut t = TimeSplit::new();
        t.since -= Duration::from_millis(100);
        t.busy(Duration::from_millis(60));
        t.blocked_since = Some(Instant::now() - Duration::from_millis(30));
        let (busy, blocked) = t.take_per_second();
        assert!((550.0..=650.0).contains(&busy), "{busy}");
        assert!((250.0..=350.0).contains(&blocked), "{blocked}");
        assert!(t.blocked_since.is_some(), "still blocked");
    }
}
