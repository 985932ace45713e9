//! The checkpoint coordinator's actor side: it carries out what the checkpoint state machine
//! ([`crate::protocol::checkpoints`]) decides — sends the triggers, saves a completed
//! checkpoint and tells the sinks to commit. It runs in the job supervisor (same actor), so
//! that it shares the supervisor's view of the subtasks and a recovery can never interleave
//! with a checkpoint's completion.

use crate::error::{CheckpointStats, JobError};
use crate::message::{CheckpointAck, Committed, Control, FirstRecord, ResetDone, TaskDraining};
use crate::protocol::checkpoints::Pending;
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::{Checkpoint, ExecutionPlan, TaskId, TaskSnapshot};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Asks the job for a savepoint.
pub(crate) struct SavepointRequest {
    pub reply: oneshot::Sender<Result<u64, JobError>>,
    /// Stop the job once the savepoint is committed.
    pub stop: bool,
}
impl Message for SavepointRequest {
    type Result = ();
}

impl JobSupervisor {
    /// Periodic work: time out the checkpoint in flight, trigger the next one when due.
    pub(crate) fn checkpoint_tick(&mut self) {
        if self.recovery_in_progress() || self.concluded() {
            return;
        }
        let Some(c) = &mut self.coord else { return };
        c.time_out(Instant::now());
        if self.rescaling() {
            // A rescale in place takes its own checkpoint and holds periodic ones back.
            return self.rescale_tick();
        }
        if let Some(savepoint) = self.coord.as_ref().and_then(|c| c.due(Instant::now())) {
            self.trigger(savepoint, false, false);
        }
    }

    /// Starts checkpoint `next_id` and returns its id: direct triggers to sources and
    /// finished subtasks (all subtasks for the final checkpoint); barriers reach the rest.
    /// With `hold`, the sources hold after the checkpoint (a rescale in place).
    pub(crate) fn trigger(&mut self, savepoint: bool, final_: bool, hold: bool) -> u64 {
        let Some(c) = &mut self.coord else { return 0 };
        let id = c.begin(Instant::now(), savepoint, final_);
        let targets: Vec<TaskId> = self
            .plan
            .tasks()
            .into_iter()
            .filter(|t| final_ || self.plan.is_source(t.chain) || c.draining.contains(t))
            .collect();
        tracing::debug!(
            checkpoint = id,
            savepoint,
            final_,
            hold,
            "checkpoint triggered"
        );
        for t in targets {
            if let Some(a) = self.addrs.get(&t) {
                if hold && self.plan.is_source(t.chain) {
                    a.do_send(Control::Hold(id));
                } else {
                    a.do_send(Control::Trigger(id));
                }
            }
        }
        id
    }

    fn complete(&mut self, p: Pending) {
        let Some(c) = &mut self.coord else { return };
        let mut tasks: Vec<TaskSnapshot> = p.acks.into_values().collect();
        tasks.sort_by_key(|t| (t.chain, t.subtask));
        let checkpoint = Checkpoint {
            id: p.id,
            savepoint: p.savepoint,
            tasks,
        };
        if let Err(e) = c.store.save(&checkpoint) {
            tracing::error!(checkpoint = p.id, error = %e, "checkpoint could not be saved; discarded");
            return;
        }
        let stats = CheckpointStats {
            id: p.id,
            duration: p.started.elapsed(),
            bytes: checkpoint.state_bytes(),
            savepoint: p.savepoint,
        };
        tracing::info!(checkpoint = p.id, duration = ?stats.duration, bytes = stats.bytes, "checkpoint completed");
        self.result.checkpoints.push(stats);
        self.progress.update(|p| p.checkpoints += 1);
        c.last_completed = Some(Arc::new(checkpoint));
        if p.savepoint {
            for w in c.savepoint_waiters.drain(..) {
                let _ = w.send(Ok(p.id));
            }
        }
        // The last checkpoint of the job (final, or a savepoint to stop at): wait for every
        // sink's commit before the job ends.
        let last = p.final_ || (p.savepoint && c.stop_after_savepoint);
        if last {
            c.uncommitted = self.addrs.keys().copied().collect();
        }
        if p.savepoint && c.stop_after_savepoint {
            self.result.stopped_at_savepoint = Some(p.id);
        }
        for a in self.addrs.values() {
            a.do_send(Control::Complete {
                id: p.id,
                ack: last,
            });
        }
        self.on_checkpoint_completed(p.id);
    }

