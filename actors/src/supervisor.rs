//! The job supervisor: one actor per job, the root of the supervision tree.
//!
//! ```text
//! JobSupervisor            restart strategy, intensity limit, backoff, re-creation
//!  └─ actix Supervisor     one per subtask: keeps the address and mailbox across restarts
//!      └─ SubtaskActor     the chain of operators of one subtask
//! ```
//!
//! A subtask that fails reports a [`TaskFailed`] and waits for a [`Decision`]. The supervisor
//! applies the strategy: `Never` fails the job; otherwise, past `max_restarts` within `window`
//! the failure escalates to [`JobError::RestartLimit`]; else the subtask restarts after an
//! exponential backoff with jitter (and with `OneForAll` every other running subtask restarts
//! too). A subtask whose worker thread stopped ([`TaskLost`]) is re-created on a live worker
//! and its upstream subtasks are re-wired to it.

use crate::chaos::{ChaosCommand, ProgressCell};
use crate::error::RecoveryEvent;
use crate::error::{JobError, JobResult, RestartEvent};
use crate::host::{LocalHost, RemoteTasks, RestoreSpec, SpawnSpec};
use crate::message::ResetOrder;
use crate::message::ToJob;
use crate::message::{
    Control, DeadLettered, Decision, StopDue, SubtaskMetrics, TaskFailed, TaskFinished, TaskLost,
    TaskResumed,
};
use crate::protocol::checkpoints::Coordinator;
use crate::protocol::restarts::{Escalation, Restarts, Verdict};
use crate::rng::Rng;
use crate::runtime::{NodeLost, Outcome};
use crate::subtask::PositionSlot;
use actix::prelude::*;
use riffle_framework::{ExecutionPlan, TaskId};
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::oneshot;

/// A recovery of the whole job in progress (checkpointing on).
pub(crate) struct Recovery {
    pub epoch: u64,
    pub started: Instant,
    /// Subtasks that have not yet reported `ResetDone`.
    pub waiting: HashSet<TaskId>,
    pub go_at: Option<Instant>,
    pub restore_time: Option<std::time::Duration>,
    /// The checkpoint restored and the backoff used, for subtasks joining late.
    pub checkpoint: Option<Arc<riffle_framework::Checkpoint>>,
    pub backoff: std::time::Duration,
}

pub(crate) struct JobSupervisor {
    pub plan: Arc<ExecutionPlan>,
    pub coord: Option<Coordinator>,
    pub epoch: u64,
    pub recovery: Option<Recovery>,
    pub workers: Vec<ArbiterHandle>,
    pub alive: Vec<bool>,
    /// Where each subtask's control messages go (its actor, or a proxy to another node).
    pub addrs: HashMap<TaskId, Recipient<Control>>,
    /// Starts subtasks in this process.
    pub host: LocalHost,
    /// Where subtasks on other nodes run (a distributed job).
    pub remote: Option<Arc<dyn RemoteTasks>>,
    pub placement: HashMap<TaskId, usize>,
    pub positions: HashMap<TaskId, PositionSlot>,
    pub finished: HashMap<TaskId, SubtaskMetrics>,
    pub total: usize,
    /// Restart supervision: the intensity window, backoff and attempts.
    pub restarts: Restarts,
    pub recreated: HashMap<TaskId, u32>,
    pub result: JobResult,
    pub rng: Rng,
    pub started: Instant,
    pub report: Option<mpsc::Sender<Outcome>>,
    pub progress: ProgressCell,
    /// A rescale in place in progress.
    pub rescale: Option<crate::rescale::Rescaling>,
    /// The plan's version: rescales in place so far.
    pub plan_version: u64,
    /// Those rescales, as (operator, parallelism).
    pub steps: Vec<(String, usize)>,
}

impl JobSupervisor {
    pub(crate) fn concluded(&self) -> bool {
        self.report.is_none()
    }

