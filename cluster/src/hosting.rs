//! The hosting side of distributed jobs: the frames a node handles for jobs it hosts or
//! coordinates, starting and stopping a hosted job's runtime, and what a node's loss does to
//! the jobs (see [`crate::job`] for the protocol as a whole).
//!
//! A non-coordinator node hosts a job when a `JobStart` frame arrives — at the job's start, or
//! when a rescale in place gives subtasks to a node that joined since. It builds the same plan
//! from the registered builder, starts the job's worker threads and a job proxy, and then
//! applies `Spawn` and `Control` frames in order on one worker thread. The coordinator, for
//! its part, feeds `Report` frames to its job supervisor and answers failures with `Decision`
//! frames.

use crate::job::{delta, running_plan, JobOptions};
pub use crate::jobs::HostedEnd;
use crate::jobs::{CoordinatedJob, HostedJob};
use crate::placement::Placement;
use crate::proxy::{ClusterResolver, JobProxy};
use crate::session::LinkSender;
use crate::shared::Shared;
use crate::wire::Message;
use actix::prelude::*;
use dashmap::DashMap;
use riffle_actors::host::{Directory, LocalHost, SpawnSpec};
use riffle_actors::{Control, Decision, NodeLost, ToJob};
use riffle_framework::TaskId;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Jobs a node hosts for others at once, at most.
const MAX_HOSTED_JOBS: usize = 16;

/// A frame from an authenticated peer that names something that does not exist here — a job,
/// a subtask or a channel — or does not decode: the peer broke the protocol, and the link it
/// came on closes ([`crate::Refusals::bad_frames`]). A frame for a job that ended here lately
/// is late, not wrong, and is dropped without closing anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No job of that id runs or ran here lately.
    #[error("no job {job:#x} is known here")]
    UnknownJob {
        /// The job named.
        job: u64,
    },
    /// The job has no such subtask.
    #[error("job {job:#x} has no subtask {chain}.{subtask}")]
    UnknownTask {
        /// The job.
        job: u64,
        /// The chain named.
        chain: usize,
        /// The subtask named.
        subtask: usize,
    },
    /// The subtask has no such input channel.
    #[error("subtask {chain}.{subtask} of job {job:#x} has no input channel {channel} (it has {channels})")]
    UnknownChannel {
        /// The job.
        job: u64,
        /// The chain.
        chain: u32,
        /// The subtask.
        subtask: u32,
        /// The channel named.
        channel: u32,
        /// The channels the subtask has.
        channels: u32,
    },
    /// A body inside the frame does not decode.
    #[error("job {job:#x}: undecodable {what}: {reason}")]
    Undecodable {
        /// The job.
        job: u64,
        /// What did not decode.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
}

fn undecodable(job: u64, what: &'static str, e: impl std::fmt::Display) -> FrameError {
    FrameError::Undecodable {
        job,
        what,
        reason: e.to_string(),
    }
}

/// `task` must be a subtask of job `job` as placed here.
fn known_task(shared: &Shared, job: u64, task: TaskId) -> Result<(), FrameError> {
    match shared.jobs.placed(job, task) {
        Some(true) => Ok(()),
        Some(false) => Err(FrameError::UnknownTask {
            job,
            chain: task.chain,
            subtask: task.subtask,
        }),
        None if shared.jobs.ended_lately(job) => Ok(()),
        None => Err(FrameError::UnknownJob { job }),
    }
}

/// Counts and logs a job frame from a node without authority over the job.
fn refuse(shared: &Shared, job: u64, peer: &str, what: &'static str) {
    crate::guard::RefusedCounts::add(&shared.refused.frames);
    tracing::warn!(job, %peer, what, "job frame from a node without authority over the job; refused");
}

