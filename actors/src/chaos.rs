//! Chaos tooling: crash subtasks, stop actors and worker threads on purpose.
//!
//! A [`ChaosHandle`] (from `JobHandle::chaos`) sends faults to a running job: a panic or an
//! error at a subtask's next record, a stop from outside, the stop of a worker thread, or a
//! fault *armed* to fire once a subtask has handled a number of records. A [`ChaosMonkey`]
//! plans faults from a seed — which subtasks, when, of which kind — so a chaos run can be
//! repeated exactly; it can also run on a timer for demos. Every fault that fires is counted
//! in `JobResult::faults_injected` (and worker stops in `workers_stopped`), next to the
//! restarts that followed.

use crate::message::Control;
use crate::requests::ChaosCommand;
use crate::rng::Rng;
use crate::stats::ProgressCell;
use actix::prelude::*;
use riffle_framework::exec::Fault;
use riffle_framework::ExecutionPlan;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use crate::message::PlannedKind as FaultKind;
pub use crate::stats::Progress;

/// Installs a panic hook that keeps quiet about panics injected by the chaos module (they are
/// caught, counted and reported in `JobResult`) and hands every other panic to the hook that
/// was installed before. Call it once, before starting chaos runs.
pub fn silence_injected_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = riffle_framework::panic_message(info.payload())
            .contains(riffle_framework::exec::INJECTED_FAULT);
        if !injected {
            previous(info);
        }
    }));
}

/// Sends faults to a running job. Cheap to clone; commands to a finished job are ignored.
#[derive(Clone)]
pub struct ChaosHandle {
    job: Option<Recipient<ChaosCommand>>,
    /// Shared by every clone, so that a clone taken before a rescale sees the new subtasks.
    tasks: Arc<RwLock<Vec<(String, usize)>>>,
    workers: usize,
    progress: ProgressCell,
}

impl ChaosHandle {
    pub(crate) fn new(
        job: Recipient<ChaosCommand>,
        plan: &ExecutionPlan,
        workers: usize,
        progress: ProgressCell,
    ) -> Self {
        let tasks = Arc::new(RwLock::new(task_names(plan)));
        ChaosHandle {
            job: Some(job),
            tasks,
            workers,
            progress,
        }
    }

    /// The same handle after a rescale in place changed the job's subtasks.
    /// Every clone of the handle (taken before or after) addresses the new subtasks.
    pub(crate) fn for_plan(&self, plan: &ExecutionPlan) -> Self {
        if self.job.is_some() {
            *self.tasks.write().unwrap_or_else(|e| e.into_inner()) = task_names(plan);
        }
        self.clone()
    }

    pub(crate) fn detached() -> Self {
        ChaosHandle {
            job: None,
            tasks: Arc::default(),
            workers: 0,
            progress: ProgressCell::default(),
        }
    }

    fn send(&self, cmd: ChaosCommand) {
        if let Some(j) = &self.job {
            j.do_send(cmd);
        }
    }

    /// The job's subtasks now as (chain name, subtask index); faults address them by
    /// position. After a rescale in place every clone of the handle sees the new list.
    pub fn tasks(&self) -> Vec<(String, usize)> {
        self.tasks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The position of subtask `subtask` of the first chain whose name contains `chain`.
    pub fn find(&self, chain: &str, subtask: usize) -> Option<usize> {
        self.tasks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .position(|(c, s)| c.contains(chain) && *s == subtask)
    }

    /// The number of worker threads the job started with.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Whether the job is still running.
    pub fn is_running(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.connected())
    }

    /// Makes the subtask's next record fail with `fault` (a panic or an error in user code).
    pub fn crash(&self, task: usize, fault: Fault) {
        let control = Control::Inject(fault);
        self.send(ChaosCommand::Control { task, control });
    }

    /// Stops the subtask's actor from outside; its supervisor restarts it.
    pub fn stop(&self, task: usize) {
        self.send(ChaosCommand::Control {
            task,
            control: Control::Stop,
        });
    }

    /// Stops worker thread `worker` (another live one if it is already stopped; never the
    /// last live worker); its subtasks are re-created on the others. Without checkpoints the
    /// records in their mailboxes are lost; with checkpoints the job recovers exactly.
    pub fn stop_worker(&self, worker: usize) {
        self.send(ChaosCommand::StopWorker(worker));
    }

    /// Arms a fault that fires once the subtask has handled `after` records.
    pub fn arm(&self, task: usize, after: u64, kind: FaultKind) {
        let control = Control::Arm { after, fault: kind };
        self.send(ChaosCommand::Control { task, control });
    }
}

/// The subtasks of `plan` as (chain name, subtask index), in `ExecutionPlan::tasks` order.
fn task_names(plan: &ExecutionPlan) -> Vec<(String, usize)> {
    plan.tasks()
        .into_iter()
        .map(|t| (plan.chain_name(t.chain).to_string(), t.subtask))
        .collect()
}

/// One fault of a monkey's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// The task's position in [`ChaosHandle::tasks`].
    pub task: usize,
    /// Fires once the subtask has handled this many records.
    pub after: u64,
    /// What happens.
    pub kind: FaultKind,
}

/// A seeded generator of faults.
#[derive(Clone, Debug)]
pub struct ChaosMonkey {
    seed: u64,
    faults: usize,
    within: u64,
    kinds: Vec<FaultKind>,
}

impl ChaosMonkey {
    /// A monkey with seed `seed`: 50 faults within the first 10,000 records of each subtask,
    /// mixing panics, errors and stops.
    pub fn new(seed: u64) -> Self {
        ChaosMonkey {
            seed,
            faults: 50,
            within: 10_000,
            kinds: vec![FaultKind::Panic, FaultKind::Error, FaultKind::Stop],
        }
    }

