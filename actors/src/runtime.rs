//! Starting a job: the worker pool, the job supervisor and the wiring of subtask actors.

use crate::chaos::ChaosHandle;
use crate::error::{JobError, JobResult, Outcome};
use crate::host::{Directory, LocalHost, RemoteTasks, Resolve};
use crate::message::ToJob;
use crate::protocol::checkpoints::Coordinator;
use crate::protocol::rescale::{InPlaceError, InPlaceFigures};
use crate::requests::{Fence, NodeLost, RescaleRequest, SavepointRequest};
use crate::stats::{Progress, ProgressCell};
use crate::supervisor::{JobSupervisor, Setup};
use actix::prelude::*;
use riffle_framework::{
    ChainRescale, Checkpoint, CheckpointConfig, CheckpointStorage, CheckpointStore, ExecutionPlan,
    FsStore, JobConfig, MemoryStore, RestoreFrom, StoreError, StreamEnv,
};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

pub use crate::rng::Rng;

/// A running job.
///
/// Dropping the handle detaches the job, as dropping a [`std::thread::JoinHandle`] detaches
/// its thread: the job runs on to its end (or until the process exits), its result goes
/// unread, and it can still be reached through a [`crate::registry::JobControl`] taken
/// before (from [`JobHandle::control`]) or through the HTTP API. To end it, call
/// [`JobHandle::wait`], [`JobHandle::stop_with_savepoint`] or
/// [`crate::registry::JobControl::cancel`] first.
pub struct JobHandle {
    outcome: mpsc::Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
    /// The job supervisor, while the job runs.
    job: Option<Addr<JobSupervisor>>,
    chaos: ChaosHandle,
    progress: ProgressCell,
    plan: crate::registry::SharedPlan,
    /// What the REST API acts on the job with, and its id there.
    control: crate::registry::JobControl,
    id: String,
}

/// What one [`JobHandle::rescale`] did.
#[derive(Clone, Debug)]
pub struct RescaleOutcome {
    /// The checkpoint the rescale aligned at (a savepoint when the job restarted from it).
    pub checkpoint: u64,
    /// The keyed state of the rescaled chain and what of it moved (keys, bytes, versus the
    /// ideal share).
    pub state: ChainRescale,
    /// How long the rescaled operator processed no record. In place: from holding the
    /// sources until the operator's first record after the switch (so it includes the
    /// alignment of the checkpoint); on a job with no input ready, where no record came
    /// within a second of the switch, until the sources were released. By restart: from the
    /// request until the restarted job's first record.
    pub pause: std::time::Duration,
    /// Which subtasks a rescale in place touched; `None` if the job was rescaled by stopping
    /// at a savepoint and restarting (because it could not be done in place).
    pub in_place: Option<InPlaceFigures>,
    /// After a restart: the result of the job up to the savepoint.
    pub before: Option<JobResult>,
}

impl JobHandle {
    /// Waits until the job completes or fails, then until its threads have ended.
    ///
    /// # Errors
    /// [`JobError::SubtaskFailed`], [`JobError::RestartLimit`] or [`JobError::PoisonRecord`]
    /// with the operator, subtask and root cause; [`JobError::NoWorkers`] if every worker
    /// thread stopped; [`JobError::RuntimeLost`] if the runtime ended without an outcome.
    pub fn wait(mut self) -> Result<JobResult, JobError> {
        self.finish()
    }

