//! Recovery of the whole job from its latest checkpoint as a plain state machine: epochs, who
//! must still report that it reset, when everyone may run again, and how long the restore
//! took. No actors here, and no clock of its own: every event carries its `now`.
//!
//! ```text
//!            begin (new epoch)          every subtask reset            first record
//! Running ─────────────────────▶ Resetting ───────────▶ Running (Go) ─────────────▶ timed
//!    ▲                               │  begin again (a failure during the reset):
//!    └───────────────────────────────┘  the newer epoch replaces it
//! ```
//!
//! There is one recovery at a time: a failure while one is under way starts a new epoch that
//! replaces it (every subtask resets again), and reports of an older epoch are ignored. A
//! distributed job starts the same way, in epoch 0: every subtask reports ready before any
//! runs.

use riffle_framework::{Checkpoint, TaskId};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the supervisor does after a subtask reported that it reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AfterReset {
    /// Nothing yet (others must still report, or the report is stale).
    Wait,
    /// Every subtask reset: tell them all to run (`Go(epoch)`).
    GoAll(u64),
    /// A subtask that joined late: the others already run; tell it alone.
    GoOne(u64),
}

/// What a subtask resets to in the current recovery.
#[derive(Clone, Debug)]
pub(crate) struct ResetPoint {
    /// The recovery's epoch.
    pub epoch: u64,
    /// The checkpoint restored (`None`: start from scratch).
    pub checkpoint: Option<Arc<Checkpoint>>,
    /// The pause before restarting.
    pub backoff: Duration,
}

/// A recovery under way.
struct Current {
    point: ResetPoint,
    started: Instant,
    /// Subtasks that have not yet reported that they reset.
    waiting: HashSet<TaskId>,
    /// When every subtask was told to run.
    go_at: Option<Instant>,
    /// Past this, the subtasks still waited for are reported ([`Recoveries::expired`]).
    deadline: Instant,
    /// From the start of the recovery to the first record processed after it.
    restore_time: Option<Duration>,
}

/// Epochs and the recovery in progress.
pub(crate) struct Recoveries {
    epoch: u64,
    current: Option<Current>,
    /// How long subtasks have to report ready.
    timeout: Duration,
}

impl Default for Recoveries {
    fn default() -> Self {
        Recoveries::new(Duration::from_secs(60))
    }
}

impl Recoveries {
    /// No recovery yet; subtasks will have `timeout` to report ready.
    pub(crate) fn new(timeout: Duration) -> Self {
        Recoveries {
            epoch: 0,
            current: None,
            timeout,
        }
    }

    /// The subtasks a start or recovery still waits for once its deadline passed at `now`
    /// (sorted), with its epoch and how long it has waited; `None` while in time or when
    /// none is under way.
    pub(crate) fn expired(&self, now: Instant) -> Option<(u64, Vec<TaskId>, Duration)> {
        let c = self.current.as_ref()?;
        if c.go_at.is_some() || now < c.deadline {
            return None;
        }
        let mut waiting: Vec<TaskId> = c.waiting.iter().copied().collect();
        waiting.sort_unstable();
        Some((
            c.point.epoch,
            waiting,
            now.saturating_duration_since(c.started),
        ))
    }