    pub(crate) fn recovery_in_progress(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.go_at.is_none())
    }

    /// Every subtask finished (and committed): report the result.
    pub(crate) fn conclude_success(&mut self) {
        if self.concluded() {
            return;
        }
        let mut subtasks: Vec<_> = self.finished.iter().map(|(t, m)| (*t, m.clone())).collect();
        subtasks.sort_by_key(|(t, _)| *t);
        let mut result = std::mem::take(&mut self.result);
        result.elapsed = self.started.elapsed();
        result.subtasks = subtasks.into_iter().map(|(_, m)| m).collect();
        self.conclude(Ok(result));
    }

    /// Restarts the whole job from the latest completed checkpoint in a new epoch.
    fn recover(
        &mut self,
        task: TaskId,
        cause: String,
        reply: Option<oneshot::Sender<Decision>>,
        lost: &[TaskId],
    ) -> Result<(), u32> {
        let consecutive = self.restarts.admit(task, Instant::now())?;
        let backoff = self.restarts.backoff(consecutive);
        self.epoch += 1;
        let epoch = self.epoch;
        self.progress.update(|p| {
            p.epoch = epoch;
            p.draining.iter_mut().for_each(|d| *d = false);
        });
        let checkpoint = match &mut self.coord {
            Some(c) => {
                c.abort_pending("recovery");
                c.draining.clear();
                c.uncommitted.clear();
                c.last_completed.clone()
            }
            None => None,
        };
        let last_completed = checkpoint.as_ref().map(|c| c.id);
        self.finished.clear();
        self.rescale_on_recovery();
        let tasks = self.plan.tasks();
        // Downstream first, so that every re-created subtask finds its targets.
        let mut order = lost.to_vec();
        order.sort_unstable_by(|a, b| b.cmp(a));
        for t in order {
            if !self.recreate_for_recovery(t, epoch, checkpoint.as_deref()) {
                return Ok(());
            }
        }
        self.recovery = Some(Recovery {
            epoch,
            started: Instant::now(),
            waiting: tasks.iter().copied().collect(),
            go_at: None,
            restore_time: None,
            checkpoint: checkpoint.clone(),
            backoff,
        });
        self.result.recoveries.push(RecoveryEvent {
            epoch,
            cause: cause.clone(),
            restored_from: last_completed,
            restore_time: None,
            started_at: std::time::SystemTime::now(),
        });
        tracing::warn!(epoch, ?last_completed, %cause, "recovering the job from its latest checkpoint");
        let mut reply = reply;
        for t in tasks {
            if lost.contains(&t) {
                continue;
            }
            let order = ResetOrder {
                epoch,
                snapshot: checkpoint
                    .as_ref()
                    .and_then(|c| c.task(t.chain, t.subtask).cloned()),
                last_completed,
                attempt: self.restarts.next_attempt(t),
                backoff,
            };
            if t == task && lost.is_empty() {
                if let Some(r) = reply.take() {
                    let _ = r.send(Decision::Reset(Box::new(order)));
                }
            } else if let Some(a) = self.addrs.get(&t) {
                a.do_send(Control::Reset(Box::new(order)));
            }
        }
        self.result.restarts.push(RestartEvent {
            chain: self.chain_name(task),
            subtask: task.subtask,
            attempt: self.restarts.attempt(task),
            cause,
            injected: false,
            backoff,
            also_restarted: self.total.saturating_sub(1),
        });
        Ok(())
    }

    /// Sends a subtask that failed in an older epoch the current recovery's order.
    fn join_recovery(&mut self, task: TaskId, reply: Option<oneshot::Sender<Decision>>) {
        let Some(r) = &self.recovery else { return };
        let (checkpoint, backoff) = (r.checkpoint.clone(), r.backoff);
        let order = ResetOrder {
            epoch: self.epoch,
            snapshot: checkpoint
                .as_ref()
                .and_then(|c| c.task(task.chain, task.subtask).cloned()),
            last_completed: checkpoint.as_ref().map(|c| c.id),
            attempt: self.restarts.next_attempt(task),
            backoff,
        };
        if let Some(r) = reply {
            let _ = r.send(Decision::Reset(Box::new(order)));
        }
    }

    /// Re-creates a lost subtask, paused, restored from `checkpoint`; false if no worker is
    /// left (the job failed).
    fn recreate_for_recovery(
        &mut self,
        task: TaskId,
        epoch: u64,
        checkpoint: Option<&riffle_framework::Checkpoint>,
    ) -> bool {
        let Some(worker) = self.live_worker(task) else {
            self.conclude(Err(JobError::NoWorkers));
            return false;
        };
        let spec = SpawnSpec {
            epoch,
            attempt: self.restarts.next_attempt(task),
            paused: true,
            closed_inputs: Vec::new(),
            restore: Some(RestoreSpec {
                snapshot: checkpoint.and_then(|c| c.task(task.chain, task.subtask).cloned()),
                last_completed: checkpoint.map(|c| c.id),
            }),
            plan: None,
        };
        self.start_task(task, spec, worker);
        *self.recreated.entry(task).or_default() += 1;
        self.result.recreated += 1;
        tracing::warn!(chain = %self.chain_name(task), subtask = task.subtask, worker, "subtask re-created");
        true
    }

    /// Starts `task` where it is placed — on local worker `worker`, or on the node the cluster
    /// layer names — and records its control address.
    pub(crate) fn start_task(&mut self, task: TaskId, mut spec: SpawnSpec, worker: usize) {
        if self.plan_version > 0 {
            // The subtask belongs to the plan after rescales in place.
            spec.plan = Some((self.plan_version, self.steps.clone()));
        }
        let node = self.remote.as_ref().and_then(|r| r.node_of(task));
        let control = match (node, &self.remote) {
            (Some(node), Some(remote)) => {
                self.host.directory.remove(task);
                self.placement.remove(&task);
                remote.spawn(&node, task, spec)
            }
            _ => {
                let slot = self.positions.entry(task).or_default().clone();
                self.placement.insert(task, worker);
                self.host
                    .spawn_with(task, &self.workers[worker], spec, slot)
                    .1
            }
        };
        self.addrs.insert(task, control);
    }

    fn conclude(&mut self, outcome: Outcome) {
        self.rescale_on_end();
        if let Some(tx) = self.report.take() {
            match &outcome {
                Ok(r) => {
                    tracing::info!(elapsed = ?r.elapsed, restarts = r.restarts.len(), "job finished")
                }
                Err(e) => tracing::error!(error = %e, "job failed"),
            }
            let _ = tx.send(outcome);
        }
        self.progress.update(|p| p.ended = true);
        System::current().stop();
    }

    /// Whether `task` is part of the current plan (a rescale may have retired it).
    pub(crate) fn in_plan(&self, task: TaskId) -> bool {
        task.chain < self.plan.chain_count() && task.subtask < self.plan.parallelism(task.chain)
    }

    fn chain_name(&self, task: TaskId) -> String {
        self.plan.chain_name(task.chain).to_string()
    }

    /// Past the intensity limit: the job fails with the root cause.
    fn escalate(
        &mut self,
        task: TaskId,
        operator: String,
        cause: riffle_framework::FailureCause,
        restarts: u32,
    ) {
        let backoffs = self.result.restarts.iter().map(|r| r.backoff).collect();
        self.conclude(Err(JobError::RestartLimit {
            chain: self.chain_name(task),
            subtask: task.subtask,
            operator,
            cause,
            restarts,
            backoffs,
        }));
    }

    fn running_tasks(&self) -> Vec<TaskId> {
        self.plan
            .tasks()
            .into_iter()
            .filter(|t| !self.finished.contains_key(t))
            .collect()
    }

    pub(crate) fn live_worker(&self, task: TaskId) -> Option<usize> {
        let live: Vec<usize> = (0..self.workers.len()).filter(|&i| self.alive[i]).collect();
        if live.is_empty() {
            return None;
        }
        Some(live[(task.chain * 31 + task.subtask) % live.len()])
    }

    /// Re-creates a lost subtask on a live worker and re-wires its upstream to it.
    fn recreate(&mut self, task: TaskId) {
        let Some(worker) = self.live_worker(task) else {
            return self.conclude(Err(JobError::NoWorkers));
        };
        let closed: Vec<usize> = self
            .plan
            .in_channels(task)
            .into_iter()
            .filter(|(up, _)| self.finished.contains_key(up))
            .map(|(_, ch)| ch)
            .collect();
        let spec = SpawnSpec {
            epoch: self.epoch,
            attempt: self.restarts.next_attempt(task),
            paused: false,
            closed_inputs: closed,
            restore: None,
            plan: None,
        };
        self.start_task(task, spec, worker);
        *self.recreated.entry(task).or_default() += 1;
        self.result.recreated += 1;
        for (up, _) in self.plan.in_channels(task) {
            if self.finished.contains_key(&up) {
                continue;
            }
            if let Some(a) = self.addrs.get(&up) {
                a.do_send(Control::Rewire { target: task });
            }
        }
        tracing::warn!(chain = %self.chain_name(task), subtask = task.subtask, worker, "subtask re-created on another worker");
    }

    fn finish_dead_letters(&self) {
        let rest_done = self
            .plan
            .tasks()
            .into_iter()
            .filter(|t| !self.plan.after_dead_letters(t.chain))
            .all(|t| self.finished.contains_key(&t));
        if rest_done {
            self.plan.dead_letter_queue().close();
        }
    }
}