    /// The job's outcome, once its threads have ended.
    fn finish(&mut self) -> Result<JobResult, JobError> {
        let outcome = self.outcome.recv().unwrap_or(Err(JobError::RuntimeLost));
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && outcome.is_ok() {
                return Err(JobError::RuntimeLost);
            }
        }
        outcome
    }

    /// Changes the parallelism of operator `operator` (and of the operators chained with
    /// it) to `n` while the job runs, *in place*: the sources hold after a checkpoint, the
    /// keyed state of the keys whose owner on the new ring changed moves to the new owners
    /// (every other key stays where it is), the routers in front of the operator and the
    /// inputs behind it re-wire, new subtasks start or leaving ones retire, and the sources
    /// continue. No record is lost or counted twice and no subtask restarts; subtasks whose
    /// channels do not change are not touched at all (see [`RescaleOutcome::in_place`]).
    /// Needs checkpointing.
    ///
    /// If part of the job already finished its input (its channels cannot change any more),
    /// the job is instead stopped at a savepoint and restarted from it at the new
    /// parallelism, which needs checkpoints in a directory.
    ///
    /// # Errors
    /// [`JobError::Graph`] if the operator cannot be rescaled to `n` (nothing changes);
    /// [`JobError::CheckpointMismatch`] if the chain holds state that is not keyed (nothing
    /// changes); [`JobError::CheckpointingOff`] without checkpointing;
    /// [`JobError::NeedsCheckpointDir`] if it must restart and checkpoints are in memory;
    /// [`JobError::JobEnded`] if the job ended first.
    pub fn rescale(&mut self, operator: &str, n: usize) -> Result<RescaleOutcome, JobError> {
        if self.plan().config().checkpoint.is_none() {
            return Err(JobError::CheckpointingOff { what: "a rescale" });
        }
        match self.rescale_in_place(operator, n) {
            Err(JobError::RescaleRefused { reason }) => {
                tracing::info!(%reason, "cannot rescale in place; restarting from a savepoint");
                let plan = self.plan().rescaled(operator, n)?;
                self.rescale_by_restart(plan, operator, &reason)
            }
            other => other,
        }
    }

    /// As [`JobHandle::rescale`], but only in place: nothing changes when that cannot be done
    /// now.
    ///
    /// # Errors
    /// [`JobError::RescaleRefused`] if it cannot be done in place now (nothing changed);
    /// otherwise as [`JobHandle::rescale`].
    pub fn rescale_in_place(
        &mut self,
        operator: &str,
        n: usize,
    ) -> Result<RescaleOutcome, JobError> {
        let plan = self.plan().rescaled(operator, n)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor()?.do_send(RescaleRequest {
            operator: operator.to_string(),
            n,
            reply: tx,
        });
        match rx.blocking_recv() {
            Ok(Ok(done)) => {
                let plan = Arc::new(plan);
                *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan.clone();
                self.chaos = self.chaos.for_plan(&plan);
                Ok(RescaleOutcome {
                    checkpoint: done.checkpoint,
                    state: done.moved,
                    pause: done.pause,
                    in_place: Some(done.figures),
                    before: None,
                })
            }
            Ok(Err(InPlaceError::Failed(e))) => Err(e),
            Ok(Err(InPlaceError::Refused(reason))) => Err(JobError::RescaleRefused { reason }),
            Err(_) => Err(JobError::JobEnded),
        }
    }

    /// Rescales by stopping at a savepoint and starting `plan` from it in this handle.
    fn rescale_by_restart(
        &mut self,
        mut plan: ExecutionPlan,
        operator: &str,
        why: &str,
    ) -> Result<RescaleOutcome, JobError> {
        let dir = match plan.config().checkpoint.as_ref().map(|c| &c.storage) {
            Some(CheckpointStorage::Dir(d)) => d.join(&plan.config().name),
            _ => {
                return Err(JobError::NeedsCheckpointDir {
                    what: format!(
                        "this rescale cannot be done in place ({why}); restarting the job from \
                         a savepoint"
                    ),
                })
            }
        };
        let started = Instant::now();
        let savepoint = self.request_savepoint(true)?;
        let before = self.finish()?;
        let sp = dir.join(format!("sp-{savepoint}"));
        let moved = state_moved(&plan, &sp, savepoint, Some(operator))?;
        plan.set_restore(Some(RestoreFrom::Path(sp)));
        *self = start_plan(plan)?;
        self.wait_until(|p| p.restored_record || p.ended);
        Ok(RescaleOutcome {
            checkpoint: savepoint,
            state: moved,
            pause: started.elapsed(),
            in_place: None,
            before: Some(before),
        })
    }

    /// The job's plan now (rescales change it).
    pub fn plan(&self) -> Arc<ExecutionPlan> {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The job's id in this process's registry (the REST API's `/jobs/ID`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What acts on the job from another thread (the REST API uses it).
    pub fn control(&self) -> crate::registry::JobControl {
        self.control.clone()
    }

    /// A handle to inject faults into the running job (see [`crate::chaos`]).
    ///
    /// # Panics
    /// Never: the handle is created when the job starts. (Returns a handle whose commands are
    /// ignored if the job already ended.)
    pub fn chaos(&self) -> ChaosHandle {
        self.chaos.clone()
    }

    /// What the job has done so far (epochs, checkpoints, rescales, whether it ended).
    pub fn progress(&self) -> Progress {
        self.progress.get()
    }

    /// Blocks until `cond` holds for the job's [`Progress`], or the job ended; returns the
    /// progress then.
    pub fn wait_until(&self, cond: impl Fn(&Progress) -> bool) -> Progress {
        self.progress.wait_until(cond)
    }

    /// Where savepoint `id` of this job is kept — `DIR/JOB/sp-ID`, for
    /// `RestoreFrom::Path` — when its checkpoints are in a directory; `None` in memory.
    pub fn savepoint_dir(&self, id: u64) -> Option<std::path::PathBuf> {
        let plan = self.plan();
        let cfg = plan.config();
        match cfg.checkpoint.as_ref().map(|c| &c.storage) {
            Some(CheckpointStorage::Dir(d)) => Some(d.join(&cfg.name).join(format!("sp-{id}"))),
            _ => None,
        }
    }

    /// Takes a savepoint: a checkpoint that is kept and can start the job later
    /// (`JobConfig::restore`, with [`JobHandle::savepoint_dir`]). Blocks until it is saved;
    /// returns its id.
    ///
    /// # Errors
    /// [`JobError::CheckpointingOff`] if checkpointing is off; [`JobError::JobEnded`] if
    /// the job ended first; [`JobError::SavepointTimedOut`] if no savepoint completed within
    /// three checkpoint timeouts.
    pub fn savepoint(&self) -> Result<u64, JobError> {
        self.request_savepoint(false)
    }

    /// Asks the job supervisor for a savepoint and waits for its id.
    fn request_savepoint(&self, stop: bool) -> Result<u64, JobError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.supervisor()?
            .do_send(SavepointRequest { reply: tx, stop });
        rx.blocking_recv().map_err(|_| JobError::JobEnded)?
    }

    /// The job supervisor's address, while the job runs.
    fn supervisor(&self) -> Result<&Addr<JobSupervisor>, JobError> {
        self.job.as_ref().ok_or(JobError::JobEnded)
    }

    /// Takes a savepoint and stops the job there (output after it is never committed): the
    /// way to change a job — e.g. its parallelism — and continue it exactly, by starting the
    /// new job with `JobConfig::restore` set to the savepoint. Returns the savepoint's id and
    /// the stopped job's result.
    ///
    /// # Errors
    /// [`JobError::CheckpointingOff`] if checkpointing is off, [`JobError::JobEnded`] if the
    /// job ended first, [`JobError::SavepointTimedOut`] if no savepoint completed in time (the
    /// job goes on), or the job's own error.
    pub fn stop_with_savepoint(self) -> Result<(u64, JobResult), JobError> {
        let id = self.request_savepoint(true)?;
        let result = self.wait()?;
        Ok((id, result))
    }
}