/// The hosted job `job`, if `peer` is its coordinator (a frame from anyone else is refused)
/// and no newer leader superseded the one that started it (see [`drop_stale_hosted`]).
fn hosted_by(
    shared: &Arc<Shared>,
    job: u64,
    peer: &str,
    what: &'static str,
) -> Option<Arc<HostedJob>> {
    let h = shared.jobs.hosted.get(&job).map(|h| h.clone())?;
    if h.coordinator != peer {
        refuse(shared, job, peer, what);
        return None;
    }
    let newest = shared.leadership.as_ref().map_or(0, |l| l.view().epoch);
    if h.epoch < newest {
        drop_stale_hosted(shared, newest);
        fenced(shared, job, peer, what);
        return None;
    }
    Some(h)
}

/// Counts and logs a frame of a job whose leader was superseded.
fn fenced(shared: &Shared, job: u64, peer: &str, what: &'static str) {
    crate::guard::RefusedCounts::add(&shared.refused.fenced);
    tracing::warn!(job, %peer, what, "frame of a job whose leader was superseded; refused");
}

/// A newer leader (of `epoch`) leads the cluster: stop hosting every job an older one
/// started — the new leader continues it — and refuse their frames from now on. These jobs
/// did not end, so nothing is reported to [`crate::Node::wait_hosted`].
pub(crate) fn drop_stale_hosted(shared: &Arc<Shared>, epoch: u64) {
    let stale: Vec<u64> = shared
        .jobs
        .hosted
        .iter()
        .filter(|e| e.value().epoch < epoch)
        .map(|e| *e.key())
        .collect();
    for job in stale {
        if let Some((_, h)) = shared.jobs.hosted.remove(&job) {
            tracing::warn!(
                job,
                epoch = h.epoch,
                newer = epoch,
                "a newer leader took over: the job's old instance stops here"
            );
            shared.jobs.superseded(job);
            stop_hosted(shared, job, &h);
        }
    }
}

/// The job `job` this node coordinates, if `peer` hosts part of it.
fn coordinated_from(
    shared: &Shared,
    job: u64,
    peer: &str,
    what: &'static str,
) -> Option<Arc<CoordinatedJob>> {
    let c = shared.jobs.coordinated.get(&job).map(|c| c.clone())?;
    if !c.resolver.placement.iter().any(|e| e.value() == peer) {
        refuse(shared, job, peer, what);
        return None;
    }
    Some(c)
}

/// A job start from a leader whose epoch is older than the newest this node knows.
const SUPERSEDED_START: &str = "a job start from a leader that was superseded";

/// Why a `JobStart` from `peer` is refused, if it is: only the coordinator — naming itself,
/// and, without etcd, the live member with the lowest id among the others this node knows
/// (this node is left out: one that joined after the job started may have a lower id than its
/// coordinator); with etcd, the leader of an epoch no older than the newest this node knows —
/// may start a job; a job runs once; a node hosts a bounded number of jobs.
fn start_refused(
    shared: &Shared,
    job: u64,
    peer: &str,
    coordinator: &str,
    epoch: u64,
) -> Option<&'static str> {
    if coordinator != peer {
        return Some("a job start on behalf of another node");
    }
    if let Some(l) = &shared.leadership {
        let view = l.view();
        if epoch < view.epoch || epoch == 0 {
            return Some(SUPERSEDED_START);
        }
        if epoch == view.epoch && view.leader.as_deref().is_some_and(|n| n != peer) {
            return Some("a job start from a node that is not the leader of its epoch");
        }
    } else {
        let lowest = shared.net.up_peers().into_iter().min();
        if lowest.as_deref() != Some(peer) {
            return Some(
                "a job start from a node that is not the coordinator (the lowest live id)",
            );
        }
    }
    if shared.jobs.hosted.contains_key(&job) || shared.jobs.coordinated.contains_key(&job) {
        return Some("a job start for a job that runs here already");
    }
    if shared.jobs.hosted.len() >= MAX_HOSTED_JOBS {
        return Some("a job start past the limit of hosted jobs");
    }
    None
}

