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

pub(crate) use crate::directory::MAILBOX_SLACK;
pub use crate::directory::{Directory, Resolve};
use crate::message::{Control, DataMessage, ToJob};
use crate::subtask::{OutChannel, PositionSlot, RestoreState, SubtaskActor, SubtaskSetup};
use actix::prelude::*;
use riffle_framework::{ExecutionPlan, TaskId, TaskSnapshot};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A plan version and the rescale steps (operator, parallelism) that build it from the job's
/// first plan.
pub type PlanSteps = (u64, Vec<(String, usize)>);

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
    /// Whether this process still has the authority to coordinate the job (with leader
    /// election: it surely still leads in the epoch the job started under). Asked before a
    /// checkpoint is triggered and before a lost node's subtasks are recovered; an error ends
    /// the job with it, committing nothing more.
    fn authority(&self) -> Result<(), crate::ClusterError> {
        Ok(())
    }
    /// Asked before checkpoint `id` is saved and its sinks commit: records it where a
    /// successor would look for it, and fails if this process lost its authority meanwhile
    /// (the checkpoint is then discarded and the job ends with the error).
    fn confirm_checkpoint(&self, _id: u64) -> Result<(), crate::ClusterError> {
        Ok(())
    }
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

/// Why a subtask cannot be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The job's plan has no such subtask.
    #[error("subtask {subtask} of chain {chain} is not in the job's plan")]
    UnknownTask {
        /// The chain asked for.
        chain: usize,
        /// The subtask asked for.
        subtask: usize,
    },
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
        let (plan, plan_version) = self.plan_for(task, &spec);
        let plan = &plan;
        let cfg = plan.config();
        let outs: Vec<OutChannel> = plan
            .out_channels(task)
            .into_iter()
            .map(|t| {
                let to = self.directory
                    .resolve(task, t.task, t.in_channel as u32, worker);
                if to.is_none() {
                    tracing::error!(?task, target = ?t.task, "output target not found; its channel waits for a re-wire");
                }
                OutChannel {
                    target: t.task,
                    parked: to.is_none(),
                    to,
                    in_channel: t.in_channel as u32,
                    credits: Arc::new(Semaphore::new(self.directory.credits_to(t.task, cfg))),
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
        let capacity = in_channels * cfg.max_credits() + MAILBOX_SLACK;
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
        self.directory.insert(task, data.clone(), in_channels);
        (data, addr.recipient())
    }

    /// The plan `spec` names (the job's plan after its rescales in place) and its version.
    fn plan_for(&self, task: TaskId, spec: &SpawnSpec) -> (Arc<ExecutionPlan>, u64) {
        match &spec.plan {
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
        }
    }

    /// Checks that `task` is a subtask of the plan `spec` names, before starting it on the
    /// word of another node.
    ///
    /// # Errors
    /// [`SpawnError::UnknownTask`] if that plan has no such subtask.
    pub fn check(&self, task: TaskId, spec: &SpawnSpec) -> Result<(), SpawnError> {
        let (plan, _) = self.plan_for(task, spec);
        let known = task.chain < plan.chain_count() && task.subtask < plan.parallelism(task.chain);
        if known {
            Ok(())
        } else {
            Err(SpawnError::UnknownTask {
                chain: task.chain,
                subtask: task.subtask,
            })
        }
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
            watermark: s.watermark,
        },
        None => RestoreState {
            states: vec![Vec::new(); plan.state_entries(task.chain)],
            last_completed,
            finished: false,
            watermark: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ToJob;
    use riffle_framework::StreamEnv;

    struct Nobody;
    impl Actor for Nobody {
        type Context = Context<Self>;
    }
    impl Handler<ToJob> for Nobody {
        type Result = ();
        fn handle(&mut self, _: ToJob, _: &mut Context<Self>) {}
    }

    /// A spawn order from another node naming a subtask the plan does not have is refused
    /// with a typed error (it used to index out of range on a worker thread).
    #[test]
    fn a_subtask_outside_the_plan_is_refused() {
        let env = StreamEnv::new();
        env.set_parallelism(2);
        env.sequence(0..10).map(|x: u64| x + 1).count();
        let plan = Arc::new(env.build().expect("plan"));
        let sys = actix::System::new();
        sys.block_on(async {
            let job = Nobody.start().recipient();
            let host = LocalHost::new(plan.clone(), Arc::new(Directory::default()), job);
            let spec = SpawnSpec::default();
            let ok = TaskId {
                chain: 0,
                subtask: 1,
            };
            assert_eq!(host.check(ok, &spec), Ok(()));
            for (chain, subtask) in [(0, 2), (plan.chain_count(), 0), (usize::MAX, usize::MAX)] {
                assert_eq!(
                    host.check(TaskId { chain, subtask }, &spec),
                    Err(SpawnError::UnknownTask { chain, subtask })
                );
            }
        });
    }
}
