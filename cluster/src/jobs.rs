//! The registry of a node's jobs: the builders it registered, the jobs it coordinates, the
//! jobs it hosts for a coordinator elsewhere, and how hosted jobs ended. `job.rs` submits and
//! drives coordinated jobs, `hosting.rs` runs hosted ones; both keep them here.

use crate::config::JobBuilder;
use crate::counters::LinkTotals;
use crate::proxy::ClusterResolver;
use actix::prelude::{ArbiterHandle, Recipient, System};
use dashmap::DashMap;
use riffle_actors::host::LocalHost;
use riffle_actors::http::PartInfo;
use riffle_actors::{Control, JobPorts};
use riffle_framework::TaskId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A job this node coordinates.
pub(crate) struct CoordinatedJob {
    pub(crate) resolver: Arc<ClusterResolver>,
    pub(crate) ports: Mutex<Option<JobPorts>>,
    /// The leader's authority over the job (with etcd).
    pub(crate) authority: Option<Arc<crate::authority::Authority>>,
    /// The nodes it was placed on when it started.
    pub(crate) first_nodes: Vec<String>,
}

impl CoordinatedJob {
    /// Whether node `node` hosts, or hosted when the job started, part of the job.
    pub(crate) fn has_part_on(&self, node: &str) -> bool {
        self.first_nodes.iter().any(|n| n == node)
            || self.resolver.placement.iter().any(|e| e.value() == node)
    }
}

/// A job this node hosts subtasks of (it is not the coordinator).
pub(crate) struct HostedJob {
    /// The job's registered name.
    pub(crate) name: String,
    pub(crate) coordinator: String,
    /// The epoch of the leader that started it (0 without etcd).
    pub(crate) epoch: u64,
    /// Link totals when the job started (its figures are the difference).
    pub(crate) baseline: LinkTotals,
    pub(crate) resolver: Arc<ClusterResolver>,
    pub(crate) host: LocalHost,
    pub(crate) workers: Vec<ArbiterHandle>,
    pub(crate) system: System,
    pub(crate) controls: Arc<DashMap<TaskId, Recipient<Control>>>,
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How a hosted job ended on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedEnd {
    /// The job's id.
    pub job: u64,
    /// The job's registered name.
    pub name: String,
    /// Why it failed (or why this node stopped hosting it), if it did not succeed.
    pub error: Option<String>,
}

/// The jobs of a node (see the module docs).
#[derive(Default)]
pub(crate) struct Jobs {
    /// Registered job builders.
    pub(crate) builders: HashMap<String, JobBuilder>,
    /// Where coordinated jobs keep their checkpoints (overrides the job's setting).
    pub(crate) checkpoint_dir: Option<std::path::PathBuf>,
    /// Jobs this node coordinates.
    pub(crate) coordinated: DashMap<u64, Arc<CoordinatedJob>>,
    /// Jobs this node hosts subtasks of.
    pub(crate) hosted: DashMap<u64, Arc<HostedJob>>,
    /// Coordinators waiting for the nodes' link figures of a job.
    pub(crate) stats_waiters: DashMap<u64, std::sync::mpsc::Sender<(String, LinkTotals)>>,
    /// Hosted jobs that ended, oldest first, until [`Jobs::wait_hosted`] takes them.
    ended: Mutex<VecDeque<HostedEnd>>,
    /// The jobs this node hosted lately, running or ended, oldest first (for `GET /jobs`).
    parts: Mutex<VecDeque<PartInfo>>,
    ended_changed: Condvar,
    /// The ids of the jobs that ended here lately (coordinated or hosted), newest last: a
    /// frame for one of them is late, not wrong.
    gone: Mutex<VecDeque<u64>>,
    /// Jobs this node stopped hosting because a newer leader superseded the one that
    /// started them, newest last: every frame for one of them is refused.
    superseded: Mutex<VecDeque<u64>>,
    /// Without etcd: jobs this node stopped hosting because it declared their coordinator
    /// lost, to tell that coordinator once linked again: (job, coordinator).
    abandoned: Mutex<Vec<(u64, String)>>,
    /// Without etcd: jobs whose coordinator was lost, waiting for its word until a deadline.
    orphans: Mutex<Vec<Orphan>>,
    /// How long an orphaned job waits for its coordinator to come back.
    pub(crate) grace: Duration,
    /// Ends of jobs owed to nodes that hosted them and were away when they ended:
    /// (node, job, error).
    owed: Mutex<Vec<(String, u64, Option<String>)>>,
    /// Jobs this node continued as a new leader.
    failovers: Mutex<Vec<crate::authority::Failover>>,
    failovers_changed: Condvar,
}

/// A hosted job whose coordinator was lost, or that its coordinator dismissed this node from
/// (without etcd).
struct Orphan {
    job: u64,
    name: String,
    coordinator: String,
    until: Instant,
    /// The coordinator dismissed this node from the job (it runs on without it): its later
    /// orders for the job are late, not a sign that it lost track of the job.
    dismissed: bool,
}

/// Ended jobs whose ids a node remembers.
const GONE_KEPT: usize = 1024;

/// Hosted jobs a node lists (running ones are always listed; the oldest ended go first).
const PARTS_KEPT: usize = 50;

/// The state of a listed part that still runs.
const RUNNING: &str = "running";

/// The id a cluster job runs under on every node (`ExecutionPlan::instance`: the REST API's
/// job id and the `job_id` of its metrics): the cluster's job number in hex.
pub(crate) fn instance_id(job: u64) -> String {
    format!("{job:016x}")
}

impl Jobs {
    /// The registry of `builders`, whose checkpoints go to `checkpoint_dir` if given.
    pub(crate) fn new(
        builders: HashMap<String, JobBuilder>,
        checkpoint_dir: Option<std::path::PathBuf>,
        grace: Duration,
    ) -> Self {
        Jobs {
            builders,
            checkpoint_dir,
            grace,
            ..Jobs::default()
        }
    }

