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

use crate::chaos::ChaosCommand;
use crate::error::{JobError, JobResult, RestartEvent};
use crate::message::{
    Control, DeadLettered, Decision, StopDue, SubtaskMetrics, TaskFailed, TaskFinished, TaskLost,
    TaskResumed,
};
use crate::runtime::{spawn_subtask, Outcome, Rng};
use crate::subtask::{PositionSlot, SubtaskActor};
use actix::prelude::*;
use riffle_framework::{ExecutionPlan, RestartKind, TaskId};
use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc};
use std::time::Instant;

pub(crate) struct JobSupervisor {
    pub plan: Arc<ExecutionPlan>,
    pub workers: Vec<ArbiterHandle>,
    pub alive: Vec<bool>,
    pub addrs: HashMap<TaskId, Addr<SubtaskActor>>,
    pub placement: HashMap<TaskId, usize>,
    pub positions: HashMap<TaskId, PositionSlot>,
    pub finished: HashMap<TaskId, SubtaskMetrics>,
    pub total: usize,
    pub window: VecDeque<Instant>,
    pub per_task: HashMap<TaskId, VecDeque<Instant>>,
    pub attempts: HashMap<TaskId, u32>,
    pub recreated: HashMap<TaskId, u32>,
    pub result: JobResult,
    pub rng: Rng,
    pub started: Instant,
    pub report: Option<mpsc::Sender<Outcome>>,
}

impl JobSupervisor {
    fn concluded(&self) -> bool {
        self.report.is_none()
    }

    fn conclude(&mut self, outcome: Outcome) {
        if let Some(tx) = self.report.take() {
            match &outcome {
                Ok(r) => {
                    tracing::info!(elapsed = ?r.elapsed, restarts = r.restarts.len(), "job finished")
                }
                Err(e) => tracing::error!(error = %e, "job failed"),
            }
            let _ = tx.send(outcome);
        }
        System::current().stop();
    }

    fn chain_name(&self, task: TaskId) -> String {
        self.plan.chain_name(task.chain).to_string()
    }

    /// Records a restart against the intensity limit; `Err(count)` if the limit is exceeded.
    fn admit_restart(&mut self, task: TaskId) -> Result<u32, u32> {
        let strategy = self.plan.config().restart;
        let now = Instant::now();
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) > strategy.window)
        {
            self.window.pop_front();
        }
        let count = self.window.len() as u32;
        if count >= strategy.max_restarts {
            return Err(count);
        }
        self.window.push_back(now);
        let mine = self.per_task.entry(task).or_default();
        while mine
            .front()
            .is_some_and(|t| now.duration_since(*t) > strategy.window)
        {
            mine.pop_front();
        }
        let consecutive = mine.len() as u32;
        mine.push_back(now);
        Ok(consecutive)
    }

    fn next_attempt(&mut self, task: TaskId) -> u32 {
        let a = self.attempts.entry(task).or_insert(0);
        *a += 1;
        *a
    }

    fn running_tasks(&self) -> Vec<TaskId> {
        self.plan
            .tasks()
            .into_iter()
            .filter(|t| !self.finished.contains_key(t))
            .collect()
    }

    fn live_worker(&self, task: TaskId) -> Option<usize> {
        let live: Vec<usize> = (0..self.workers.len()).filter(|&i| self.alive[i]).collect();
        if live.is_empty() {
            return None;
        }
        Some(live[(task.chain * 31 + task.subtask) % live.len()])
    }

    /// Re-creates a lost subtask on a live worker and re-wires its upstream to it.
    fn recreate(&mut self, task: TaskId, ctx: &mut Context<Self>) {
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
        let attempt = self.next_attempt(task);
        let position = self.positions.entry(task).or_default().clone();
        let addr = spawn_subtask(
            &self.plan,
            task,
            &self.workers[worker],
            &self.addrs,
            closed,
            ctx.address(),
            position,
            attempt,
        );
        self.addrs.insert(task, addr.clone());
        self.placement.insert(task, worker);
        *self.recreated.entry(task).or_default() += 1;
        self.result.recreated += 1;
        for (up, _) in self.plan.in_channels(task) {
            if self.finished.contains_key(&up) {
                continue;
            }
            if let Some(a) = self.addrs.get(&up) {
                a.do_send(Control::Rewire {
                    target: task,
                    to: addr.clone().recipient(),
                });
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
}

impl Handler<TaskFinished> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskFinished, _ctx: &mut Context<Self>) {
        let task = msg.task;
        let mut metrics = msg.metrics;
        metrics.recreated = self.recreated.get(&task).copied().unwrap_or(0);
        self.finished.insert(task, metrics);
        // Re-created receivers may still count a channel from this task as open.
        for t in self.plan.out_channels(task) {
            if self.recreated.contains_key(&t.task) {
                if let Some(a) = self.addrs.get(&t.task) {
                    a.do_send(Control::CloseInputs(vec![t.in_channel]));
                }
            }
        }
        self.finish_dead_letters();
        if self.finished.len() == self.total && !self.concluded() {
            let mut subtasks: Vec<_> = self.finished.iter().map(|(t, m)| (*t, m.clone())).collect();
            subtasks.sort_by_key(|(t, _)| *t);
            let mut result = std::mem::take(&mut self.result);
            result.elapsed = self.started.elapsed();
            result.subtasks = subtasks.into_iter().map(|(_, m)| m).collect();
            self.conclude(Ok(result));
        }
    }
}