/// Handles a job frame from `peer` (the link reader calls this; it never blocks for long).
/// Only a job's coordinator may start, place, control and end it, and only the nodes that
/// host part of a job may report to its coordinator: any other job frame is refused and
/// counted ([`crate::Node::refusals`]).
///
/// # Errors
/// [`FrameError`] for a frame from the job's coordinator (or one of its nodes) that names a
/// subtask the job does not have, or whose body does not decode: the caller closes the link.
pub(crate) fn on_frame(
    shared: &Arc<Shared>,
    me: &str,
    peer: &str,
    msg: Message,
    back: LinkSender,
) -> Result<(), FrameError> {
    if let Some(job) = msg.command_job().filter(|j| shared.jobs.was_superseded(*j)) {
        fenced(shared, job, peer, "job frame");
        return Ok(());
    }
    match msg {
        m @ Message::JobStart { .. } => on_job_start(shared, me, peer, m),
        Message::Abandoned { job } => on_abandoned(shared, peer, job),
        Message::Spawn { job, .. } | Message::Control { job, .. }
            if shared.jobs.awaits_word(job, peer) =>
        {
            // Its coordinator, back, still drives a job whose part stopped here when this
            // node declared it lost, and whose end this node still waits for: the job goes
            // on without this node (told once per order; the coordinator acts once).
            tracing::warn!(job, coordinator = %peer, "an order for a job whose part stopped here; telling the coordinator to go on without this node");
            let _ = back.send(Message::Stopped { job });
        }
        Message::Spawn { job, .. } | Message::Control { job, .. }
            if shared.jobs.dropped(job, peer) =>
        {
            // This node reported the job failed when its coordinator did not come back in
            // time: the job fails everywhere.
            tracing::warn!(job, coordinator = %peer, "an order for a job dropped here; telling the coordinator");
            let _ = back.send(Message::Abandoned { job });
        }
        Message::Stopped { job } => on_stopped(shared, me, peer, job),
        Message::Spawn { job, task, spec } => return on_spawn(shared, peer, job, task, &spec),
        Message::Control { job, task, body } => return on_control(shared, peer, job, task, &body),
        Message::Report { job, body } => return on_report(shared, peer, job, &body, back),
        Message::Decision { job, task, body } => {
            if hosted_by(shared, job, peer, "decision").is_none() {
                return Ok(());
            }
            known_task(shared, job, task)?;
            let d = rmp_serde::from_slice::<Decision>(&body)
                .map_err(|e| undecodable(job, "decision", e))?;
            if let Some((_, reply)) = shared.net.replies.remove(&(job, task)) {
                let _ = reply.send(d);
            }
        }
        Message::Placement { job, moves } => {
            if let Some(h) = hosted_by(shared, job, peer, "placement") {
                let chains = h.resolver.plan.chain_count();
                if let Some((t, _)) = moves.iter().find(|(t, _)| t.chain >= chains) {
                    return Err(FrameError::UnknownTask {
                        job,
                        chain: t.chain,
                        subtask: t.subtask,
                    });
                }
                h.resolver.apply_moves(&moves);
            }
        }
        Message::StatsRequest { job } => {
            if let Some(h) = hosted_by(shared, job, peer, "stats request") {
                let links = delta(&h.baseline, &shared.net.link_totals());
                let _ = back.send(Message::Stats { job, links });
            }
        }
        Message::Stats { job, links } => {
            if coordinated_from(shared, job, peer, "stats").is_none() {
                return Ok(());
            }
            if let Some(w) = shared.jobs.stats_waiters.get(&job) {
                let _ = w.send((peer.to_string(), links));
            }
        }
        Message::JobEnd { job, error } => on_job_end(shared, peer, job, error),
        Message::Dismiss { job } => on_dismiss(shared, peer, job),
        _ => {}
    }
    Ok(())
}

/// A `JobEnd` from `peer`: the job's outcome, for a job hosted here or one stopped here
/// while it waited for its coordinator's word.
fn on_job_end(shared: &Arc<Shared>, peer: &str, job: u64, error: Option<String>) {
    if let Some(name) = shared.jobs.adopt_orphan(job, peer) {
        // The coordinator came back and tells the outcome of a job stopped here.
        shared.jobs.hosted_ended(HostedEnd { job, name, error });
        return;
    }
    if hosted_by(shared, job, peer, "job end").is_none() {
        return;
    }
    if let Some((_, h)) = shared.jobs.hosted.remove(&job) {
        stop_hosted(shared, job, &h);
        let name = h.name.clone();
        shared.jobs.hosted_ended(HostedEnd { job, name, error });
    }
}

