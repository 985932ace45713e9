//! Distributed jobs: one job's subtasks spread over the cluster's nodes.
//!
//! Every node registers the same job builders by name. The **coordinator** — the live node
//! with the lowest id when the job is submitted (`Node::run_job` refuses to run elsewhere) —
//! builds the plan, places every subtask on a node with the [`Placement`] ring, tells the other
//! nodes to host the job (`JobStart`), and runs the job supervisor (restart strategy,
//! checkpoint coordinator) as in a single process. The supervisor starts a subtask on another
//! node with a `Spawn` frame and talks to it through a control proxy (`Control` frames);
//! a hosted subtask reports through the node's job proxy (`Report` frames), and the
//! supervisor's answer to a failure travels back as a `Decision` frame. Data between subtasks
//! on different nodes goes through remote mailboxes (see [`crate::remote`]), resolved per
//! channel by the job's resolver.
//!
//! Every subtask starts paused; the job runs once all of them, on every node, reported ready.
//!
//! **Node loss**: when the failure detector declares a node down, the coordinator re-places
//! that node's subtasks on the survivors (the ring without the lost node, so only its subtasks
//! move), tells the survivors (`Placement`), and the supervisor recovers the whole job from the
//! latest completed checkpoint in a new epoch — exactly once, like any other failure.
//!
//! **Rescale in place** (`ClusterJob::rescale`): the supervisor's protocol (see
//! `riffle_actors`) with the new subtasks placed next to the ones that stay
//! ([`Placement::assign_added`]); a node that joined since the job started gets `JobStart` when
//! it takes subtasks, and hosting nodes build the rescaled plan from its steps.
//!
//! The hosting side — frames for hosted jobs, starting and stopping their runtime, node loss —
//! is in `hosting.rs`.
//!
//! **Coordinator loss is not survived**: the other nodes stop hosting its jobs and report the
//! job ended with an error ([`Node::wait_hosted`](crate::Node::wait_hosted)); a new submission
//! starts it again (from its latest checkpoint if it is configured to restore).