/// The keyed state of `operator`'s chain that restoring savepoint `savepoint` (at `sp`) into
/// `plan` moves (nothing, without an operator or if no key moves).
///
/// # Errors
/// The savepoint cannot be read, or does not fit `plan`.
pub fn state_moved(
    plan: &ExecutionPlan,
    sp: &std::path::Path,
    savepoint: u64,
    operator: Option<&str>,
) -> Result<ChainRescale, JobError> {
    let (_, report) = plan
        .adapt_checkpoint(FsStore::load_dir(sp)?)
        .map_err(|reason| JobError::CheckpointMismatch {
            checkpoint: savepoint,
            reason,
        })?;
    let chain = operator
        .and_then(|op| plan.chain_of(op))
        .map(|c| plan.chain_name(c));
    Ok(report
        .chains
        .into_iter()
        .find(|c| Some(c.chain.as_str()) == chain)
        .unwrap_or_default())
}

/// Runs a job on the local actor runtime.
pub trait Execute {
    /// Validates the job and starts it on a fresh actor system in the background.
    ///
    /// # Errors
    /// [`JobError::Graph`] if the job is invalid (nothing runs); [`JobError::Spawn`] if the
    /// runtime's threads cannot start.
    fn start(&self) -> Result<JobHandle, JobError>;

