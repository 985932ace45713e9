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
//! fails and recovers emits exactly what a failure-free run emits. Operator state is rebuilt
//! from the factory (checkpoints will restore it).
//!
//! # Backpressure
//! Each output channel has a semaphore of `credits` permits. A message is sent only with a
//! permit, which it carries and which returns when the receiver dropped the message. When a
//! channel has queued messages and no permit, the actor waits (`ctx.wait`) for one: while it
//! waits it handles no input, so its own upstream runs out of credits in turn. Records in
//! flight per channel are therefore bounded by `credits × batch_size` plus what the sender
//! buffers (one partial batch per channel and the output of the input batch at hand).

use crate::message::{
    Control, Credit, DataMessage, DeadLettered, Decision, Event, Failure, PlannedKind, ResetDone,
    StopDue, SubtaskMetrics, TaskFailed, TaskFinished, TaskLost, TaskResumed,
};
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::exec::{BatchFailure, Fault, OutEvent, Payload, StageCx};
use riffle_framework::{
    DeadLetter, ExecutionPlan, FailureCause, PoisonAction, Position, SourceStatus, StageError,
    TaskChain, TaskId,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod checkpoint;

/// Whether a sent message was the end of input (for re-sending it after a re-wire).
enum MsgKind {
    End,
    Other,
}
use tokio::sync::{oneshot, Semaphore};

/// Why a channel stopped sending.
enum Blocked {
    /// No credit left: wait for this semaphore.
    Credit(Arc<Semaphore>),
    /// The receiver's mailbox is full (old-epoch messages not yet dropped).
    Full,
}

/// How long a sender waits before retrying a full mailbox.
const FULL_MAILBOX_PAUSE: Duration = Duration::from_millis(1);

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
    pub to: Recipient<DataMessage>,
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
    pub outs: Vec<OutChannel>,
    pub in_channels: usize,
    pub closed_inputs: Vec<usize>,
    pub job: Addr<JobSupervisor>,
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
}

