//! Checkpoint coordination as a plain state machine: which checkpoint is in flight, which
//! subtasks acknowledged it, when the next one is due, which subtasks must be triggered
//! directly, and which must still confirm the last commit. No actors here, and no clock of
//! its own: every event carries its `now`.
//!
//! The job supervisor triggers what [`Coordinator::due`] says, sends the triggers, feeds
//! acknowledgements to [`Coordinator::ack`] — which hands back the checkpoint once every
//! subtask of the current epoch acknowledged it — saves it, and tells the subtasks to commit.
//! A recovery gives up the checkpoint in flight ([`Coordinator::abort_pending`]); its
//! acknowledgements belong to an older epoch and are never counted again.

use crate::error::JobError;
use riffle_framework::{Checkpoint, CheckpointConfig, CheckpointStore, TaskId, TaskSnapshot};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// A checkpoint being taken.
pub(crate) struct Pending {
    pub id: u64,
    pub started: Instant,
    pub acks: HashMap<TaskId, TaskSnapshot>,
    pub savepoint: bool,
    pub final_: bool,
}

/// Someone waiting for a savepoint.
pub(crate) struct SavepointWaiter {
    pub reply: oneshot::Sender<Result<u64, JobError>>,
    /// The job stops at that savepoint.
    pub stop: bool,
    /// Past this the request fails ([`Coordinator::expired_savepoints`]).
    pub deadline: Instant,
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
    /// Who waits for the next savepoint (see [`Coordinator::ask_savepoint`]).
    pub savepoint_waiters: Vec<SavepointWaiter>,
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

    /// Asks for a savepoint at `now` (and, with `stop`, for the job to stop at it). A request
    /// that no savepoint answers within three checkpoint timeouts fails.
    pub(crate) fn ask_savepoint(
        &mut self,
        reply: oneshot::Sender<Result<u64, JobError>>,
        stop: bool,
        now: Instant,
    ) {
        self.stop_after_savepoint |= stop;
        self.savepoint_waiters.push(SavepointWaiter {
            reply,
            stop,
            deadline: now + self.cfg.timeout * 3,
        });
    }

    /// The savepoint requests past their deadline at `now`, taken out (the job no longer
    /// stops at a savepoint nobody waits for).
    pub(crate) fn expired_savepoints(&mut self, now: Instant) -> Vec<SavepointWaiter> {
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.savepoint_waiters)
            .into_iter()
            .partition(|w| now >= w.deadline);
        self.savepoint_waiters = keep;
        if !late.is_empty() {
            self.stop_after_savepoint = self.savepoint_waiters.iter().any(|w| w.stop);
        }
        late
    }

    /// Gives up the checkpoint in flight (a recovery or a timeout).
    pub(crate) fn abort_pending(&mut self, why: &str) {
        if let Some(p) = self.pending.take() {
            tracing::warn!(checkpoint = p.id, why, "checkpoint discarded");
        }
    }

    /// Gives up the checkpoint in flight because the job finished and the final checkpoint
    /// takes its place (nothing is lost: the final one covers everything).
    pub(crate) fn replace_pending_by_final(&mut self) {
        if let Some(p) = self.pending.take() {
            tracing::info!(
                checkpoint = p.id,
                "the job finished; the final checkpoint replaces the one in flight"
            );
        }
    }
}

impl Coordinator {
    /// Gives up a checkpoint in flight that took longer than the timeout (never the final
    /// one); true if it did.
    pub(crate) fn time_out(&mut self, now: Instant) -> bool {
        let late = self.pending.as_ref().is_some_and(|p| {
            !p.final_ && now.saturating_duration_since(p.started) > self.cfg.timeout
        });
        if late {
            self.abort_pending("timed out");
        }
        late
    }

    /// Whether a checkpoint is due at `now`: `Some(true)` for a savepoint someone asked for,
    /// `Some(false)` for a periodic checkpoint, `None` while one is in flight, the last one's
    /// commit is not confirmed, or the interval has not passed.
    pub(crate) fn due(&self, now: Instant) -> Option<bool> {
        if self.pending.is_some() || !self.uncommitted.is_empty() {
            return None;
        }
        let savepoint = !self.savepoint_waiters.is_empty();
        let interval = now.saturating_duration_since(self.last_trigger) >= self.cfg.interval;
        (savepoint || interval).then_some(savepoint)
    }

    /// Starts the next checkpoint at `now` and returns its id (a checkpoint in flight is
    /// given up).
    pub(crate) fn begin(&mut self, now: Instant, savepoint: bool, final_: bool) -> u64 {
        self.abort_pending("a newer checkpoint started");
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = now;
        self.pending = Some(Pending {
            id,
            started: now,
            acks: HashMap::new(),
            savepoint,
            final_,
        });
        id
    }

    /// Subtask `task` acknowledged checkpoint `id` with `snapshot` (in the current epoch):
    /// the checkpoint, once all `total` subtasks acknowledged it. An acknowledgement of a
    /// checkpoint that is not in flight is ignored.
    pub(crate) fn ack(
        &mut self,
        id: u64,
        task: TaskId,
        snapshot: TaskSnapshot,
        total: usize,
    ) -> Option<Pending> {
        let p = self.pending.as_mut().filter(|p| p.id == id)?;
        p.acks.insert(task, snapshot);
        if p.acks.len() >= total {
            return self.pending.take();
        }
        None
    }

    /// Subtask `task`'s input ended: it needs direct triggers from now on; the id of the
    /// checkpoint in flight if it has not acknowledged it yet (trigger it now).
    pub(crate) fn draining(&mut self, task: TaskId) -> Option<u64> {
        self.draining.insert(task);
        let p = self.pending.as_ref()?;
        (!p.acks.contains_key(&task)).then_some(p.id)
    }

