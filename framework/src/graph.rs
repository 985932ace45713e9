//! The job graph and its execution plan.
//!
//! The builder API ([`crate::StreamEnv`]) records nodes (sources, operators, sinks) and edges
//! with type-erased factories. [`ExecutionPlan::new`] validates the graph, resolves edges
//! (forward or rebalance), groups nodes into chains (forward edges of equal parallelism where
//! neither side fans in or out) and lays out the channels between chain subtasks. The runtime
//! asks the plan for each subtask's operator chain ([`ExecutionPlan::build_task`]) and its
//! channel wiring; the plan is `Send + Sync` so that a restart can build a fresh chain from it.

use crate::config::{JobConfig, RestartKind};
use crate::dead_letter::DeadLetterQueue;
use crate::error::{GraphError, StageError};
use crate::exec::{ChainHead, ErasedInput, ErasedSource, RouteLayout};
use crate::operator::SubtaskInfo;
use crate::partition::Routing;
use crate::typed::{internal, AnyStage, BatchCodec, EdgeKind, RouterPlan, TypeOps};
use std::sync::Arc;

pub(crate) type NodeId = usize;
pub(crate) type SourceBuild =
    Arc<dyn Fn(&SubtaskInfo, AnyStage) -> Result<Box<dyn ErasedSource>, StageError> + Send + Sync>;
pub(crate) type OperatorBuild =
    Arc<dyn Fn(&SubtaskInfo, AnyStage) -> Result<AnyStage, StageError> + Send + Sync>;
pub(crate) type SinkBuild = Arc<dyn Fn(&SubtaskInfo) -> AnyStage + Send + Sync>;

/// How a node's subtasks are built.
#[derive(Clone)]
pub(crate) enum Build {
    Source(SourceBuild),
    Operator(OperatorBuild),
    Sink(SinkBuild),
}

pub(crate) struct NodeDef {
    pub name: String,
    /// Runs a keyed operator (its state can be split by key).
    pub keyed: bool,
    pub restart: Option<RestartKind>,
    /// Overrides the job's `flush_interval` for the chain that runs it.
    pub flush: Option<std::time::Duration>,
    pub dead_letters: bool,
    pub parallelism: Option<usize>,
    pub max_parallelism: Option<usize>,
    pub build: Build,
    pub in_ops: Option<Arc<dyn TypeOps>>,
    pub out_ops: Option<Arc<dyn TypeOps>>,
}

pub(crate) struct EdgeDef {
    pub from: NodeId,
    pub to: NodeId,
    pub kind: EdgeKind,
}

/// The graph as the builder records it.
pub(crate) struct GraphBuilder {
    pub nodes: Vec<NodeDef>,
    pub edges: Vec<EdgeDef>,
    pub config: JobConfig,
    pub dead_letters: DeadLetterQueue,
    /// Mistakes found while the graph was built, reported by `build()`.
    pub errors: Vec<GraphError>,
}

#[derive(Clone)]
struct PlanNode {
    name: Arc<str>,
    keyed: bool,
    restart: Option<RestartKind>,
    flush: Option<std::time::Duration>,
    /// Reads the dead-letter stream (directly or downstream of it).
    after_dead_letters: bool,
    parallelism: usize,
    build: Build,
    in_ops: Option<Arc<dyn TypeOps>>,
    out_ops: Option<Arc<dyn TypeOps>>,
}

#[derive(Clone)]
struct PlanEdge {
    from: NodeId,
    to: NodeId,
    kind: EdgeKind,
    partitioner: Option<Routing>,
}

#[derive(Clone)]
struct Chain {
    nodes: Vec<NodeId>,
    name: String,
    parallelism: usize,
    in_edges: Vec<usize>,
    out_edges: Vec<usize>,
}

/// Identifies one subtask of one chain.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TaskId {
    /// The chain (a group of operators run by one actor per subtask).
    pub chain: usize,
    /// The subtask index within the chain.
    pub subtask: usize,
}