use crate::authority::{Authority, JobRecord, RecordState};
pub use crate::config::JobBuilder;
use crate::counters::LinkTotals;
use crate::jobs::{instance_id, CoordinatedJob};
use crate::placement::Placement;
use crate::proxy::{ClusterResolver, ClusterTasks};
use crate::shared::Shared;
use crate::wire::Message;
use riffle_actors::chaos::ChaosHandle;
use riffle_actors::RescaleOutcome;
use riffle_actors::{ClusterError, JobError, JobHandle, JobResult, LinkFigures};
use riffle_framework::{ExecutionPlan, RestoreFrom, StreamEnv, TaskId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A job submitted to the cluster from its coordinator.
pub struct ClusterJob {
    handle: JobHandle,
    job: u64,
    links: JobLinks,
    name: String,
    options: JobOptions,
    /// Where every subtask was placed.
    placed: Vec<(TaskId, String)>,
    /// Where the job's savepoints are (`DIR/JOB`), with checkpoints in a directory.
    savepoints: Option<std::path::PathBuf>,
    /// Which subtasks each node runs (at the start).
    pub placement: BTreeMap<String, Vec<TaskId>>,
    /// Chain names, by chain index (to print the placement).
    pub chains: Vec<String>,
}

impl ClusterJob {
    /// The job's id in the cluster.
    pub fn id(&self) -> u64 {
        self.job
    }

    /// What acts on the running job from another thread (a savepoint, a stop with one).
    pub fn control(&self) -> riffle_actors::registry::JobControl {
        self.handle.control()
    }

    /// A chaos handle for the job (faults injected into subtasks wherever they run).
    pub fn chaos(&self) -> ChaosHandle {
        self.handle.chaos()
    }

    /// What the job has done so far (see [`JobHandle::progress`]).
    pub fn progress(&self) -> riffle_actors::Progress {
        self.handle.progress()
    }

    /// Blocks until `cond` holds for the job's progress, or the job ended (see
    /// [`JobHandle::wait_until`]).
    pub fn wait_until(
        &self,
        cond: impl Fn(&riffle_actors::Progress) -> bool,
    ) -> riffle_actors::Progress {
        self.handle.wait_until(cond)
    }

    /// Waits for the job's outcome, then tells every node it ended.
    ///
    /// # Errors
    /// The job's error (see [`JobHandle::wait`]).
    pub fn wait(self) -> Result<JobResult, JobError> {
        let outcome = self.handle.wait();
        Self::ended(self.job, self.links, outcome)
    }

    /// Takes a savepoint and stops the job there (output after it is never committed); the
    /// job continues — at another parallelism, on other nodes — with [`Node::run_job_with`]
    /// restoring the savepoint. Returns the savepoint's id and the stopped job's result.
    ///
    /// [`Node::run_job_with`]: crate::Node::run_job_with
    ///
    /// # Errors
    /// [`JobError::CheckpointingOff`] if checkpointing is off, [`JobError::JobEnded`] if the
    /// job ended first, or the job's own error.
    pub fn stop_with_savepoint(self) -> Result<(u64, JobResult), JobError> {
        let outcome = self.handle.stop_with_savepoint();
        let (id, result) = match outcome {
            Ok((id, r)) => (Some(id), Ok(r)),
            Err(e) => (None, Err(e)),
        };
        let result = Self::ended(self.job, self.links, result)?;
        Ok((id.unwrap_or_default(), result))
    }

    /// Changes the parallelism of operator `operator` to `n`, in place (as
    /// [`JobHandle::rescale`]): the new subtasks are placed over the nodes that are live now
    /// — a node that joined since the job started takes its share and starts hosting the job
    /// — while every other subtask stays on its node and only the rescaled operator, the
    /// routers in front of it and the inputs behind it re-wire. If it cannot be done in place
    /// (part of the job already finished its input), the job stops at a savepoint and
    /// continues from it as a new cluster job placed over the current members. Returns the
    /// job and what moved.
    ///
    /// # Errors
    /// [`JobError::Graph`] if the operator cannot be rescaled (nothing changes),
    /// [`JobError::CheckpointingOff`] without checkpointing,
    /// [`JobError::NeedsCheckpointDir`] to continue from a savepoint without checkpoints in a
    /// directory, [`JobError::JobEnded`] if the job ended first, and the errors of starting
    /// the continued job.
    pub fn rescale(
        mut self,
        operator: &str,
        n: usize,
    ) -> Result<(ClusterJob, RescaleOutcome), JobError> {
        match self.handle.rescale_in_place(operator, n) {
            Ok(outcome) => {
                self.options.rescaled.retain(|(op, _)| op != operator);
                self.options.rescaled.push((operator.to_string(), n));
                self.refresh_placement();
                self.record_rescale()?;
                Ok((self, outcome))
            }
            Err(JobError::RescaleRefused { reason }) => {
                tracing::info!(%reason, "cannot rescale in place; continuing from a savepoint");
                self.continued(Some(operator), |o| {
                    o.rescaled.retain(|(op, _)| op != operator);
                    o.rescaled.push((operator.to_string(), n));
                })
            }
            Err(e) => Err(e),
        }
    }

    /// With etcd: the job's record says how it runs now, so that a new leader continues it
    /// so.
    fn record_rescale(&self) -> Result<(), ClusterError> {
        let coordinated = self.links.shared.jobs.coordinated.get(&self.job);
        match coordinated.as_ref().and_then(|c| c.authority.clone()) {
            Some(a) => a.rescaled(&self.options.rescaled),
            None => Ok(()),
        }
    }

    /// Reads where every subtask runs now (after a rescale in place).
    fn refresh_placement(&mut self) {
        let Some(c) = self
            .links
            .shared
            .jobs
            .coordinated
            .get(&self.job)
            .map(|c| c.clone())
        else {
            return;
        };
        let mut placed: Vec<(TaskId, String)> = c
            .resolver
            .placement
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        placed.sort();
        self.placement = BTreeMap::new();
        for (t, n) in &placed {
            self.placement.entry(n.clone()).or_default().push(*t);
        }
        for n in self.placement.keys() {
            if *n != self.links.me && !self.links.hosts.contains(n) {
                self.links.hosts.push(n.clone());
            }
        }
        self.placed = placed;
    }

    /// Moves the job off node `node` gracefully (a drain): the job stops at a savepoint and
    /// continues on the other live nodes; only `node`'s subtasks move (sticky placement),
    /// after which the node hosts nothing of this job and can leave.
    ///
    /// # Errors
    /// [`JobError::Cluster`] for the coordinator itself; otherwise as
    /// [`ClusterJob::rescale`].
    pub fn drain(self, node: &str) -> Result<(ClusterJob, RescaleOutcome), JobError> {
        if node == self.links.me {
            return Err(ClusterError::DrainCoordinator {
                node: node.to_string(),
            }
            .into());
        }
        self.continued(None, |o| o.exclude.push(node.to_string()))
    }

    /// Stops at a savepoint and continues with `change` applied to the job's options,
    /// reporting the keyed state `operator`'s chain moved.
    fn continued(
        self,
        operator: Option<&str>,
        change: impl FnOnce(&mut JobOptions),
    ) -> Result<(ClusterJob, RescaleOutcome), JobError> {
        let shared = self.links.shared.clone();
        let me = self.links.me.clone();
        let name = self.name.clone();
        let mut options = self.options.clone();
        change(&mut options);
        options.restore = None;
        options.sticky = self.placed.clone();
        let builder = shared
            .jobs
            .builder(&name)
            .ok_or_else(|| ClusterError::UnknownJob {
                name: name.to_string(),
            })?;
        let plan = plan_with(&builder, &options)?;
        let Some(dir) = self.savepoints.clone() else {
            return Err(JobError::NeedsCheckpointDir {
                what: "continuing a job on other nodes".to_string(),
            });
        };
        let started = std::time::Instant::now();
        let (savepoint, before) = self.stop_with_savepoint()?;
        let sp = dir.join(format!("sp-{savepoint}"));
        let moved = riffle_actors::state_moved(&plan, &sp, savepoint, operator)?;
        options.restore = Some(RestoreFrom::Path(sp));
        let next = run_job(&shared, &me, &name, shared.net.up_peers(), options)?;
        next.wait_until(|p| p.restored_record || p.ended);
        Ok((
            next,
            RescaleOutcome {
                checkpoint: savepoint,
                state: moved,
                pause: started.elapsed(),
                in_place: None,
                before: Some(before),
            },
        ))
    }

    /// Gathers the link figures and tells every node the job ended.
    fn ended(
        job: u64,
        links: JobLinks,
        outcome: Result<JobResult, JobError>,
    ) -> Result<JobResult, JobError> {
        let mut outcome = outcome;
        if let Ok(result) = &mut outcome {
            result.links = links.figures(job);
        }
        let error = outcome.as_ref().err().map(|e| e.to_string());
        let coordinated = links.shared.jobs.coordinated.remove(&job).map(|(_, c)| c);
        links.shared.jobs.gone(job);
        if let Some(a) = coordinated.as_ref().and_then(|c| c.authority.clone()) {
            if matches!(outcome, Err(JobError::Cluster(ClusterError::Fenced { .. }))) {
                // Not an end: the new leader continues the job; its nodes hear from it.
                return outcome;
            }
            // The end is agreed in etcd before anyone is told.
            if let Err(e) = a.ended(error.as_deref()) {
                tracing::error!(job, error = %e, "the job's end could not be recorded; its nodes are not told");
                return Err(e.into());
            }
        }
        // Who is away is decided before anyone is told: a node told may hear it, leave and
        // be gone by the time the others are told, and is owed nothing.
        let away = links.away_hosts(coordinated.as_deref());
        for link in links.shared.net.all_links() {
            let _ = link.send(Message::JobEnd {
                job,
                error: error.clone(),
            });
        }
        for h in away {
            links.shared.jobs.owe_end(&h, job, error.clone());
        }
        outcome
    }
}

/// What the coordinator needs to gather a job's link figures and announce its end.
struct JobLinks {
    me: String,
    hosts: Vec<String>,
    baseline: LinkTotals,
    shared: Arc<Shared>,
}

impl JobLinks {
    /// Without etcd, the nodes that hosted the job and are away now: they hear of its end
    /// when they are back (with etcd they read it there). A node that left on purpose is not
    /// waited for.
    fn away_hosts(&self, coordinated: Option<&CoordinatedJob>) -> Vec<String> {
        if self.shared.leadership.is_some() {
            return Vec::new();
        }
        let mut hosts = self.hosts.clone();
        if let Some(c) = coordinated {
            hosts.extend(c.resolver.placement.iter().map(|e| e.value().clone()));
        }
        hosts.sort();
        hosts.dedup();
        let members = self.shared.net.members.lock();
        hosts
            .into_iter()
            .filter(|h| *h != self.me && !members.sessions.contains_key(h) && !members.left(h))
            .collect()
    }

    /// Asks every hosting node for its links' traffic during job `job` (waits at most 2 s).
    fn figures(&self, job: u64) -> Vec<LinkFigures> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.jobs.stats_waiters.insert(job, tx);
        let asked = self
            .hosts
            .iter()
            .filter(|h| {
                self.shared
                    .net
                    .link_sender(h)
                    .is_some_and(|l| l.send(Message::StatsRequest { job }))
            })
            .count();
        let mut all = vec![(
            self.me.clone(),
            delta(&self.baseline, &self.shared.net.link_totals()),
        )];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while all.len() < asked + 1 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(x) => all.push(x),
                Err(_) => break,
            }
        }
        self.shared.jobs.stats_waiters.remove(&job);
        let mut figures: Vec<LinkFigures> = all
            .into_iter()
            .flat_map(|(from, links)| {
                links.into_iter().filter(|l| l.2 > 0).map(
                    move |(to, bytes, frames, data_frames, credit_frames)| LinkFigures {
                        from: from.clone(),
                        to,
                        bytes,
                        frames,
                        data_frames,
                        credit_frames,
                    },
                )
            })
            .collect();
        figures.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        figures
    }
}

