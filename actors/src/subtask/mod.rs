//! The subtask actor: one per parallel instance of a chain, under an actix `Supervisor`.
//!
//! # Lifecycle
//! `Running` → (`EndOfInput` on every input, or the source finished) → `Draining` (hooks
//! closed, end-of-input queued on every output) → `Done` once every queued message has been
//! sent. A failure moves `Running`/`Draining` to `Recovering`: the actor reports it to the job
//! supervisor and stops itself; its actix `Supervisor` restarts it on the same address with its
//! mailbox intact, `restarting` rebuilds the operator chain from the plan's factories, and the
//! restarted actor waits for the job supervisor's decision (restart after a backoff, or abort)
//! before it handles anything. Transitions are checked by [`Lifecycle::can_become`].
//!
//! # What a restart keeps
//! The output queues (committed batches not yet sent), the mailbox, a source's position (kept
//! outside the source) and the batch that failed, which is retried first. Output of a failed
//! batch never left the chain (it is staged until the batch commits), so a stateless chain that
//! fails and recovers emits exactly what a failure-free run emits. Without checkpointing,
//! operator state is rebuilt from the factory. With checkpointing, the job supervisor answers
//! every failure with a reset: each subtask restores its state, its source position and its
//! sinks' transactions from the latest completed checkpoint in a new epoch.
//!
//! # Backpressure
//! Each output channel has a semaphore of `credits` permits (`remote_credits` for a channel
//! to another node, whose batches are also `remote_batch_scale` times larger: see
//! `Directory::credits_to` and `set_batch_limits`). A message is sent only with a
//! permit, which it carries and which returns when the receiver dropped the message. When a
//! channel has queued messages and no permit, the actor is *blocked*: it waits for a permit in
//! a future spawned beside its mailbox, and until the permit comes it defers the data messages
//! it receives (they keep their own credits, so its upstream runs out of credits in turn) and
//! a source stops producing — but it still handles its control messages at once (a reset, a
//! hold, a re-plan, a stop), however long the block lasts. A wait with `ctx.wait` would hold
//! the whole mailbox instead, and a subtask blocked again as soon as each credit returns would
//! never read it. Records in flight per channel are therefore bounded by its credits times its
//! batch size plus what the sender buffers (one partial batch per channel and the
//! output of the input batch at hand) plus the deferred messages, which are bounded by the
//! credits of the subtask's own inputs.

use crate::directory::Directory;
use crate::message::{
    Control, DataMessage, Decision, Failure, PlannedKind, ResetDone, SubtaskMetrics, TaskFailed,
    TaskLost, TaskResumed, ToJob,
};
use actix::prelude::*;
use riffle_framework::exec::{Payload, StageCx};
use riffle_framework::{ExecutionPlan, FailureCause, Position, StageError, TaskChain, TaskId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod checkpoint;
mod input;
mod output;
mod replan;

/// Whether a sent message was the end of input (for re-sending it after a re-wire).
enum MsgKind {
    End,
    Other,
}
use tokio::sync::{oneshot, Semaphore};

/// How long an idle source (nothing ready) waits before it is asked again.
const IDLE_SOURCE_PAUSE: Duration = Duration::from_millis(1);

/// Where a subtask is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Processing input.
    Running,
    /// Failed; waiting for the job supervisor's decision and the restart.
    Recovering,
    /// Input ended; sending what is still queued, then end-of-input.
    Draining,
    /// Everything sent; reported to the job.
    Done,
    /// Will not run again (the job is failing).
    Failed,
}

impl Lifecycle {
    /// Whether moving from `self` to `next` is allowed.
    pub fn can_become(self, next: Lifecycle) -> bool {
        use Lifecycle::*;
        matches!(
            (self, next),
            (Running, Draining)
                | (Running, Recovering)
                | (Running, Failed)
                | (Recovering, Running)
                | (Recovering, Failed)
                | (Draining, Done)
                | (Draining, Recovering)
                | (Draining, Failed)
                | (Done, Recovering)
        )
    }
}