    /// The current epoch (0 until the first recovery).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether subtasks are still resetting (nobody has been told to run yet).
    pub(crate) fn in_progress(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.go_at.is_none())
    }

    /// The point the current recovery resets to (for a subtask that joins it late).
    pub(crate) fn point(&self) -> Option<&ResetPoint> {
        self.current.as_ref().map(|c| &c.point)
    }

    /// Starts a recovery of `tasks` in a new epoch, restoring `checkpoint` after `backoff`;
    /// replaces one under way. Returns the new epoch.
    pub(crate) fn begin(
        &mut self,
        now: Instant,
        tasks: impl IntoIterator<Item = TaskId>,
        checkpoint: Option<Arc<Checkpoint>>,
        backoff: Duration,
    ) -> u64 {
        self.epoch += 1;
        self.wait_for(now, tasks, checkpoint, backoff);
        self.epoch
    }

    /// Waits in the current epoch for `tasks` to report ready before any runs (a distributed
    /// job's start).
    pub(crate) fn wait_for(
        &mut self,
        now: Instant,
        tasks: impl IntoIterator<Item = TaskId>,
        checkpoint: Option<Arc<Checkpoint>>,
        backoff: Duration,
    ) {
        self.current = Some(Current {
            point: ResetPoint {
                epoch: self.epoch,
                checkpoint,
                backoff,
            },
            started: now,
            waiting: tasks.into_iter().collect(),
            go_at: None,
            deadline: now + backoff + self.timeout,
            restore_time: None,
        });
    }

    /// Subtask `task` reported that it reset in `epoch`.
    pub(crate) fn reset_done(&mut self, task: TaskId, epoch: u64, now: Instant) -> AfterReset {
        let Some(c) = &mut self.current else {
            return AfterReset::Wait;
        };
        if epoch != self.epoch || c.point.epoch != epoch {
            return AfterReset::Wait;
        }
        c.waiting.remove(&task);
        if c.go_at.is_some() {
            return AfterReset::GoOne(epoch);
        }
        if c.waiting.is_empty() {
            c.go_at = Some(now);
            return AfterReset::GoAll(epoch);
        }
        AfterReset::Wait
    }

    /// A record was processed in `epoch`: the restore time of that recovery, the first time.
    pub(crate) fn first_record(&mut self, epoch: u64, now: Instant) -> Option<Duration> {
        let c = self.current.as_mut()?;
        if c.point.epoch != epoch || c.restore_time.is_some() {
            return None;
        }
        let t = now.saturating_duration_since(c.started);
        c.restore_time = Some(t);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn t(subtask: usize) -> TaskId {
        TaskId { chain: 0, subtask }
    }

    #[test]
    fn everyone_runs_once_every_subtask_reset() {
        let mut r = Recoveries::default();
        let now = Instant::now();
        assert!(!r.in_progress());
        let e = r.begin(now, [t(0), t(1)], None, Duration::ZERO);
        assert_eq!(e, 1);
        assert!(r.in_progress());
        assert_eq!(r.reset_done(t(0), e, now), AfterReset::Wait);
        assert_eq!(r.reset_done(t(1), e, now), AfterReset::GoAll(e));
        assert!(!r.in_progress());
        // A subtask that joins late runs at once.
        assert_eq!(r.reset_done(t(1), e, now), AfterReset::GoOne(e));
    }

    #[test]
    fn a_failure_during_a_reset_replaces_the_recovery_and_old_reports_are_ignored() {
        let mut r = Recoveries::default();
        let now = Instant::now();
        let e1 = r.begin(now, [t(0), t(1)], None, Duration::ZERO);
        assert_eq!(r.reset_done(t(0), e1, now), AfterReset::Wait);
        let e2 = r.begin(now, [t(0), t(1)], None, Duration::from_millis(5));
        assert!(e2 > e1);
        // t(1)'s report of the old epoch does not count; t(0) must report again.
        assert_eq!(r.reset_done(t(1), e1, now), AfterReset::Wait);
        assert_eq!(r.reset_done(t(1), e2, now), AfterReset::Wait);
        assert!(r.in_progress());
        assert_eq!(r.reset_done(t(0), e2, now), AfterReset::GoAll(e2));
        assert_eq!(r.point().map(|p| p.backoff), Some(Duration::from_millis(5)));
    }

    #[test]
    fn the_restore_time_is_taken_once_at_the_first_record_of_the_epoch() {
        let mut r = Recoveries::default();
        let now = Instant::now();
        let e = r.begin(now, [t(0)], None, Duration::ZERO);
        assert_eq!(r.first_record(e + 1, now), None);
        let later = now + Duration::from_millis(7);
        assert_eq!(r.first_record(e, later), Some(Duration::from_millis(7)));
        assert_eq!(r.first_record(e, later), None);
    }

    #[test]
    fn a_distributed_start_waits_in_epoch_zero() {
        let mut r = Recoveries::default();
        let now = Instant::now();
        r.wait_for(now, [t(0), t(1)], None, Duration::ZERO);
        assert_eq!(r.epoch(), 0);
        assert!(r.in_progress());
        assert_eq!(r.reset_done(t(0), 0, now), AfterReset::Wait);
        assert_eq!(r.reset_done(t(1), 0, now), AfterReset::GoAll(0));
    }

    #[derive(Clone, Debug)]
    enum Event {
        Fail,
        Reset { task: usize, epochs_back: u64 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::Fail),
            6 => (0usize..4, 0u64..2).prop_map(|(task, epochs_back)| Event::Reset { task, epochs_back }),
        ]
    }

    proptest! {
        /// Random failures and reset reports (of this or an older epoch, repeated): there is
        /// one recovery at a time — everyone is told to run exactly once per epoch, only after
        /// every subtask reported in that epoch, and never for an epoch a newer failure
        /// replaced; epochs only grow.
        #[test]
        fn one_recovery_at_a_time(events in prop::collection::vec(event(), 1..80)) {
            const TASKS: usize = 4;
            let mut r = Recoveries::default();
            let now = Instant::now();
            let mut reported: HashMap<u64, HashSet<usize>> = HashMap::new();
            let mut went: HashSet<u64> = HashSet::new();
            let mut last = 0;
            for e in events {
                match e {
                    Event::Fail => {
                        let epoch = r.begin(now, (0..TASKS).map(t), None, Duration::ZERO);
                        prop_assert!(epoch > last);
                        last = epoch;
                        prop_assert!(r.in_progress());
                    }
                    Event::Reset { task, epochs_back } => {
                        let epoch = last.saturating_sub(epochs_back);
                        if epoch == last {
                            reported.entry(epoch).or_default().insert(task);
                        }
                        match r.reset_done(t(task), epoch, now) {
                            AfterReset::Wait => {}
                            AfterReset::GoAll(e) => {
                                prop_assert_eq!(e, last, "an old epoch ran");
                                prop_assert_eq!(reported.get(&e).map_or(0, HashSet::len), TASKS);
                                prop_assert!(went.insert(e), "told to run twice");
                                prop_assert!(!r.in_progress());
                            }
                            AfterReset::GoOne(e) => {
                                prop_assert_eq!(e, last);
                                prop_assert!(went.contains(&e), "a late joiner before the rest");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn subtasks_that_never_report_are_named_once_the_deadline_passed() {
        let mut r = Recoveries::new(Duration::from_millis(100));
        let now = Instant::now();
        assert_eq!(
            r.expired(now + Duration::from_secs(9)),
            None,
            "nothing under way"
        );
        let e = r.begin(now, [t(0), t(1), t(2)], None, Duration::from_millis(20));
        r.reset_done(t(1), e, now);
        assert_eq!(
            r.expired(now + Duration::from_millis(119)),
            None,
            "backoff + timeout"
        );
        let late = now + Duration::from_millis(120);
        assert_eq!(
            r.expired(late),
            Some((e, vec![t(0), t(2)], Duration::from_millis(120)))
        );
        r.reset_done(t(0), e, late);
        r.reset_done(t(2), e, late);
        assert_eq!(
            r.expired(late + Duration::from_secs(9)),
            None,
            "everyone ran"
        );
    }
}
