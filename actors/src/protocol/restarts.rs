//! Restart supervision as a plain state machine: no actors, and no clock of its own (every
//! event carries its `now`, so tests drive time).
//!
//! For a failed subtask it decides what the job does — fail (a poison record, a chain that
//! never restarts, or past the intensity limit) or restart the subtask after a backoff — and it
//! keeps what that decision depends on:
//! - the restarts within the sliding window, job-wide: at most `max_restarts` within `window`,
//!   past which the failure escalates;
//! - each subtask's own restarts within the window: its backoff grows with them,
//!   exponentially, with jitter from the job's seed;
//! - each subtask's attempt number (a restarted subtask is attempt 1, then 2, …).
//!
//! The job supervisor feeds failures in and carries the verdict out (it sends the decisions
//! and the restart orders, and turns an escalation into the job's error). With checkpointing
//! on, a failure is a recovery of the whole job, which asks [`Restarts::admit`] and
//! [`Restarts::backoff`] the same way.

use crate::rng::Rng;
use riffle_framework::{RestartKind, RestartStrategy, TaskId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Why a failure fails the job instead of restarting the subtask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Escalation {
    /// The same record failed the operator this many times (and the policy fails the job).
    Poison {
        /// How many times.
        attempts: u32,
    },
    /// The chain's strategy is `Never`.
    Never,
    /// Past the intensity limit: this many restarts were already in the window.
    Limit {
        /// Restarts in the window.
        restarts: u32,
    },
}

/// What the job does about a failure (checkpointing off).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The job fails.
    Fail(Escalation),
    /// The subtask restarts as `attempt` after `backoff`; `also` are the other running
    /// subtasks that restart with it (one-for-all), each with its own next attempt.
    Restart {
        /// The failed subtask's next attempt.
        attempt: u32,
        /// The delay before it runs again.
        backoff: Duration,
        /// Subtasks restarted with it, and their attempts.
        also: Vec<(TaskId, u32)>,
    },
}

/// The restart supervision of one job (see the module docs).
pub(crate) struct Restarts {
    strategy: RestartStrategy,
    window: VecDeque<Instant>,
    per_task: HashMap<TaskId, VecDeque<Instant>>,
    attempts: HashMap<TaskId, u32>,
    jitter: Rng,
}

impl Restarts {
    /// Supervision by `strategy` (its kind is the default; chains may override it), with
    /// backoff jitter drawn from `seed`.
    pub(crate) fn new(strategy: RestartStrategy, seed: u64) -> Self {
        Restarts {
            strategy,
            window: VecDeque::new(),
            per_task: HashMap::new(),
            attempts: HashMap::new(),
            jitter: Rng::new(seed),
        }
    }

    /// Why a failure must fail the job before any restart is considered: a poison record
    /// (`poison`: the times it failed) or a chain whose strategy is `Never`.
    pub(crate) fn triage(kind: RestartKind, poison: Option<u32>) -> Option<Escalation> {
        match (poison, kind) {
            (Some(attempts), _) => Some(Escalation::Poison { attempts }),
            (None, RestartKind::Never) => Some(Escalation::Never),
            _ => None,
        }
    }

