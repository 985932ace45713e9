//! Rescale in place: change one operator's parallelism while the rest of the job keeps running.
//!
//! ```text
//! Holding ──▶ Committing ──▶ Switching ──▶ Resuming ──▶ done
//! sources     leaving        new plan;      sources      the rescaled operator
//! hold after  subtasks       state moves;   released     processed a record
//! checkpoint  confirm their  subtasks start,
//! n           commit of n    retire, re-wire
//! ```
//!
//! 1. **Hold.** The job supervisor triggers checkpoint `n` with [`Control::Hold`]: each source
//!    snapshots, emits the barrier and then produces nothing. When `n` completes, every
//!    subtask has handled every record sent before the barriers and none was sent after, so
//!    nothing is in flight and every output queue is empty.
//! 2. **Commit.** When scaling down, the leaving subtasks confirm that they committed `n`
//!    (their sinks' transactions): once they retired, no subtask would be left to commit for
//!    them after a failure.
//! 3. **Split.** The checkpoint is fitted to the rescaled plan
//!    ([`riffle_framework::ExecutionPlan::adapt_in_place`]): for each subtask of the rescaled
//!    chain the keyed entries whose owner on the new ring was another subtask. Only those move.
//! 4. **Switch.** New subtasks start with the entries they gain; leaving subtasks retire (their
//!    keys went to the others); the subtasks whose channels change — the rescaled chain, the
//!    routers in front of it and the inputs behind it — get [`Control::Replan`]: they re-wire
//!    without restarting, and the rescaled chain's subtasks drop the keys they lost and take in
//!    the ones they gained. Every other subtask is not touched at all.
//! 5. **Resume.** Once every touched subtask confirmed, the sources are released. The pause is
//!    measured from the hold to the rescaled operator's first record.
//!
//! A failure at any point is an ordinary recovery: before the switch the held checkpoint is
//! given up (the sources are released) and the rescale starts over after the recovery; after
//! the switch the checkpoint the recovery restores is the adapted one, so every subtask
//! restores its state in the new shape. Control messages to a subtask are ordered, so a
//! subtask handles its `Replan` before any later `Reset` or `Go`.

use crate::error::JobError;
use crate::host::{RestoreSpec, SpawnSpec};
use crate::message::{Control, ReplanOrder, Replanned};
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::{ChainRescale, Checkpoint, ExecutionPlan, Gained, TaskId, TaskSnapshot};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Asks the job supervisor to rescale `operator` to `n` subtasks in place.
pub(crate) struct RescaleRequest {
    pub operator: String,
    pub n: usize,
    pub reply: oneshot::Sender<Result<InPlace, InPlaceError>>,
}
impl Message for RescaleRequest {
    type Result = ();
}

/// What a rescale in place did.
#[derive(Clone, Debug, Default)]
pub(crate) struct InPlace {
    pub checkpoint: u64,
    pub moved: ChainRescale,
    pub pause: Duration,
    pub figures: InPlaceFigures,
}

/// Which subtasks a rescale in place touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InPlaceFigures {
    /// Subtasks that re-wired without restarting (the rescaled chain's remaining subtasks,
    /// the routers in front of it, the inputs behind it).
    pub rewired: usize,
    /// New subtasks started (scaling up).
    pub started: usize,
    /// Subtasks retired (scaling down).
    pub retired: usize,
    /// Subtasks not touched at all.
    pub untouched: usize,
}

/// Why a rescale in place did not happen.
#[derive(Debug)]
pub(crate) enum InPlaceError {
    /// It cannot be done in place now (e.g. part of the job already finished); the caller may
    /// rescale by stopping at a savepoint instead.
    Refused(String),
    /// It failed.
    Failed(JobError),
}

impl InPlaceError {
    /// The job ended before the rescale could happen.
    fn ended() -> Self {
        InPlaceError::Failed(JobError::SavepointFailed {
            reason: "the job has ended".to_string(),
        })
    }
}