/// A `Dismiss` from `peer`: its coordinator declared this node lost to job `job` (a link
/// between this node and another of the job's stayed down) and placed its subtasks elsewhere.
/// The part here stops and waits for the job's end, as when the coordinator is lost: told by
/// the coordinator, or read from etcd.
fn on_dismiss(shared: &Arc<Shared>, peer: &str, job: u64) {
    if hosted_by(shared, job, peer, "dismiss").is_none() {
        return;
    }
    let Some((_, h)) = shared.jobs.hosted.remove(&job) else {
        return;
    };
    stop_hosted(shared, job, &h);
    tracing::warn!(job, coordinator = %peer, "the coordinator declared this node lost to the job (a link to another of its nodes stayed down): its part here stops and waits for the job's end");
    match shared.leadership.clone() {
        Some(l) => report_agreed_end(shared, l, job, h.name.clone()),
        None => shared.jobs.dismissed(job, &h.name, peer),
    }
}

/// A `JobStart`: host the job, if its sender has the authority to start it.
fn on_job_start(shared: &Arc<Shared>, me: &str, peer: &str, msg: Message) {
    let Message::JobStart {
        job,
        name,
        coordinator,
        placement,
        parallelism,
        rescaled,
        epoch,
    } = msg
    else {
        return;
    };
    if let Some(what) = start_refused(shared, job, peer, &coordinator, epoch) {
        if what == SUPERSEDED_START {
            return fenced(shared, job, peer, what);
        }
        return refuse(shared, job, peer, what);
    }
    let options = JobOptions {
        parallelism: parallelism.map(|p| p as usize),
        restore: None,
        rescaled: rescaled
            .into_iter()
            .map(|(op, n)| (op, n as usize))
            .collect(),
        sticky: Vec::new(),
        exclude: Vec::new(),
    };
    let started = (job, coordinator.as_str(), epoch);
    match host_job(shared, me, started, &name, &placement, options) {
        Ok(h) => {
            // Listed under the job's own name, as its coordinator lists it.
            let listed = &h.resolver.plan.config().name;
            shared.jobs.part_started(job, listed, &coordinator);
            shared.jobs.hosted.insert(job, h);
        }
        Err(e) => {
            tracing::error!(job, %name, error = %e, "cannot host the job");
            shared.jobs.hosted_ended(HostedEnd {
                job,
                name,
                error: Some(e),
            });
        }
    }
}

/// A `Spawn`: start a subtask of a hosted job (in order with its control messages).
fn on_spawn(
    shared: &Arc<Shared>,
    peer: &str,
    job: u64,
    task: TaskId,
    spec: &[u8],
) -> Result<(), FrameError> {
    if !shared.jobs.hosted.contains_key(&job) {
        tracing::warn!(job, ?task, %peer, "spawn order for a job not hosted here");
        return Ok(());
    }
    let Some(h) = hosted_by(shared, job, peer, "spawn") else {
        return Ok(());
    };
    let spec: SpawnSpec =
        rmp_serde::from_slice(spec).map_err(|e| undecodable(job, "spawn order", e))?;
    if h.host.check(task, &spec).is_err() {
        return Err(FrameError::UnknownTask {
            job,
            chain: task.chain,
            subtask: task.subtask,
        });
    }
    let at = task.chain.wrapping_mul(31).wrapping_add(task.subtask);
    let worker = h.workers[at % h.workers.len()].clone();
    let (host, controls) = (h.host.clone(), h.controls.clone());
    // Spawns and control messages run in order on the first worker.
    h.workers[0].spawn_fn(move || {
        let control = host.spawn(task, &worker, spec);
        controls.insert(task, control);
    });
    Ok(())
}

