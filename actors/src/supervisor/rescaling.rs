//! Rescale in place, carried out: the supervisor feeds [`crate::protocol::rescale`] what
//! happens (checkpoints completing, commits and re-wirings confirmed, recoveries, the job's
//! end) and does what it asks — hold and release the sources, switch to the new plan (fit
//! the checkpoint, start, retire and re-wire subtasks), resume, answer the caller. Control
//! messages to a subtask are ordered, so a subtask handles its `Replan` before any later
//! `Reset` or `Go`.

use super::{JobSupervisor, Rescaling};
use crate::error::JobError;
use crate::host::{RestoreSpec, SpawnSpec};
use crate::message::{Control, ReplanOrder, Replanned};
use crate::protocol::rescale::{
    touched, InPlace, InPlaceError, InPlaceFigures, JobView, Rescale, Step,
};
use crate::requests::RescaleRequest;
use actix::prelude::*;
use riffle_framework::{Checkpoint, ExecutionPlan, Gained, TaskId, TaskSnapshot};
use std::sync::Arc;
use std::time::Instant;

impl Handler<RescaleRequest> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: RescaleRequest, _ctx: &mut Context<Self>) {
        let refuse = |why: &str| Err(InPlaceError::Refused(why.to_string()));
        let answer = if self.concluded() {
            Err(InPlaceError::Failed(JobError::JobEnded))
        } else if self.coord.is_none() {
            Err(InPlaceError::Failed(JobError::CheckpointingOff {
                what: "a rescale",
            }))
        } else if self.rescale.is_some() {
            refuse("another rescale is in progress")
        } else {
            match self.plan.rescaled(&msg.operator, msg.n) {
                Err(e) => Err(InPlaceError::Failed(e.into())),
                Ok(plan) => {
                    let chain = plan.chain_of(&msg.operator).unwrap_or_default();
                    let (was, now) = (self.plan.parallelism(chain), plan.parallelism(chain));
                    let timeout = self
                        .plan
                        .config()
                        .checkpoint
                        .as_ref()
                        .map_or(std::time::Duration::from_secs(60), |c| c.rescale_timeout);
                    self.rescale = Some(Rescaling {
                        machine: Rescale::new(
                            msg.operator,
                            msg.n,
                            (chain, was, now),
                            Instant::now(),
                            timeout,
                        ),
                        plan: Arc::new(plan),
                        reply: msg.reply,
                    });
                    self.rescale_tick();
                    return;
                }
            }
        };
        let _ = msg.reply.send(answer);
    }
}

impl JobSupervisor {
    /// Feeds the rescale machine an event and carries out the steps it returns.
    fn rescale_with(&mut self, event: impl FnOnce(&mut Rescale) -> Vec<Step>) {
        let Some(r) = &mut self.rescale else {
            return;
        };
        let steps = event(&mut r.machine);
        for step in steps {
            self.rescale_step(step);
        }
    }

    fn rescale_step(&mut self, step: Step) {
        match step {
            Step::Hold => {
                let id = self.trigger(false, false, true);
                self.progress.update(|p| p.rescales_held += 1);
                tracing::info!(
                    checkpoint = id,
                    "rescale: holding the sources after a checkpoint"
                );
                if let Some(r) = &mut self.rescale {
                    r.machine.held(id, Instant::now());
                }
            }
            Step::Release => self.release_sources(),
            Step::ConfirmCommit { id, leaving } => {
                for t in &leaving {
                    if let Some(a) = self.addrs.get(t) {
                        a.do_send(Control::Complete { id, ack: true });
                    }
                }
            }
            Step::Switch { id } => {
                let result = self.switch_plan(id);
                self.rescale_with(|r| r.switched(result));
            }
            Step::Resume { started } => {
                let epoch = self.epoch();
                for t in &started {
                    if let Some(a) = self.addrs.get(t) {
                        a.do_send(Control::Go(epoch));
                    }
                }
                self.release_sources();
                if let Some(r) = &mut self.rescale {
                    r.machine.resumed(Instant::now());
                }
            }
            Step::Recover { waiting } => {
                let Some(&task) = waiting.first() else { return };
                let cause = format!(
                    "a rescale in place: subtasks {waiting:?} did not confirm the new plan in time"
                );
                if let Err(restarts) = self.recover(task, cause, None, &[]) {
                    let chain = self.chain_name(task);
                    self.escalate(
                        task,
                        chain,
                        riffle_framework::FailureCause::Stopped,
                        restarts,
                    );
                }
            }
            Step::Done(answer) => {
                if let Ok(done) = &answer {
                    self.telemetry.rescales.increment(1);
                    self.telemetry.rescale_pause.set(done.pause.as_secs_f64());
                }
                if let Some(r) = self.rescale.take() {
                    let _ = r.reply.send(answer);
                }
            }
        }
    }

