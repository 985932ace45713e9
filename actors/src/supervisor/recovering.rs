//! Recovery of the whole job from its latest checkpoint, carried out: what
//! [`crate::protocol::recovery`] decides (a new epoch, who must reset, when everyone runs
//! again) turned into reset orders, re-created subtasks and `Go`s. Node loss is a recovery
//! too.

use super::JobSupervisor;
use crate::error::{JobError, RecoveryEvent, RestartEvent};
use crate::host::{RestoreSpec, SpawnSpec};
use crate::message::{Control, Decision, FirstRecord, ResetDone, ResetOrder};
use crate::protocol::recovery::AfterReset;
use crate::requests::{Fence, NodeLost};
use actix::prelude::*;
use riffle_framework::{Checkpoint, FailureCause, TaskId};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

impl JobSupervisor {
    /// Restarts the whole job from the latest completed checkpoint in a new epoch: `task`
    /// failed (and waits for its answer on `reply`), and `lost` subtasks must be re-created.
    /// `Err(restarts)` past the restart intensity limit.
    pub(super) fn recover(
        &mut self,
        task: TaskId,
        cause: String,
        reply: Option<oneshot::Sender<Decision>>,
        lost: &[TaskId],
    ) -> Result<(), u32> {
        let consecutive = self.restarts.admit(task, Instant::now())?;
        let backoff = self.restarts.backoff(consecutive);
        let checkpoint = match &mut self.coord {
            Some(c) => {
                c.abort_pending("recovery");
                c.draining.clear();
                c.uncommitted.clear();
                c.last_completed.clone()
            }
            None => None,
        };
        let tasks = self.plan.tasks();
        let epoch = self.recoveries.begin(
            Instant::now(),
            tasks.iter().copied(),
            checkpoint.clone(),
            backoff,
        );
        self.progress.update(|p| {
            p.epoch = epoch;
            p.draining.iter_mut().for_each(|d| *d = false);
        });
        let last_completed = checkpoint.as_ref().map(|c| c.id);
        self.finished.clear();
        self.rescale_on_recovery();
        // Downstream first, so that every re-created subtask finds its targets.
        let mut order = lost.to_vec();
        order.sort_unstable_by(|a, b| b.cmp(a));
        for t in order {
            if !self.recreate_for_recovery(t, epoch, checkpoint.as_deref()) {
                return Ok(());
            }
        }
        self.note_recovery(epoch, &cause, last_completed);
        let mut reply = reply;
        for t in tasks {
            if lost.contains(&t) {
                continue;
            }
            let Some(order) = self.reset_order(t) else {
                continue;
            };
            // The failed subtask waits for the answer to its report; every other one (and
            // the first of a recovery nobody asked for, e.g. a rescale's deadline) gets a
            // reset order.
            let asked = t == task && lost.is_empty() && reply.is_some();
            if asked {
                if let Some(r) = reply.take() {
                    let _ = r.send(Decision::Reset(Box::new(order)));
                }
            } else if let Some(a) = self.addrs.get(&t) {
                a.do_send(Control::Reset(Box::new(order)));
            }
        }
        self.telemetry.restarts.increment(1);
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

    /// Records a recovery in the job's result and metrics.
    fn note_recovery(&mut self, epoch: u64, cause: &str, last_completed: Option<u64>) {
        self.telemetry.recoveries.increment(1);
        self.result.recoveries.push(RecoveryEvent {
            epoch,
            cause: cause.to_string(),
            restored_from: last_completed,
            restore_time: None,
            started_at: std::time::SystemTime::now(),
        });
        tracing::warn!(epoch, ?last_completed, %cause, "recovering the job from its latest checkpoint");
    }

    /// What `task` resets to in the current recovery (`None` without one).
    fn reset_order(&mut self, task: TaskId) -> Option<ResetOrder> {
        let point = self.recoveries.point()?;
        let checkpoint = point.checkpoint.as_ref();
        Some(ResetOrder {
            epoch: point.epoch,
            snapshot: checkpoint.and_then(|c| c.task(task.chain, task.subtask).cloned()),
            last_completed: checkpoint.map(|c| c.id),
            attempt: self.restarts.next_attempt(task),
            backoff: point.backoff,
        })
    }

    /// Sends a subtask that failed in an older epoch the current recovery's order.
    pub(super) fn join_recovery(&mut self, task: TaskId, reply: Option<oneshot::Sender<Decision>>) {
        if let (Some(order), Some(r)) = (self.reset_order(task), reply) {
            let _ = r.send(Decision::Reset(Box::new(order)));
        }
    }

    /// Re-creates a lost subtask, paused, restored from `checkpoint`; false if no worker is
    /// left (the job failed).
    fn recreate_for_recovery(
        &mut self,
        task: TaskId,
        epoch: u64,
        checkpoint: Option<&Checkpoint>,
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

    /// Checks every 100 ms whether a start or recovery waits past its deadline for subtasks
    /// that never report ready; if so the job fails, naming them (nothing waits for ever on
    /// another process).
    pub(super) fn watch_ready_deadline(&self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(100), |act, _ctx| {
            if act.concluded() {
                return;
            }
            if let Some((epoch, waiting, waited)) = act.recoveries.expired(Instant::now()) {
                let subtasks = waiting
                    .iter()
                    .map(|t| format!("{}[{}]", act.chain_name(*t), t.subtask))
                    .collect();
                act.conclude(Err(JobError::NotReady {
                    epoch,
                    subtasks,
                    waited,
                }));
            }
        });
    }

    pub(super) fn on_reset_done(&mut self, msg: ResetDone, _ctx: &mut Context<Self>) {
        if self.rescale_on_ready(msg.task, msg.epoch) {
            return;
        }
        match self
            .recoveries
            .reset_done(msg.task, msg.epoch, Instant::now())
        {
            AfterReset::Wait => {}
            AfterReset::GoOne(epoch) => {
                // A subtask that joined the recovery late: the others already run.
                if let Some(a) = self.addrs.get(&msg.task) {
                    a.do_send(Control::Go(epoch));
                }
            }
            AfterReset::GoAll(epoch) => {
                for a in self.addrs.values() {
                    a.do_send(Control::Go(epoch));
                }
                self.progress.update(|p| p.running_epoch = epoch);
                if let Some(c) = &mut self.coord {
                    c.last_trigger = Instant::now();
                }
            }
        }
    }

    pub(super) fn on_first_record(&mut self, msg: FirstRecord, _ctx: &mut Context<Self>) {
        self.progress.update(|p| p.restored_record = true);
        self.rescale_on_first_record();
        if let Some(t) = self.recoveries.first_record(msg.epoch, Instant::now()) {
            if let Some(ev) = self
                .result
                .recoveries
                .iter_mut()
                .rev()
                .find(|e| e.epoch == msg.epoch)
            {
                ev.restore_time = Some(t);
            }
        }
    }
}

impl Handler<Fence> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: Fence, _ctx: &mut Context<Self>) {
        tracing::warn!(reason = %msg.reason, "the job's coordinator lost its authority; the job stops here");
        self.conclude(Err(msg.reason.into()));
    }
}

impl Handler<crate::requests::CancelRequest> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: crate::requests::CancelRequest, _ctx: &mut Context<Self>) {
        tracing::warn!(by = %msg.by, "the job is cancelled");
        self.conclude(Err(JobError::Cancelled { by: msg.by }));
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
        if let Err(e) = self.check_authority() {
            return self.conclude(Err(e.into()));
        }
        self.result.nodes_lost.push(msg.node.clone());
        let cause = format!("node `{}` was lost with {} subtasks", msg.node, lost.len());
        if self.coord.is_none() {
            // Without checkpoints there is nothing to restore lost state from.
            return self.conclude(Err(JobError::NodeLost { node: msg.node }));
        }
        if let Err(restarts) = self.recover(first, cause, None, &lost) {
            let chain = self.chain_name(first);
            self.escalate(first, chain, FailureCause::Stopped, restarts);
        }
    }
}