/// A `Control`: hand a control message to a hosted subtask (on the first worker, in order).
fn on_control(
    shared: &Arc<Shared>,
    peer: &str,
    job: u64,
    task: TaskId,
    body: &[u8],
) -> Result<(), FrameError> {
    let Some(h) = hosted_by(shared, job, peer, "control") else {
        return Ok(());
    };
    known_task(shared, job, task)?;
    let control: Control =
        rmp_serde::from_slice(body).map_err(|e| undecodable(job, "control message", e))?;
    let controls = h.controls.clone();
    h.workers[0].spawn_fn(move || match controls.get(&task) {
        Some(c) => c.do_send(control),
        None => tracing::warn!(?task, "control message for a subtask not running here"),
    });
    Ok(())
}

/// A `Report` to a job this node coordinates; a failure report's decision goes back on the
/// reporting node's link.
fn on_report(
    shared: &Arc<Shared>,
    peer: &str,
    job: u64,
    body: &[u8],
    back: LinkSender,
) -> Result<(), FrameError> {
    let Some(c) = coordinated_from(shared, job, peer, "report") else {
        return Ok(());
    };
    let mut report: ToJob =
        rmp_serde::from_slice(body).map_err(|e| undecodable(job, "report", e))?;
    if let Some(task) = report.task() {
        known_task(shared, job, task)?;
    }
    let Some(ports) = c.ports.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return Ok(());
    };
    if let (true, Some(task)) = (report.wants_reply(), report.task()) {
        let (tx, rx) = oneshot::channel();
        report.set_reply(tx);
        tokio::spawn(async move {
            let Ok(d) = rx.await else { return };
            match rmp_serde::to_vec(&d) {
                Ok(body) => {
                    let _ = back.send(Message::Decision { job, task, body });
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a decision"),
            }
        });
    }
    ports.to_job.do_send(report);
    Ok(())
}

/// Starts hosting job `job` (started by `coordinator` as leader of `epoch`): builds its plan
/// and starts its worker threads.
fn host_job(
    shared: &Arc<Shared>,
    me: &str,
    (job, coordinator, epoch): (u64, &str, u64),
    name: &str,
    placement: &[(TaskId, String)],
    options: JobOptions,
) -> Result<Arc<HostedJob>, String> {
    let builder = shared
        .jobs
        .builder(name)
        .ok_or_else(|| format!("no job registered as `{name}`"))?;
    let plan = running_plan(&builder, &options, job).map_err(|e| e.to_string())?;
    let plan = Arc::new(plan);
    let workers = plan.config().worker_count();
    let pin = plan.config().pins_workers();
    if shared.net.link_sender(coordinator).is_none() {
        return Err(format!("no link to the coordinator `{coordinator}`"));
    }
    let coord = coordinator.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = shared.net.clone();
    let thread = std::thread::Builder::new()
        .name(format!("riffle-host-{job:x}"))
        .spawn(move || {
            let sys = System::new();
            let arbiters: Vec<Arbiter> = sys.block_on(async {
                let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
                if pin {
                    riffle_actors::pin_to_cores(&arbiters);
                }
                let proxy = JobProxy {
                    job,
                    coordinator: coord,
                    net: s,
                }
                .start();
                let handles = arbiters.iter().map(|a| a.handle()).collect::<Vec<_>>();
                let _ = tx.send((System::current(), handles, proxy));
                arbiters
            });
            let _ = sys.run();
            for a in arbiters {
                a.stop();
                let _ = a.join();
            }
        })
        .map_err(|e| e.to_string())?;
    let (system, handles, proxy) = rx
        .recv()
        .map_err(|_| "the job's runtime did not start".to_string())?;
    let resolver = Arc::new(ClusterResolver::new(
        job,
        me,
        shared.net.clone(),
        plan.clone(),
        placement,
    ));
    let directory = Arc::new(Directory::with_remote(resolver.clone()));
    let host = LocalHost::new(plan, directory, proxy.recipient());
    tracing::info!(job, %name, %coordinator, "hosting job");
    Ok(Arc::new(HostedJob {
        name: name.to_string(),
        coordinator: coordinator.to_string(),
        epoch,
        baseline: shared.net.link_totals(),
        resolver,
        host,
        workers: handles,
        system,
        controls: Arc::new(DashMap::new()),
        thread: Mutex::new(Some(thread)),
    }))
}