    /// The job as the rescale sees it.
    fn rescale_view(&self) -> JobView {
        let c = self.coord.as_ref();
        JobView {
            recovering: self.recovery_in_progress(),
            in_flight: c.and_then(|c| c.pending.as_ref()).map(|p| p.id),
            committing: c.is_some_and(|c| !c.uncommitted.is_empty()),
            blocked: self.not_in_place(),
        }
    }

    /// Advances a rescale waiting for its held checkpoint.
    pub(super) fn rescale_tick(&mut self) {
        let view = self.rescale_view();
        self.rescale_with(|r| r.tick(&view, Instant::now()));
    }

    /// Why the rescale cannot be done in place now: a subtask it would touch has ended its
    /// input (its channels cannot change any more).
    fn not_in_place(&self) -> Option<String> {
        let r = self.rescale.as_ref()?;
        let draining = self.coord.as_ref().map(|c| &c.draining);
        touched(&self.plan, &r.plan, r.machine.chain)
            .into_iter()
            .find(|t| self.finished.contains_key(t) || draining.is_some_and(|d| d.contains(t)))
            .map(|t| {
                format!(
                    "subtask {} of `{}` already finished its input",
                    t.subtask,
                    self.plan.chain_name(t.chain)
                )
            })
    }

    /// Sources produce again and other subtasks' timers run again.
    fn release_sources(&self) {
        for t in self.plan.tasks() {
            if let Some(a) = self.addrs.get(&t) {
                a.do_send(Control::Release);
            }
        }
    }

    /// Checkpoint `id` completed.
    pub(super) fn on_checkpoint_completed(&mut self, id: u64) {
        self.rescale_with(|r| r.checkpoint_completed(id));
    }

    /// A subtask confirmed the commit of checkpoint `id`.
    pub(super) fn rescale_on_committed(&mut self, task: TaskId, id: u64) {
        self.rescale_with(|r| r.committed(task, id));
    }

    /// The job is quiet at checkpoint `id`: installs the new plan, moves keyed state,
    /// starts, retires and re-wires subtasks. Returns what it did, the subtasks that must
    /// confirm the new plan, and the new ones.
    #[allow(clippy::type_complexity)]
    fn switch_plan(
        &mut self,
        id: u64,
    ) -> Result<(InPlace, Vec<TaskId>, Vec<TaskId>), InPlaceError> {
        if let Some(why) = self.not_in_place() {
            return Err(InPlaceError::Refused(why));
        }
        let Some(r) = &self.rescale else {
            return Err(InPlaceError::Failed(JobError::JobEnded));
        };
        let m = &r.machine;
        let (new, chain, step) = (r.plan.clone(), m.chain, (m.operator.clone(), m.n));
        let checkpoint = self
            .coord
            .as_ref()
            .and_then(|c| c.last_completed.as_deref())
            .filter(|c| c.id == id)
            .cloned()
            .ok_or_else(|| InPlaceError::Refused(format!("checkpoint {id} is not the latest")))?;
        let split = new.adapt_in_place(checkpoint, chain).map_err(|reason| {
            InPlaceError::Failed(JobError::CheckpointMismatch {
                checkpoint: id,
                reason,
            })
        })?;
        let touched = touched(&self.plan, &new, chain);
        let (was, now) = (self.plan.parallelism(chain), new.parallelism(chain));
        let all = self.plan.tasks().len();
        let version = self.install_plan(&new, step, split.checkpoint);
        let added: Vec<TaskId> = (was..now)
            .map(|subtask| TaskId { chain, subtask })
            .collect();
        let removed: Vec<TaskId> = (now..was)
            .map(|subtask| TaskId { chain, subtask })
            .collect();
        if let Some(remote) = &self.remote {
            // Places the new subtasks (the cluster layer tells the other nodes).
            remote.rescaled(&self.steps, &added, &removed);
        }
        self.retire(&removed);
        let mut gained = split.gained;
        self.start_added(&added, id, &mut gained)?;
        self.replan(&touched, chain, version, &mut gained);
        let figures = InPlaceFigures {
            rewired: touched.len(),
            started: now.saturating_sub(was),
            retired: was.saturating_sub(now),
            untouched: all - touched.len() - was.saturating_sub(now),
        };
        tracing::info!(
            chain = %new.chain_name(chain), from = was, to = now, keys_moved = split.moved.keys_moved,
            bytes_moved = split.moved.bytes_moved, ?figures, "rescale: switched to the new plan"
        );
        let done = InPlace {
            checkpoint: id,
            moved: split.moved,
            pause: Default::default(),
            figures,
        };
        Ok((done, touched, added))
    }