/// What was sent since `base`, per peer.
pub(crate) fn delta(base: &LinkTotals, now: &LinkTotals) -> LinkTotals {
    now.iter()
        .map(|(peer, b, f, d, c)| {
            let z = (0, 0, 0, 0);
            let old = base
                .iter()
                .find(|x| &x.0 == peer)
                .map_or(z, |x| (x.1, x.2, x.3, x.4));
            (
                peer.clone(),
                b.saturating_sub(old.0),
                f.saturating_sub(old.1),
                d.saturating_sub(old.2),
                c.saturating_sub(old.3),
            )
        })
        .collect()
}

/// How a submitted job differs from what its builder says.
#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    /// The default parallelism (operators without their own), e.g. to rescale the keyed
    /// operators of a job continued from a savepoint. Every node builds the job with it.
    pub parallelism: Option<usize>,
    /// Start from this checkpoint or savepoint (read by the coordinator, which must see the
    /// directory); keyed state is split by the new rings if parallelisms changed.
    pub restore: Option<RestoreFrom>,
    /// Operators whose chains run at another parallelism (see `ExecutionPlan::rescaled`),
    /// applied after `parallelism`.
    pub rescaled: Vec<(String, usize)>,
    /// A previous placement to stay close to: a subtask keeps its node while that node is
    /// live and holds no more than its fair share (see `Placement::assign_sticky`).
    pub sticky: Vec<(TaskId, String)>,
    /// Live nodes to leave out of the placement (being drained).
    pub exclude: Vec<String>,
}