/// Stops hosting a job: its runtime stops (in the background) and its inboxes go.
fn stop_hosted(shared: &Arc<Shared>, job: u64, h: &HostedJob) {
    shared.jobs.gone(job);
    shared.net.inboxes.retain(|k, _| k.0 != job);
    shared.net.returns.retain(|k, _| k.0 != job);
    shared.net.replies.retain(|k, _| k.0 != job);
    h.system.stop();
    if let Some(t) = h.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // Joined off the link's thread: the runtime's workers may take a moment to stop.
        std::thread::spawn(move || {
            let _ = t.join();
        });
    }
}

/// How long a node waits for the agreed end of a job it stopped hosting.
const AGREED_END_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Reports job `job`'s end once etcd records it ([`crate::Node::wait_hosted`]), on a thread
/// of its own.
fn report_agreed_end(
    shared: &Arc<Shared>,
    l: Arc<crate::leader::Leadership>,
    job: u64,
    name: String,
) {
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("riffle-end-{job:x}"))
        .spawn(move || {
            let error = match crate::authority::agreed_end(&l, &name, AGREED_END_WAIT) {
                Ok(end) => end.err(),
                Err(e) => Some(e.to_string()),
            };
            s.jobs.hosted_ended(HostedEnd { job, name, error });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread to wait for a job's end");
    }
}

/// Without etcd: orphaned jobs whose coordinator did not come back within the grace are
/// reported failed ("coordinator lost"), and the coordinator is told if it ever comes back
/// (`Message::Abandoned`), so that it fails the job too. Called every heartbeat.
pub(crate) fn expire_orphans(shared: &Shared) {
    let (now, up) = (std::time::Instant::now(), shared.net.up_peers());
    for (job, name, coordinator) in shared.jobs.expired_orphans(now, &up) {
        tracing::error!(job, %coordinator, "the coordinator left or did not come back: the job failed here (coordinator loss is not survived without etcd)");
        match shared.net.link_sender(&coordinator) {
            Some(link) => {
                let _ = link.send(Message::Abandoned { job });
            }
            None => shared.jobs.abandon(job, &coordinator),
        }
        shared.jobs.hosted_ended(HostedEnd {
            job,
            name,
            error: Some(format!("coordinator `{coordinator}` was lost")),
        });
    }
}

/// Sends `node`, linked again, the ends of jobs it hosted that ended while it was away.
pub(crate) fn deliver_owed_ends(shared: &Shared, node: &str) {
    let owed = shared.jobs.take_owed_ends(node);
    if owed.is_empty() {
        return;
    }
    if let Some(link) = shared.net.link_sender(node) {
        for (job, error) in owed {
            let _ = link.send(Message::JobEnd { job, error });
        }
    }
}

/// `peer` stopped its part of job `job` when it declared this coordinator lost, and waits
/// for its word: the job goes on without it (if `peer` hosted part of it; anyone else is
/// refused).
fn on_stopped(shared: &Arc<Shared>, me: &str, peer: &str, job: u64) {
    let Some(c) = shared.jobs.coordinated.get(&job).map(|c| c.clone()) else {
        return;
    };
    if !c.has_part_on(peer) {
        return refuse(shared, job, peer, "stopped");
    }
    let survivors = survivors(me, peer, &shared.net.up_peers());
    if re_place(me, job, &c, peer, &survivors) {
        tracing::warn!(job, node = %peer, "a hosting node stopped its part when it lost this coordinator: the job goes on without it");
    }
}

/// `peer` abandoned job `job` when it declared this coordinator lost: the job fails here too
/// (if `peer` was one of its nodes; anyone else is refused).
fn on_abandoned(shared: &Arc<Shared>, peer: &str, job: u64) {
    let Some(c) = shared.jobs.coordinated.get(&job).map(|c| c.clone()) else {
        return;
    };
    if !c.has_part_on(peer) {
        return refuse(shared, job, peer, "abandoned");
    }
    let ports = c.ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(p) = ports {
        tracing::error!(job, node = %peer, "a hosting node declared this coordinator lost and abandoned the job; it fails everywhere");
        p.fence.do_send(riffle_actors::Fence {
            reason: riffle_actors::ClusterError::DeclaredLost {
                node: peer.to_string(),
            },
        });
    }
}

