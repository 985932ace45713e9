//! Checkpoint coordination, carried out: what [`crate::protocol::checkpoints`] decides
//! becomes triggers, saved checkpoints, commits and answers to savepoint requests. It runs in
//! the job supervisor (same actor), so that it shares the supervisor's view of the subtasks
//! and a recovery can never interleave with a checkpoint's completion.

use super::JobSupervisor;
use crate::error::{CheckpointStats, JobError};
use crate::message::{CheckpointAck, Committed, Control, TaskDraining};
use crate::protocol::checkpoints::Pending;
use crate::requests::SavepointRequest;
use actix::prelude::*;
use riffle_framework::{Checkpoint, ExecutionPlan, TaskId, TaskSnapshot};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl JobSupervisor {
    /// With checkpointing on: looks every few milliseconds whether a checkpoint is due or
    /// late.
    pub(super) fn start_checkpoint_ticks(&self, ctx: &mut Context<Self>) {
        if let Some(every) = tick_interval(&self.plan) {
            ctx.run_interval(every, |act, _ctx| act.checkpoint_tick());
        }
    }

    /// Periodic work: time out the checkpoint in flight, trigger the next one when due.
    pub(crate) fn checkpoint_tick(&mut self) {
        if self.recovery_in_progress() || self.concluded() {
            return;
        }
        let Some(c) = &mut self.coord else { return };
        let now = Instant::now();
        if c.time_out(now) {
            self.telemetry.checkpoints_failed.increment(1);
        }
        let Some(c) = &mut self.coord else { return };
        for w in c.expired_savepoints(now) {
            tracing::warn!(
                stop = w.stop,
                "no savepoint completed in time; the request fails"
            );
            let waited = c.cfg.timeout * 3;
            let _ = w.reply.send(Err(JobError::SavepointTimedOut { waited }));
        }
        if self.rescaling() {
            // A rescale in place takes its own checkpoint and holds periodic ones back.
            return self.rescale_tick();
        }
        if let Some(savepoint) = self.coord.as_ref().and_then(|c| c.due(Instant::now())) {
            if let Err(e) = self.check_authority() {
                return self.conclude(Err(e.into()));
            }
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
        if hold {
            // Before any barrier of the checkpoint: timers stand still from its snapshot on.
            for t in self.plan.tasks() {
                if !self.plan.is_source(t.chain) {
                    if let Some(a) = self.addrs.get(&t) {
                        a.do_send(Control::HoldTimers(id));
                    }
                }
            }
        }
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
        if let Some(remote) = &self.remote {
            // Nothing is saved or committed unless this process still coordinates the job.
            match remote.confirm_checkpoint(p.id) {
                Ok(()) => {}
                Err(e @ crate::ClusterError::Fenced { .. }) => {
                    tracing::warn!(checkpoint = p.id, error = %e, "checkpoint refused; the job stops here");
                    return self.conclude(Err(e.into()));
                }
                Err(e) => {
                    // Not confirmed (etcd did not answer): not saved, not committed; the
                    // next checkpoint tries again.
                    tracing::warn!(checkpoint = p.id, error = %e, "checkpoint not confirmed; discarded");
                    self.telemetry.checkpoints_failed.increment(1);
                    return;
                }
            }
        }
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
            self.telemetry.checkpoints_failed.increment(1);
            return;
        }
        let stats = CheckpointStats {
            id: p.id,
            duration: p.started.elapsed(),
            bytes: checkpoint.state_bytes(),
            savepoint: p.savepoint,
        };
        tracing::info!(checkpoint = p.id, duration = ?stats.duration, bytes = stats.bytes, "checkpoint completed");
        self.telemetry.checkpoints_completed.increment(1);
        self.telemetry
            .checkpoint_duration
            .set(stats.duration.as_secs_f64());
        self.telemetry.checkpoint_size.set(stats.bytes as f64);
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats.clone());
        self.result.checkpoints.push(stats);
        self.progress.update(|p| p.checkpoints += 1);
        c.last_completed = Some(Arc::new(checkpoint));
        if p.savepoint {
            for w in c.savepoint_waiters.drain(..) {
                let _ = w.reply.send(Ok(p.id));
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
        c.replace_pending_by_final();
        self.trigger(false, true, false);
    }
}

impl JobSupervisor {
    pub(super) fn on_ack(&mut self, msg: CheckpointAck, _ctx: &mut Context<Self>) {
        if msg.epoch != self.epoch() {
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
    pub(super) fn on_draining(&mut self, msg: TaskDraining, _ctx: &mut Context<Self>) {
        if msg.epoch != self.epoch() {
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
    pub(super) fn on_committed(&mut self, msg: Committed, _ctx: &mut Context<Self>) {
        self.rescale_on_committed(msg.task, msg.id);
        let Some(c) = &mut self.coord else { return };
        if c.committed(msg.task) {
            tracing::info!(checkpoint = msg.id, "final checkpoint committed");
            self.conclude_success();
        }
    }
}

impl Handler<SavepointRequest> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: SavepointRequest, _ctx: &mut Context<Self>) {
        match &mut self.coord {
            Some(c) if self.report.is_some() => {
                c.ask_savepoint(msg.reply, msg.stop, Instant::now())
            }
            Some(_) => {
                let _ = msg.reply.send(Err(JobError::JobEnded));
            }
            None => {
                let _ = msg.reply.send(Err(JobError::CheckpointingOff {
                    what: "a savepoint",
                }));
            }
        }
    }
}

/// How often the supervisor checks whether a checkpoint is due or timed out.
fn tick_interval(cfg: &ExecutionPlan) -> Option<Duration> {
    cfg.config()
        .checkpoint
        .as_ref()
        .map(|c| (c.interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(50)))
}