    /// Records a restart of `task` at `now` against the intensity limit: `Ok(consecutive)`,
    /// the subtask's earlier restarts within the window, or `Err(count)`, the restarts in the
    /// window, if the limit is reached (nothing is recorded then).
    pub(crate) fn admit(&mut self, task: TaskId, now: Instant) -> Result<u32, u32> {
        let window = self.strategy.window;
        let expired = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                q.pop_front();
            }
        };
        expired(&mut self.window);
        let count = self.window.len() as u32;
        if count >= self.strategy.max_restarts {
            return Err(count);
        }
        self.window.push_back(now);
        let mine = self.per_task.entry(task).or_default();
        expired(mine);
        let consecutive = mine.len() as u32;
        mine.push_back(now);
        Ok(consecutive)
    }

    /// The delay before a subtask's `consecutive`-th restart in the window, with jitter.
    pub(crate) fn backoff(&mut self, consecutive: u32) -> Duration {
        self.strategy.backoff.delay(consecutive, self.jitter.unit())
    }

    /// The next attempt number of `task` (counts every restart, recovery and re-creation).
    pub(crate) fn next_attempt(&mut self, task: TaskId) -> u32 {
        let a = self.attempts.entry(task).or_insert(0);
        *a += 1;
        *a
    }

    /// The current attempt number of `task` (0 before its first restart).
    pub(crate) fn attempt(&self, task: TaskId) -> u32 {
        self.attempts.get(&task).copied().unwrap_or(0)
    }

    /// A failure of `task`, whose chain restarts by `kind`, at `now`, with checkpointing off;
    /// `poison` if a record failed it repeatedly; `running`: the subtasks still running.
    pub(crate) fn on_failure(
        &mut self,
        task: TaskId,
        kind: RestartKind,
        poison: Option<u32>,
        running: &[TaskId],
        now: Instant,
    ) -> Verdict {
        if let Some(e) = Self::triage(kind, poison) {
            return Verdict::Fail(e);
        }
        let consecutive = match self.admit(task, now) {
            Ok(n) => n,
            Err(restarts) => return Verdict::Fail(Escalation::Limit { restarts }),
        };
        let backoff = self.backoff(consecutive);
        let attempt = self.next_attempt(task);
        let also = if kind == RestartKind::OneForAll {
            running
                .iter()
                .filter(|t| **t != task)
                .map(|&t| (t, self.next_attempt(t)))
                .collect()
        } else {
            Vec::new()
        };
        Verdict::Restart {
            attempt,
            backoff,
            also,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use riffle_framework::Backoff;

    fn t(subtask: usize) -> TaskId {
        TaskId { chain: 0, subtask }
    }

    fn strategy(max_restarts: u32, window_ms: u64) -> RestartStrategy {
        RestartStrategy {
            kind: RestartKind::OneForOne,
            max_restarts,
            window: Duration::from_millis(window_ms),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                multiplier: 2.0,
                max: Duration::from_millis(64),
                jitter: 0.2,
            },
        }
    }

    #[test]
    fn poison_and_never_fail_the_job_before_any_restart() {
        let mut r = Restarts::new(strategy(10, 1000), 1);
        let now = Instant::now();
        let v = r.on_failure(t(0), RestartKind::OneForOne, Some(3), &[], now);
        assert_eq!(v, Verdict::Fail(Escalation::Poison { attempts: 3 }));
        let v = r.on_failure(t(0), RestartKind::Never, None, &[], now);
        assert_eq!(v, Verdict::Fail(Escalation::Never));
        assert_eq!(r.attempt(t(0)), 0, "nothing was restarted");
        assert!(r.admit(t(0), now).is_ok(), "nor counted against the limit");
    }

    #[test]
    fn the_intensity_window_slides() {
        let mut r = Restarts::new(strategy(3, 100), 1);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(
                r.on_failure(t(i), RestartKind::OneForOne, None, &[], t0),
                Verdict::Restart { attempt: 1, .. }
            ));
        }
        let v = r.on_failure(t(0), RestartKind::OneForOne, None, &[], t0);
        assert_eq!(v, Verdict::Fail(Escalation::Limit { restarts: 3 }));
        // Once the first restarts leave the window, restarts are admitted again.
        let later = t0 + Duration::from_millis(101);
        let v = r.on_failure(t(0), RestartKind::OneForOne, None, &[], later);
        assert!(matches!(v, Verdict::Restart { attempt: 2, .. }), "{v:?}");
    }

    #[test]
    fn one_for_all_restarts_every_other_running_subtask() {
        let mut s = strategy(10, 1000);
        s.kind = RestartKind::OneForAll;
        let mut r = Restarts::new(s, 1);
        let running = [t(0), t(1), t(2)];
        let v = r.on_failure(t(1), RestartKind::OneForAll, None, &running, Instant::now());
        assert_eq!(
            v,
            Verdict::Restart {
                attempt: 1,
                backoff: match &v {
                    Verdict::Restart { backoff, .. } => *backoff,
                    Verdict::Fail(_) => Duration::ZERO,
                },
                also: vec![(t(0), 1), (t(2), 1)],
            }
        );
    }

    proptest! {
        /// Any sequence of failures: the window never admits more than `max_restarts`
        /// restarts, a subtask's backoff follows its consecutive restarts within the jitter,
        /// and its attempts count up by one per restart.
        #[test]
        fn restarts_respect_the_limit_backoff_and_attempts(
            max in 1u32..6,
            window_ms in 1u64..50,
            events in prop::collection::vec((0usize..4, 0u64..20), 1..60),
            seed in any::<u64>(),
        ) {
            let s = strategy(max, window_ms);
            let mut r = Restarts::new(s, seed);
            let t0 = Instant::now();
            let mut now = t0;
            let mut admitted: Vec<(Instant, usize)> = Vec::new();
            let mut attempts = [0u32; 4];
            for (task, gap) in events {
                now += Duration::from_millis(gap);
                match r.on_failure(t(task), RestartKind::OneForOne, None, &[], now) {
                    Verdict::Restart { attempt, backoff, also } => {
                        prop_assert!(also.is_empty());
                        attempts[task] += 1;
                        prop_assert_eq!(attempt, attempts[task]);
                        let in_window = |&(at, _): &(Instant, usize)| {
                            now.duration_since(at) <= s.window
                        };
                        let recent = admitted.iter().filter(|a| in_window(a)).count();
                        prop_assert!((recent as u32) < max, "admitted past the limit");
                        let mine = admitted.iter().filter(|a| in_window(a) && a.1 == task).count();
                        let base = s.backoff.base_delay(mine as u32).as_secs_f64();
                        let b = backoff.as_secs_f64();
                        prop_assert!(b >= base * 0.8 - 1e-9 && b <= base * 1.2 + 1e-9,
                            "backoff {} for base {}", b, base);
                        admitted.push((now, task));
                    }
                    Verdict::Fail(Escalation::Limit { restarts }) => {
                        let recent = admitted.iter()
                            .filter(|(at, _)| now.duration_since(*at) <= s.window)
                            .count() as u32;
                        prop_assert_eq!(restarts, recent);
                        prop_assert!(recent >= max);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
