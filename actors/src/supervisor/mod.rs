//! The job supervisor: one actor per job, the root of the supervision tree.
//!
//! ```text
//! JobSupervisor            restart strategy, intensity limit, backoff, re-creation
//!  └─ actix Supervisor     one per subtask: keeps the address and mailbox across restarts
//!      └─ SubtaskActor     the chain of operators of one subtask
//! ```
//!
//! The supervisor is a thin actor around the job's protocols, each a plain state machine in
//! [`crate::protocol`]: it feeds them the reports of the subtasks ([`ToJob`]) and the
//! requests from outside ([`crate::requests`]), and carries out what they decide. Each
//! protocol's side of that has its own file:
//!
//! | file | carries out | machine |
//! |---|---|---|
//! | `restarting.rs` | restarts and re-creation without checkpoints | [`crate::protocol::restarts`] |
//! | `recovering.rs` | recovery of the whole job from a checkpoint, node loss | [`crate::protocol::recovery`] |
//! | `checkpointing.rs` | triggers, saving checkpoints, commits, savepoints | [`crate::protocol::checkpoints`] |
//! | `rescaling.rs` | rescale in place: hold, switch plans, resume | [`crate::protocol::rescale`] |
//!
//! This file holds the state they share (the plan, where each subtask runs, the result) and
//! routes every message to its protocol. A new protocol gets a machine in `protocol/` and a
//! file here; the files here do not import each other.

use crate::error::{JobResult, Outcome};
use crate::host::{LocalHost, RemoteTasks, RestoreSpec, SpawnSpec};
use crate::message::{
    Control, DeadLettered, StopDue, SubtaskMetrics, TaskFinished, TaskResumed, ToJob,
};
use crate::protocol::checkpoints::Coordinator;
use crate::protocol::recovery::Recoveries;
use crate::protocol::rescale::{InPlace, InPlaceError, Rescale};
use crate::protocol::restarts::Restarts;
use crate::requests::ChaosCommand;
use crate::rng::Rng;
use crate::stats::ProgressCell;
use crate::subtask::PositionSlot;
use actix::prelude::*;
use riffle_framework::{Checkpoint, ExecutionPlan, TaskId};
use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod checkpointing;
mod recovering;
mod rescaling;
mod restarting;

/// The job supervisor actor.
pub(crate) struct JobSupervisor {
    pub plan: Arc<ExecutionPlan>,
    /// Checkpoint coordination (checkpointing on).
    pub coord: Option<Coordinator>,
    /// Epochs and the recovery under way.
    pub recoveries: Recoveries,
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
    pub rescale: Option<Rescaling>,
    /// The plan's version: rescales in place so far.
    pub plan_version: u64,
    /// Those rescales, as (operator, parallelism).
    pub steps: Vec<(String, usize)>,
    /// The job's metric handles.
    pub telemetry: crate::telemetry::JobTelemetry,
    /// Its completed checkpoints, as the REST API shows them.
    pub history: crate::stats::CheckpointHistory,
}

/// What a job supervisor starts with.
pub(crate) struct Setup {
    pub plan: Arc<ExecutionPlan>,
    pub coord: Option<Coordinator>,
    pub workers: Vec<ArbiterHandle>,
    pub host: LocalHost,
    pub remote: Option<Arc<dyn RemoteTasks>>,
    pub report: mpsc::Sender<Outcome>,
    pub progress: ProgressCell,
    pub history: crate::stats::CheckpointHistory,
}

/// A rescale in place in progress: its machine, the plan it moves to, who waits for it.
pub(crate) struct Rescaling {
    machine: Rescale,
    plan: Arc<ExecutionPlan>,
    reply: oneshot::Sender<Result<InPlace, InPlaceError>>,
}

impl JobSupervisor {
    pub(crate) fn new(s: Setup) -> Self {
        let cfg = s.plan.config();
        let telemetry = crate::telemetry::JobTelemetry::new(&s.plan);
        JobSupervisor {
            alive: vec![true; s.workers.len()],
            // Worker picks draw from their own stream; backoff jitter from the restarts'.
            rng: Rng::new(cfg.seed ^ 0x5EED_F0F0_0000_0001),
            total: s.plan.tasks().len(),
            restarts: Restarts::new(cfg.restart, cfg.seed),
            coord: s.coord,
            recoveries: Recoveries::new(cfg.ready_timeout),
            plan: s.plan,
            workers: s.workers,
            host: s.host,
            remote: s.remote,
            addrs: HashMap::new(),
            placement: HashMap::new(),
            positions: HashMap::new(),
            finished: HashMap::new(),
            recreated: HashMap::new(),
            result: JobResult::default(),
            started: Instant::now(),
            report: Some(s.report),
            progress: s.progress,
            rescale: None,
            plan_version: 0,
            steps: Vec::new(),
            telemetry,
            history: s.history,
        }
    }

