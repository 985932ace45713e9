//! Where subtasks live and how they find each other: the directory of data addresses, the
//! description of a subtask to start ([`SpawnSpec`]), and the hooks through which the cluster
//! layer hosts some of a job's subtasks on other nodes ([`RemoteTasks`], [`Resolve`]).
//!
//! A subtask never holds another subtask's actor type: it holds a `Recipient<DataMessage>`
//! per output channel, obtained from the [`Directory`] by task id. A local target resolves to
//! its actor; a target on another node resolves (through the cluster's [`Resolve`]) to a
//! remote mailbox for that channel. After a recovery every subtask resolves its targets again,
//! so a target re-created on another worker or node is found without any address travelling
//! in a control message — which is what lets control messages cross the wire.

use crate::message::{Control, DataMessage, ToJob};
use crate::subtask::{OutChannel, PositionSlot, RestoreState, SubtaskActor, SubtaskSetup};
use actix::prelude::*;
use dashmap::DashMap;
use riffle_framework::{ExecutionPlan, TaskId, TaskSnapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Control messages beyond the data plane's credits that a mailbox must still take.
pub(crate) const MAILBOX_SLACK: usize = 64;

/// Resolves the data address of a subtask that is not in this process.
pub trait Resolve: Send + Sync {
    /// The address to which `from` sends its channel `in_channel` of `to`, or `None` if `to`
    /// is not known anywhere.
    fn remote(&self, from: TaskId, to: TaskId, in_channel: u32) -> Option<Recipient<DataMessage>>;

    /// Subtask `task` started in this process at `to` (so that other nodes can reach it).
    fn local_started(&self, _task: TaskId, _to: &Recipient<DataMessage>) {}
}

/// A plan version and the rescale steps (operator, parallelism) that build it from the job's
/// first plan.
pub type PlanSteps = (u64, Vec<(String, usize)>);

/// The data addresses of one job's subtasks in this process, with a fallback for the others.
#[derive(Default)]
pub struct Directory {
    local: DashMap<TaskId, Recipient<DataMessage>>,
    remote: Option<Arc<dyn Resolve>>,
    /// Plans after rescales in place, by version, so that the subtasks of a host build each
    /// one once.
    plans: DashMap<u64, Arc<ExecutionPlan>>,
}

impl Directory {
    /// A directory whose unknown tasks are resolved by `remote` (the cluster layer).
    pub fn with_remote(remote: Arc<dyn Resolve>) -> Self {
        Directory {
            local: DashMap::new(),
            remote: Some(remote),
            plans: DashMap::new(),
        }
    }

    /// Plan `version` of the job: the one installed, or `base` (at `base_version`) rescaled
    /// by `steps[base_version..]` and installed.
    ///
    /// # Errors
    /// A step that does not apply to the plan.
    pub fn plan(
        &self,
        version: u64,
        base: &Arc<ExecutionPlan>,
        base_version: u64,
        steps: &[(String, usize)],
    ) -> Result<Arc<ExecutionPlan>, riffle_framework::GraphError> {
        if version == base_version {
            return Ok(base.clone());
        }
        if let Some(p) = self.plans.get(&version) {
            return Ok(p.clone());
        }
        let mut plan = (**base).clone();
        let from = usize::try_from(base_version).unwrap_or(usize::MAX);
        for (operator, n) in steps.iter().skip(from) {
            plan = plan.rescaled(operator, *n)?;
        }
        let plan = Arc::new(plan);
        self.install_plan(version, plan.clone());
        Ok(plan)
    }

    /// Makes plan `version` known to this host's subtasks.
    pub fn install_plan(&self, version: u64, plan: Arc<ExecutionPlan>) {
        self.plans.insert(version, plan);
    }

    /// Records the address of a subtask running in this process.
    pub fn insert(&self, task: TaskId, to: Recipient<DataMessage>) {
        if let Some(r) = &self.remote {
            r.local_started(task, &to);
        }
        self.local.insert(task, to);
    }

    /// Forgets a local subtask (it moved away).
    pub fn remove(&self, task: TaskId) {
        self.local.remove(&task);
    }

    /// The address for `from`'s channel `in_channel` to `to`.
    pub fn resolve(
        &self,
        from: TaskId,
        to: TaskId,
        in_channel: u32,
    ) -> Option<Recipient<DataMessage>> {
        if let Some(r) = self.local.get(&to) {
            return Some(r.clone());
        }
        self.remote.as_ref()?.remote(from, to, in_channel)
    }
}

/// Where a re-placed or newly placed subtask runs.
pub trait RemoteTasks: Send + Sync {
    /// The node that runs `task`, or `None` if it runs in this process.
    fn node_of(&self, task: TaskId) -> Option<String>;
    /// Starts `task` on `node` as `spec` says; returns where its control messages go.
    fn spawn(&self, node: &str, task: TaskId, spec: SpawnSpec) -> Recipient<Control>;
    /// This process's node id.
    fn this_node(&self) -> String;
    /// A rescale in place changed the job's subtasks: from now on `node_of` answers for the
    /// `added` ones (placed where the cluster layer decides; nodes that do not host the job
    /// yet are told to), and the `removed` ones are gone. `steps` are every rescale so far.
    fn rescaled(&self, _steps: &[(String, usize)], _added: &[TaskId], _removed: &[TaskId]) {}
}

/// What a subtask restores when it starts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// Its state in the checkpoint (`None`: start from empty state).
    pub(crate) snapshot: Option<TaskSnapshot>,
    /// The checkpoint, for the sinks' transactions.
    pub(crate) last_completed: Option<u64>,
}

