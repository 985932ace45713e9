//! The checkpoint coordinator: triggers checkpoints, collects snapshots, saves completed
//! checkpoints and tells the sinks to commit. It is a component of the job supervisor (same
//! actor), so that it shares the supervisor's view of the subtasks and a recovery can never
//! interleave with a checkpoint's completion.

use crate::error::{CheckpointStats, JobError};
use crate::message::{CheckpointAck, Committed, Control, FirstRecord, ResetDone, TaskDraining};
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::{
    Checkpoint, CheckpointConfig, CheckpointStore, ExecutionPlan, TaskId, TaskSnapshot,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A checkpoint being taken.
pub(crate) struct Pending {
    pub id: u64,
    pub started: Instant,
    pub acks: HashMap<TaskId, TaskSnapshot>,
    pub savepoint: bool,
    pub final_: bool,
}

pub(crate) struct Coordinator {
    pub store: Arc<dyn CheckpointStore>,
    pub cfg: CheckpointConfig,
    pub next_id: u64,
    pub pending: Option<Pending>,
    pub last_trigger: Instant,
    /// Subtasks whose input ended (in the current epoch): they need direct triggers.
    pub draining: HashSet<TaskId>,
    pub last_completed: Option<Arc<Checkpoint>>,
    pub savepoint_waiters: Vec<oneshot::Sender<Result<u64, JobError>>>,
    /// Subtasks that have not yet confirmed the final commit.
    pub uncommitted: HashSet<TaskId>,
    /// Stop the job once the next savepoint is committed (stop-with-savepoint).
    pub stop_after_savepoint: bool,
}

impl Coordinator {
    pub(crate) fn new(
        store: Arc<dyn CheckpointStore>,
        cfg: CheckpointConfig,
        restored: Option<Arc<Checkpoint>>,
    ) -> Self {
        Coordinator {
            store,
            cfg,
            next_id: restored.as_ref().map_or(1, |c| c.id + 1),
            pending: None,
            last_trigger: Instant::now(),
            draining: HashSet::new(),
            last_completed: restored,
            savepoint_waiters: Vec::new(),
            uncommitted: HashSet::new(),
            stop_after_savepoint: false,
        }
    }

    /// Gives up the checkpoint in flight (a recovery or a timeout).
    pub(crate) fn abort_pending(&mut self, why: &str) {
        if let Some(p) = self.pending.take() {
            tracing::warn!(checkpoint = p.id, why, "checkpoint discarded");
        }
    }
}

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
        if let Some(p) = &c.pending {
            if p.started.elapsed() > c.cfg.timeout && !p.final_ {
                c.abort_pending("timed out");
            }
        }
        if self.rescaling() {
            // A rescale in place takes its own checkpoint and holds periodic ones back.
            return self.rescale_tick();
        }
        let Some(c) = &mut self.coord else { return };
        if c.pending.is_some() {
            return;
        }
        if c.uncommitted.is_empty()
            && (!c.savepoint_waiters.is_empty() || c.last_trigger.elapsed() >= c.cfg.interval)
        {
            let savepoint = !c.savepoint_waiters.is_empty();
            self.trigger(savepoint, false, false);
        }
    }

    /// Starts checkpoint `next_id` and returns its id: direct triggers to sources and
    /// finished subtasks (all subtasks for the final checkpoint); barriers reach the rest.
    /// With `hold`, the sources hold after the checkpoint (a rescale in place).
    pub(crate) fn trigger(&mut self, savepoint: bool, final_: bool, hold: bool) -> u64 {
        let Some(c) = &mut self.coord else { return 0 };
        let id = c.next_id;
        c.next_id += 1;
        c.last_trigger = Instant::now();
        c.pending = Some(Pending {
            id,
            started: Instant::now(),
            acks: HashMap::new(),
            savepoint,
            final_,
        });
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
        let Some(p) = &mut c.pending else { return };
        if p.id != msg.id {
            return;
        }
        p.acks.insert(msg.task, msg.snapshot);
        if p.acks.len() == total {
            if let Some(p) = c.pending.take() {
                self.complete(p);
            }
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
        c.draining.insert(msg.task);
        if let Some(p) = &c.pending {
            if !p.acks.contains_key(&msg.task) {
                if let Some(a) = self.addrs.get(&msg.task) {
                    a.do_send(Control::Trigger(p.id));
                }
            }
        }
    }
}

impl JobSupervisor {
    pub(crate) fn on_committed(&mut self, msg: Committed, _ctx: &mut Context<Self>) {
        self.rescale_on_committed(msg.task, msg.id);
        let Some(c) = &mut self.coord else { return };
        if c.uncommitted.remove(&msg.task) && c.uncommitted.is_empty() {
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