    /// Job `job` (named `name`) lost its coordinator: it waits for its word until the grace
    /// passes — not at all if the coordinator `left` on purpose (it shut down: no process
    /// will come back that knows the job).
    pub(crate) fn orphaned(&self, job: u64, name: &str, coordinator: &str, left: bool) {
        let wait = if left { Duration::ZERO } else { self.grace };
        self.wait_for_word(job, name, coordinator, wait, false);
    }

    /// Job `job` (named `name`) dismissed this node: it waits for its coordinator's word of
    /// the job's end while the coordinator stays up, and for the grace once it is lost.
    pub(crate) fn dismissed(&self, job: u64, name: &str, coordinator: &str) {
        self.wait_for_word(job, name, coordinator, self.grace, true);
    }

    fn wait_for_word(
        &self,
        job: u64,
        name: &str,
        coordinator: &str,
        wait: Duration,
        dismissed: bool,
    ) {
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Orphan {
                job,
                name: name.to_string(),
                coordinator: coordinator.to_string(),
                until: Instant::now() + wait,
                dismissed,
            });
    }

    /// The name of orphaned job `job` if `coordinator` was its coordinator (it is no longer
    /// orphaned: its outcome arrived).
    pub(crate) fn adopt_orphan(&self, job: u64, coordinator: &str) -> Option<String> {
        let mut o = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        let at = o
            .iter()
            .position(|x| x.job == job && x.coordinator == coordinator)?;
        Some(o.remove(at).name)
    }