/// One output channel of a subtask.
pub(crate) struct OutChannel {
    pub target: TaskId,
    /// Where the channel's messages go; `None` until the target is found (parked).
    pub to: Option<Recipient<DataMessage>>,
    pub in_channel: u32,
    pub credits: Arc<Semaphore>,
    pub eoi_sent: bool,
    /// The receiver is gone; hold messages until it is re-created (`Control::Rewire`).
    pub parked: bool,
}

/// A source's position, kept where a lost actor cannot take it along.
pub(crate) type PositionSlot = Arc<Mutex<Option<Position>>>;

pub(crate) struct SubtaskSetup {
    pub task: TaskId,
    pub plan: Arc<ExecutionPlan>,
    /// The version of `plan` (rescales in place so far).
    pub plan_version: u64,
    pub outs: Vec<OutChannel>,
    pub in_channels: usize,
    pub closed_inputs: Vec<usize>,
    pub job: Recipient<ToJob>,
    pub directory: Arc<Directory>,
    pub position: PositionSlot,
    pub attempt: u32,
    pub epoch: u64,
    /// State to restore when the chain opens (checkpointing on).
    pub restore: Option<RestoreState>,
    /// Wait for `Control::Go` after the restore (a re-creation during a recovery).
    pub paused: bool,
}

/// What a subtask restores when its chain opens.
pub(crate) struct RestoreState {
    pub states: Vec<Vec<u8>>,
    pub last_completed: Option<u64>,
    pub finished: bool,
    /// The subtask's clock at the checkpoint.
    pub watermark: Option<i64>,
}

/// A batch being processed, kept until it succeeds so that it can be retried.
struct Retry {
    payload: Payload,
    len: usize,
    /// Where the batch's buffer goes once it succeeded.
    home: Option<std::sync::Arc<dyn riffle_framework::GiveBack>>,
    skip: Vec<usize>,
    fail_index: usize,
    fail_count: u32,
}

/// Failures of one record emitted by a source: at which position and index, how often.
struct SourcePoison {
    at: Option<Position>,
    index: u64,
    count: u32,
    /// Set once the record counts as poison: skip it on the next replay.
    skip: Option<u64>,
    cause: String,
    operator: String,
}

enum Pending {
    None,
    Await(oneshot::Receiver<Decision>),
    Given(Decision),
}

/// The actor running one subtask of a chain.
pub(crate) struct SubtaskActor {
    task: TaskId,
    chain_name: String,
    plan: Arc<ExecutionPlan>,
    /// The version of `plan` (rescales in place so far).
    plan_version: u64,
    head: Option<TaskChain>,
    cx: StageCx,
    outs: Vec<OutChannel>,
    closed: Vec<bool>,
    open_inputs: usize,
    state: Lifecycle,
    job: Recipient<ToJob>,
    directory: Arc<Directory>,
    metrics: SubtaskMetrics,
    epoch: u64,
    attempt: u32,
    retry: Option<Retry>,
    pending: Pending,
    finish_after_restart: bool,
    position: PositionSlot,
    armed: Vec<(u64, PlannedKind)>,
    source_poison: Option<SourcePoison>,
    /// Checkpointing is on.
    checkpointing: bool,
    /// The checkpoint whose barriers are being aligned.
    aligning: Option<u64>,
    /// Latency mode: flush after every input batch and source call.
    eager_flush: bool,
    /// When the alignment under way began (its first barrier).
    align_started: Option<std::time::Instant>,
    /// Per input channel: delivered the barrier being aligned.
    barrier_seen: Vec<bool>,
    /// Event time: the minimum of the open inputs' watermarks.
    clock: riffle_framework::InputClock,
    /// Messages of channels that already delivered the barrier, held until alignment ends.
    held: VecDeque<DataMessage>,
    /// The newest checkpoint this subtask acknowledged.
    last_acked: u64,
    /// Reset and restored; waits for `Control::Go`.
    paused: bool,
    /// State to restore when the chain next opens.
    restore: Option<RestoreState>,
    /// Restored as finished: only end-of-input is left to send.
    restored_finished: bool,
    /// Report the first record processed in this epoch (restore time).
    first_record_pending: bool,
    /// A source held after a checkpoint (`Control::Hold`) until `Control::Release`.
    holding: bool,
    /// Its metric handles and time split.
    telemetry: crate::telemetry::SubtaskTelemetry,
    /// Processing-time timers stand still (a rescale's checkpoint, `Control::HoldTimers`).
    timers_held: bool,
    /// Processing-time timers fired before the last snapshot was taken (a count).
    fired_at_snapshot: u64,
    /// The held source's produce loop stopped; `Control::Release` starts it again.
    hold_parked: bool,
    /// No longer part of the job (scaled down): ignores everything.
    retired: bool,
    /// The wait for a credit (or a full mailbox's pause) while the subtask is blocked.
    credit_wait: Option<SpawnHandle>,
    /// Data messages that arrived while the subtask was blocked, in order.
    deferred: VecDeque<DataMessage>,
    /// The source's produce loop stopped on a block; it goes on once the block ends.
    produce_parked: bool,
    /// When the source loop last yielded through the scheduler's I/O poll (see
    /// `input::IO_YIELD_EVERY`).
    io_yielded: std::time::Instant,
}