    /// Installs the rescaled plan everywhere it is looked up, with the checkpoint fitted to
    /// it as the latest; returns the plan's version.
    fn install_plan(
        &mut self,
        new: &Arc<ExecutionPlan>,
        step: (String, usize),
        fitted: Checkpoint,
    ) -> u64 {
        self.plan_version += 1;
        let version = self.plan_version;
        self.steps.push(step);
        self.host.directory.install_plan(version, new.clone());
        self.host.plan = new.clone();
        self.host.plan_version = version;
        self.plan = new.clone();
        self.total = new.tasks().len();
        if let Some(c) = &mut self.coord {
            c.last_completed = Some(Arc::new(fitted));
        }
        self.progress.update(|p| {
            p.draining.clear();
            p.rescales_switched += 1;
        });
        version
    }

    /// Leaving subtasks retire: their keys were given to the others.
    fn retire(&mut self, removed: &[TaskId]) {
        for t in removed {
            if let Some(a) = self.addrs.remove(t) {
                a.do_send(Control::Retire);
            }
            self.host.directory.remove(*t);
            self.placement.remove(t);
            self.positions.remove(t);
            self.finished.remove(t);
        }
    }

    /// New subtasks start paused, restored from checkpoint `id` with the state they gain.
    fn start_added(
        &mut self,
        added: &[TaskId],
        id: u64,
        gained: &mut Gained,
    ) -> Result<(), InPlaceError> {
        for &t in added {
            let Some(worker) = self.live_worker(t) else {
                return Err(InPlaceError::Failed(JobError::NoWorkers));
            };
            let states = gained
                .get_mut(t.subtask)
                .map(std::mem::take)
                .unwrap_or_default();
            let spec = SpawnSpec {
                epoch: self.epoch(),
                attempt: 0,
                // Ready before the sources continue (a new subtask on another node must be
                // running before records are sent to it).
                paused: true,
                closed_inputs: Vec::new(),
                restore: Some(RestoreSpec {
                    snapshot: Some(TaskSnapshot {
                        chain: t.chain,
                        subtask: t.subtask,
                        finished: false,
                        position: None,
                        states,
                        watermark: None,
                    }),
                    last_completed: Some(id),
                }),
                plan: None,
            };
            self.start_task(t, spec, worker);
        }
        Ok(())
    }

    /// Everyone whose channels change re-wires in place; the rescaled chain's subtasks take
    /// the keys they gain.
    fn replan(&mut self, touched: &[TaskId], chain: usize, version: u64, gained: &mut Gained) {
        for &t in touched {
            let order = ReplanOrder {
                version,
                steps: self.steps.clone(),
                epoch: self.epoch(),
                gained: (t.chain == chain).then(|| {
                    gained
                        .get_mut(t.subtask)
                        .map(std::mem::take)
                        .unwrap_or_default()
                }),
            };
            if let Some(a) = self.addrs.get(&t) {
                a.do_send(Control::Replan(Box::new(order)));
            }
        }
    }

    pub(super) fn on_replanned(&mut self, msg: Replanned, _ctx: &mut Context<Self>) {
        if msg.version == self.plan_version {
            self.rescale_with(|r| r.confirmed(msg.task));
        }
    }

    /// A new subtask started (paused): it counts as switched. Returns whether the report was
    /// the rescale's.
    pub(super) fn rescale_on_ready(&mut self, task: TaskId, epoch: u64) -> bool {
        let ours = epoch == self.epoch()
            && self
                .rescale
                .as_ref()
                .is_some_and(|r| r.machine.waits_for_new(task));
        if ours {
            self.rescale_with(|r| r.confirmed(task));
        }
        ours
    }

    /// A recovery started.
    pub(super) fn rescale_on_recovery(&mut self) {
        if let Some(r) = &mut self.rescale {
            r.machine.recovery_started();
        }
    }

    /// A record was processed after a restore or a re-wire.
    pub(super) fn rescale_on_first_record(&mut self) {
        self.rescale_with(|r| r.first_record(Instant::now()));
    }

    /// The job ended.
    pub(super) fn rescale_on_end(&mut self) {
        self.rescale_with(|r| r.ended(Instant::now()));
    }

    /// Whether a rescale holds back periodic checkpoints.
    pub(super) fn rescaling(&self) -> bool {
        self.rescale.is_some()
    }
}