/// The plan of `builder` with `options` applied (restore included).
pub(crate) fn plan_with(
    builder: &JobBuilder,
    options: &JobOptions,
) -> Result<ExecutionPlan, JobError> {
    let mut plan = build_with(builder, options.parallelism, options.restore.clone()).build()?;
    for (op, n) in &options.rescaled {
        plan = plan.rescaled(op, *n)?;
    }
    Ok(plan)
}

/// The plan of job number `job` that places and routes (the restore is read only by the
/// supervisor's own copy).
fn routing_plan(
    builder: &JobBuilder,
    options: &JobOptions,
    job: u64,
) -> Result<ExecutionPlan, JobError> {
    let options = JobOptions {
        restore: None,
        ..options.clone()
    };
    running_plan(builder, &options, job)
}

/// The plan of job number `job`, under its cluster-wide id (see [`instance_id`]).
pub(crate) fn running_plan(
    builder: &JobBuilder,
    options: &JobOptions,
    job: u64,
) -> Result<ExecutionPlan, JobError> {
    let mut plan = plan_with(builder, options)?;
    plan.set_instance(instance_id(job));
    Ok(plan)
}

/// The builder `name` with the options applied (`restore` only where it is read).
fn build_with(
    builder: &JobBuilder,
    parallelism: Option<usize>,
    restore: Option<RestoreFrom>,
) -> StreamEnv {
    let env = builder();
    if let Some(p) = parallelism {
        env.set_parallelism(p);
    }
    if restore.is_some() {
        env.configure(|c| c.restore = restore);
    }
    env
}

