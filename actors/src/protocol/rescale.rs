//! Rescale in place as a plain state machine: change one operator's parallelism while the
//! rest of the job keeps running. No actors here, and no clock of its own.
//!
//! ```text
//! Holding ──▶ Committing ──▶ Switching ──▶ Resuming ──▶ done
//! sources     leaving        new plan;      sources      the rescaled operator
//! hold after  subtasks       state moves;   released     processed a record
//! checkpoint  confirm their  subtasks start,
//! n           commit of n    retire, re-wire
//! ```
//!
//! 1. **Hold.** Once no recovery, checkpoint or commit is under way, the machine asks for
//!    checkpoint `n` with the sources holding after it ([`Step::Hold`]): each source
//!    snapshots, emits the barrier and then produces nothing. When `n` completes, every
//!    subtask has handled every record sent before the barriers and none was sent after, so
//!    nothing is in flight and every output queue is empty.
//! 2. **Commit.** When scaling down, the leaving subtasks confirm that they committed `n`
//!    (their sinks' transactions): once they retired, no subtask would be left to commit for
//!    them after a failure.
//! 3. **Split and switch** ([`Step::Switch`], carried out by the supervisor): the checkpoint is
//!    fitted to the new plan (only the keys whose owner on the new ring changed move), new
//!    subtasks start paused with the entries they gain, leaving ones retire, and the subtasks
//!    whose channels change (see [`touched`]) re-wire in place.
//! 4. **Resume.** Once every touched and every new subtask confirmed, the new subtasks run and
//!    the sources are released ([`Step::Resume`]). The pause is measured from the hold to the
//!    rescaled operator's first record. A job with no input ready (an idle source) sends no
//!    record: when none came within [`RESUME_GRACE`] of the resume, the rescale is answered
//!    with the pause up to the resume (the operator then waited for input, not for the
//!    rescale), instead of at the rescale's deadline.
//!
//! A failure at any point is an ordinary recovery: before the switch the held checkpoint is
//! given up (the recovery resets the sources) and the rescale starts over after it; after the
//! switch the recovery restores the adapted checkpoint, so every subtask restores its state in
//! the new shape. Every path that holds the sources ends in a [`Step::Release`], a
//! [`Step::Resume`] or a recovery (the property test below drives random interleavings).

use crate::error::JobError;
use riffle_framework::{ChainRescale, ExecutionPlan, TaskId};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long a resumed rescale waits for the rescaled operator's first record before it
/// answers without one (an idle job; see the module documentation).
pub(crate) const RESUME_GRACE: Duration = Duration::from_secs(1);

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

/// What the job looks like to the rescale now (the supervisor's view).
#[derive(Clone, Debug, Default)]
pub(crate) struct JobView {
    /// Subtasks are resetting in a recovery.
    pub recovering: bool,
    /// The checkpoint in flight.
    pub in_flight: Option<u64>,
    /// The last checkpoint's commit is still being confirmed.
    pub committing: bool,
    /// Why the rescale cannot be done in place (a subtask it touches already ended its input).
    pub blocked: Option<String>,
}

/// What the supervisor does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Trigger a checkpoint after which the sources hold; report its id with
    /// [`Rescale::held`].
    Hold,
    /// Release the sources (the held checkpoint was given up, or the rescale failed).
    Release,
    /// Ask the leaving subtasks to confirm their commit of checkpoint `id`.
    ConfirmCommit { id: u64, leaving: Vec<TaskId> },
    /// Fit checkpoint `id` to the new plan, start, retire and re-wire; report with
    /// [`Rescale::switched`].
    Switch { id: u64 },
    /// Tell the new subtasks to run and release the sources.
    Resume { started: Vec<TaskId> },
    /// The switch happened but `waiting` never confirmed it within the deadline: recover the
    /// job (from the rescaled checkpoint; the recovery carries the rescale on).
    Recover { waiting: Vec<TaskId> },
    /// The rescale is over: answer the caller (and forget the machine).
    Done(Result<InPlace, InPlaceError>),
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the held checkpoint (`id`, once triggered) to complete.
    Holding { id: Option<u64> },
    /// Checkpoint `id` completed; waiting for the leaving subtasks' commits.
    Committing { id: u64, waiting: HashSet<TaskId> },
    /// The supervisor is switching plans (`waiting` is `None` until it reported), then
    /// waiting for the touched and new subtasks to confirm.
    Switching { waiting: Option<HashSet<TaskId>> },
    /// Sources released; waiting for the rescaled operator's first record.
    Resuming,
    /// Answered.
    Over,
}

/// A rescale in place in progress.
pub(crate) struct Rescale {
    /// The operator being rescaled.
    pub operator: String,
    /// Its new parallelism.
    pub n: usize,
    /// Its chain.
    pub chain: usize,
    /// The chain's parallelism before.
    pub was: usize,
    /// Its parallelism after.
    pub now: usize,
    /// When the rescale gives up waiting (see [`Rescale::tick`]).
    deadline: Instant,
    /// How long it had.
    timeout: Duration,
    phase: Phase,
    /// When the sources were first held (the pause starts).
    held_at: Option<Instant>,
    /// When the sources were released after the switch (see [`Rescale::resumed`]).
    resumed_at: Option<Instant>,
    done: InPlace,
    /// The new subtasks (started paused; they run once the sources are released).
    started: Vec<TaskId>,
}