    /// Whether this node stopped hosting job `job` of `coordinator` because it declared the
    /// coordinator lost (it waits for its word, or gave up on it).
    pub(crate) fn dropped(&self, job: u64, coordinator: &str) -> bool {
        let waiting = self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|x| x.job == job && x.coordinator == coordinator && !x.dismissed);
        waiting
            || self
                .abandoned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(j, c)| *j == job && c == coordinator)
    }

    /// Whether this node stopped hosting job `job` of `coordinator` when it lost the
    /// coordinator, and still waits for its word (it has not reported the job failed).
    pub(crate) fn awaits_word(&self, job: u64, coordinator: &str) -> bool {
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|x| x.job == job && x.coordinator == coordinator && !x.dismissed)
    }

    /// The orphaned jobs whose grace passed by `now`: (job, name, coordinator). A job whose
    /// coordinator is among `up` again (it came back and is finishing the job) waits for
    /// its word while it stays up: its grace starts over.
    pub(crate) fn expired_orphans(
        &self,
        now: Instant,
        up: &[String],
    ) -> Vec<(u64, String, String)> {
        let mut o = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        for x in o.iter_mut().filter(|x| up.contains(&x.coordinator)) {
            x.until = now + self.grace;
        }
        let (gone, kept): (Vec<Orphan>, Vec<Orphan>) = o.drain(..).partition(|x| x.until <= now);
        *o = kept;
        gone.into_iter()
            .map(|x| (x.job, x.name, x.coordinator))
            .collect()
    }

    /// Job `job` ended while `node`, which hosted it, was away: tell it when it is back.
    pub(crate) fn owe_end(&self, node: &str, job: u64, error: Option<String>) {
        let mut o = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if o.len() == GONE_KEPT {
            o.remove(0);
        }
        o.push((node.to_string(), job, error));
    }

    /// Whether no job end is owed to any node.
    pub(crate) fn owes_nothing(&self) -> bool {
        self.owed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The job ends owed to `node`: (job, error).
    pub(crate) fn take_owed_ends(&self, node: &str) -> Vec<(u64, Option<String>)> {
        let mut o = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let (theirs, rest): (Vec<_>, Vec<_>) = o.drain(..).partition(|(n, _, _)| n == node);
        *o = rest;
        theirs.into_iter().map(|(_, j, e)| (j, e)).collect()
    }

    /// The builder registered as `name`, with this node's checkpoint directory applied.
    pub(crate) fn builder(&self, name: &str) -> Option<JobBuilder> {
        let build = self.builders.get(name).cloned()?;
        let Some(dir) = self.checkpoint_dir.clone() else {
            return Some(build);
        };
        Some(Arc::new(move || {
            let env = build();
            env.configure(|c| {
                if let Some(cp) = &mut c.checkpoint {
                    cp.storage = riffle_framework::CheckpointStorage::Dir(dir.clone());
                }
            });
            env
        }))
    }

    /// Remembers that job `job` ended here (see [`Jobs::ended_lately`]).
    pub(crate) fn gone(&self, job: u64) {
        let mut g = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() == GONE_KEPT {
            g.pop_front();
        }
        g.push_back(job);
    }

    /// Remembers that job `job` was superseded by a newer leader (see
    /// [`Jobs::was_superseded`]).
    pub(crate) fn superseded(&self, job: u64) {
        let mut g = self.superseded.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() == GONE_KEPT {
            g.pop_front();
        }
        g.push_back(job);
    }

    /// Whether job `job` was started by a leader that a newer one superseded here.
    pub(crate) fn was_superseded(&self, job: u64) -> bool {
        self.superseded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&job)
    }

    /// Remembers that this node abandoned job `job` of `coordinator` (see
    /// [`Jobs::take_abandoned`]).
    pub(crate) fn abandon(&self, job: u64, coordinator: &str) {
        let mut a = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
        if a.len() == GONE_KEPT {
            a.remove(0);
        }
        a.push((job, coordinator.to_string()));
    }

    /// The jobs of `coordinator` this node abandoned and has not told it of yet.
    pub(crate) fn take_abandoned(&self, coordinator: &str) -> Vec<u64> {
        let mut a = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
        let (theirs, rest): (Vec<_>, Vec<_>) = a.drain(..).partition(|(_, c)| c == coordinator);
        *a = rest;
        theirs.into_iter().map(|(j, _)| j).collect()
    }

    /// Records a job this node continued as a new leader.
    pub(crate) fn failed_over(&self, f: crate::authority::Failover) {
        self.failovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
        self.failovers_changed.notify_all();
    }

    /// The jobs this node continued as a new leader, once there is at least one (or
    /// `timeout` passed).
    pub(crate) fn wait_failovers(&self, timeout: Duration) -> Vec<crate::authority::Failover> {
        let f = self.failovers.lock().unwrap_or_else(|e| e.into_inner());
        self.failovers_changed
            .wait_timeout_while(f, timeout, |f| f.is_empty())
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
            .clone()
    }

    /// Whether job `job` ended here lately: frames for it may still be on their way.
    pub(crate) fn ended_lately(&self, job: u64) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&job)
    }

    /// The subtasks of job `job` (coordinated or hosted here) as its placement knows them,
    /// or `None` if the job is not known here.
    pub(crate) fn placed(&self, job: u64, task: TaskId) -> Option<bool> {
        if let Some(c) = self.coordinated.get(&job) {
            return Some(c.resolver.placement.contains_key(&task));
        }
        let h = self.hosted.get(&job)?;
        Some(h.resolver.placement.contains_key(&task))
    }

    /// Records that this node started hosting job `job` for `coordinator`.
    pub(crate) fn part_started(&self, job: u64, name: &str, coordinator: &str) {
        let id = instance_id(job);
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.retain(|p| p.id != id);
        while parts.len() >= PARTS_KEPT {
            match parts.iter().position(|p| p.state != RUNNING) {
                Some(i) => drop(parts.remove(i)),
                None => break,
            }
        }
        parts.push_back(PartInfo {
            id,
            name: name.to_string(),
            coordinator: coordinator.to_string(),
            state: RUNNING,
            started: std::time::SystemTime::now(),
        });
    }

    /// The jobs this node hosts or hosted lately, oldest first.
    pub(crate) fn parts(&self) -> Vec<PartInfo> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.iter().cloned().collect()
    }

    /// Records that a hosted job ended and wakes [`Jobs::wait_hosted`].
    pub(crate) fn hosted_ended(&self, end: HostedEnd) {
        let id = instance_id(end.job);
        if let Some(p) = self
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|p| p.id == id && p.state == RUNNING)
        {
            p.state = if end.error.is_some() {
                "failed"
            } else {
                "finished"
            };
        }
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(end);
        self.ended_changed.notify_all();
    }

    /// The oldest hosted job's end not taken yet (of job `job` only, if given); waits for
    /// one at most `timeout`.
    pub(crate) fn wait_hosted(&self, job: Option<u64>, timeout: Duration) -> Option<HostedEnd> {
        let deadline = Instant::now() + timeout;
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let at = ended.iter().position(|e| job.is_none_or(|j| e.job == j));
            if let Some(e) = at.and_then(|i| ended.remove(i)) {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            ended = self
                .ended_changed
                .wait_timeout(ended, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