    /// How many faults to plan.
    pub fn faults(mut self, n: usize) -> Self {
        self.faults = n;
        self
    }

    /// Faults fire after a random number of records below `records` (per subtask).
    pub fn within_records(mut self, records: u64) -> Self {
        self.within = records.max(1);
        self
    }

    /// The kinds of fault to draw from.
    pub fn kinds(mut self, kinds: &[FaultKind]) -> Self {
        if !kinds.is_empty() {
            self.kinds = kinds.to_vec();
        }
        self
    }

    /// The plan for a job with `tasks` subtasks: the same seed gives the same plan.
    pub fn plan(&self, tasks: usize) -> Vec<PlannedFault> {
        let mut rng = Rng::new(self.seed);
        (0..self.faults)
            .map(|i| PlannedFault {
                task: rng.below(tasks as u64) as usize,
                after: rng.below(self.within),
                kind: self.kinds[i % self.kinds.len()],
            })
            .collect()
    }

    /// Plans faults for the job behind `handle` and arms them; returns the plan.
    pub fn arm(&self, handle: &ChaosHandle) -> Vec<PlannedFault> {
        let plan = self.plan(handle.tasks().len());
        for f in &plan {
            handle.arm(f.task, f.after, f.kind);
        }
        plan
    }

    /// Runs on a background thread: every `interval` (± half, seeded) it crashes, stops or
    /// (with `workers`) stops a worker thread, until `faults` faults were sent or the job
    /// ended. For demos; tests use [`ChaosMonkey::arm`], which does not depend on timing.
    pub fn unleash(
        self,
        handle: ChaosHandle,
        interval: Duration,
        workers: bool,
    ) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let mut rng = Rng::new(self.seed);
            let mut sent = 0;
            let mut stopped_worker = !workers;
            while sent < self.faults && handle.is_running() {
                let pause = interval.as_secs_f64() * (0.5 + rng.unit());
                // The monkey's own schedule; nothing waits on it.
                std::thread::sleep(Duration::from_secs_f64(pause));
                let task = rng.below(handle.tasks().len() as u64) as usize;
                match self.kinds[sent % self.kinds.len()] {
                    FaultKind::Panic => handle.crash(task, Fault::Panic),
                    FaultKind::Error => handle.crash(task, Fault::Error),
                    FaultKind::Stop => handle.stop(task),
                    FaultKind::StopWorker => {
                        handle.stop_worker(rng.below(handle.workers() as u64) as usize)
                    }
                }
                if !stopped_worker && sent == self.faults / 2 && handle.workers() > 1 {
                    handle.stop_worker(rng.below(handle.workers() as u64) as usize);
                    stopped_worker = true;
                }
                sent += 1;
            }
            sent
        })
    }
}

impl ChaosHandle {
    /// The job's progress now.
    pub fn progress(&self) -> Progress {
        self.progress.get()
    }

    /// Blocks until `cond` holds for the job's progress, or the job ended.
    pub fn wait_until(&self, cond: impl Fn(&Progress) -> bool) -> Progress {
        self.progress.wait_until(cond)
    }
}

/// What [`ChaosMonkey::drive`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Faults sent (crashes and stops of subtasks).
    pub faults: u64,
    /// Worker threads stopped.
    pub workers: u64,
    /// Bursts completed before the job ended.
    pub bursts: u64,
}

impl ChaosMonkey {
    /// Drives a checkpointed job through bursts of faults, synchronised on the job's progress
    /// (no timing): each fault is sent once the previous recovery let the job run again, and
    /// waits until it caused the next recovery; between bursts the monkey waits for a
    /// checkpoint to complete, so later recoveries restore real state. `worker_stops` faults
    /// are worker-thread stops, spread over the bursts. Returns when every burst ran or the
    /// job ended.
    pub fn drive(&self, handle: &ChaosHandle, bursts: u64, worker_stops: u64) -> DriveReport {
        let mut rng = Rng::new(self.seed);
        let mut report = DriveReport::default();
        let per_burst = (self.faults as u64).div_ceil(bursts.max(1));
        let total = per_burst * bursts.max(1);
        // Worker stops at evenly spaced points of the whole run.
        let spacing = (total / (worker_stops + 1)).max(1);
        let tasks = handle.tasks().len() as u64;
        let mut n = 0u64;
        for burst in 0..bursts {
            for _ in 0..per_burst {
                n += 1;
                let p = handle.wait_until(|p| p.running_epoch == p.epoch);
                if p.ended {
                    return report;
                }
                let stop_worker = report.workers < worker_stops && n % spacing == 0;
                if stop_worker {
                    handle.stop_worker(rng.below(handle.workers() as u64) as usize);
                    report.workers += 1;
                } else {
                    let active: Vec<usize> = (0..tasks as usize).filter(|&t| p.active(t)).collect();
                    if active.is_empty() {
                        return report;
                    }
                    let task = active[rng.below(active.len() as u64) as usize];
                    match self.kinds[(report.faults as usize) % self.kinds.len()] {
                        FaultKind::Panic => handle.crash(task, Fault::Panic),
                        FaultKind::Error => handle.crash(task, Fault::Error),
                        FaultKind::Stop | FaultKind::StopWorker => handle.stop(task),
                    }
                    report.faults += 1;
                    // The fault fires at the task's next record, unless its input ends first.
                    handle.wait_until(|q| q.epoch > p.epoch || !q.active(task));
                    continue;
                }
                handle.wait_until(|q| q.epoch > p.epoch);
            }
            report.bursts = burst + 1;
            let before = handle.progress().checkpoints;
            handle.wait_until(|p| p.checkpoints > before && p.running_epoch == p.epoch);
        }
        report
    }
}