impl Rescale {
    /// A rescale of `operator` to `n` subtasks, which takes its `chain` from `was` to `now`
    /// subtasks (chained operators rescale together), asked at `at`, given `timeout`.
    pub(crate) fn new(
        operator: String,
        n: usize,
        (chain, was, now): (usize, usize, usize),
        at: Instant,
        timeout: Duration,
    ) -> Self {
        Rescale {
            operator,
            n,
            chain,
            was,
            now,
            deadline: at + timeout,
            timeout,
            phase: Phase::Holding { id: None },
            held_at: None,
            resumed_at: None,
            done: InPlace::default(),
            started: Vec::new(),
        }
    }

    /// Advances the rescale at `now`: asks for the held checkpoint when the job can take
    /// it, starts over when it was given up (a recovery or a timeout), and past the deadline
    /// gives up — before the switch by releasing the sources and failing
    /// ([`JobError::RescaleTimedOut`]), after it by a recovery.
    pub(crate) fn tick(&mut self, job: &JobView, now: Instant) -> Vec<Step> {
        if let (Phase::Resuming, Some(at)) = (&self.phase, self.resumed_at) {
            if now >= at + RESUME_GRACE {
                tracing::info!("rescale: no record since the resume (the job is idle)");
                return self.first_record(at);
            }
        }
        if now >= self.deadline {
            return self.past_deadline(job, now);
        }
        let Phase::Holding { id } = self.phase else {
            return Vec::new();
        };
        match id {
            Some(id) if job.in_flight == Some(id) => Vec::new(),
            Some(id) => {
                tracing::warn!(
                    checkpoint = id,
                    "the rescale's checkpoint was given up; retrying"
                );
                self.phase = Phase::Holding { id: None };
                vec![Step::Release]
            }
            None if job.recovering || job.in_flight.is_some() || job.committing => Vec::new(),
            None => match &job.blocked {
                Some(why) => self.finish(Err(InPlaceError::Refused(why.clone()))),
                None => vec![Step::Hold],
            },
        }
    }

    fn past_deadline(&mut self, job: &JobView, now: Instant) -> Vec<Step> {
        let failed = Err(InPlaceError::Failed(JobError::RescaleTimedOut {
            timeout: self.timeout,
        }));
        match &self.phase {
            Phase::Holding { id } => {
                tracing::warn!(timeout = ?self.timeout, "rescale: its checkpoint never completed; giving up");
                // A recovery under way releases the sources itself; a hold not yet asked
                // for holds nothing.
                let held = id.is_some() && !job.recovering;
                let mut steps = if held {
                    vec![Step::Release]
                } else {
                    Vec::new()
                };
                steps.extend(self.finish(failed));
                steps
            }
            Phase::Committing { .. } => {
                tracing::warn!(timeout = ?self.timeout, "rescale: leaving subtasks never confirmed their commit; giving up");
                let mut steps = vec![Step::Release];
                steps.extend(self.finish(failed));
                steps
            }
            Phase::Switching {
                waiting: Some(waiting),
            } => {
                let mut waiting: Vec<TaskId> = waiting.iter().copied().collect();
                waiting.sort_unstable();
                tracing::warn!(
                    ?waiting,
                    "rescale: subtasks never confirmed the new plan; recovering"
                );
                // The recovery carries the rescale on (see `recovery_started`); the next
                // deadline is a fresh one.
                self.deadline = now + self.timeout;
                vec![Step::Recover { waiting }]
            }
            // Switched and released: the rescale is done even if no record comes.
            Phase::Resuming => self.first_record(now),
            Phase::Switching { waiting: None } | Phase::Over => Vec::new(),
        }
    }