/// One output channel of a task: which task it feeds and as which of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelTarget {
    /// The receiving task.
    pub task: TaskId,
    /// The input channel index at the receiver.
    pub in_channel: usize,
}

/// The head of a built chain.
pub enum TaskChain {
    /// The chain starts with a source.
    Source(Box<dyn ErasedSource>),
    /// The chain receives batches from upstream channels.
    Input(Box<dyn ErasedInput>),
}

impl TaskChain {
    /// The chain's head, whichever kind it is.
    pub fn head(&mut self) -> &mut dyn ChainHead {
        match self {
            TaskChain::Source(s) => s.as_mut(),
            TaskChain::Input(i) => i.as_mut(),
        }
    }

    /// The chain's head, read-only.
    pub fn head_ref(&self) -> &dyn ChainHead {
        match self {
            TaskChain::Source(s) => s.as_ref(),
            TaskChain::Input(i) => i.as_ref(),
        }
    }
}

/// A validated job: nodes grouped into chains, channels laid out, factories ready.
#[derive(Clone)]
pub struct ExecutionPlan {
    nodes: Vec<PlanNode>,
    edges: Vec<PlanEdge>,
    chains: Vec<Chain>,
    node_chain: Vec<usize>,
    config: JobConfig,
    dead_letters: DeadLetterQueue,
    instance: String,
}

impl std::fmt::Debug for ExecutionPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ExecutionPlan {
    /// Validates `g` and plans its execution.
    pub(crate) fn new(g: &GraphBuilder) -> Result<Self, GraphError> {
        g.config.validate()?;
        if let Some(e) = g.errors.first() {
            return Err(e.clone());
        }
        if !g.nodes.iter().any(|n| matches!(n.build, Build::Sink(_))) {
            return Err(GraphError::NoSink);
        }
        let mut nodes: Vec<PlanNode> = Vec::with_capacity(g.nodes.len());
        for (id, n) in g.nodes.iter().enumerate() {
            // A sink without its own parallelism takes its input's (no exchange in front of it,
            // so it sees each upstream subtask's records in order).
            let input_p = || {
                let mut ins = g.edges.iter().filter(|e| e.to == id);
                match (ins.next(), ins.next()) {
                    (Some(e), None) if matches!(n.build, Build::Sink(_)) => {
                        nodes.get(e.from).map(|n| n.parallelism)
                    }
                    _ => None,
                }
            };
            let p = n
                .parallelism
                .or_else(input_p)
                .unwrap_or(match n.max_parallelism {
                    Some(max) => max.min(g.config.default_parallelism),
                    None => g.config.default_parallelism,
                });
            if p == 0 {
                return Err(GraphError::ZeroParallelism {
                    operator: n.name.clone(),
                });
            }
            if let Some(max) = n.max_parallelism {
                if p > max {
                    return Err(GraphError::NonParallel {
                        operator: n.name.clone(),
                        parallelism: p,
                    });
                }
            }
            let after_dead_letters = n.dead_letters
                || g.edges
                    .iter()
                    .any(|e| e.to == id && nodes[e.from].after_dead_letters);
            nodes.push(PlanNode {
                name: n.name.as_str().into(),
                keyed: n.keyed,
                restart: n.restart,
                flush: n.flush,
                after_dead_letters,
                parallelism: p,
                build: n.build.clone(),
                in_ops: n.in_ops.clone(),
                out_ops: n.out_ops.clone(),
            });
        }
        let edges = Self::resolve_edges(g, &nodes)?;
        let (chains, node_chain) = Self::chain(&nodes, &edges, g.config.chaining);
        Ok(ExecutionPlan {
            nodes,
            edges,
            chains,
            node_chain,
            config: g.config.clone(),
            dead_letters: g.dead_letters.clone(),
            instance: String::new(),
        })
    }