impl Handler<TaskFailed> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskFailed, _ctx: &mut Context<Self>) {
        let TaskFailed {
            task,
            failure,
            reply,
        } = msg;
        let answer = |d: Decision| {
            if let Some(r) = reply {
                let _ = r.send(d);
            }
        };
        if self.concluded() {
            return answer(Decision::Abort);
        }
        let chain = self.chain_name(task);
        if failure.injected {
            self.result.faults_injected += 1;
        }
        if let Some(attempts) = failure.poison_attempts {
            answer(Decision::Abort);
            return self.conclude(Err(JobError::PoisonRecord {
                chain,
                subtask: task.subtask,
                operator: failure.operator,
                cause: failure.cause,
                attempts,
            }));
        }
        let kind = self.plan.restart_kind(task.chain);
        if kind == RestartKind::Never {
            answer(Decision::Abort);
            return self.conclude(Err(JobError::SubtaskFailed {
                chain,
                subtask: task.subtask,
                operator: failure.operator,
                cause: failure.cause,
            }));
        }
        let consecutive = match self.admit_restart(task) {
            Ok(n) => n,
            Err(restarts) => {
                answer(Decision::Abort);
                let backoffs = self.result.restarts.iter().map(|r| r.backoff).collect();
                return self.conclude(Err(JobError::RestartLimit {
                    chain,
                    subtask: task.subtask,
                    operator: failure.operator,
                    cause: failure.cause,
                    restarts,
                    backoffs,
                }));
            }
        };
        let backoff = self
            .plan
            .config()
            .restart
            .backoff
            .delay(consecutive, self.rng.unit());
        let attempt = self.next_attempt(task);
        let mut also = 0;
        if kind == RestartKind::OneForAll {
            for t in self.running_tasks() {
                if t == task {
                    continue;
                }
                let attempt = self.next_attempt(t);
                if let Some(a) = self.addrs.get(&t) {
                    a.do_send(Control::Restart { attempt, backoff });
                    also += 1;
                }
            }
        }
        tracing::warn!(
            chain = %chain, subtask = task.subtask, attempt, ?backoff, cause = %failure.cause,
            injected = failure.injected, also_restarted = also, "restarting subtask"
        );
        self.result.restarts.push(RestartEvent {
            chain,
            subtask: task.subtask,
            attempt,
            cause: format!("operator `{}` {}", failure.operator, failure.cause),
            injected: failure.injected,
            backoff,
            also_restarted: also,
        });
        answer(Decision::Restart { attempt, backoff });
    }
}

impl Handler<TaskResumed> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskResumed, _ctx: &mut Context<Self>) {
        tracing::debug!(chain = %self.chain_name(msg.task), subtask = msg.task.subtask, "subtask resumed");
        self.result.restarts_completed += 1;
    }
}

impl Handler<TaskLost> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskLost, ctx: &mut Context<Self>) {
        let task = msg.task;
        if self.concluded() || self.finished.contains_key(&task) {
            return;
        }
        if let Some(&w) = self.placement.get(&task) {
            self.alive[w] = false;
        }
        if let Err(restarts) = self.admit_restart(task) {
            let backoffs = self.result.restarts.iter().map(|r| r.backoff).collect();
            return self.conclude(Err(JobError::RestartLimit {
                chain: self.chain_name(task),
                subtask: task.subtask,
                operator: self.chain_name(task),
                cause: riffle_framework::FailureCause::Stopped,
                restarts,
                backoffs,
            }));
        }
        self.recreate(task, ctx);
    }
}

impl Handler<DeadLettered> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: DeadLettered, _ctx: &mut Context<Self>) {
        tracing::warn!(operator = %msg.letter.operator, subtask = msg.letter.subtask, cause = %msg.letter.cause, "record dead-lettered");
        self.plan.dead_letter_queue().push(msg.letter.clone());
        self.result.dead_letters.push(msg.letter);
    }
}

impl Handler<StopDue> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: StopDue, _ctx: &mut Context<Self>) {
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
                let live = self.alive.iter().filter(|a| **a).count();
                if i < self.workers.len() && self.alive[i] && live > 1 {
                    tracing::warn!(worker = i, "chaos: stopping worker thread");
                    self.alive[i] = false;
                    self.result.workers_stopped += 1;
                    self.workers[i].stop();
                }
            }
        }
    }
}
