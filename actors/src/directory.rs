//! The directory of a job's data addresses in this process: a subtask finds the
//! `Recipient<DataMessage>` of each of its output channels here by task id — its actor when
//! the target is local, or (through the cluster's [`Resolve`]) a remote mailbox when it is on
//! another node — and the plans after rescales in place, built once per host.

use crate::message::DataMessage;
use actix::prelude::*;
use dashmap::DashMap;
use riffle_framework::{ExecutionPlan, TaskId};
use std::sync::Arc;

/// Control messages beyond the data plane's credits that a mailbox must still take.
pub(crate) const MAILBOX_SLACK: usize = 64;

/// Resolves the data address of a subtask that is not in this process.
pub trait Resolve: Send + Sync {
    /// The address to which `from` sends its channel `in_channel` of `to`, or `None` if `to`
    /// is not known anywhere. `on` is the worker that runs `from`: a stand-in actor for the
    /// channel runs there too, so that handing it a batch wakes no other thread.
    fn remote(
        &self,
        from: TaskId,
        to: TaskId,
        in_channel: u32,
        on: &ArbiterHandle,
    ) -> Option<Recipient<DataMessage>>;

    /// Subtask `task` started in this process at `to`, with `inputs` input channels (so that
    /// other nodes can reach it, and frames naming another channel are refused).
    fn local_started(&self, _task: TaskId, _to: &Recipient<DataMessage>, _inputs: usize) {}

    /// Subtask `task` of this process has `inputs` input channels now (after a rescale).
    fn inputs_changed(&self, _task: TaskId, _inputs: usize) {}
}

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

    /// Records the address of a subtask running in this process, with `inputs` input
    /// channels.
    pub fn insert(&self, task: TaskId, to: Recipient<DataMessage>, inputs: usize) {
        if let Some(r) = &self.remote {
            r.local_started(task, &to, inputs);
        }
        self.local.insert(task, to);
    }

    /// A subtask of this process has `inputs` input channels now (a rescale re-wired it).
    pub fn inputs_changed(&self, task: TaskId, inputs: usize) {
        if let Some(r) = &self.remote {
            r.inputs_changed(task, inputs);
        }
    }

    /// Forgets a local subtask (it moved away).
    pub fn remove(&self, task: TaskId) {
        self.local.remove(&task);
    }

    /// The credits of a channel to `to`: the job's `credits` for a subtask in this process,
    /// its `remote_credits` for one elsewhere (see [`riffle_framework::JobConfig`]).
    pub fn credits_to(&self, to: TaskId, cfg: &riffle_framework::JobConfig) -> usize {
        if self.is_local(to) {
            cfg.credits
        } else {
            cfg.remote_credits
        }
    }

    /// The records of a full batch to `to`: the job's `batch_size`, times its
    /// `remote_batch_scale` for a subtask elsewhere.
    pub fn batch_size_to(&self, to: TaskId, cfg: &riffle_framework::JobConfig) -> usize {
        if self.is_local(to) {
            cfg.batch_size
        } else {
            cfg.batch_size.saturating_mul(cfg.remote_batch_scale)
        }
    }

    /// Whether `to` runs in this process.
    pub fn is_local(&self, to: TaskId) -> bool {
        self.local.contains_key(&to)
    }

    /// The address for `from`'s channel `in_channel` to `to`; `from` runs on worker `on`.
    pub fn resolve(
        &self,
        from: TaskId,
        to: TaskId,
        in_channel: u32,
        on: &ArbiterHandle,
    ) -> Option<Recipient<DataMessage>> {
        if let Some(r) = self.local.get(&to) {
            return Some(r.clone());
        }
        self.remote.as_ref()?.remote(from, to, in_channel, on)
    }
}
