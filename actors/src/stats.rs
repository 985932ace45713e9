//! What a running job has done so far, kept by the runtime: the job supervisor updates it as
//! its protocols move on, and anyone holding the job's handle can read it or wait for a
//! condition on it (a signal, not a poll). Metrics attach here.

use std::sync::{Arc, Condvar, Mutex};

/// What a running job has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The current epoch (increases with every recovery from a checkpoint).
    pub epoch: u64,
    /// The newest epoch whose subtasks were all restored and told to run.
    pub running_epoch: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// The job has ended.
    pub ended: bool,
    /// A record was processed after a restore (at a recovery, or at a start from a
    /// checkpoint); with `running_epoch`, what measures a pause.
    pub restored_record: bool,
    /// Rescales in place that held the sources after a checkpoint (counting retries).
    pub rescales_held: u64,
    /// Rescales in place that switched to the new plan.
    pub rescales_switched: u64,
    /// Per subtask (in `ExecutionPlan::tasks` order): its input ended in the current epoch.
    pub draining: Vec<bool>,
    /// Why the job failed, once it ended with an error.
    pub failure: Option<String>,
}

impl Progress {
    /// Whether subtask `i` (in `ExecutionPlan::tasks` order) still takes input in the
    /// current epoch.
    pub fn active(&self, i: usize) -> bool {
        !self.draining.get(i).copied().unwrap_or(false)
    }
}

/// A job's [`Progress`], shared between its supervisor (which updates it) and its handles
/// (which read it or wait on it).
#[derive(Clone, Default)]
pub(crate) struct ProgressCell(Arc<(Mutex<Progress>, Condvar)>);

impl ProgressCell {
    /// Changes the progress and wakes everyone waiting on it.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Progress)) {
        let (m, cv) = &*self.0;
        f(&mut m.lock().unwrap_or_else(|e| e.into_inner()));
        cv.notify_all();
    }

    /// The progress now.
    pub(crate) fn get(&self) -> Progress {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Blocks until `cond` holds, or the job ended; returns the progress then.
    pub(crate) fn wait_until(&self, cond: impl Fn(&Progress) -> bool) -> Progress {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while !cond(&g) && !g.ended {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.clone()
    }
}

/// A job's plan, shared between its handle and the registry (a rescale changes it).
pub(crate) type SharedPlan = Arc<Mutex<Arc<riffle_framework::ExecutionPlan>>>;

/// A job's completed checkpoints, shared between its supervisor and the registry.
pub(crate) type CheckpointHistory = Arc<Mutex<Vec<crate::error::CheckpointStats>>>;