    fn resolve_edges(g: &GraphBuilder, nodes: &[PlanNode]) -> Result<Vec<PlanEdge>, GraphError> {
        let mut edges = Vec::with_capacity(g.edges.len());
        for e in &g.edges {
            let (pf, pt) = (nodes[e.from].parallelism, nodes[e.to].parallelism);
            let kind = match &e.kind {
                EdgeKind::Auto if pf == pt => EdgeKind::Forward,
                EdgeKind::Auto => EdgeKind::Rebalance,
                EdgeKind::Forward if pf != pt => {
                    return Err(GraphError::ForwardParallelismMismatch {
                        from: nodes[e.from].name.to_string(),
                        to: nodes[e.to].name.to_string(),
                        from_parallelism: pf,
                        to_parallelism: pt,
                    })
                }
                k => k.clone(),
            };
            let partitioner = match kind {
                EdgeKind::Key(_) => Some(g.config.routing_for(&nodes[e.to].name, pt)),
                _ => None,
            };
            edges.push(PlanEdge {
                from: e.from,
                to: e.to,
                kind,
                partitioner,
            });
        }
        Ok(edges)
    }

    fn chain(nodes: &[PlanNode], edges: &[PlanEdge], chaining: bool) -> (Vec<Chain>, Vec<usize>) {
        let out_deg = |n: NodeId| edges.iter().filter(|e| e.from == n).count();
        let in_edges = |n: NodeId| edges.iter().enumerate().filter(move |(_, e)| e.to == n);
        let mut node_chain = vec![usize::MAX; nodes.len()];
        let mut chains: Vec<Chain> = Vec::new();
        // Node ids are topological: an edge always goes from an older node to a newer one.
        for (id, node) in nodes.iter().enumerate() {
            let ins: Vec<_> = in_edges(id).collect();
            let joins = match ins.as_slice() {
                [(_, e)] if chaining => {
                    e.kind.is_forward()
                        && out_deg(e.from) == 1
                        && nodes[e.from].parallelism == node.parallelism
                }
                _ => false,
            };
            if let (true, [(_, e)]) = (joins, ins.as_slice()) {
                let c = node_chain[e.from];
                node_chain[id] = c;
                chains[c].nodes.push(id);
                chains[c].name.push_str(" -> ");
                chains[c].name.push_str(&node.name);
            } else {
                node_chain[id] = chains.len();
                chains.push(Chain {
                    nodes: vec![id],
                    name: node.name.to_string(),
                    parallelism: node.parallelism,
                    in_edges: ins.iter().map(|(i, _)| *i).collect(),
                    out_edges: Vec::new(),
                });
            }
        }
        for c in &mut chains {
            if let Some(&tail) = c.nodes.last() {
                c.out_edges = (0..edges.len())
                    .filter(|&i| edges[i].from == tail)
                    .collect();
            }
        }
        (chains, node_chain)
    }

    /// The job's configuration.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Sets where the job starts from (a checkpoint or savepoint).
    pub fn set_restore(&mut self, restore: Option<crate::config::RestoreFrom>) {
        self.config.restore = restore;
    }

