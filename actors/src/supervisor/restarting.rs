//! Restart supervision, carried out: what [`crate::protocol::restarts`] decides about a
//! failed or lost subtask when the job has no checkpoints (restart it alone or with the
//! others, re-create it on another worker, or fail the job). With checkpoints every failure
//! is a recovery of the whole job (`recovering.rs`).

use super::JobSupervisor;
use crate::error::{JobError, RestartEvent};
use crate::host::SpawnSpec;
use crate::message::{Control, Decision, Failure, TaskFailed, TaskLost};
use crate::protocol::restarts::{Escalation, Restarts, Verdict};
use actix::prelude::*;
use riffle_framework::{FailureCause, TaskId};
use std::time::Instant;
use tokio::sync::oneshot;

/// Answers a failed subtask that will not restart.
fn abort(reply: Option<oneshot::Sender<Decision>>) {
    if let Some(r) = reply {
        let _ = r.send(Decision::Abort);
    }
}

impl JobSupervisor {
    pub(super) fn on_failed(&mut self, msg: TaskFailed, _ctx: &mut Context<Self>) {
        let TaskFailed {
            task,
            epoch,
            failure,
            reply,
            ..
        } = msg;
        if self.concluded() || !self.in_plan(task) {
            // (A subtask a rescale retired needs no decision.)
            return abort(reply);
        }
        if failure.injected {
            self.result.faults_injected += 1;
        }
        if failure.cause.is_permanent() {
            // A missing file, a `Permanent` error: no restart can fix it.
            abort(reply);
            return self.fail_job(task, Escalation::Never, failure);
        }
        let kind = self.plan.restart_kind(task.chain);
        if let Some(e) = Restarts::triage(kind, failure.poison_attempts) {
            abort(reply);
            return self.fail_job(task, e, failure);
        }
        if self.coord.is_some() {
            return self.recover_from(task, epoch, failure, reply);
        }
        self.restart(task, failure, reply);
    }

    /// With checkpoints the failure region is the whole job: everything restores the latest
    /// checkpoint (or joins the recovery already under way, for a failure in an older epoch).
    fn recover_from(
        &mut self,
        task: TaskId,
        epoch: u64,
        failure: Failure,
        reply: Option<oneshot::Sender<Decision>>,
    ) {
        if epoch < self.epoch() {
            if failure.injected {
                tracing::debug!(?task, "fault fired in an epoch already being recovered");
            }
            return self.join_recovery(task, reply);
        }
        let cause = format!("operator `{}` {}", failure.operator, failure.cause);
        match self.recover(task, cause, reply, &[]) {
            Ok(()) => {
                if let Some(ev) = self.result.restarts.last_mut() {
                    ev.injected = failure.injected;
                }
            }
            Err(restarts) => self.fail_job(task, Escalation::Limit { restarts }, failure),
        }
    }

    /// Without checkpoints: restarts the subtask (and, one-for-all, the others running) as
    /// restart supervision says, or fails the job.
    fn restart(
        &mut self,
        task: TaskId,
        failure: Failure,
        reply: Option<oneshot::Sender<Decision>>,
    ) {
        let kind = self.plan.restart_kind(task.chain);
        let running = self.running_tasks();
        let verdict = self
            .restarts
            .on_failure(task, kind, None, &running, Instant::now());
        let (attempt, backoff, also) = match verdict {
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
        let chain = self.chain_name(task);
        tracing::warn!(
            chain = %chain, subtask = task.subtask, attempt, ?backoff, cause = %failure.cause,
            injected = failure.injected, also_restarted = restarted, "restarting subtask"
        );
        self.telemetry.restarts.increment(1);
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
    fn fail_job(&mut self, task: TaskId, e: Escalation, failure: Failure) {
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
    pub(super) fn on_lost(&mut self, msg: TaskLost, _ctx: &mut Context<Self>) {
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
                self.escalate(task, chain, FailureCause::Stopped, restarts);
            }
            return;
        }
        if let Err(restarts) = self.restarts.admit(task, Instant::now()) {
            let chain = self.chain_name(task);
            return self.escalate(task, chain, FailureCause::Stopped, restarts);
        }
        self.recreate(task);
    }
}

impl JobSupervisor {
    /// Past the intensity limit: the job fails with the root cause.
    pub(super) fn escalate(
        &mut self,
        task: TaskId,
        operator: String,
        cause: FailureCause,
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
            epoch: self.epoch(),
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
}