    /// Runs the job to completion; same as `start()?.wait()`.
    ///
    /// # Errors
    /// See [`Execute::start`] and [`JobHandle::wait`].
    fn execute(&self) -> Result<JobResult, JobError> {
        self.start()?.wait()
    }
}

impl Execute for StreamEnv {
    fn start(&self) -> Result<JobHandle, JobError> {
        start_plan(self.build()?)
    }
}

/// Starts an already planned job.
///
/// # Errors
/// [`JobError::Spawn`] if the runtime thread cannot start.
pub fn start_plan(plan: ExecutionPlan) -> Result<JobHandle, JobError> {
    start_with(plan, None)
}

fn start_with(plan: ExecutionPlan, dist: Option<Distribution>) -> Result<JobHandle, JobError> {
    let restored = load_restore(&plan)?;
    let mut plan = plan;
    if plan.instance().is_empty() {
        plan.set_instance(crate::registry::new_id());
    }
    let plan = Arc::new(plan);
    let keep = plan.clone();
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let name = format!("riffle-{}", plan.config().name);
    let p = plan.clone();
    let progress = ProgressCell::default();
    let cell = progress.clone();
    let history = crate::registry::CheckpointHistory::default();
    let h = history.clone();
    let remote = dist.as_ref().map(|d| d.remote.clone());
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run_system(p, restored, tx, started_tx, (cell, h), dist))
        .map_err(JobError::Spawn)?;
    let (job, chaos) = match started_rx.recv() {
        Ok((job, workers)) => {
            let chaos = ChaosHandle::new(job.clone().recipient(), &keep, workers, progress.clone());
            (Some(job), chaos)
        }
        Err(_) => (None, ChaosHandle::detached()),
    };
    let shared = Arc::new(std::sync::Mutex::new(keep.clone()));
    let control = crate::registry::JobControl {
        supervisor: job.clone(),
        plan: shared.clone(),
        progress: progress.clone(),
        history,
        remote,
    };
    let id = keep.instance().to_string();
    crate::registry::register(&id, &keep.config().name, control.clone());
    Ok(JobHandle {
        outcome: rx,
        thread: Some(thread),
        job,
        chaos,
        progress,
        plan: shared,
        control,
        id,
    })
}

fn run_system(
    plan: Arc<ExecutionPlan>,
    restored: Option<Checkpoint>,
    tx: mpsc::Sender<Outcome>,
    started: mpsc::Sender<(Addr<JobSupervisor>, usize)>,
    (progress, history): (ProgressCell, crate::registry::CheckpointHistory),
    dist: Option<Distribution>,
) {
    let sys = System::new();
    let arbiters = sys.block_on(async {
        let (arbiters, supervisor) = launch(&plan, restored, tx, (progress, history), dist);
        let _ = started.send((supervisor, arbiters.len()));
        arbiters
    });
    let _ = sys.run();
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
}

