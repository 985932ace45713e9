//! The jobs this process runs (and ran), for the REST API: each job started with
//! `start_plan` is registered with a [`JobControl`] that can do what its handle does —
//! savepoints, rescales in place, stop — from another thread or an async handler.

use crate::error::{CheckpointStats, JobError};
use crate::protocol::rescale::InPlaceError;
use crate::requests::{CancelRequest, RescaleRequest, SavepointRequest};
use crate::stats::{Progress, ProgressCell};
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::ExecutionPlan;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// How many ended jobs the registry remembers.
const KEEP_ENDED: usize = 50;

pub(crate) use crate::stats::{CheckpointHistory, SharedPlan};

/// What can act on a running job from outside it.
#[derive(Clone)]
pub struct JobControl {
    pub(crate) supervisor: Option<Addr<JobSupervisor>>,
    pub(crate) plan: SharedPlan,
    pub(crate) progress: ProgressCell,
    pub(crate) history: CheckpointHistory,
    /// Where a distributed job's subtasks run (`None`: all in this process).
    pub(crate) remote: Option<Arc<dyn crate::host::RemoteTasks>>,
}

/// A rescale in place done through a [`JobControl`].
#[derive(Clone, Debug)]
pub struct Rescaled {
    /// The checkpoint it aligned at.
    pub checkpoint: u64,
    /// Keys that moved, of all keys of the chain.
    pub keys_moved: usize,
    /// Keys of the chain's state.
    pub keys: usize,
    /// How long the rescaled operator processed nothing.
    pub pause: std::time::Duration,
}

impl JobControl {
    /// The job's plan now.
    pub fn plan(&self) -> Arc<ExecutionPlan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What the job has done so far.
    pub fn progress(&self) -> Progress {
        self.progress.get()
    }

    /// The checkpoints it completed, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointStats> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node subtask `task` runs on (this process's node for a local job).
    pub fn node_of(&self, task: riffle_framework::TaskId) -> String {
        match &self.remote {
            Some(r) => r.node_of(task).unwrap_or_else(|| r.this_node()),
            None => crate::telemetry::node_name(),
        }
    }

    fn supervisor(&self) -> Result<&Addr<JobSupervisor>, JobError> {
        match &self.supervisor {
            Some(s) if !self.progress.get().ended => Ok(s),
            _ => Err(JobError::JobEnded),
        }
    }

    /// Takes a savepoint (and with `stop`, stops the job there); waits for its id.
    ///
    /// # Errors
    /// As `JobHandle::savepoint`.
    pub async fn savepoint(&self, stop: bool) -> Result<u64, JobError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor()?
            .do_send(SavepointRequest { reply: tx, stop });
        rx.await.map_err(|_| JobError::JobEnded)?
    }

    /// As [`JobControl::savepoint`], blocking the calling thread (not from inside an async
    /// runtime).
    ///
    /// # Errors
    /// As `JobHandle::savepoint`.
    pub fn savepoint_blocking(&self, stop: bool) -> Result<u64, JobError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor()?
            .do_send(SavepointRequest { reply: tx, stop });
        rx.blocking_recv().map_err(|_| JobError::JobEnded)?
    }

    /// Where savepoint `id` is kept, if the job checkpoints into a directory.
    pub fn savepoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        let plan = self.plan();
        let cfg = plan.config();
        match cfg.checkpoint.as_ref().map(|c| &c.storage) {
            Some(riffle_framework::CheckpointStorage::Dir(d)) => {
                Some(d.join(&cfg.name).join(format!("sp-{id}")))
            }
            _ => None,
        }
    }

    /// Rescales `operator` to `n` in place (never by a restart: that needs the job's
    /// handle).
    ///
    /// # Errors
    /// [`JobError::Graph`] for an operator or parallelism that does not fit the plan,
    /// [`JobError::CheckpointingOff`], [`JobError::RescaleRefused`] when it cannot be done
    /// in place now, [`JobError::JobEnded`].
    pub async fn rescale(&self, operator: &str, n: usize) -> Result<Rescaled, JobError> {
        let current = self.plan();
        if current.config().checkpoint.is_none() {
            return Err(JobError::CheckpointingOff { what: "a rescale" });
        }
        let plan = current.rescaled(operator, n)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor()?.do_send(RescaleRequest {
            operator: operator.to_string(),
            n,
            reply: tx,
        });
        match rx.await {
            Ok(Ok(done)) => {
                *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(plan);
                Ok(Rescaled {
                    checkpoint: done.checkpoint,
                    keys_moved: done.moved.keys_moved,
                    keys: done.moved.keys,
                    pause: done.pause,
                })
            }
            Ok(Err(InPlaceError::Failed(e))) => Err(e),
            Ok(Err(InPlaceError::Refused(reason))) => Err(JobError::RescaleRefused { reason }),
            Err(_) => Err(JobError::JobEnded),
        }
    }

    /// Stops the job at once, without a savepoint: it ends with [`JobError::Cancelled`].
    ///
    /// # Errors
    /// [`JobError::JobEnded`] if it already ended.
    pub fn cancel(&self, by: &str) -> Result<(), JobError> {
        self.supervisor()?
            .do_send(CancelRequest { by: by.to_string() });
        Ok(())
    }
}

/// One job of this process.
pub struct RegisteredJob {
    /// Its id (unique in this process).
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it started.
    pub started: SystemTime,
    /// What acts on it.
    pub control: JobControl,
}

impl RegisteredJob {
    /// `running`, `finished` or `failed`.
    pub fn state(&self) -> &'static str {
        let p = self.control.progress();
        match (p.ended, p.failure.is_some()) {
            (false, _) => "running",
            (true, false) => "finished",
            (true, true) => "failed",
        }
    }
}

fn registry() -> &'static Mutex<Vec<Arc<RegisteredJob>>> {
    static JOBS: OnceLock<Mutex<Vec<Arc<RegisteredJob>>>> = OnceLock::new();
    JOBS.get_or_init(|| Mutex::new(Vec::new()))
}

/// A new job id, unique in this process: a counter and the clock's nanoseconds, in hex.
pub(crate) fn new_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08x}{:08x}", n as u32, nanos)
}

/// Registers a started job under `id` (one of [`new_id`], or a cluster job's own id, which
/// replaces an ended entry of the same job, e.g. after the job moved to another coordinator
/// of this process). The oldest ended jobs beyond the limit are forgotten, with their live
/// figures.
pub(crate) fn register(id: &str, name: &str, control: JobControl) {
    let mut jobs = registry().lock().unwrap_or_else(|e| e.into_inner());
    jobs.retain(|j| j.id != id);
    let ended: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].control.progress().ended)
        .collect();
    if ended.len() >= KEEP_ENDED {
        let drop_n = ended.len() + 1 - KEEP_ENDED;
        let gone: Vec<usize> = ended.into_iter().take(drop_n).collect();
        for &i in &gone {
            crate::telemetry::forget_job(&jobs[i].id);
        }
        let mut i = 0;
        jobs.retain(|_| {
            i += 1;
            !gone.contains(&(i - 1))
        });
    }
    jobs.push(Arc::new(RegisteredJob {
        id: id.to_string(),
        name: name.to_string(),
        started: SystemTime::now(),
        control,
    }));
}

/// Every job this process runs or remembers, oldest first.
pub fn jobs() -> Vec<Arc<RegisteredJob>> {
    registry().lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The job with id `id`.
pub fn job(id: &str) -> Option<Arc<RegisteredJob>> {
    jobs().into_iter().find(|j| j.id == id)
}
