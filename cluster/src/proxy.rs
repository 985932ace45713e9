//! The stand-ins of a distributed job: how a subtask's outputs find subtasks on other nodes
//! ([`ClusterResolver`]: one remote mailbox per channel and node), how the coordinator starts
//! and controls subtasks elsewhere ([`ClusterTasks`], [`ControlProxy`]), and how hosted
//! subtasks report to it ([`JobProxy`]).

use crate::net::Net;
use crate::placement::Placement;
use crate::remote::{Inbox, LinkLookup, Release, RemoteMailbox};
use crate::session::LinkSender;
use crate::wire::{channel_key, EdgeAddress, Message};
use actix::prelude::*;
use dashmap::DashMap;
use riffle_actors::host::{RemoteTasks, Resolve, SpawnSpec};
use riffle_actors::{ClusterError, Control, DataMessage, ToJob};
use riffle_framework::{ExecutionPlan, TaskId};
use std::sync::Arc;

/// Resolves the data address of a subtask on another node: one remote mailbox per channel
/// and node, started on the calling actor's worker thread.
pub struct ClusterResolver {
    pub(crate) job: u64,
    pub(crate) me: String,
    pub(crate) net: Arc<Net>,
    pub(crate) plan: Arc<ExecutionPlan>,
    /// Where every subtask of the job runs.
    pub(crate) placement: DashMap<TaskId, String>,
    pub(crate) mailboxes: DashMap<(TaskId, TaskId, u32, String), Addr<RemoteMailbox>>,
}

impl ClusterResolver {
    pub(crate) fn new(
        job: u64,
        me: &str,
        net: Arc<Net>,
        plan: Arc<ExecutionPlan>,
        placement: &[(TaskId, String)],
    ) -> Self {
        ClusterResolver {
            job,
            me: me.to_string(),
            net,
            plan,
            placement: placement.iter().cloned().collect(),
            mailboxes: DashMap::new(),
        }
    }

    /// Moves subtasks to other nodes: mailboxes to their old places return their credits,
    /// so that no sender stays blocked on a channel to a lost node.
    pub(crate) fn apply_moves(&self, moves: &[(TaskId, String)]) {
        for (t, n) in moves {
            self.placement.insert(*t, n.clone());
        }
        for e in self.mailboxes.iter() {
            let (_, to, _, node) = e.key();
            if moves.iter().any(|(t, n)| t == to && n != node) {
                e.value().do_send(Release);
            }
        }
    }

    pub(crate) fn link_to(&self, node: &str) -> LinkSender {
        self.net
            .link_sender(node)
            .unwrap_or_else(|| LinkSender::closed(node))
    }
}

impl Resolve for ClusterResolver {
    fn remote(
        &self,
        from: TaskId,
        to: TaskId,
        in_channel: u32,
        on: &ArbiterHandle,
    ) -> Option<Recipient<DataMessage>> {
        let node = self.placement.get(&to)?.clone();
        if node == self.me {
            tracing::error!(?to, "a subtask placed here is not running here");
            return None;
        }
        let key = (from, to, in_channel, node.clone());
        if let Some(m) = self.mailboxes.get(&key) {
            // A mailbox runs on its sender's worker: one whose worker stopped is made again.
            if m.connected() {
                return Some(m.clone().recipient());
            }
        }
        let edge = EdgeAddress {
            job: self.job,
            epoch: 0,
            chain: to.chain as u32,
            from: from.subtask as u32,
            to: to.subtask as u32,
            channel: in_channel,
        };
        let codec = self.plan.input_codec(to.chain)?;
        let net = self.net.clone();
        let lookup: LinkLookup = Arc::new(move |peer: &str| net.link_sender(peer));
        let counter = riffle_actors::telemetry::subtask_counter(
            "riffle_remote_bytes_out_total",
            &self.plan,
            self.plan.chain_name(from.chain),
            from.subtask,
        );
        let mailbox = RemoteMailbox::with_lookup(edge, &node, lookup, codec).counting(counter);
        let addr = RemoteMailbox::start_in_arbiter(on, move |_| mailbox);
        self.net
            .returns
            .insert(channel_key(&edge), addr.clone().recipient());
        self.mailboxes.insert(key, addr.clone());
        Some(addr.recipient())
    }