/// Loads the checkpoint the job starts from (if any) and checks it fits the plan.
fn load_restore(plan: &ExecutionPlan) -> Result<Option<Checkpoint>, JobError> {
    let cfg = plan.config();
    let checkpoint = match &cfg.restore {
        None => return Ok(None),
        Some(RestoreFrom::Latest(dir)) => FsStore::latest_in(dir, &cfg.name)?,
        Some(RestoreFrom::LatestOrFresh(dir)) => match FsStore::latest_in(dir, &cfg.name) {
            Ok(c) => c,
            Err(StoreError::NotFound(at)) => {
                tracing::info!(%at, "no checkpoint of the job yet: it starts fresh");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        },
        Some(RestoreFrom::Path(p)) => FsStore::load_dir(p)?,
    };
    let id = checkpoint.id;
    let (checkpoint, report) =
        plan.adapt_checkpoint(checkpoint)
            .map_err(|reason| JobError::CheckpointMismatch {
                checkpoint: id,
                reason,
            })?;
    for c in &report.chains {
        tracing::info!(chain = %c.chain, from = c.from, to = c.to, keys = c.keys, moved = c.keys_moved, bytes_moved = c.bytes_moved, "restoring with keyed state split by the new ring");
    }
    Ok(Some(checkpoint))
}

fn make_store(cfg: &JobConfig, c: &CheckpointConfig) -> Arc<dyn CheckpointStore> {
    match &c.storage {
        CheckpointStorage::Memory => Arc::new(MemoryStore::new(c.keep)),
        CheckpointStorage::Dir(d) => Arc::new(FsStore::new(d, &cfg.name, c.keep)),
    }
}

/// How a job's subtasks are spread over several nodes (given by the cluster layer).
pub struct Distribution {
    /// Resolves data addresses of subtasks on other nodes.
    pub resolve: Arc<dyn Resolve>,
    /// Where subtasks run and how remote ones are started.
    pub remote: Arc<dyn RemoteTasks>,
    /// Called once the job supervisor exists, with the ports the cluster layer feeds.
    pub on_start: Box<dyn FnOnce(JobPorts) + Send>,
}

/// Where the cluster layer delivers what concerns a distributed job's supervisor.
#[derive(Clone)]
pub struct JobPorts {
    /// Reports of subtasks (from other nodes).
    pub to_job: Recipient<ToJob>,
    /// Nodes that were lost.
    pub node_lost: Recipient<NodeLost>,
    /// The coordinator lost its authority over the job.
    pub fence: Recipient<Fence>,
}

/// Starts a planned job whose subtasks are spread over nodes as `dist` says. Every subtask
/// starts paused and the job runs once all of them, local and remote, have reported ready.
///
/// # Errors
/// [`JobError::Spawn`] if the runtime thread cannot start; errors loading the checkpoint the
/// job is configured to start from.
pub fn start_distributed(plan: ExecutionPlan, dist: Distribution) -> Result<JobHandle, JobError> {
    start_with(plan, Some(dist))
}

/// Pins worker `i` to core `i` of those this process may use (see
/// `JobConfig::pin_workers`); a core that cannot be had is logged and skipped.
pub fn pin_to_cores(arbiters: &[Arbiter]) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.is_empty() {
        tracing::debug!("cannot list the cores; worker threads are not pinned");
        return;
    }
    for (i, a) in arbiters.iter().enumerate() {
        let core = cores[i % cores.len()];
        a.spawn_fn(move || {
            if !core_affinity::set_for_current(core) {
                tracing::debug!(worker = i, core = core.id, "cannot pin the worker thread");
            }
        });
    }
}

/// Creates the worker arbiters, the job supervisor and every subtask actor, sinks first so
/// that each actor is created knowing its downstream addresses.
fn launch(
    plan: &Arc<ExecutionPlan>,
    restored: Option<Checkpoint>,
    tx: mpsc::Sender<Outcome>,
    (progress, history): (ProgressCell, crate::registry::CheckpointHistory),
    dist: Option<Distribution>,
) -> (Vec<Arbiter>, Addr<JobSupervisor>) {
    let cfg = plan.config().clone();
    let arbiters: Vec<Arbiter> = (0..cfg.worker_count()).map(|_| Arbiter::new()).collect();
    if cfg.pins_workers() {
        pin_to_cores(&arbiters);
    }
    let workers: Vec<ArbiterHandle> = arbiters.iter().map(|a| a.handle()).collect();
    let tasks = plan.tasks();
    tracing::info!(job = %cfg.name, tasks = tasks.len(), workers = workers.len(), "starting job\n{}", plan.describe());
    let restored = restored.map(Arc::new);
    let coord = cfg
        .checkpoint
        .as_ref()
        .map(|c| Coordinator::new(make_store(&cfg, c), c.clone(), restored.clone()));
    let checkpointing = coord.is_some();
    let plan = plan.clone();
    let supervisor = JobSupervisor::create(move |ctx| {
        let (directory, remote, on_start) = match dist {
            Some(d) => (
                Arc::new(Directory::with_remote(d.resolve)),
                Some(d.remote),
                Some(d.on_start),
            ),
            None => (Arc::new(Directory::default()), None, None),
        };
        let paused = remote.is_some();
        if let Some(f) = on_start {
            f(JobPorts {
                to_job: ctx.address().recipient(),
                node_lost: ctx.address().recipient(),
                fence: ctx.address().recipient(),
            });
        }
        let host = LocalHost::new(plan.clone(), directory, ctx.address().recipient());
        let mut sup = JobSupervisor::new(Setup {
            plan,
            coord,
            workers,
            host,
            remote,
            report: tx,
            progress,
            history,
        });
        sup.start_all(restored, checkpointing, paused);
        sup
    });
    (arbiters, supervisor)
}