impl SubtaskActor {
    pub(crate) fn new(s: SubtaskSetup) -> Self {
        let cfg = s.plan.config();
        let mut closed = vec![false; s.in_channels];
        for &c in &s.closed_inputs {
            if let Some(x) = closed.get_mut(c) {
                *x = true;
            }
        }
        let open_inputs = closed.iter().filter(|c| !**c).count();
        let chain_name = s.plan.chain_name(s.task.chain).to_string();
        let head = s.plan.build_task(s.task, s.attempt);
        let telemetry =
            crate::telemetry::SubtaskTelemetry::new(&s.plan, &chain_name, s.task.subtask);
        let mut actor = SubtaskActor {
            metrics: SubtaskMetrics {
                chain: chain_name.clone(),
                subtask: s.task.subtask,
                ..SubtaskMetrics::default()
            },
            task: s.task,
            chain_name,
            cx: StageCx::with_batching(s.outs.len(), cfg.batching()),
            plan: s.plan.clone(),
            plan_version: s.plan_version,
            head: None,
            outs: s.outs,
            closed,
            open_inputs,
            state: Lifecycle::Running,
            job: s.job,
            directory: s.directory,
            epoch: 0,
            attempt: s.attempt,
            retry: None,
            pending: Pending::None,
            finish_after_restart: false,
            position: s.position,
            armed: Vec::new(),
            source_poison: None,
            checkpointing: cfg.checkpoint.is_some(),
            aligning: None,
            eager_flush: s.plan.flush_interval(s.task.chain).is_zero(),
            align_started: None,
            barrier_seen: vec![false; s.in_channels],
            clock: riffle_framework::InputClock::resumed(
                s.in_channels,
                s.restore.as_ref().and_then(|r| r.watermark),
            ),
            held: VecDeque::new(),
            last_acked: 0,
            paused: s.paused,
            restored_finished: false,
            first_record_pending: false,
            holding: false,
            telemetry,
            timers_held: false,
            fired_at_snapshot: 0,
            hold_parked: false,
            retired: false,
            restore: s.restore,
            credit_wait: None,
            deferred: VecDeque::new(),
            produce_parked: false,
            io_yielded: std::time::Instant::now(),
        };
        actor.epoch = s.epoch;
        actor.cx.set_checkpointing(actor.checkpointing);
        match head {
            Ok(h) => actor.head = Some(h),
            Err(e) => actor.report_fatal(e),
        }
        actor
    }

    fn become_(&mut self, next: Lifecycle) -> bool {
        if self.state.can_become(next) {
            self.state = next;
            true
        } else {
            false
        }
    }

    fn is_source(&self) -> bool {
        matches!(self.head, Some(TaskChain::Source(_)))
    }

    /// A failure that no restart can fix (the chain cannot even be built).
    fn report_fatal(&mut self, error: StageError) {
        self.state = Lifecycle::Failed;
        self.job.do_send(ToJob::Failed(TaskFailed {
            task: self.task,
            epoch: self.epoch,
            failure: Failure {
                operator: error.operator,
                cause: error.cause,
                injected: false,
                poison_attempts: Some(0),
            },
            wants_reply: false,
            reply: None,
        }));
    }