    fn local_started(&self, task: TaskId, to: &Recipient<DataMessage>, inputs: usize) {
        if let Some(codec) = self.plan.input_codec(task.chain) {
            let channels = inputs;
            self.net.inboxes.insert(
                (self.job, task.chain as u32, task.subtask as u32),
                Inbox {
                    to: to.clone(),
                    codec,
                    channels: u32::try_from(channels).unwrap_or(u32::MAX),
                    bytes_in: Some(riffle_actors::telemetry::subtask_counter(
                        "riffle_remote_bytes_in_total",
                        &self.plan,
                        self.plan.chain_name(task.chain),
                        task.subtask,
                    )),
                    credit_batch: credit_batch(self.plan.config()),
                    pending: Arc::default(),
                },
            );
        }
    }

    fn inputs_changed(&self, task: TaskId, inputs: usize) {
        let key = (self.job, task.chain as u32, task.subtask as u32);
        if let Some(mut inbox) = self.net.inboxes.get_mut(&key) {
            inbox.channels = u32::try_from(inputs).unwrap_or(u32::MAX);
        }
    }
}

/// Credits a receiving node returns together on a channel from another node: a quarter of
/// the sender's window, so the sender always has credits left while some are held back.
fn credit_batch(cfg: &riffle_framework::JobConfig) -> u32 {
    u32::try_from(cfg.remote_credits / 4)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The coordinator's view of where subtasks run and how remote ones start.
pub struct ClusterTasks {
    pub(crate) resolver: Arc<ClusterResolver>,
    /// The job's name and the options it was submitted with (for nodes that start hosting it
    /// after a rescale in place).
    pub(crate) name: String,
    pub(crate) parallelism: Option<usize>,
    pub(crate) rescaled: Vec<(String, usize)>,
    /// Live nodes left out of the placement (being drained).
    pub(crate) exclude: Vec<String>,
    /// With etcd: the leader's authority over the job.
    pub(crate) authority: Option<Arc<crate::authority::Authority>>,
}

impl RemoteTasks for ClusterTasks {
    fn node_of(&self, task: TaskId) -> Option<String> {
        let n = self.resolver.placement.get(&task)?.clone();
        (n != self.resolver.me).then_some(n)
    }

    fn spawn(&self, node: &str, task: TaskId, spec: SpawnSpec) -> Recipient<Control> {
        let link = self.resolver.link_to(node);
        let job = self.resolver.job;
        match rmp_serde::to_vec(&spec) {
            Ok(spec) => {
                if !link.send(Message::Spawn { job, task, spec }) {
                    tracing::warn!(%node, ?task, "no link to the node; its loss will re-place the subtask");
                }
            }
            Err(e) => tracing::error!(?task, error = %e, "cannot encode a spawn order"),
        }
        ControlProxy {
            job,
            task,
            node: node.to_string(),
            net: self.resolver.net.clone(),
        }
        .start()
        .recipient()
    }

    fn this_node(&self) -> String {
        self.resolver.me.clone()
    }

    fn authority(&self) -> Result<(), ClusterError> {
        self.authority.as_ref().map_or(Ok(()), |a| a.check())
    }

    fn confirm_checkpoint(&self, id: u64) -> Result<(), ClusterError> {
        self.authority.as_ref().map_or(Ok(()), |a| a.checkpoint(id))
    }

    /// Places the new subtasks of a rescale in place over the live nodes (the ones that stay
    /// keep their node), tells the nodes hosting the job, and starts hosting on a node that
    /// joined since the job started and gets subtasks now.
    fn rescaled(&self, steps: &[(String, usize)], added: &[TaskId], removed: &[TaskId]) {
        let r = &self.resolver;
        for t in removed {
            r.placement.remove(t);
        }
        let kept: Vec<(TaskId, String)> = r
            .placement
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        let hosting: std::collections::BTreeSet<String> =
            kept.iter().map(|(_, n)| n.clone()).collect();
        let mut live = r.net.up_peers();
        live.retain(|n| !self.exclude.contains(n));
        live.push(r.me.clone());
        let ring = Placement::new(live.iter().map(|n| (n.as_str(), 1)));
        let moves = ring.assign_added(added, &kept);
        r.apply_moves(&moves);
        let all: Vec<(TaskId, String)> = kept.iter().chain(&moves).cloned().collect();
        let mut rescaled = self.rescaled.clone();
        rescaled.extend(steps.iter().cloned());
        for node in live.iter().filter(|n| **n != r.me) {
            let msg = if hosting.contains(node) {
                Message::Placement {
                    job: r.job,
                    moves: moves.clone(),
                }
            } else if moves.iter().any(|(_, n)| n == node) {
                tracing::info!(job = r.job, %node, "a rescale places subtasks on a node that joined");
                Message::JobStart {
                    job: r.job,
                    name: self.name.clone(),
                    coordinator: r.me.clone(),
                    placement: all.clone(),
                    parallelism: self.parallelism.map(|p| p as u32),
                    rescaled: rescaled
                        .iter()
                        .map(|(op, n)| (op.clone(), *n as u32))
                        .collect(),
                    epoch: self.authority.as_ref().map_or(0, |a| a.epoch),
                }
            } else {
                continue;
            };
            if !r.link_to(node).send(msg) {
                tracing::warn!(%node, "no link to the node; its loss will re-place its subtasks");
            }
        }
    }
}

/// Stands in for a subtask on another node in the job supervisor: sends its control
/// messages as `Control` frames on the current link to its node (a link that was made again
/// replaces the old one).
pub struct ControlProxy {
    pub(crate) job: u64,
    pub(crate) task: TaskId,
    pub(crate) node: String,
    pub(crate) net: Arc<Net>,
}

impl Actor for ControlProxy {
    type Context = Context<Self>;
}

impl Handler<Control> for ControlProxy {
    type Result = ();
    fn handle(&mut self, msg: Control, _ctx: &mut Context<Self>) {
        match rmp_serde::to_vec(&msg) {
            Ok(body) => {
                let sent = self.net.link_sender(&self.node).is_some_and(|l| {
                    l.send(Message::Control {
                        job: self.job,
                        task: self.task,
                        body,
                    })
                });
                if !sent {
                    tracing::warn!(node = %self.node, task = ?self.task, "no link to the node; control message dropped");
                }
            }
            Err(e) => {
                tracing::error!(task = ?self.task, error = %e, "cannot encode a control message")
            }
        }
    }
}

/// Stands in for the job supervisor on a hosting node: sends the subtasks' reports to the
/// coordinator as `Report` frames (on the current link to it), keeping a failure's reply
/// channel until the `Decision` frame answers it.
pub struct JobProxy {
    pub(crate) job: u64,
    pub(crate) coordinator: String,
    pub(crate) net: Arc<Net>,
}

impl Actor for JobProxy {
    type Context = Context<Self>;
}

impl Handler<ToJob> for JobProxy {
    type Result = ();
    fn handle(&mut self, mut msg: ToJob, _ctx: &mut Context<Self>) {
        if let (Some(reply), Some(task)) = (msg.take_reply(), msg.task()) {
            self.net.replies.insert((self.job, task), reply);
        }
        match rmp_serde::to_vec(&msg) {
            Ok(body) => {
                let sent = self.net.link_sender(&self.coordinator).is_some_and(|l| {
                    l.send(Message::Report {
                        job: self.job,
                        body,
                    })
                });
                if !sent {
                    tracing::warn!(coordinator = %self.coordinator, "no link to the coordinator; report dropped");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a subtask report"),
        }
    }
}
