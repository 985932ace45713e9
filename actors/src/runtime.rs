//! Starting a job: the worker pool, the job supervisor and the wiring of subtask actors.

use crate::error::{JobError, JobResult};
use crate::message::{SubtaskMetrics, TaskFailed, TaskFinished};
use crate::subtask::{OutChannel, SubtaskActor, SubtaskSetup};
use actix::prelude::*;
use riffle_framework::{ExecutionPlan, StreamEnv, TaskId};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Control messages beyond the data plane's credits that a mailbox must still take.
const MAILBOX_SLACK: usize = 16;

type Outcome = Result<JobResult, JobError>;

/// The actor that owns a running job: it learns when each subtask finished or failed and
/// reports the job's outcome.
struct JobSupervisor {
    remaining: usize,
    metrics: HashMap<TaskId, SubtaskMetrics>,
    started: Instant,
    report: Option<mpsc::Sender<Outcome>>,
}

impl JobSupervisor {
    fn conclude(&mut self, outcome: Outcome) {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(outcome);
        }
        System::current().stop();
    }
}

impl Actor for JobSupervisor {
    type Context = Context<Self>;
}

impl Handler<TaskFinished> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskFinished, _ctx: &mut Context<Self>) {
        if self.metrics.insert(msg.task, msg.metrics).is_none() {
            self.remaining = self.remaining.saturating_sub(1);
        }
        if self.remaining == 0 {
            let mut subtasks: Vec<_> = self.metrics.drain().collect();
            subtasks.sort_by_key(|(t, _)| *t);
            let result = JobResult {
                elapsed: self.started.elapsed(),
                subtasks: subtasks.into_iter().map(|(_, m)| m).collect(),
            };
            tracing::info!(elapsed = ?result.elapsed, "job finished");
            self.conclude(Ok(result));
        }
    }
}

impl Handler<TaskFailed> for JobSupervisor {
    type Result = ();
    fn handle(&mut self, msg: TaskFailed, _ctx: &mut Context<Self>) {
        let e = msg.error;
        tracing::error!(chain = %msg.chain, subtask = msg.task.subtask, error = %e, "job failed");
        self.conclude(Err(JobError::SubtaskFailed {
            chain: msg.chain,
            subtask: msg.task.subtask,
            operator: e.operator,
            cause: e.cause,
        }));
    }
}

/// A running job.
pub struct JobHandle {
    outcome: mpsc::Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
}

impl JobHandle {
    /// Waits until the job completes or fails, then until its threads have ended.
    ///
    /// # Errors
    /// [`JobError::SubtaskFailed`] with the operator, subtask and cause of the first failure;
    /// [`JobError::RuntimeLost`] if the runtime ended without an outcome (a bug).
    pub fn wait(mut self) -> Result<JobResult, JobError> {
        let outcome = self.outcome.recv().unwrap_or(Err(JobError::RuntimeLost));
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && outcome.is_ok() {
                return Err(JobError::RuntimeLost);
            }
        }
        outcome
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
    let name = format!("riffle-{}", plan.config().name);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run_system(plan, tx))
        .map_err(JobError::Spawn)?;
    Ok(JobHandle {
        outcome: rx,
        thread: Some(thread),
    })
}

fn run_system(plan: Arc<ExecutionPlan>, tx: mpsc::Sender<Outcome>) {
    let sys = System::new();
    let arbiters = sys.block_on(async { launch(&plan, tx) });
    let _ = sys.run();
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
}

/// Creates the worker arbiters, the job supervisor and every subtask actor, sinks first so
/// that each actor is created knowing its downstream addresses.
fn launch(plan: &Arc<ExecutionPlan>, tx: mpsc::Sender<Outcome>) -> Vec<Arbiter> {
    let cfg = plan.config().clone();
    let workers: Vec<Arbiter> = (0..cfg.worker_count()).map(|_| Arbiter::new()).collect();
    let tasks = plan.tasks();
    let job = JobSupervisor {
        remaining: tasks.len(),
        metrics: HashMap::new(),
        started: Instant::now(),
        report: Some(tx),
    }
    .start();
    tracing::info!(job = %cfg.name, tasks = tasks.len(), workers = workers.len(), "starting job\n{}", plan.describe());
    let mut addrs: HashMap<TaskId, Addr<SubtaskActor>> = HashMap::new();
    for (i, &task) in tasks.iter().enumerate().rev() {
        let outs: Vec<OutChannel> = plan
            .out_channels(task)
            .into_iter()
            .filter_map(|t| {
                addrs.get(&t.task).map(|a| OutChannel {
                    to: a.clone().recipient(),
                    in_channel: t.in_channel as u32,
                    credits: Arc::new(Semaphore::new(cfg.credits)),
                })
            })
            .collect();
        let in_channels = plan.in_channel_count(task);
        let head = match plan.build_task(task, 0) {
            Ok(h) => h,
            Err(e) => {
                job.do_send(TaskFailed {
                    task,
                    chain: plan.chain_name(task.chain).to_string(),
                    error: e,
                });
                return workers;
            }
        };
        let setup = SubtaskSetup {
            task,
            chain_name: plan.chain_name(task.chain).to_string(),
            head,
            outs,
            in_channels,
            batch_size: cfg.batch_size,
            flush_interval: cfg.flush_interval,
            job: job.clone().recipient(),
            failures: job.clone().recipient(),
        };
        let capacity = in_channels * cfg.credits + MAILBOX_SLACK;
        let arbiter = workers[i % workers.len()].handle();
        let addr = SubtaskActor::start_in_arbiter(&arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            SubtaskActor::new(setup)
        });
        addrs.insert(task, addr);
    }
    workers
}