/// How to start one subtask (serialisable: it may start on another node).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpawnSpec {
    pub(crate) epoch: u64,
    pub(crate) attempt: u32,
    /// Wait for `Control::Go` after opening (a start or re-creation inside a recovery).
    pub(crate) paused: bool,
    /// Input channels whose senders already finished.
    pub(crate) closed_inputs: Vec<usize>,
    /// State to restore (checkpointing on, or started from a checkpoint).
    pub(crate) restore: Option<RestoreSpec>,
    /// The plan the subtask belongs to, after rescales in place (`None`: the job's first).
    #[serde(default)]
    pub(crate) plan: Option<PlanSteps>,
}

impl SpawnSpec {
    /// The epoch the subtask starts in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Starts subtasks of one job in this process: its worker threads, its directory and the
/// job supervisor's (local or remote) address.
#[derive(Clone)]
pub struct LocalHost {
    pub(crate) plan: Arc<ExecutionPlan>,
    /// The version of `plan` (rescales in place so far).
    pub(crate) plan_version: u64,
    pub(crate) directory: Arc<Directory>,
    pub(crate) job: Recipient<ToJob>,
}

impl LocalHost {
    /// A host for `plan`'s subtasks that report to `job` and find each other in `directory`.
    pub fn new(plan: Arc<ExecutionPlan>, directory: Arc<Directory>, job: Recipient<ToJob>) -> Self {
        LocalHost {
            plan,
            plan_version: 0,
            directory,
            job,
        }
    }

    /// Starts `task` on `worker` (under an actix `Supervisor`) with `position` as the slot
    /// that keeps its source position; registers it in the directory and returns where its
    /// data and control messages go.
    pub fn spawn_with(
        &self,
        task: TaskId,
        worker: &ArbiterHandle,
        spec: SpawnSpec,
        position: PositionSlot,
    ) -> (Recipient<DataMessage>, Recipient<Control>) {
        let (plan, plan_version) = match &spec.plan {
            Some((version, steps)) if *version != self.plan_version => {
                match self
                    .directory
                    .plan(*version, &self.plan, self.plan_version, steps)
                {
                    Ok(p) => (p, *version),
                    Err(e) => {
                        // The coordinator built the same plan from the same steps.
                        tracing::error!(?task, error = %e, "cannot build the subtask's plan");
                        (self.plan.clone(), self.plan_version)
                    }
                }
            }
            _ => (self.plan.clone(), self.plan_version),
        };
        let plan = &plan;
        let cfg = plan.config();
        let outs: Vec<OutChannel> = plan
            .out_channels(task)
            .into_iter()
            .map(|t| {
                let to = self.directory.resolve(task, t.task, t.in_channel as u32);
                if to.is_none() {
                    tracing::error!(?task, target = ?t.task, "output target not found; its channel waits for a re-wire");
                }
                OutChannel {
                    target: t.task,
                    parked: to.is_none(),
                    to,
                    in_channel: t.in_channel as u32,
                    credits: Arc::new(Semaphore::new(cfg.credits)),
                    eoi_sent: false,
                }
            })
            .collect();
        let restore = spec.restore.map(|r| {
            *position.lock().unwrap_or_else(|e| e.into_inner()) =
                r.snapshot.as_ref().and_then(|s| s.position.clone());
            restore_state(plan, task, r.snapshot, r.last_completed)
        });
        let in_channels = plan.in_channel_count(task);
        let capacity = in_channels * cfg.credits + MAILBOX_SLACK;
        let setup = SubtaskSetup {
            task,
            plan: plan.clone(),
            plan_version,
            outs,
            in_channels,
            closed_inputs: spec.closed_inputs,
            job: self.job.clone(),
            directory: self.directory.clone(),
            position,
            attempt: spec.attempt,
            epoch: spec.epoch,
            restore,
            paused: spec.paused,
        };
        let addr: Addr<SubtaskActor> = actix::Supervisor::start_in_arbiter(worker, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            SubtaskActor::new(setup)
        });
        let data = addr.clone().recipient();
        self.directory.insert(task, data.clone());
        (data, addr.recipient())
    }

    /// Starts `task` on `worker` with a fresh position slot.
    pub fn spawn(
        &self,
        task: TaskId,
        worker: &ArbiterHandle,
        spec: SpawnSpec,
    ) -> Recipient<Control> {
        self.spawn_with(task, worker, spec, Arc::new(Mutex::new(None)))
            .1
    }
}

/// What subtask `task` restores from `snapshot` (or from nothing) with checkpointing on.
pub(crate) fn restore_state(
    plan: &ExecutionPlan,
    task: TaskId,
    snapshot: Option<TaskSnapshot>,
    last_completed: Option<u64>,
) -> RestoreState {
    match snapshot {
        Some(s) => RestoreState {
            states: s.states,
            last_completed,
            finished: s.finished,
        },
        None => RestoreState {
            states: vec![Vec::new(); plan.state_entries(task.chain)],
            last_completed,
            finished: false,
        },
    }
}