    /// The same plan with the chain of operator `operator` at parallelism `n`: its subtasks
    /// and the keyed edges into it (their rings) change, nothing else. The chain structure is
    /// kept, so the plan's checkpoints fit the running job's (keyed state is split by
    /// [`ExecutionPlan::adapt_checkpoint`]).
    ///
    /// # Errors
    /// [`GraphError::Rescale`] if no operator has that name, `n` is 0, the operator is
    /// in a source's chain, or the chain is joined to another by a forward edge (whose
    /// parallelisms must stay equal).
    pub fn rescaled(&self, operator: &str, n: usize) -> Result<ExecutionPlan, GraphError> {
        let bad = |reason: &'static str| GraphError::Rescale {
            operator: operator.to_string(),
            parallelism: n,
            reason,
        };
        let mut named = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, x)| &*x.name == operator);
        let (node, _) = named
            .next()
            .ok_or_else(|| bad("no operator has that name"))?;
        if named.next().is_some() {
            return Err(bad(
                "several operators have that name; give the one to rescale its own with .name()",
            ));
        }
        if n == 0 {
            return Err(bad("parallelism must be at least 1"));
        }
        let chain = self.node_chain[node];
        if self.is_source(chain) {
            return Err(bad("a source's parallelism cannot change yet"));
        }
        let c = &self.chains[chain];
        let forward_across = c
            .in_edges
            .iter()
            .chain(&c.out_edges)
            .any(|&e| self.edges[e].kind.is_forward());
        if forward_across {
            return Err(bad("the chain is joined to another by a forward edge"));
        }
        let mut plan = self.clone();
        for &x in &plan.chains[chain].nodes {
            plan.nodes[x].parallelism = n;
        }
        plan.chains[chain].parallelism = n;
        for &e in &self.chains[chain].in_edges {
            if matches!(plan.edges[e].kind, EdgeKind::Key(_)) {
                let to = &plan.nodes[plan.edges[e].to].name;
                plan.edges[e].partitioner = Some(plan.config.routing_for(to, n));
            }
        }
        Ok(plan)
    }

    /// The id of the running job this plan belongs to: unique among the jobs of a process
    /// (several jobs may share a name), the same on every node of a cluster job, and kept by
    /// [`ExecutionPlan::rescaled`]. The runtime sets it when the job starts; empty before.
    /// Live figures and metrics of subtasks are kept under it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sets the id the runtime gives the running job (see [`ExecutionPlan::instance`]).
    pub fn set_instance(&mut self, id: impl Into<String>) {
        self.instance = id.into();
    }

    /// The queue behind the job's dead-letter stream.
    pub fn dead_letter_queue(&self) -> &DeadLetterQueue {
        &self.dead_letters
    }

    /// Whether the chain reads the dead-letter stream (directly or downstream of it); such
    /// chains can only finish after the rest of the job.
    pub fn after_dead_letters(&self, chain: usize) -> bool {
        self.chains[chain]
            .nodes
            .iter()
            .any(|&n| self.nodes[n].after_dead_letters)
    }

    /// How long the chain's subtasks hold a partly filled batch: the smallest override among
    /// its operators (`DataStream::buffer_timeout`), else the job's `flush_interval`; zero is
    /// latency mode.
    pub fn flush_interval(&self, chain: usize) -> std::time::Duration {
        self.chains[chain]
            .nodes
            .iter()
            .filter_map(|&n| self.nodes[n].flush)
            .min()
            .unwrap_or(self.config.flush_interval)
    }

    /// The restart kind for the chain: the first override among its operators, else the job's.
    pub fn restart_kind(&self, chain: usize) -> RestartKind {
        self.chains[chain]
            .nodes
            .iter()
            .find_map(|&n| self.nodes[n].restart)
            .unwrap_or(self.config.restart.kind)
    }

    /// The input channels of `task`, as (upstream task, input channel index).
    pub fn in_channels(&self, task: TaskId) -> Vec<(TaskId, usize)> {
        let mut v = Vec::new();
        for up in self.tasks() {
            for t in self.out_channels(up) {
                if t.task == task {
                    v.push((up, t.in_channel));
                }
            }
        }
        v
    }

    /// Per state entry of the chain (see [`ExecutionPlan::state_entries`]): whether it is the
    /// keyed state of a keyed operator (which can be split by key).
    pub(crate) fn keyed_entries(&self, chain: usize) -> Vec<bool> {
        self.chains[chain]
            .nodes
            .iter()
            .filter(|&&n| !matches!(self.nodes[n].build, Build::Source(_)))
            .map(|&n| self.nodes[n].keyed)
            .collect()
    }

    /// How many state entries a snapshot of the chain holds (one per operator or sink).
    pub fn state_entries(&self, chain: usize) -> usize {
        self.chains[chain]
            .nodes
            .iter()
            .filter(|&&n| !matches!(self.nodes[n].build, Build::Source(_)))
            .count()
    }

    /// The codec of the records a chain receives (`None` for a source chain).
    pub fn input_codec(&self, chain: usize) -> Option<BatchCodec> {
        let head = *self.chains[chain].nodes.first()?;
        self.nodes[head].in_ops.clone().map(BatchCodec)
    }

    /// The number of chains.
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// The chain that runs operator `operator`.
    pub fn chain_of(&self, operator: &str) -> Option<usize> {
        let node = self.nodes.iter().position(|x| &*x.name == operator)?;
        Some(self.node_chain[node])
    }

    /// A chain's name: its operators' names joined by ` -> `.
    pub fn chain_name(&self, chain: usize) -> &str {
        &self.chains[chain].name
    }

    /// The name of a chain's first operator (a keyed chain's keyed operator).
    pub fn head_name(&self, chain: usize) -> &str {
        self.chains[chain]
            .nodes
            .first()
            .map_or("", |&n| &*self.nodes[n].name)
    }

    /// A chain's parallelism.
    pub fn parallelism(&self, chain: usize) -> usize {
        self.chains[chain].parallelism
    }

    /// Whether the chain starts with a source.
    pub fn is_source(&self, chain: usize) -> bool {
        matches!(
            self.nodes[self.chains[chain].nodes[0]].build,
            Build::Source(_)
        )
    }

    /// Whether the chain ends with a sink.
    pub fn is_sink(&self, chain: usize) -> bool {
        self.chains[chain]
            .nodes
            .last()
            .is_some_and(|&n| matches!(self.nodes[n].build, Build::Sink(_)))
    }

    /// Every task, chains in topological order, subtasks ascending.
    pub fn tasks(&self) -> Vec<TaskId> {
        (0..self.chains.len())
            .flat_map(|c| {
                (0..self.chains[c].parallelism).map(move |s| TaskId {
                    chain: c,
                    subtask: s,
                })
            })
            .collect()
    }

    fn in_offset(&self, edge: usize) -> usize {
        let to_chain = self.node_chain[self.edges[edge].to];
        let mut off = 0;
        for &e in &self.chains[to_chain].in_edges {
            if e == edge {
                break;
            }
            off += self.channels_from(e);
        }
        off
    }

    fn channels_from(&self, edge: usize) -> usize {
        let e = &self.edges[edge];
        if e.kind.is_forward() {
            1
        } else {
            self.nodes[e.from].parallelism
        }
    }

    /// How many input channels `task` has (end-of-input must arrive on each).
    pub fn in_channel_count(&self, task: TaskId) -> usize {
        self.chains[task.chain]
            .in_edges
            .iter()
            .map(|&e| self.channels_from(e))
            .sum()
    }

    /// The output channels of `task`, in the order its routers use them.
    pub fn out_channels(&self, task: TaskId) -> Vec<ChannelTarget> {
        let mut out = Vec::new();
        for &ei in &self.chains[task.chain].out_edges {
            let e = &self.edges[ei];
            let to_chain = self.node_chain[e.to];
            let off = self.in_offset(ei);
            if e.kind.is_forward() {
                out.push(ChannelTarget {
                    task: TaskId {
                        chain: to_chain,
                        subtask: task.subtask,
                    },
                    in_channel: off,
                });
            } else {
                for t in 0..self.nodes[e.to].parallelism {
                    out.push(ChannelTarget {
                        task: TaskId {
                            chain: to_chain,
                            subtask: t,
                        },
                        in_channel: off + task.subtask,
                    });
                }
            }
        }
        out
    }

    /// The ring that routes keys to the chain's subtasks: its keyed input edge's (built once
    /// with the plan), else the one the configuration gives for its head operator.
    pub fn key_routing(&self, chain: usize) -> Routing {
        self.chains[chain]
            .in_edges
            .iter()
            .find_map(|&e| self.edges[e].partitioner.clone())
            .unwrap_or_else(|| {
                self.config
                    .routing_for(self.head_name(chain), self.parallelism(chain))
            })
    }

    /// Where the routers of a chain's subtasks write, one per outgoing edge in the order of
    /// [`ExecutionPlan::out_channels`] (empty for a chain that ends in a sink).
    pub fn route_layout(&self, chain: usize) -> Vec<RouteLayout> {
        let tail = self.chains[chain].nodes.last();
        if tail.is_some_and(|&n| matches!(self.nodes[n].build, Build::Sink(_))) {
            return Vec::new();
        }
        let mut base = 0;
        self.chains[chain]
            .out_edges
            .iter()
            .map(|&ei| {
                let e = &self.edges[ei];
                let channels = if e.kind.is_forward() {
                    1
                } else {
                    self.nodes[e.to].parallelism
                };
                let layout = RouteLayout {
                    base,
                    channels,
                    partitioner: e.partitioner.clone(),
                };
                base += channels;
                layout
            })
            .collect()
    }

    fn info(&self, node: NodeId, subtask: usize, attempt: u32) -> SubtaskInfo {
        SubtaskInfo {
            operator: self.nodes[node].name.clone(),
            index: subtask,
            parallelism: self.nodes[node].parallelism,
            attempt,
        }
    }

    fn tail(&self, task: TaskId, tail: NodeId, attempt: u32) -> Result<AnyStage, StageError> {
        let node = &self.nodes[tail];
        if let Build::Sink(f) = &node.build {
            return Ok(f(&self.info(tail, task.subtask, attempt)));
        }
        let ops = node
            .out_ops
            .as_ref()
            .ok_or_else(|| internal("operator without output type"))?;
        let mut routers = Vec::new();
        let edges = &self.chains[task.chain].out_edges;
        for (&ei, layout) in edges.iter().zip(self.route_layout(task.chain)) {
            let plan = RouterPlan {
                to: self.nodes[self.edges[ei].to].name.clone(),
                base: layout.base,
                channels: layout.channels,
                batching: self.config.batching(),
                start: task.subtask,
                partitioner: layout.partitioner,
            };
            routers.push(ops.router(&self.edges[ei].kind, plan)?);
        }
        match routers.len() {
            0 => Ok(ops.discard()),
            1 => routers.pop().ok_or_else(|| internal("router vanished")),
            _ => ops.tee(routers),
        }
    }

    /// Builds a fresh operator chain for `task` from the factories (restart attempt `attempt`).
    ///
    /// # Errors
    /// Only internal errors (mismatched types in the plan), which indicate a bug in Riffle.
    pub fn build_task(&self, task: TaskId, attempt: u32) -> Result<TaskChain, StageError> {
        let chain = &self.chains[task.chain];
        let (&head, rest) = chain
            .nodes
            .split_first()
            .ok_or_else(|| internal("empty chain"))?;
        let tail = *chain.nodes.last().ok_or_else(|| internal("empty chain"))?;
        let mut stage = self.tail(task, tail, attempt)?;
        // Build from the tail backwards; the tail node itself was built by `tail` if a sink.
        let operators: Vec<NodeId> = std::iter::once(head).chain(rest.iter().copied()).collect();
        for &n in operators.iter().rev() {
            let info = self.info(n, task.subtask, attempt);
            match &self.nodes[n].build {
                Build::Sink(_) => {} // already the tail stage
                Build::Operator(f) => stage = f(&info, stage)?,
                Build::Source(f) => return Ok(TaskChain::Source(f(&info, stage)?)),
            }
        }
        let ops = self.nodes[head]
            .in_ops
            .as_ref()
            .ok_or_else(|| internal("input without type"))?;
        Ok(TaskChain::Input(
            ops.input(stage, self.nodes[head].name.clone())?,
        ))
    }

    /// A human-readable description: chains, parallelism, edges.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.chains.iter().enumerate() {
            s.push_str(&format!(
                "chain {i}: {} (parallelism {})\n",
                c.name, c.parallelism
            ));
            for &e in &c.out_edges {
                let e = &self.edges[e];
                s.push_str(&format!(
                    "  --{}--> chain {}\n",
                    e.kind.label(),
                    self.node_chain[e.to]
                ));
            }
        }
        s
    }
}