    fn fail(&mut self, failure: Failure, ctx: &mut Context<Self>) {
        let was_draining = self.state == Lifecycle::Draining;
        if !self.become_(Lifecycle::Recovering) {
            return;
        }
        tracing::warn!(
            chain = %self.chain_name, subtask = self.task.subtask, attempt = self.attempt,
            operator = %failure.operator, cause = %failure.cause, injected = failure.injected,
            "subtask failed"
        );
        self.finish_after_restart |= was_draining;
        self.keep_committed_output();
        let (tx, rx) = oneshot::channel();
        self.job.do_send(ToJob::Failed(TaskFailed {
            task: self.task,
            epoch: self.epoch,
            failure,
            wants_reply: true,
            reply: Some(tx),
        }));
        self.pending = Pending::Await(rx);
        ctx.stop();
    }

    /// Moves committed records out of the routers before the chain is rebuilt.
    fn keep_committed_output(&mut self) {
        if let Some(h) = &mut self.head {
            h.head().flush(&mut self.cx);
        }
        self.cx.disarm();
    }

    fn stage_failure(&mut self, error: StageError) -> Failure {
        let injected = self.cx.take_fired();
        Failure {
            operator: error.operator,
            cause: error.cause,
            injected,
            poison_attempts: None,
        }
    }

    /// First start: open the chain and begin.
    fn begin(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.open_head().and_then(|()| self.restore_head()) {
            let f = self.stage_failure(e);
            return self.fail(f, ctx);
        }
        self.set_batch_limits();
        // Latency mode (a zero interval) flushes after every batch; the tick still fires
        // processing-time timers and idle marks.
        let interval = match self.plan.flush_interval(self.task.chain) {
            d if d.is_zero() => riffle_framework::DEFAULT_FLUSH_INTERVAL,
            d => d,
        };
        ctx.run_interval(interval, |act, ctx| act.flush(ctx));
        ctx.run_interval(crate::telemetry::PUBLISH_INTERVAL, |act, _| act.publish());
        if self.paused {
            self.job.do_send(ToJob::ResetDone(ResetDone {
                task: self.task,
                epoch: self.epoch,
            }));
            return;
        }
        self.advance(ctx);
    }