/// Submits job `name` on the coordinator (see the module docs).
pub(crate) fn run_job(
    shared: &Arc<Shared>,
    me: &str,
    name: &str,
    up: Vec<String>,
    options: JobOptions,
) -> Result<ClusterJob, JobError> {
    run_job_in(shared, me, name, up, options, None)
}

/// With etcd: the epoch this node leads in (it must lead to run a job), else 0.
fn leader_epoch(shared: &Shared, me: &str) -> Result<u64, ClusterError> {
    let Some(l) = &shared.leadership else {
        return Ok(0);
    };
    l.holds().ok_or_else(|| ClusterError::NotLeader {
        me: me.to_string(),
        leader: l.view().leader,
    })
}

/// Submits job `name` on the coordinator; with etcd, its record carries `checkpoint` (the
/// latest checkpoint of the job this continues, if any) until a newer one completes.
pub(crate) fn run_job_in(
    shared: &Arc<Shared>,
    me: &str,
    name: &str,
    up: Vec<String>,
    options: JobOptions,
    checkpoint: Option<u64>,
) -> Result<ClusterJob, JobError> {
    let epoch = leader_epoch(shared, me)?;
    let builder = shared
        .jobs
        .builder(name)
        .ok_or_else(|| ClusterError::UnknownJob {
            name: name.to_string(),
        })?;
    let job = random_id();
    let plan = Arc::new(routing_plan(&builder, &options, job)?);
    let nodes = job_nodes(me, up, &options.exclude, epoch > 0)?;
    let (placement, by_node) = place(&plan, &nodes, &options.sticky);
    let chains: Vec<String> = (0..plan.chain_count())
        .map(|c| plan.chain_name(c).to_string())
        .collect();
    log_placement(job, &by_node, &chains);
    let authority = take_authority(shared, epoch, job, name, &options, checkpoint)?;
    let resolver = Arc::new(ClusterResolver::new(
        job,
        me,
        shared.net.clone(),
        plan.clone(),
        &placement,
    ));
    for node in nodes.iter().filter(|n| n.as_str() != me) {
        let start = job_start((job, epoch), name, me, &placement, &options);
        if !resolver.link_to(node).send(start) {
            return Err(ClusterError::NoLink { node: node.clone() }.into());
        }
    }
    let coordinated = Arc::new(CoordinatedJob {
        resolver: resolver.clone(),
        ports: Mutex::new(None),
        authority: authority.clone(),
        first_nodes: nodes.clone(),
    });
    shared.jobs.coordinated.insert(job, coordinated.clone());
    // The supervisor owns its own copy of the (deterministic) plan.
    let plan = running_plan(&builder, &options, job)?;
    let savepoints = match plan.config().checkpoint.as_ref().map(|c| &c.storage) {
        Some(riffle_framework::CheckpointStorage::Dir(d)) => Some(d.join(&plan.config().name)),
        _ => None,
    };
    let dist = distribution(resolver, coordinated, name, &options);
    let baseline = shared.net.link_totals();
    let handle = riffle_actors::start_distributed(plan, dist)?;
    Ok(ClusterJob {
        handle,
        job,
        name: name.to_string(),
        options: JobOptions {
            sticky: Vec::new(),
            ..options
        },
        placed: placement,
        savepoints,
        links: JobLinks {
            me: me.to_string(),
            hosts: nodes.iter().filter(|n| n.as_str() != me).cloned().collect(),
            baseline,
            shared: shared.clone(),
        },
        placement: by_node,
        chains,
    })
}