    /// The whole job finished: take the final checkpoint, commit, then conclude.
    pub(crate) fn finish_with_checkpoint(&mut self) {
        let Some(c) = &mut self.coord else { return };
        if c.pending.as_ref().is_some_and(|p| p.final_) || !c.uncommitted.is_empty() {
            return;
        }
        c.abort_pending("the job finished; taking the final checkpoint");
        self.trigger(false, true, false);
    }
}

impl JobSupervisor {
    pub(crate) fn on_ack(&mut self, msg: CheckpointAck, _ctx: &mut Context<Self>) {
        if msg.epoch != self.epoch {
            return;
        }
        let total = self.total;
        let Some(c) = &mut self.coord else { return };
        if let Some(p) = c.ack(msg.id, msg.task, msg.snapshot, total) {
            self.complete(p);
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_draining(&mut self, msg: TaskDraining, _ctx: &mut Context<Self>) {
        if msg.epoch != self.epoch {
            return;
        }
        if let Some(i) = self.plan.tasks().iter().position(|t| *t == msg.task) {
            self.progress.update(|p| {
                if p.draining.len() <= i {
                    p.draining.resize(i + 1, false);
                }
                p.draining[i] = true;
            });
        }
        let Some(c) = &mut self.coord else { return };
        if let Some(id) = c.draining(msg.task) {
            if let Some(a) = self.addrs.get(&msg.task) {
                a.do_send(Control::Trigger(id));
            }
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_committed(&mut self, msg: Committed, _ctx: &mut Context<Self>) {
        self.rescale_on_committed(msg.task, msg.id);
        let Some(c) = &mut self.coord else { return };
        if c.committed(msg.task) {
            tracing::info!(checkpoint = msg.id, "final checkpoint committed");
            self.conclude_success();
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_reset_done(&mut self, msg: ResetDone, _ctx: &mut Context<Self>) {
        if self.rescale_on_ready(msg.task, msg.epoch) {
            return;
        }
        let epoch = self.epoch;
        let Some(r) = &mut self.recovery else { return };
        if msg.epoch != epoch || r.epoch != epoch {
            return;
        }
        r.waiting.remove(&msg.task);
        if r.go_at.is_some() {
            // A subtask that joined the recovery late: the others already run.
            if let Some(a) = self.addrs.get(&msg.task) {
                a.do_send(Control::Go(epoch));
            }
            return;
        }
        if r.waiting.is_empty() {
            r.go_at = Some(Instant::now());
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

impl JobSupervisor {
    pub(crate) fn on_first_record(&mut self, msg: FirstRecord, _ctx: &mut Context<Self>) {
        self.progress.update(|p| p.restored_record = true);
        self.rescale_on_first_record();
        let Some(r) = &mut self.recovery else { return };
        if msg.epoch == r.epoch && r.restore_time.is_none() {
            let t = r.started.elapsed();
            r.restore_time = Some(t);
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

impl Handler<SavepointRequest> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: SavepointRequest, _ctx: &mut Context<Self>) {
        match &mut self.coord {
            Some(c) if self.report.is_some() => {
                c.stop_after_savepoint |= msg.stop;
                c.savepoint_waiters.push(msg.reply);
            }
            Some(_) => {
                let _ = msg.reply.send(Err(JobError::SavepointFailed {
                    reason: "the job has ended".to_string(),
                }));
            }
            None => {
                let _ = msg.reply.send(Err(JobError::SavepointFailed {
                    reason: "checkpointing is off for this job".to_string(),
                }));
            }
        }
    }
}

/// How often the supervisor checks whether a checkpoint is due or timed out.
pub(crate) fn tick_interval(cfg: &ExecutionPlan) -> Option<Duration> {
    cfg.config()
        .checkpoint
        .as_ref()
        .map(|c| (c.interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(50)))
}