    /// Applies a pending restore to the freshly opened chain.
    fn restore_head(&mut self) -> Result<(), StageError> {
        let Some(r) = self.restore.take() else {
            return Ok(());
        };
        // Started from a checkpoint: report the first record (restore time, pauses).
        self.first_record_pending |= r.last_completed.is_some();
        self.restored_finished = r.finished;
        match &mut self.head {
            Some(h) => {
                h.head().restore(&r.states, r.last_completed)?;
                if let Some(w) = r.watermark {
                    h.head().resume_clock(w);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn open_head(&mut self) -> Result<(), StageError> {
        match &mut self.head {
            Some(TaskChain::Source(s)) => {
                s.open(&mut self.cx)?;
                let saved = self
                    .position
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match saved {
                    Some(p) => s.seek(&p)?,
                    None => {
                        let p = s.position()?;
                        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = p;
                    }
                }
                Ok(())
            }
            Some(TaskChain::Input(i)) => i.open(&mut self.cx),
            None => Err(StageError {
                operator: self.chain_name.clone(),
                cause: FailureCause::Internal("subtask has no operator chain"),
            }),
        }
    }

    /// Continues after a start or restart: retry, finish, or produce.
    fn advance(&mut self, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.restored_finished) {
            return self.finish_restored(ctx);
        }
        if let Some(r) = self.retry.take() {
            self.run_batch(r, ctx);
        }
        if self.state != Lifecycle::Running {
            return;
        }
        let finished_input = !self.is_source() && self.open_inputs == 0;
        if std::mem::take(&mut self.finish_after_restart) || finished_input {
            self.finish_input(ctx);
        } else if self.is_source() {
            self.produce_parked = false;
            self.produce(ctx);
        } else {
            self.drain(ctx);
            self.run_deferred(ctx);
        }
    }

    fn on_decision(&mut self, decision: Decision, ctx: &mut Context<Self>) {
        match decision {
            Decision::Abort => {
                self.become_(Lifecycle::Failed);
            }
            Decision::Reset(order) if order.epoch <= self.epoch => {
                // Cannot happen: the supervisor answers with the newest epoch.
                self.become_(Lifecycle::Failed);
            }
            Decision::Reset(order) => {
                let backoff = order.backoff;
                self.apply_reset(*order);
                self.resume_after(backoff, ctx);
            }
            Decision::Restart { attempt, backoff } => {
                self.attempt = attempt;
                self.resume_after(backoff, ctx);
            }
        }
    }

    /// Counts the restart and resumes once `backoff` has passed.
    fn resume_after(&mut self, backoff: Duration, ctx: &mut Context<Self>) {
        self.metrics.restarts += 1;
        if backoff.is_zero() {
            self.resume(ctx);
        } else {
            let sleep = fut::wrap_future::<_, Self>(tokio::time::sleep(backoff));
            ctx.wait(sleep.map(|_, act, ctx| act.resume(ctx)));
        }
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Running) {
            return;
        }
        tracing::info!(chain = %self.chain_name, subtask = self.task.subtask, attempt = self.attempt, "subtask restarted");
        self.job
            .do_send(ToJob::Resumed(TaskResumed { task: self.task }));
        self.begin(ctx);
    }

    /// End of all input: close the chain's hooks, queue end-of-input everywhere, drain.
    fn finish_input(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Draining) {
            return;
        }
        let closed = match &mut self.head {
            Some(h) => h.head().close(&mut self.cx),
            None => Ok(()),
        };
        if let Err(e) = closed {
            let f = self.stage_failure(e);
            return self.fail(f, ctx);
        }
        self.cx.end_all();
        self.notify_draining();
        self.drain(ctx);
    }

    /// Publishes this subtask's figures to the metrics recorder.
    pub(super) fn publish(&mut self) {
        let figures = crate::telemetry::SubtaskFigures {
            records_in: self.metrics.records_in,
            records_out: self.cx.records_out(),
            batches_in: self.metrics.batches_in,
            batches_out: self.metrics.batches_out,
            credit_stalls: self.metrics.credit_stalls,
            queue: self.deferred.len(),
            watermark: Some(self.clock.current()).filter(|w| *w > i64::MIN && *w < i64::MAX),
        };
        self.telemetry.publish(&figures);
    }

    /// In latency mode (`flush_interval` zero): sends the partly filled batches now.
    #[inline]
    pub(super) fn flush_eagerly(&mut self) {
        if self.eager_flush {
            if let Some(h) = &mut self.head {
                h.head().flush(&mut self.cx);
            }
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        if self.holding {
            // A held source makes no idle marks (they could move clocks after its hold).
            return self.drain(ctx);
        }
        if let Some(h) = &mut self.head {
            if !self.paused && !self.timers_held {
                // Processing-time timers fire on this tick (a paused subtask waits).
                let now = riffle_framework::timers::processing_time_now();
                if let Err(e) = h.head().on_processing_time(now, &mut self.cx) {
                    let f = self.stage_failure(e);
                    return self.fail(f, ctx);
                }
            }
            h.head().flush(&mut self.cx);
        }
        self.drain(ctx);
    }
}

fn internal(chain: &str, what: &'static str) -> StageError {
    StageError {
        operator: chain.to_string(),
        cause: FailureCause::Internal(what),
    }
}

impl Actor for SubtaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.state {
            Lifecycle::Running => self.begin(ctx),
            Lifecycle::Recovering => match std::mem::replace(&mut self.pending, Pending::None) {
                Pending::Await(rx) => {
                    let decision = fut::wrap_future::<_, Self>(rx);
                    ctx.wait(decision.map(|d, act, ctx| {
                        act.on_decision(d.unwrap_or(Decision::Abort), ctx);
                    }));
                }
                Pending::Given(d) => self.on_decision(d, ctx),
                Pending::None => self.on_decision(Decision::Abort, ctx),
            },
            Lifecycle::Draining | Lifecycle::Done | Lifecycle::Failed => {}
        }
    }
}