impl Actor for JobSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(every) = crate::coordinator::tick_interval(&self.plan) {
            ctx.run_interval(every, |act, _ctx| act.checkpoint_tick());
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_finished(&mut self, msg: TaskFinished, _ctx: &mut Context<Self>) {
        let task = msg.task;
        if msg.epoch < self.epoch || !self.in_plan(task) {
            // Finished before a recovery that reset it (a report that crossed the reset).
            return;
        }
        let mut metrics = msg.metrics;
        metrics.recreated = self.recreated.get(&task).copied().unwrap_or(0);
        if let Some(r) = &self.remote {
            metrics.node = r.node_of(task).unwrap_or_else(|| r.this_node());
        }
        self.finished.insert(task, metrics);
        // Without checkpoints, a receiver re-created after this task's end-of-input went to
        // its predecessor still counts the channel as open. (With checkpoints every sender
        // repeats its end-of-input in the new epoch, and this message could overtake the
        // sender's last batches on their way over another node's link.)
        for t in self.plan.out_channels(task) {
            if self.coord.is_none() && self.recreated.contains_key(&t.task) {
                if let Some(a) = self.addrs.get(&t.task) {
                    a.do_send(Control::CloseInputs(vec![t.in_channel]));
                }
            }
        }
        self.finish_dead_letters();
        if self.finished.len() == self.total && !self.concluded() {
            if self.coord.is_some() {
                self.finish_with_checkpoint();
            } else {
                self.conclude_success();
            }
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_failed(&mut self, msg: TaskFailed, _ctx: &mut Context<Self>) {
        let TaskFailed {
            task,
            epoch,
            failure,
            reply,
            ..
        } = msg;
        let abort = |reply: Option<oneshot::Sender<Decision>>| {
            if let Some(r) = reply {
                let _ = r.send(Decision::Abort);
            }
        };
        if self.concluded() || !self.in_plan(task) {
            // (A subtask a rescale retired needs no decision.)
            return abort(reply);
        }
        let chain = self.chain_name(task);
        if failure.injected {
            self.result.faults_injected += 1;
        }
        let kind = self.plan.restart_kind(task.chain);
        if let Some(e) = Restarts::triage(kind, failure.poison_attempts) {
            abort(reply);
            return self.fail_job(task, e, failure);
        }
        if self.coord.is_some() && epoch < self.epoch {
            // A newer recovery already covers this failure: join it.
            if failure.injected {
                tracing::debug!(?task, "fault fired in an epoch already being recovered");
            }
            return self.join_recovery(task, reply);
        }
        if self.coord.is_some() {
            // With checkpoints the region is the whole job: restore everything.
            let cause = format!("operator `{}` {}", failure.operator, failure.cause);
            match self.recover(task, cause, reply, &[]) {
                Ok(()) => {
                    if let Some(ev) = self.result.restarts.last_mut() {
                        ev.injected = failure.injected;
                    }
                }
                Err(restarts) => self.fail_job(task, Escalation::Limit { restarts }, failure),
            }
            return;
        }
        let running = self.running_tasks();
        let (attempt, backoff, also) =
            match self
                .restarts
                .on_failure(task, kind, None, &running, Instant::now())
            {
                Verdict::Restart {
                    attempt,
                    backoff,
                    also,
                } => (attempt, backoff, also),
                Verdict::Fail(e) => {
                    abort(reply);
                    return self.fail_job(task, e, failure);
                }
            };
        let mut restarted = 0;
        for (t, attempt) in also {
            if let Some(a) = self.addrs.get(&t) {
                a.do_send(Control::Restart { attempt, backoff });
                restarted += 1;
            }
        }
        tracing::warn!(
            chain = %chain, subtask = task.subtask, attempt, ?backoff, cause = %failure.cause,
            injected = failure.injected, also_restarted = restarted, "restarting subtask"
        );
        self.result.restarts.push(RestartEvent {
            chain,
            subtask: task.subtask,
            attempt,
            cause: format!("operator `{}` {}", failure.operator, failure.cause),
            injected: failure.injected,
            backoff,
            also_restarted: restarted,
        });
        if let Some(r) = reply {
            let _ = r.send(Decision::Restart { attempt, backoff });
        }
    }

    /// The job fails because of `task`'s `failure`, for the reason restart supervision gave.
    fn fail_job(&mut self, task: TaskId, e: Escalation, failure: crate::message::Failure) {
        let (chain, subtask) = (self.chain_name(task), task.subtask);
        let (operator, cause) = (failure.operator, failure.cause);
        match e {
            Escalation::Poison { attempts } => self.conclude(Err(JobError::PoisonRecord {
                chain,
                subtask,
                operator,
                cause,
                attempts,
            })),
            Escalation::Never => self.conclude(Err(JobError::SubtaskFailed {
                chain,
                subtask,
                operator,
                cause,
            })),
            Escalation::Limit { restarts } => self.escalate(task, operator, cause, restarts),
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_resumed(&mut self, msg: TaskResumed, _ctx: &mut Context<Self>) {
        tracing::debug!(chain = %self.chain_name(msg.task), subtask = msg.task.subtask, "subtask resumed");
        self.result.restarts_completed += 1;
    }
}

impl JobSupervisor {
    pub(crate) fn on_lost(&mut self, msg: TaskLost, _ctx: &mut Context<Self>) {
        let task = msg.task;
        if self.concluded() || self.finished.contains_key(&task) || !self.in_plan(task) {
            return;
        }
        if let Some(&w) = self.placement.get(&task) {
            self.alive[w] = false;
        }
        if self.coord.is_some() {
            let cause = format!(
                "subtask {} of `{}` lost its worker thread",
                task.subtask,
                self.chain_name(task)
            );
            if let Err(restarts) = self.recover(task, cause, None, &[task]) {
                let chain = self.chain_name(task);
                self.escalate(
                    task,
                    chain,
                    riffle_framework::FailureCause::Stopped,
                    restarts,
                );
            }
            return;
        }
        if let Err(restarts) = self.restarts.admit(task, Instant::now()) {
            let chain = self.chain_name(task);
            return self.escalate(
                task,
                chain,
                riffle_framework::FailureCause::Stopped,
                restarts,
            );
        }
        self.recreate(task);
    }
}

impl JobSupervisor {
    pub(crate) fn on_dead_lettered(&mut self, msg: DeadLettered, _ctx: &mut Context<Self>) {
        tracing::warn!(operator = %msg.letter.operator, subtask = msg.letter.subtask, cause = %msg.letter.cause, "record dead-lettered");
        self.plan.dead_letter_queue().push(msg.letter.clone());
        self.result.dead_letters.push(msg.letter);
    }
}

impl JobSupervisor {
    pub(crate) fn on_stop_due(&mut self, msg: StopDue, _ctx: &mut Context<Self>) {
        if msg.task.chain == usize::MAX {
            // A planned worker stop: a random live worker, never the last one.
            let live: Vec<usize> = (0..self.workers.len()).filter(|&i| self.alive[i]).collect();
            if live.len() > 1 {
                let w = live[self.rng.below(live.len() as u64) as usize];
                tracing::warn!(worker = w, "chaos: stopping worker thread");
                self.alive[w] = false;
                self.result.workers_stopped += 1;
                self.workers[w].stop();
            }
            return;
        }
        if let Some(a) = self.addrs.get(&msg.task) {
            a.do_send(Control::Stop);
        }
    }
}

impl Handler<ChaosCommand> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: ChaosCommand, _ctx: &mut Context<Self>) {
        let tasks = self.plan.tasks();
        match msg {
            ChaosCommand::Control { task, control } => {
                if let Some(a) = tasks.get(task).and_then(|t| self.addrs.get(t)) {
                    a.do_send(control);
                }
            }
            ChaosCommand::StopWorker(i) => {
                // Worker `i`, or another live one if it is already gone; never the last.
                let live: Vec<usize> = (0..self.workers.len()).filter(|&w| self.alive[w]).collect();
                if live.len() > 1 {
                    let w = if live.contains(&i) {
                        i
                    } else {
                        live[i % live.len()]
                    };
                    tracing::warn!(worker = w, "chaos: stopping worker thread");
                    self.alive[w] = false;
                    self.result.workers_stopped += 1;
                    self.workers[w].stop();
                }
            }
        }
    }
}

impl Handler<ToJob> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: ToJob, ctx: &mut Context<Self>) {
        match msg {
            ToJob::Finished(m) => self.on_finished(m, ctx),
            ToJob::Failed(m) => self.on_failed(m, ctx),
            ToJob::Resumed(m) => self.on_resumed(m, ctx),
            ToJob::Lost(m) => self.on_lost(m, ctx),
            ToJob::DeadLettered(m) => self.on_dead_lettered(m, ctx),
            ToJob::StopDue(m) => self.on_stop_due(m, ctx),
            ToJob::Ack(m) => self.on_ack(m, ctx),
            ToJob::Draining(m) => self.on_draining(m, ctx),
            ToJob::ResetDone(m) => self.on_reset_done(m, ctx),
            ToJob::FirstRecord(m) => self.on_first_record(m, ctx),
            ToJob::Committed(m) => self.on_committed(m, ctx),
            ToJob::Replanned(m) => self.on_replanned(m, ctx),
        }
    }
}

impl Handler<NodeLost> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: NodeLost, _ctx: &mut Context<Self>) {
        let lost: Vec<TaskId> = msg
            .tasks
            .into_iter()
            .filter(|t| !self.concluded() && self.addrs.contains_key(t))
            .collect();
        let Some(&first) = lost.first() else { return };
        self.result.nodes_lost.push(msg.node.clone());
        let cause = format!("node `{}` was lost with {} subtasks", msg.node, lost.len());
        if self.coord.is_none() {
            // Without checkpoints there is nothing to restore lost state from.
            return self.conclude(Err(JobError::NodeLost { node: msg.node }));
        }
        if let Err(restarts) = self.recover(first, cause, None, &lost) {
            let chain = self.chain_name(first);
            self.escalate(
                first,
                chain,
                riffle_framework::FailureCause::Stopped,
                restarts,
            );
        }
    }
}