    /// Subtask `task` confirmed the last commit; true once every subtask has.
    pub(crate) fn committed(&mut self, task: TaskId) -> bool {
        self.uncommitted.remove(&task) && self.uncommitted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use riffle_framework::MemoryStore;
    use std::time::Duration;

    fn coordinator() -> Coordinator {
        let cfg = CheckpointConfig::every(Duration::from_millis(10));
        Coordinator::new(Arc::new(MemoryStore::new(3)), cfg, None)
    }

    fn snap(subtask: usize) -> TaskSnapshot {
        TaskSnapshot {
            chain: 0,
            subtask,
            finished: false,
            position: None,
            states: Vec::new(),
            watermark: None,
        }
    }

    fn t(subtask: usize) -> TaskId {
        TaskId { chain: 0, subtask }
    }

    #[test]
    fn a_checkpoint_completes_with_the_last_ack_of_its_id() {
        let mut c = coordinator();
        let now = Instant::now();
        assert_eq!(c.due(now), None, "the interval has not passed");
        let later = now + Duration::from_millis(11);
        assert_eq!(c.due(later), Some(false));
        let id = c.begin(later, false, false);
        assert_eq!(c.due(later + Duration::from_secs(1)), None, "one in flight");
        assert!(c.ack(id, t(0), snap(0), 2).is_none());
        assert!(
            c.ack(id + 1, t(1), snap(1), 2).is_none(),
            "another checkpoint's ack"
        );
        let done = c.ack(id, t(1), snap(1), 2).expect("complete");
        assert_eq!((done.id, done.acks.len()), (id, 2));
        assert!(c.pending.is_none());
    }

    #[test]
    fn a_late_checkpoint_times_out_but_never_the_final_one() {
        let mut c = coordinator();
        let t0 = Instant::now();
        c.begin(t0, false, false);
        let late = t0 + c.cfg.timeout + Duration::from_millis(1);
        assert!(!c.time_out(t0));
        assert!(c.time_out(late));
        c.begin(late, false, true);
        assert!(
            !c.time_out(late + c.cfg.timeout * 2),
            "the final checkpoint waits"
        );
    }

    #[test]
    fn draining_subtasks_are_triggered_until_they_ack_and_commits_are_counted() {
        let mut c = coordinator();
        let id = c.begin(Instant::now(), false, false);
        assert_eq!(c.draining(t(0)), Some(id));
        assert!(c.ack(id, t(0), snap(0), 2).is_none());
        assert_eq!(c.draining(t(0)), None, "it acknowledged already");
        c.uncommitted = [t(0), t(1)].into_iter().collect();
        assert!(!c.committed(t(0)));
        assert!(!c.committed(t(0)), "a repeated confirmation counts once");
        assert!(c.committed(t(1)));
    }

    #[derive(Clone, Debug)]
    enum Event {
        Begin,
        Ack { id_back: u64, task: usize },
        Abort,
        Wait(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => Just(Event::Begin),
            8 => (0usize..4).prop_map(|task| Event::Ack { id_back: 0, task }),
            2 => (1u64..3, 0usize..4).prop_map(|(id_back, task)| Event::Ack { id_back, task }),
            1 => Just(Event::Abort),
            1 => (0u64..30).prop_map(Event::Wait),
        ]
    }

    proptest! {
        /// Any interleaving of triggers, acknowledgements (of this or older checkpoints,
        /// repeated), aborts (recoveries) and time: a checkpoint completes only with an
        /// acknowledgement of its own id from every subtask, at most once, and ids only grow.
        #[test]
        fn no_checkpoint_completes_without_every_ack(events in prop::collection::vec(event(), 1..80)) {
            const TOTAL: usize = 4;
            let mut c = coordinator();
            let mut now = Instant::now();
            let mut acked: HashMap<u64, HashSet<usize>> = HashMap::new();
            let mut completed: HashSet<u64> = HashSet::new();
            let mut last_id = 0;
            for e in events {
                match e {
                    Event::Begin => {
                        let id = c.begin(now, false, false);
                        prop_assert!(id > last_id);
                        last_id = id;
                    }
                    Event::Ack { id_back, task } => {
                        let id = last_id.saturating_sub(id_back);
                        let in_flight = c.pending.as_ref().map(|p| p.id);
                        if in_flight == Some(id) {
                            acked.entry(id).or_default().insert(task);
                        }
                        if let Some(p) = c.ack(id, t(task), snap(task), TOTAL) {
                            prop_assert_eq!(p.id, id);
                            prop_assert_eq!(p.acks.len(), TOTAL);
                            prop_assert_eq!(acked.get(&id).map_or(0, HashSet::len), TOTAL);
                            prop_assert!(completed.insert(id), "completed twice");
                        }
                    }
                    Event::Abort => c.abort_pending("a recovery"),
                    Event::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        c.time_out(now);
                    }
                }
            }
        }
    }

    #[test]
    fn a_savepoint_nobody_can_take_fails_after_its_deadline_and_the_job_no_longer_stops() {
        let mut c = coordinator();
        let t0 = Instant::now();
        let (tx, _rx) = oneshot::channel();
        c.ask_savepoint(tx, true, t0);
        assert!(c.stop_after_savepoint);
        assert_eq!(c.due(t0), Some(true), "a savepoint is due");
        assert!(
            c.expired_savepoints(t0 + c.cfg.timeout).is_empty(),
            "in time"
        );
        let late = c.expired_savepoints(t0 + c.cfg.timeout * 3);
        assert_eq!(late.len(), 1);
        assert!(late[0].stop);
        assert!(!c.stop_after_savepoint, "nobody waits to stop any more");
        assert_eq!(c.due(t0), None, "no savepoint is due, nor a checkpoint yet");
    }
}