    /// Starts every subtask, sinks first so that each is created knowing its downstream
    /// addresses, restored from `restored` (with `checkpointing`, every subtask restores,
    /// if only to learn the last completed checkpoint). `paused` (a distributed job): every
    /// subtask reports ready before any runs.
    pub(crate) fn start_all(
        &mut self,
        restored: Option<Arc<Checkpoint>>,
        checkpointing: bool,
        paused: bool,
    ) {
        let tasks = self.plan.tasks();
        let last_completed = restored.as_ref().map(|c| c.id);
        for (i, &task) in tasks.iter().enumerate().rev() {
            let snapshot = restored
                .as_ref()
                .and_then(|c| c.task(task.chain, task.subtask).cloned());
            let restore = (checkpointing || snapshot.is_some()).then_some(RestoreSpec {
                snapshot,
                last_completed,
            });
            let spec = SpawnSpec {
                epoch: 0,
                attempt: 0,
                paused,
                closed_inputs: Vec::new(),
                restore,
                plan: None,
            };
            self.start_task(task, spec, i % self.workers.len());
        }
        if paused {
            self.recoveries
                .wait_for(Instant::now(), tasks, restored, Duration::ZERO);
        }
    }

    pub(crate) fn concluded(&self) -> bool {
        self.report.is_none()
    }

    /// The current epoch (increases with every recovery).
    pub(crate) fn epoch(&self) -> u64 {
        self.recoveries.epoch()
    }

    pub(crate) fn recovery_in_progress(&self) -> bool {
        self.recoveries.in_progress()
    }

    /// Whether this process may still coordinate the job (see
    /// [`RemoteTasks::authority`]; always, for a job in one process).
    pub(crate) fn check_authority(&self) -> Result<(), crate::ClusterError> {
        self.remote.as_ref().map_or(Ok(()), |r| r.authority())
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
        let outcome_failure = outcome.as_ref().err().map(ToString::to_string);
        if let Some(tx) = self.report.take() {
            match &outcome {
                Ok(r) => {
                    tracing::info!(elapsed = ?r.elapsed, restarts = r.restarts.len(), "job finished")
                }
                Err(e) => tracing::error!(error = %e, "job failed"),
            }
            let _ = tx.send(outcome);
        }
        let failure = outcome_failure;
        self.progress.update(|p| {
            p.ended = true;
            p.failure = failure;
        });
        System::current().stop();
    }

    /// Whether `task` is part of the current plan (a rescale may have retired it).
    pub(crate) fn in_plan(&self, task: TaskId) -> bool {
        task.chain < self.plan.chain_count() && task.subtask < self.plan.parallelism(task.chain)
    }

    fn chain_name(&self, task: TaskId) -> String {
        self.plan.chain_name(task.chain).to_string()
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
        self.start_checkpoint_ticks(ctx);
        self.watch_ready_deadline(ctx);
    }
}

impl JobSupervisor {
    pub(crate) fn on_finished(&mut self, msg: TaskFinished, _ctx: &mut Context<Self>) {
        let task = msg.task;
        if msg.epoch < self.epoch() || !self.in_plan(task) {
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
    pub(crate) fn on_resumed(&mut self, msg: TaskResumed, _ctx: &mut Context<Self>) {
        tracing::debug!(chain = %self.chain_name(msg.task), subtask = msg.task.subtask, "subtask resumed");
        self.result.restarts_completed += 1;
    }
}

impl JobSupervisor {
    pub(crate) fn on_dead_lettered(&mut self, msg: DeadLettered, _ctx: &mut Context<Self>) {
        tracing::warn!(operator = %msg.letter.operator, subtask = msg.letter.subtask, cause = %msg.letter.cause, "record dead-lettered");
        self.plan.dead_letter_queue().push(msg.letter.clone());
        self.telemetry.dead_letters.increment(1);
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