/// The nodes left to job placement when `node` is lost: the members up (as `up` lists them)
/// but `node`, and this node.
pub(crate) fn survivors(me: &str, node: &str, up: &[String]) -> Vec<String> {
    let mut survivors: Vec<String> = up.iter().filter(|n| *n != node).cloned().collect();
    survivors.push(me.to_string());
    survivors
}

/// The jobs this node coordinates.
pub(crate) fn coordinated_jobs(shared: &Shared) -> Vec<(u64, Arc<CoordinatedJob>)> {
    shared
        .jobs
        .coordinated
        .iter()
        .map(|e| (*e.key(), e.value().clone()))
        .collect()
}

/// Node `node` is lost to job `job`, which this node coordinates: its subtasks are placed on
/// `survivors`, the other hosting nodes are told, and the job recovers from its latest
/// checkpoint. `false` if `node` held no subtask of the job.
pub(crate) fn re_place(
    me: &str,
    job: u64,
    c: &CoordinatedJob,
    node: &str,
    survivors: &[String],
) -> bool {
    let lost: Vec<TaskId> = c
        .resolver
        .placement
        .iter()
        .filter(|e| e.value() == node)
        .map(|e| *e.key())
        .collect();
    if lost.is_empty() {
        return false;
    }
    let ring = Placement::new(survivors.iter().map(|n| (n.as_str(), 1)));
    let moves: Vec<(TaskId, String)> = lost
        .iter()
        .map(|&t| (t, ring.node_of(t).unwrap_or(me).to_string()))
        .collect();
    c.resolver.apply_moves(&moves);
    tracing::warn!(job, %node, moved = moves.len(), "node lost: its subtasks are re-placed");
    for s in survivors.iter().filter(|n| n.as_str() != me) {
        let _ = c.resolver.link_to(s).send(Message::Placement {
            job,
            moves: moves.clone(),
        });
    }
    if let Some(p) = c.ports.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        p.node_lost.do_send(NodeLost {
            node: node.to_string(),
            tasks: lost,
        });
    }
    true
}

/// Node `node` is down: re-place its subtasks of every job this node coordinates, and stop
/// hosting the jobs it coordinated.
pub(crate) fn on_node_down(shared: &Arc<Shared>, me: &str, node: &str, up: &[String]) {
    let survivors = survivors(me, node, up);
    for (job, c) in coordinated_jobs(shared) {
        re_place(me, job, &c, node, &survivors);
    }
    let orphaned: Vec<u64> = shared
        .jobs
        .hosted
        .iter()
        .filter(|e| e.value().coordinator == node)
        .map(|e| *e.key())
        .collect();
    for job in orphaned {
        if let Some((_, h)) = shared.jobs.hosted.remove(&job) {
            stop_hosted(shared, job, &h);
            if let Some(l) = shared.leadership.clone() {
                // Not an end here: the next leader continues the job from its latest
                // checkpoint (or the coordinator, still leading, continues it without this
                // node); this node reports the end agreed in etcd.
                tracing::warn!(job, coordinator = %node, "the coordinator was lost; the job stops here until a leader continues it");
                shared.jobs.superseded(job);
                report_agreed_end(shared, l, job, h.name.clone());
                continue;
            }
            // Without etcd nobody else can finish the job: its part here stops, and this
            // node reports the outcome the coordinator tells it if it comes back within the
            // grace ([`expire_orphans`]), else that the job failed.
            let left = shared.net.members.lock().left(node);
            if left {
                tracing::error!(job, coordinator = %node, "the coordinator shut down; the job stops here");
            } else {
                tracing::error!(job, coordinator = %node, grace = ?shared.jobs.grace, "the coordinator was lost; the job stops here and waits for its word");
            }
            shared.jobs.orphaned(job, &h.name, node, left);
        }
    }
}