    /// The sources were released after the switch at `now` ([`Step::Resume`] carried out).
    pub(crate) fn resumed(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Resuming) {
            self.resumed_at = Some(now);
        }
    }

    /// The held checkpoint `id` was triggered at `now`.
    pub(crate) fn held(&mut self, id: u64, now: Instant) {
        self.phase = Phase::Holding { id: Some(id) };
        self.held_at.get_or_insert(now);
    }

    /// Checkpoint `id` completed: if it is the held one, the leaving subtasks (scaling down)
    /// confirm their commit, then the plans switch.
    pub(crate) fn checkpoint_completed(&mut self, id: u64) -> Vec<Step> {
        if !matches!(self.phase, Phase::Holding { id: Some(h) } if h == id) {
            return Vec::new();
        }
        let leaving: Vec<TaskId> = (self.now..self.was)
            .map(|subtask| TaskId {
                chain: self.chain,
                subtask,
            })
            .collect();
        self.phase = Phase::Committing {
            id,
            waiting: leaving.iter().copied().collect(),
        };
        let mut steps = vec![Step::ConfirmCommit { id, leaving }];
        steps.extend(self.check_committed());
        steps
    }

    /// Subtask `task` confirmed its commit of checkpoint `id`.
    pub(crate) fn committed(&mut self, task: TaskId, id: u64) -> Vec<Step> {
        if let Phase::Committing { id: c, waiting } = &mut self.phase {
            if *c == id {
                waiting.remove(&task);
            }
        }
        self.check_committed()
    }

    fn check_committed(&mut self) -> Vec<Step> {
        match &self.phase {
            Phase::Committing { id, waiting } if waiting.is_empty() => {
                let id = *id;
                self.phase = Phase::Switching { waiting: None };
                vec![Step::Switch { id }]
            }
            _ => Vec::new(),
        }
    }

    /// The supervisor switched plans (`Ok`: what it did, the subtasks that must confirm, the
    /// new ones) or could not (`Err`).
    pub(crate) fn switched(
        &mut self,
        result: Result<(InPlace, Vec<TaskId>, Vec<TaskId>), InPlaceError>,
    ) -> Vec<Step> {
        match result {
            Err(e) => {
                let mut steps = vec![Step::Release];
                steps.extend(self.finish(Err(e)));
                steps
            }
            Ok((done, confirm, started)) => {
                self.done = done;
                let mut waiting: HashSet<TaskId> = confirm.into_iter().collect();
                waiting.extend(started.iter().copied());
                self.started = started;
                if matches!(self.phase, Phase::Switching { .. }) {
                    self.phase = Phase::Switching {
                        waiting: Some(waiting),
                    };
                }
                self.check_switched()
            }
        }
    }

    /// Subtask `task` moved to the new plan (a re-wired one confirmed, or a new one is ready).
    pub(crate) fn confirmed(&mut self, task: TaskId) -> Vec<Step> {
        if let Phase::Switching {
            waiting: Some(waiting),
        } = &mut self.phase
        {
            waiting.remove(&task);
        }
        self.check_switched()
    }

    /// Whether `task` is a new subtask whose ready report the rescale waits for.
    pub(crate) fn waits_for_new(&self, task: TaskId) -> bool {
        matches!(self.phase, Phase::Switching { waiting: Some(_) }) && self.started.contains(&task)
    }

    fn check_switched(&mut self) -> Vec<Step> {
        if matches!(&self.phase, Phase::Switching { waiting: Some(w) } if w.is_empty()) {
            self.phase = Phase::Resuming;
            tracing::info!("rescale: every touched subtask re-wired; releasing the sources");
            return vec![Step::Resume {
                started: self.started.clone(),
            }];
        }
        Vec::new()
    }

    /// A recovery started. Before the switch the rescale starts over once the recovery is
    /// done (the recovery resets the held sources); after it the recovery carries it on
    /// (every subtask restores the adapted checkpoint and handles its re-wiring before it
    /// runs again).
    pub(crate) fn recovery_started(&mut self) {
        match self.phase {
            Phase::Committing { .. } => self.phase = Phase::Holding { id: None },
            Phase::Switching { waiting: Some(_) } => self.phase = Phase::Resuming,
            Phase::Holding { .. } | Phase::Switching { waiting: None } => {}
            Phase::Resuming | Phase::Over => {}
        }
    }

    /// A record was processed after a restore or a re-wire at `now`: a resuming rescale is
    /// done.
    pub(crate) fn first_record(&mut self, now: Instant) -> Vec<Step> {
        if !matches!(self.phase, Phase::Resuming) {
            return Vec::new();
        }
        let mut done = std::mem::take(&mut self.done);
        done.pause = self
            .held_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        tracing::info!(pause = ?done.pause, "rescale: done");
        self.finish(Ok(done))
    }

    /// The job ended at `now`: a rescale that switched is done, one that did not failed.
    pub(crate) fn ended(&mut self, now: Instant) -> Vec<Step> {
        match self.phase {
            Phase::Switching { waiting: Some(_) } | Phase::Resuming => {
                self.phase = Phase::Resuming;
                self.first_record(now)
            }
            Phase::Over => Vec::new(),
            _ => self.finish(Err(InPlaceError::Failed(JobError::JobEnded))),
        }
    }

    fn finish(&mut self, answer: Result<InPlace, InPlaceError>) -> Vec<Step> {
        self.phase = Phase::Over;
        vec![Step::Done(answer)]
    }
}

/// The subtasks of `old` that a move to `new` (rescaling `chain`) re-wires: those of the
/// rescaled chain that stay, and every other subtask whose channels change.
pub(crate) fn touched(old: &ExecutionPlan, new: &ExecutionPlan, chain: usize) -> Vec<TaskId> {
    let now = new.parallelism(chain);
    old.tasks()
        .into_iter()
        .filter(|t| {
            if t.chain == chain {
                return t.subtask < now;
            }
            old.out_channels(*t) != new.out_channels(*t)
                || old.in_channel_count(*t) != new.in_channel_count(*t)
        })
        .collect()
}

#[cfg(test)]
mod tests;