enum Phase {
    /// Waiting for the held checkpoint (`id`, once triggered) to complete.
    Holding { id: Option<u64> },
    /// Checkpoint `id` completed; waiting for the leaving subtasks to confirm their commit
    /// (no subtask will be left to commit their transactions once they retired).
    Committing { id: u64, waiting: HashSet<TaskId> },
    /// Waiting for the touched subtasks to confirm the new plan.
    Switching { waiting: HashSet<TaskId> },
    /// Sources released; waiting for the rescaled operator's first record.
    Resuming,
}

/// A rescale in place in progress.
pub(crate) struct Rescaling {
    operator: String,
    n: usize,
    plan: Arc<ExecutionPlan>,
    chain: usize,
    phase: Phase,
    /// When the sources were held (the pause starts).
    held_at: Option<Instant>,
    reply: Option<oneshot::Sender<Result<InPlace, InPlaceError>>>,
    done: InPlace,
    /// The new subtasks (started paused; they run once the sources are released).
    started: Vec<TaskId>,
}

impl Handler<RescaleRequest> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: RescaleRequest, _ctx: &mut Context<Self>) {
        let refuse = |why: &str| Err(InPlaceError::Refused(why.to_string()));
        let answer = if self.concluded() {
            Err(InPlaceError::ended())
        } else if self.coord.is_none() {
            refuse("checkpointing is off")
        } else if self.rescale.is_some() {
            refuse("another rescale is in progress")
        } else {
            match self.plan.rescaled(&msg.operator, msg.n) {
                Err(e) => Err(InPlaceError::Failed(e.into())),
                Ok(plan) => {
                    let chain = plan.chain_of(&msg.operator).unwrap_or_default();
                    self.rescale = Some(Rescaling {
                        operator: msg.operator,
                        n: msg.n,
                        plan: Arc::new(plan),
                        chain,
                        phase: Phase::Holding { id: None },
                        held_at: None,
                        reply: Some(msg.reply),
                        done: InPlace::default(),
                        started: Vec::new(),
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
    /// Advances a rescale waiting for its held checkpoint: triggers it when the job can take
    /// it, or starts over when it was given up (a recovery or a timeout).
    pub(crate) fn rescale_tick(&mut self) {
        let Some(r) = &self.rescale else { return };
        let Phase::Holding { id } = r.phase else {
            return;
        };
        let Some(c) = &self.coord else { return };
        if let Some(id) = id {
            if c.pending.as_ref().is_some_and(|p| p.id == id) {
                return;
            }
            // Given up: release the sources (a recovery already did) and try again.
            tracing::warn!(
                checkpoint = id,
                "the rescale's checkpoint was given up; retrying"
            );
            self.release_sources();
            if let Some(r) = &mut self.rescale {
                r.phase = Phase::Holding { id: None };
            }
            return;
        }
        if self.recovery_in_progress() || c.pending.is_some() || !c.uncommitted.is_empty() {
            return;
        }
        if let Some(why) = self.not_in_place() {
            return self.end_rescale(Err(InPlaceError::Refused(why)));
        }
        let id = self.trigger_hold();
        if let Some(r) = &mut self.rescale {
            r.phase = Phase::Holding { id: Some(id) };
            r.held_at.get_or_insert_with(Instant::now);
        }
    }

    /// Why the rescale cannot be done in place now: a subtask it would touch has ended its
    /// input (its channels cannot change any more).
    fn not_in_place(&self) -> Option<String> {
        let r = self.rescale.as_ref()?;
        let draining = self.coord.as_ref().map(|c| &c.draining);
        self.touched(&r.plan, r.chain)
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

    /// The subtasks of the current plan that a move to `new` re-wires: those of the rescaled
    /// chain that stay, and every other subtask whose channels change.
    fn touched(&self, new: &ExecutionPlan, chain: usize) -> Vec<TaskId> {
        let now = new.parallelism(chain);
        self.plan
            .tasks()
            .into_iter()
            .filter(|t| {
                if t.chain == chain {
                    return t.subtask < now;
                }
                self.plan.out_channels(*t) != new.out_channels(*t)
                    || self.plan.in_channel_count(*t) != new.in_channel_count(*t)
            })
            .collect()
    }

    /// Triggers a checkpoint after which the sources hold; returns its id.
    fn trigger_hold(&mut self) -> u64 {
        let id = self.trigger(false, false, true);
        self.progress.update(|p| p.rescales_held += 1);
        tracing::info!(
            checkpoint = id,
            "rescale: holding the sources after a checkpoint"
        );
        id
    }

    fn release_sources(&self) {
        for t in self.plan.tasks() {
            if self.plan.is_source(t.chain) {
                if let Some(a) = self.addrs.get(&t) {
                    a.do_send(Control::Release);
                }
            }
        }
    }

    /// Checkpoint `id` completed: if the rescale held the sources for it, the leaving
    /// subtasks (scaling down) confirm their commit, then the plans switch.
    pub(crate) fn on_checkpoint_completed(&mut self, id: u64) {
        let Some(r) = &mut self.rescale else { return };
        if !matches!(r.phase, Phase::Holding { id: Some(h) } if h == id) {
            return;
        }
        let (chain, now) = (r.chain, r.plan.parallelism(r.chain));
        let leaving: HashSet<TaskId> = (now..self.plan.parallelism(chain))
            .map(|subtask| TaskId { chain, subtask })
            .collect();
        for t in &leaving {
            if let Some(a) = self.addrs.get(t) {
                a.do_send(Control::Complete { id, ack: true });
            }
        }
        r.phase = Phase::Committing {
            id,
            waiting: leaving,
        };
        self.check_committed();
    }

    /// A subtask confirmed the commit of checkpoint `id`.
    pub(crate) fn rescale_on_committed(&mut self, task: TaskId, id: u64) {
        if let Some(Rescaling {
            phase: Phase::Committing { id: c, waiting },
            ..
        }) = &mut self.rescale
        {
            if *c == id {
                waiting.remove(&task);
            }
        }
        self.check_committed();
    }

    /// Every leaving subtask committed: switch plans.
    fn check_committed(&mut self) {
        let committed = matches!(
            self.rescale.as_ref().map(|r| &r.phase),
            Some(Phase::Committing { waiting, .. }) if waiting.is_empty()
        );
        if committed {
            if let Err(e) = self.switch_plan() {
                self.release_sources();
                self.end_rescale(Err(e));
            }
        }
    }

    /// The job is quiet: installs the new plan, moves keyed state, starts, retires and
    /// re-wires subtasks.
    fn switch_plan(&mut self) -> Result<(), InPlaceError> {
        if let Some(why) = self.not_in_place() {
            return Err(InPlaceError::Refused(why));
        }
        let (Some(r), Some(c)) = (&self.rescale, &self.coord) else {
            return Ok(());
        };
        let (new, chain) = (r.plan.clone(), r.chain);
        let checkpoint = c
            .last_completed
            .as_deref()
            .cloned()
            .ok_or_else(|| InPlaceError::Refused("no checkpoint".to_string()))?;
        let id = checkpoint.id;
        let split = new.adapt_in_place(checkpoint, chain).map_err(|reason| {
            InPlaceError::Failed(JobError::CheckpointMismatch {
                checkpoint: id,
                reason,
            })
        })?;
        let touched = self.touched(&new, chain);
        let (was, now) = (self.plan.parallelism(chain), new.parallelism(chain));
        let all = self.plan.tasks().len();
        let version = self.install_plan(&new, split.checkpoint);
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
            chain = %new.chain_name(chain), from = was, to = now, keys_moved = split.moved.moved,
            bytes_moved = split.moved.bytes_moved, ?figures, "rescale: switched to the new plan"
        );
        if let Some(r) = &mut self.rescale {
            r.done.checkpoint = id;
            r.done.moved = split.moved;
            r.done.figures = figures;
            r.phase = Phase::Switching {
                waiting: touched.into_iter().chain(added.iter().copied()).collect(),
            };
            r.started = added;
        }
        self.check_switched();
        Ok(())
    }

    /// Installs the rescaled plan everywhere it is looked up, with the checkpoint fitted to
    /// it as the latest; returns the plan's version.
    fn install_plan(&mut self, new: &Arc<ExecutionPlan>, fitted: Checkpoint) -> u64 {
        self.plan_version += 1;
        let version = self.plan_version;
        if let Some(r) = &self.rescale {
            self.steps.push((r.operator.clone(), r.n));
        }
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
                epoch: self.epoch,
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
                epoch: self.epoch,
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

    pub(crate) fn on_replanned(&mut self, msg: Replanned, _ctx: &mut Context<Self>) {
        if msg.version != self.plan_version {
            return;
        }
        if let Some(Rescaling {
            phase: Phase::Switching { waiting },
            ..
        }) = &mut self.rescale
        {
            waiting.remove(&msg.task);
        }
        self.check_switched();
    }

    /// Every touched subtask is on the new plan: release the sources.
    fn check_switched(&mut self) {
        let Some(r) = &mut self.rescale else { return };
        if matches!(&r.phase, Phase::Switching { waiting } if waiting.is_empty()) {
            r.phase = Phase::Resuming;
            tracing::info!("rescale: every touched subtask re-wired; releasing the sources");
            for t in &r.started {
                if let Some(a) = self.addrs.get(t) {
                    a.do_send(Control::Go(self.epoch));
                }
            }
            self.release_sources();
        }
    }

    /// A new subtask started (paused): it counts as switched. Returns whether the report was
    /// the rescale's.
    pub(crate) fn rescale_on_ready(&mut self, task: TaskId, epoch: u64) -> bool {
        let Some(Rescaling {
            phase: Phase::Switching { waiting },
            started,
            ..
        }) = &mut self.rescale
        else {
            return false;
        };
        if epoch != self.epoch || !started.contains(&task) {
            return false;
        }
        waiting.remove(&task);
        self.check_switched();
        true
    }

    /// A recovery started. Before the switch the rescale starts over once the recovery is
    /// done (the recovery resets the held sources); a rescale waiting for re-wiring is
    /// carried on by the recovery (every subtask restores the adapted checkpoint and handles
    /// its `Replan` before `Go`).
    pub(crate) fn rescale_on_recovery(&mut self) {
        if let Some(r) = &mut self.rescale {
            match r.phase {
                Phase::Committing { .. } => r.phase = Phase::Holding { id: None },
                Phase::Switching { .. } => r.phase = Phase::Resuming,
                Phase::Holding { .. } | Phase::Resuming => {}
            }
        }
    }

    /// A record was processed after a restore or a re-wire: a resuming rescale is done.
    pub(crate) fn rescale_on_first_record(&mut self) {
        if matches!(
            self.rescale.as_ref().map(|r| &r.phase),
            Some(Phase::Resuming)
        ) {
            let done = self.rescale.as_mut().map(|r| {
                let mut d = std::mem::take(&mut r.done);
                d.pause = r.held_at.map(|t| t.elapsed()).unwrap_or_default();
                d
            });
            if let Some(d) = done {
                tracing::info!(pause = ?d.pause, "rescale: done");
                self.end_rescale(Ok(d));
            }
        }
    }

    /// The job ended: a rescale that switched is done, one that did not failed.
    pub(crate) fn rescale_on_end(&mut self) {
        let switched = self
            .rescale
            .as_ref()
            .is_some_and(|r| matches!(r.phase, Phase::Switching { .. } | Phase::Resuming));
        if switched {
            if let Some(r) = &mut self.rescale {
                r.phase = Phase::Resuming;
            }
            self.rescale_on_first_record();
        } else if self.rescale.is_some() {
            self.end_rescale(Err(InPlaceError::ended()));
        }
    }

    fn end_rescale(&mut self, answer: Result<InPlace, InPlaceError>) {
        if let Some(mut r) = self.rescale.take() {
            if let Some(reply) = r.reply.take() {
                let _ = reply.send(answer);
            }
        }
    }

    /// Whether a rescale holds back periodic checkpoints.
    pub(crate) fn rescaling(&self) -> bool {
        self.rescale.is_some()
    }
}