/// Places `plan`'s subtasks on the ring of `nodes` (keeping `sticky` ones where they were):
/// the placement, and the subtasks by node.
#[allow(clippy::type_complexity)]
fn place(
    plan: &ExecutionPlan,
    nodes: &[String],
    sticky: &[(TaskId, String)],
) -> (Vec<(TaskId, String)>, BTreeMap<String, Vec<TaskId>>) {
    let ring = Placement::new(nodes.iter().map(|n| (n.as_str(), 1)));
    let placement = ring.assign_sticky(&plan.tasks(), sticky);
    let mut by_node: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    for (t, n) in &placement {
        by_node.entry(n.clone()).or_default().push(*t);
    }
    (placement, by_node)
}

/// With etcd: takes the leader's authority over job `job` and writes its record (see
/// the `failover` module); without, `None`.
fn take_authority(
    shared: &Shared,
    epoch: u64,
    job: u64,
    name: &str,
    options: &JobOptions,
    checkpoint: Option<u64>,
) -> Result<Option<Arc<Authority>>, ClusterError> {
    let Some(l) = shared.leadership.clone() else {
        return Ok(None);
    };
    let record = JobRecord {
        name: name.to_string(),
        parallelism: options.parallelism,
        rescaled: options.rescaled.clone(),
        job,
        epoch,
        checkpoint,
        state: RecordState::Running,
    };
    Authority::take(l, epoch, record).map(Some)
}

/// How the coordinator's runtime reaches the job's subtasks on other nodes: through
/// `resolver`, and the ports the cluster layer feeds once the supervisor exists.
fn distribution(
    resolver: Arc<ClusterResolver>,
    coordinated: Arc<CoordinatedJob>,
    name: &str,
    options: &JobOptions,
) -> riffle_actors::Distribution {
    riffle_actors::Distribution {
        resolve: resolver.clone(),
        remote: Arc::new(ClusterTasks {
            resolver,
            name: name.to_string(),
            parallelism: options.parallelism,
            rescaled: options.rescaled.clone(),
            exclude: options.exclude.clone(),
            authority: coordinated.authority.clone(),
        }),
        on_start: Box::new(move |ports| {
            *coordinated.ports.lock().unwrap_or_else(|e| e.into_inner()) = Some(ports);
        }),
    }
}

/// The nodes a job submitted on `me` runs on: the live ones, less `exclude`, sorted.
///
/// # Errors
/// [`JobError::Cluster`] if `me` is not the lowest of them (not the coordinator) and no
/// leader was `elected`.
fn job_nodes(
    me: &str,
    up: Vec<String>,
    exclude: &[String],
    elected: bool,
) -> Result<Vec<String>, JobError> {
    let mut nodes = up;
    nodes.retain(|n| !exclude.contains(n));
    nodes.push(me.to_string());
    nodes.sort();
    if !elected && nodes.first().map(String::as_str) != Some(me) {
        return Err(ClusterError::NotCoordinator {
            me: me.to_string(),
            coordinator: nodes[0].clone(),
        }
        .into());
    }
    Ok(nodes)
}

/// Logs where the job's subtasks run.
fn log_placement(job: u64, by_node: &BTreeMap<String, Vec<TaskId>>, chains: &[String]) {
    for (node, ts) in by_node {
        let names: Vec<String> = ts
            .iter()
            .map(|t| format!("{}[{}]", chains[t.chain], t.subtask))
            .collect();
        tracing::info!(job, %node, subtasks = %names.join(", "), "placement");
    }
}

/// The `JobStart` frame that tells a node to host job `job`, started in `epoch`.
fn job_start(
    (job, epoch): (u64, u64),
    name: &str,
    me: &str,
    placement: &[(TaskId, String)],
    options: &JobOptions,
) -> Message {
    Message::JobStart {
        job,
        name: name.to_string(),
        coordinator: me.to_string(),
        placement: placement.to_vec(),
        parallelism: options.parallelism.map(|p| p as u32),
        rescaled: options
            .rescaled
            .iter()
            .map(|(op, n)| (op.clone(), *n as u32))
            .collect(),
        epoch,
    }
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = t.to_le_bytes();
    }
    u64::from_le_bytes(b)
}
