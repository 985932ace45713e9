//! Starting a job: the worker pool, the job supervisor and the wiring of subtask actors.

use crate::chaos::ChaosHandle;
use crate::error::{JobError, JobResult};
use crate::subtask::{OutChannel, PositionSlot, SubtaskActor, SubtaskSetup};
use crate::supervisor::JobSupervisor;
use actix::prelude::*;
use riffle_framework::{ExecutionPlan, StreamEnv, TaskId};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Control messages beyond the data plane's credits that a mailbox must still take.
const MAILBOX_SLACK: usize = 64;

pub(crate) type Outcome = Result<JobResult, JobError>;

/// SplitMix64: the runtime's small seeded generator (backoff jitter, chaos plans).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A uniform integer in `0..n` (`n` of 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// A running job.
pub struct JobHandle {
    outcome: mpsc::Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
    chaos: Option<ChaosHandle>,
}

impl JobHandle {
    /// Waits until the job completes or fails, then until its threads have ended.
    ///
    /// # Errors
    /// [`JobError::SubtaskFailed`], [`JobError::RestartLimit`] or [`JobError::PoisonRecord`]
    /// with the operator, subtask and root cause; [`JobError::NoWorkers`] if every worker
    /// thread stopped; [`JobError::RuntimeLost`] if the runtime ended without an outcome.
    pub fn wait(mut self) -> Result<JobResult, JobError> {
        let outcome = self.outcome.recv().unwrap_or(Err(JobError::RuntimeLost));
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && outcome.is_ok() {
                return Err(JobError::RuntimeLost);
            }
        }
        outcome
    }

    /// A handle to inject faults into the running job (see [`crate::chaos`]).
    ///
    /// # Panics
    /// Never: the handle is created when the job starts. (Returns a handle whose commands are
    /// ignored if the job already ended.)
    pub fn chaos(&self) -> ChaosHandle {
        match &self.chaos {
            Some(c) => c.clone(),
            None => ChaosHandle::detached(),
        }
    }
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
    let plan = Arc::new(plan);
    let (tx, rx) = mpsc::channel();
    let (chaos_tx, chaos_rx) = mpsc::channel();
    let name = format!("riffle-{}", plan.config().name);
    let p = plan.clone();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run_system(p, tx, chaos_tx))
        .map_err(JobError::Spawn)?;
    let chaos = chaos_rx.recv().ok();
    Ok(JobHandle {
        outcome: rx,
        thread: Some(thread),
        chaos,
    })
}

fn run_system(
    plan: Arc<ExecutionPlan>,
    tx: mpsc::Sender<Outcome>,
    chaos: mpsc::Sender<ChaosHandle>,
) {
    let sys = System::new();
    let arbiters = sys.block_on(async {
        let (arbiters, supervisor) = launch(&plan, tx);
        let _ = chaos.send(ChaosHandle::new(supervisor, &plan, arbiters.len()));
        arbiters
    });
    let _ = sys.run();
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
}

/// Starts one subtask actor (under an actix `Supervisor`) on `worker`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_subtask(
    plan: &Arc<ExecutionPlan>,
    task: TaskId,
    worker: &ArbiterHandle,
    addrs: &HashMap<TaskId, Addr<SubtaskActor>>,
    closed_inputs: Vec<usize>,
    job: Addr<JobSupervisor>,
    position: PositionSlot,
    attempt: u32,
) -> Addr<SubtaskActor> {
    let cfg = plan.config();
    let outs: Vec<OutChannel> = plan
        .out_channels(task)
        .into_iter()
        .filter_map(|t| {
            addrs.get(&t.task).map(|a| OutChannel {
                target: t.task,
                to: a.clone().recipient(),
                in_channel: t.in_channel as u32,
                credits: Arc::new(Semaphore::new(cfg.credits)),
                eoi_sent: false,
                parked: false,
            })
        })
        .collect();
    let in_channels = plan.in_channel_count(task);
    let capacity = in_channels * cfg.credits + MAILBOX_SLACK;
    let setup = SubtaskSetup {
        task,
        plan: plan.clone(),
        outs,
        in_channels,
        closed_inputs,
        job,
        position,
        attempt,
    };
    actix::Supervisor::start_in_arbiter(worker, move |ctx| {
        ctx.set_mailbox_capacity(capacity);
        SubtaskActor::new(setup)
    })
}

/// Creates the worker arbiters, the job supervisor and every subtask actor, sinks first so
/// that each actor is created knowing its downstream addresses.
fn launch(
    plan: &Arc<ExecutionPlan>,
    tx: mpsc::Sender<Outcome>,
) -> (Vec<Arbiter>, Addr<JobSupervisor>) {
    let cfg = plan.config().clone();
    let arbiters: Vec<Arbiter> = (0..cfg.worker_count()).map(|_| Arbiter::new()).collect();
    let workers: Vec<ArbiterHandle> = arbiters.iter().map(|a| a.handle()).collect();
    let tasks = plan.tasks();
    tracing::info!(job = %cfg.name, tasks = tasks.len(), workers = workers.len(), "starting job\n{}", plan.describe());
    let plan = plan.clone();
    let supervisor = JobSupervisor::create(move |ctx| {
        let mut addrs = HashMap::new();
        let mut placement = HashMap::new();
        let mut positions = HashMap::new();
        for (i, &task) in tasks.iter().enumerate().rev() {
            let w = i % workers.len();
            let slot = PositionSlot::default();
            let addr = spawn_subtask(
                &plan,
                task,
                &workers[w],
                &addrs,
                Vec::new(),
                ctx.address(),
                slot.clone(),
                0,
            );
            addrs.insert(task, addr);
            placement.insert(task, w);
            positions.insert(task, slot);
        }
        JobSupervisor {
            alive: vec![true; workers.len()],
            rng: Rng::new(cfg.seed),
            total: tasks.len(),
            plan,
            workers,
            addrs,
            placement,
            positions,
            finished: HashMap::new(),
            window: VecDeque::new(),
            per_task: HashMap::new(),
            attempts: HashMap::new(),
            recreated: HashMap::new(),
            result: JobResult::default(),
            started: Instant::now(),
            report: Some(tx),
        }
    });
    (arbiters, supervisor)
}