impl actix::Supervised for SubtaskActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // A restart drops the context's futures, the credit wait among them.
        self.credit_wait = None;
        self.produce_parked = false;
        if self.state != Lifecycle::Recovering {
            return;
        }
        match self.plan.build_task(self.task, self.attempt + 1) {
            Ok(h) => self.head = Some(h),
            Err(e) => self.report_fatal(e),
        }
    }
}

impl Drop for SubtaskActor {
    fn drop(&mut self) {
        // Dropped while it still had work: its worker thread stopped (or a bug unwound it).
        if matches!(
            self.state,
            Lifecycle::Running | Lifecycle::Draining | Lifecycle::Recovering
        ) {
            self.job.do_send(ToJob::Lost(TaskLost { task: self.task }));
        }
    }
}

impl Handler<DataMessage> for SubtaskActor {
    type Result = ();

    fn handle(&mut self, msg: DataMessage, ctx: &mut Context<Self>) {
        if self.blocked() || !self.deferred.is_empty() {
            // Blocked on a credit: keep it (and its credit) until the block ends.
            self.deferred.push_back(msg);
            return self.run_deferred(ctx);
        }
        self.on_data(msg, ctx);
        // A message's credit drops with it: the sender gets it back.
    }
}

impl Handler<Control> for SubtaskActor {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        match msg {
            Control::Inject(fault) if self.state == Lifecycle::Running => self.cx.arm(fault),
            Control::Inject(_) => {}
            Control::Arm { after, fault } => {
                self.armed.push((after, fault));
                self.armed.sort_by_key(|a| std::cmp::Reverse(a.0));
            }
            Control::Stop if self.state == Lifecycle::Running => {
                let f = Failure {
                    operator: self.chain_name.clone(),
                    cause: FailureCause::Stopped,
                    injected: true,
                    poison_attempts: None,
                };
                self.fail(f, ctx);
            }
            Control::Stop => {}
            Control::Restart { attempt, backoff } if self.state == Lifecycle::Running => {
                self.become_(Lifecycle::Recovering);
                self.keep_committed_output();
                self.pending = Pending::Given(Decision::Restart { attempt, backoff });
                ctx.stop();
            }
            Control::Restart { .. } => {}
            Control::Rewire { target } => self.rewire(target, ctx),
            Control::CloseInputs(channels) => self.close_inputs(&channels, ctx),
            Control::Trigger(n) => self.on_trigger(n, ctx),
            Control::Complete { id, ack } => self.on_complete(id, ack, ctx),
            Control::Reset(order) => {
                // A reset of an older epoch was overtaken by a newer recovery.
                if order.epoch <= self.epoch
                    || matches!(self.state, Lifecycle::Failed | Lifecycle::Recovering)
                {
                    return;
                }
                self.state = Lifecycle::Recovering;
                let (attempt, backoff) = (order.attempt, order.backoff);
                self.apply_reset(*order);
                self.pending = Pending::Given(Decision::Restart { attempt, backoff });
                ctx.stop();
            }
            Control::Go(epoch) => self.on_go(epoch, ctx),
            Control::Hold(n) => self.on_hold(n, ctx),
            Control::HoldTimers(n) => self.on_hold_timers(n, ctx),
            Control::Release => self.on_release(ctx),
            Control::Replan(order) => self.on_replan(*order, ctx),
            Control::Retire => self.retire(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lifecycle::{self, *};

    #[test]
    fn lifecycle_only_moves_forward_or_through_recovery() {
        let all = [Running, Recovering, Draining, Done, Failed];
        let allowed: Vec<(Lifecycle, Lifecycle)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Running, Recovering),
                (Running, Draining),
                (Running, Failed),
                (Recovering, Running),
                (Recovering, Failed),
                (Draining, Recovering),
                (Draining, Done),
                (Draining, Failed),
                (Done, Recovering),
            ]
        );
    }
}