/// A batch being processed, kept until it succeeds so that it can be retried.
struct Retry {
    payload: Payload,
    len: usize,
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
    head: Option<TaskChain>,
    cx: StageCx,
    outs: Vec<OutChannel>,
    closed: Vec<bool>,
    open_inputs: usize,
    state: Lifecycle,
    job: Addr<JobSupervisor>,
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
    /// Per input channel: delivered the barrier being aligned.
    barrier_seen: Vec<bool>,
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
        let mut actor = SubtaskActor {
            metrics: SubtaskMetrics {
                chain: chain_name.clone(),
                subtask: s.task.subtask,
                ..SubtaskMetrics::default()
            },
            task: s.task,
            chain_name,
            cx: StageCx::new(s.outs.len(), cfg.batch_size),
            plan: s.plan.clone(),
            head: None,
            outs: s.outs,
            closed,
            open_inputs,
            state: Lifecycle::Running,
            job: s.job,
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
            barrier_seen: vec![false; s.in_channels],
            held: VecDeque::new(),
            last_acked: 0,
            paused: s.paused,
            restored_finished: false,
            first_record_pending: false,
            restore: s.restore,
        };
        actor.epoch = s.epoch;
        actor.cx.checkpointing = actor.checkpointing;
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
        self.job.do_send(TaskFailed {
            task: self.task,
            epoch: self.epoch,
            failure: Failure {
                operator: error.operator,
                cause: error.cause,
                injected: false,
                poison_attempts: Some(0),
            },
            reply: None,
        });
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
        self.job.do_send(TaskFailed {
            task: self.task,
            epoch: self.epoch,
            failure,
            reply: Some(tx),
        });
        self.pending = Pending::Await(rx);
        ctx.stop();
    }

    /// Moves committed records out of the routers before the chain is rebuilt.
    fn keep_committed_output(&mut self) {
        match &mut self.head {
            Some(TaskChain::Source(s)) => s.flush(&mut self.cx),
            Some(TaskChain::Input(i)) => i.flush(&mut self.cx),
            None => {}
        }
        self.cx.inject = None;
        self.cx.injected_fired = false;
    }

    fn stage_failure(&mut self, error: StageError) -> Failure {
        let injected = std::mem::take(&mut self.cx.injected_fired);
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
        let interval = self.plan.config().flush_interval;
        ctx.run_interval(interval, |act, ctx| act.flush(ctx));
        if self.paused {
            self.job.do_send(ResetDone {
                task: self.task,
                epoch: self.epoch,
            });
            return;
        }
        self.advance(ctx);
    }

    /// Applies a pending restore to the freshly opened chain.
    fn restore_head(&mut self) -> Result<(), StageError> {
        let Some(r) = self.restore.take() else {
            return Ok(());
        };
        self.restored_finished = r.finished;
        match &mut self.head {
            Some(TaskChain::Source(s)) => s.restore(&r.states, r.last_completed),
            Some(TaskChain::Input(i)) => i.restore(&r.states, r.last_completed),
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
            self.produce(ctx);
        } else {
            self.drain(ctx);
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
                self.metrics.restarts += 1;
                if backoff.is_zero() {
                    self.resume(ctx);
                } else {
                    let sleep = fut::wrap_future::<_, Self>(tokio::time::sleep(backoff));
                    ctx.wait(sleep.map(|_, act, ctx| act.resume(ctx)));
                }
            }
            Decision::Restart { attempt, backoff } => {
                self.attempt = attempt;
                self.metrics.restarts += 1;
                if backoff.is_zero() {
                    self.resume(ctx);
                } else {
                    let sleep = fut::wrap_future::<_, Self>(tokio::time::sleep(backoff));
                    ctx.wait(sleep.map(|_, act, ctx| act.resume(ctx)));
                }
            }
        }
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Running) {
            return;
        }
        tracing::info!(chain = %self.chain_name, subtask = self.task.subtask, attempt = self.attempt, "subtask restarted");
        self.job.do_send(TaskResumed { task: self.task });
        self.begin(ctx);
    }

    /// End of all input: close the chain's hooks, queue end-of-input everywhere, drain.
    fn finish_input(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Draining) {
            return;
        }
        let closed = match &mut self.head {
            Some(TaskChain::Source(s)) => s.close(&mut self.cx),
            Some(TaskChain::Input(i)) => i.close(&mut self.cx),
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

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        match &mut self.head {
            Some(TaskChain::Source(s)) => s.flush(&mut self.cx),
            Some(TaskChain::Input(i)) => i.flush(&mut self.cx),
            None => {}
        }
        self.drain(ctx);
    }

    /// Fires armed chaos faults whose record count has been reached (one at a time).
    fn fire_armed(&mut self) {
        while self.cx.inject.is_none() {
            match self.armed.last() {
                Some(&(after, kind)) if self.metrics.records_in >= after => {
                    self.armed.pop();
                    match kind {
                        PlannedKind::Panic => self.cx.inject = Some(Fault::Panic),
                        PlannedKind::Error => self.cx.inject = Some(Fault::Error),
                        PlannedKind::Stop => self.job.do_send(StopDue { task: self.task }),
                        PlannedKind::StopWorker => self.job.do_send(StopDue {
                            task: TaskId {
                                chain: usize::MAX,
                                subtask: 0,
                            },
                        }),
                    }
                }
                _ => break,
            }
        }
    }

    fn run_batch(&mut self, mut r: Retry, ctx: &mut Context<Self>) {
        self.fire_armed();
        let Some(TaskChain::Input(input)) = &mut self.head else {
            return self.report_fatal(internal(
                &self.chain_name,
                "a source subtask received a batch",
            ));
        };
        let result = input.process(&r.payload, &r.skip, &mut self.cx);
        match result {
            Ok(n) => {
                self.note_first_record();
                self.metrics.batches_in += 1;
                self.metrics.records_in += (n - r.skip.len().min(n)) as u64;
                self.drain(ctx);
            }
            Err(failure) => {
                let mut f = self.stage_failure(failure.error);
                if !f.injected && failure.index < r.len {
                    self.count_poison(&mut r, failure.index, &mut f);
                }
                self.retry = Some(r);
                self.fail(f, ctx);
            }
        }
    }

    /// Counts a failure of the record at `index`; past the policy's attempts it is poison.
    fn count_poison(&mut self, r: &mut Retry, index: usize, f: &mut Failure) {
        if r.fail_index == index {
            r.fail_count += 1;
        } else {
            r.fail_index = index;
            r.fail_count = 1;
        }
        let policy = self.plan.config().poison;
        if r.fail_count < policy.max_attempts {
            return;
        }
        match policy.action {
            PoisonAction::FailJob => f.poison_attempts = Some(r.fail_count),
            PoisonAction::DeadLetter => {
                let record = match &self.head {
                    Some(TaskChain::Input(i)) => i.encode_record(&r.payload, index),
                    _ => None,
                };
                self.job.do_send(DeadLettered {
                    letter: DeadLetter {
                        operator: f.operator.clone(),
                        subtask: self.task.subtask,
                        cause: f.cause.to_string(),
                        attempts: r.fail_count,
                        record: record.unwrap_or_default(),
                    },
                });
                r.skip.push(index);
                r.fail_index = usize::MAX;
                r.fail_count = 0;
            }
        }
    }

    /// Asks the source for one batch, then yields so other actors on the thread run.
    fn produce(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        self.fire_armed();
        let skip = self.source_poison.as_ref().and_then(|p| p.skip);
        let Some(TaskChain::Source(source)) = &mut self.head else {
            return;
        };
        let produced = source.produce(&mut self.cx, skip).and_then(|p| {
            let pos = source.position().map_err(|error| BatchFailure {
                error,
                index: usize::MAX,
            })?;
            Ok((p, pos))
        });
        let status = match produced {
            Ok((p, pos)) => {
                if p.emitted > 0 {
                    self.note_first_record();
                }
                self.metrics.records_in += p.emitted;
                *self.position.lock().unwrap_or_else(|e| e.into_inner()) = pos;
                if let Some(record) = p.skipped {
                    self.dead_letter_source_record(record);
                }
                p.status
            }
            Err(failure) => {
                let mut f = self.stage_failure(failure.error);
                if !f.injected && failure.index != usize::MAX {
                    self.count_source_poison(failure.index as u64, &mut f);
                }
                return self.fail(f, ctx);
            }
        };
        match status {
            SourceStatus::Finished => self.finish_input(ctx),
            SourceStatus::More => {
                self.drain(ctx);
                ctx.spawn(
                    fut::wrap_future::<_, Self>(tokio::task::yield_now())
                        .map(|_, act, ctx| act.produce(ctx)),
                );
            }
            SourceStatus::Idle => {
                self.drain(ctx);
                ctx.run_later(IDLE_SOURCE_PAUSE, |act, ctx| act.produce(ctx));
            }
        }
    }

    /// Counts a failure of the record a source emitted at `index` of the `produce` call that
    /// starts at the current position; past the policy's attempts it is poison.
    fn count_source_poison(&mut self, index: u64, f: &mut Failure) {
        let at = self
            .position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let p = self.source_poison.get_or_insert_with(|| SourcePoison {
            at: at.clone(),
            index,
            count: 0,
            skip: None,
            cause: String::new(),
            operator: String::new(),
        });
        if p.at != at || p.index != index {
            *p = SourcePoison {
                at,
                index,
                count: 0,
                skip: None,
                cause: String::new(),
                operator: String::new(),
            };
        }
        p.count += 1;
        let policy = self.plan.config().poison;
        if p.count < policy.max_attempts {
            return;
        }
        match policy.action {
            PoisonAction::FailJob => f.poison_attempts = Some(p.count),
            PoisonAction::DeadLetter => {
                p.skip = Some(index);
                p.cause = f.cause.to_string();
                p.operator = f.operator.clone();
            }
        }
    }

    fn dead_letter_source_record(&mut self, record: Vec<u8>) {
        if let Some(p) = self.source_poison.take() {
            self.job.do_send(DeadLettered {
                letter: DeadLetter {
                    operator: p.operator,
                    subtask: self.task.subtask,
                    cause: p.cause,
                    attempts: p.count,
                    record,
                },
            });
        }
    }

    /// Sends queued messages while credits last; waits for a credit when a channel runs out.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.paused || matches!(self.state, Lifecycle::Failed | Lifecycle::Recovering) {
            return;
        }
        // Send what every channel has credit for, then wait for the first one that ran out
        // (a blocked channel must not hold back a barrier queued for another).
        let mut blocked = None;
        for i in 0..self.outs.len() {
            if let Some(b) = self.drain_channel(i) {
                blocked.get_or_insert(b);
            }
        }
        match blocked {
            Some(Blocked::Credit(wait)) => {
                self.metrics.credit_stalls += 1;
                let wait = async move { wait.acquire_owned().await.ok() };
                ctx.wait(fut::wrap_future::<_, Self>(wait).map(|permit, act, ctx| {
                    drop(permit);
                    act.drain(ctx);
                }));
                return;
            }
            Some(Blocked::Full) => {
                // The receiver's mailbox still holds messages of an old epoch; retry shortly.
                let pause = fut::wrap_future::<_, Self>(tokio::time::sleep(FULL_MAILBOX_PAUSE));
                ctx.wait(pause.map(|_, act, ctx| act.drain(ctx)));
                return;
            }
            None => {}
        }
        let idle =
            self.outs.iter().all(|o| !o.parked) && self.cx.queues.iter().all(|q| q.is_empty());
        if self.state == Lifecycle::Draining && idle && self.become_(Lifecycle::Done) {
            self.metrics.records_out = self.cx.records_out;
            self.job.do_send(TaskFinished {
                task: self.task,
                metrics: self.metrics.clone(),
            });
        }
    }

    /// Sends what channel `i` has credit for; says why it stopped if it could not send all.
    fn drain_channel(&mut self, i: usize) -> Option<Blocked> {
        let out = &mut self.outs[i];
        while !out.parked && !self.cx.queues[i].is_empty() {
            let Ok(permit) = out.credits.clone().try_acquire_owned() else {
                return Some(Blocked::Credit(out.credits.clone()));
            };
            let Some(ev) = self.cx.queues[i].pop_front() else {
                break;
            };
            let (event, batch) = match ev {
                OutEvent::Batch { payload, len } => (Event::Batch { payload, len }, true),
                OutEvent::Barrier(n) => (Event::Barrier(n), false),
                OutEvent::EndOfInput => (Event::EndOfInput, false),
            };
            let msg_kind = match event {
                Event::EndOfInput => MsgKind::End,
                _ => MsgKind::Other,
            };
            let msg = DataMessage {
                epoch: self.epoch,
                channel: out.in_channel,
                event,
                credit: Some(Credit::Local(permit)),
            };
            match out.to.try_send(msg) {
                Ok(()) if batch => self.metrics.batches_out += 1,
                Ok(()) => out.eoi_sent |= matches!(msg_kind, MsgKind::End),
                Err(SendError::Full(msg)) => {
                    let back = unsent(msg.event);
                    self.cx.queues[i].push_front(back);
                    return Some(Blocked::Full);
                }
                Err(SendError::Closed(msg)) => {
                    // The receiver is gone (its worker stopped): keep the message and wait for
                    // a re-wire.
                    let back = unsent(msg.event);
                    self.cx.queues[i].push_front(back);
                    out.parked = true;
                    tracing::warn!(chain = %self.chain_name, subtask = self.task.subtask, target = ?out.target, "receiver gone; holding its channel until it is re-created");
                }
            }
        }
        None
    }

    fn close_inputs(&mut self, channels: &[usize], ctx: &mut Context<Self>) {
        for &c in channels {
            if let Some(closed) = self.closed.get_mut(c) {
                if !*closed {
                    *closed = true;
                    self.open_inputs -= 1;
                }
            }
        }
        self.try_complete_alignment(ctx);
        if self.open_inputs == 0 && self.state == Lifecycle::Running && !self.is_source() {
            self.finish_input(ctx);
        }
    }

    fn rewire(&mut self, target: TaskId, to: Recipient<DataMessage>, ctx: &mut Context<Self>) {
        let credits = self.plan.config().credits;
        for (i, out) in self.outs.iter_mut().enumerate() {
            if out.target != target {
                continue;
            }
            out.to = to.clone();
            out.credits = Arc::new(Semaphore::new(credits));
            out.parked = false;
            let queued_eoi = self.cx.queues[i]
                .iter()
                .any(|e| matches!(e, OutEvent::EndOfInput));
            if out.eoi_sent && !queued_eoi {
                // The lost receiver had our end-of-input; its successor needs it too.
                self.cx.queues[i].push_back(OutEvent::EndOfInput);
            }
        }
        if self.state == Lifecycle::Done {
            // Late re-wire after we finished: send the repeated end-of-input directly.
            for i in 0..self.outs.len() {
                let _ = self.drain_channel(i);
            }
        } else {
            self.drain(ctx);
        }
    }
}

/// A message that could not be sent, back into the output queue's form.
fn unsent(event: Event) -> OutEvent {
    match event {
        Event::Batch { payload, len } => OutEvent::Batch { payload, len },
        Event::Barrier(n) => OutEvent::Barrier(n),
        Event::EndOfInput => OutEvent::EndOfInput,
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
            self.job.do_send(TaskLost { task: self.task });
        }
    }
}

impl Handler<DataMessage> for SubtaskActor {
    type Result = ();

    fn handle(&mut self, msg: DataMessage, ctx: &mut Context<Self>) {
        self.on_data(msg, ctx);
        // A message's credit drops with it: the sender gets it back.
    }
}

impl Handler<Control> for SubtaskActor {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) {
        match msg {
            Control::Inject(fault) if self.state == Lifecycle::Running => {
                self.cx.inject = Some(fault)
            }
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
            Control::Rewire { target, to } => self.rewire(target, to, ctx),
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
