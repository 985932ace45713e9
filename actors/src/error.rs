//! Errors and results of a job run.

use crate::message::SubtaskMetrics;
use riffle_framework::{DeadLetter, FailureCause, GraphError};
use std::time::Duration;

/// Who a [`JobError`] is up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job as written cannot run (graph or configuration); fix the job.
    Config,
    /// User code failed (panic or error); fix the code or the data. Retrying the same input
    /// fails the same way unless the failure was transient (e.g. an unreachable socket).
    User,
    /// The runtime could not run (threads could not start, every worker stopped); retrying
    /// may help.
    External,
    /// Riffle broke an invariant of its own; please report it.
    Internal,
}

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job graph or its configuration is invalid; nothing ran.
    #[error("invalid job: {0}")]
    Graph(#[from] GraphError),
    /// A subtask failed and the restart strategy does not restart it (`RestartKind::Never`).
    #[error("subtask {subtask} of `{chain}` failed: operator `{operator}` {cause}")]
    SubtaskFailed {
        /// The chain the subtask ran.
        chain: String,
        /// The subtask index.
        subtask: usize,
        /// The operator (within the chain) that failed.
        operator: String,
        /// What happened.
        cause: FailureCause,
    },
    /// Failures exceeded the restart intensity limit; the root cause is the last failure.
    #[error(
        "restart limit reached after {restarts} restarts; last failure in subtask {subtask} of \
         `{chain}`: operator `{operator}` {cause}"
    )]
    RestartLimit {
        /// The chain of the subtask whose failure escalated.
        chain: String,
        /// That subtask's index.
        subtask: usize,
        /// The operator that failed.
        operator: String,
        /// What happened.
        cause: FailureCause,
        /// Restarts within the window when the limit was hit.
        restarts: u32,
        /// The backoff delays of the restarts that were made, in order.
        backoffs: Vec<Duration>,
    },
    /// A record failed the same operator too often and the poison policy says fail the job.
    #[error(
        "poison record: subtask {subtask} of `{chain}` failed {attempts} times on the same \
         record: operator `{operator}` {cause}"
    )]
    PoisonRecord {
        /// The chain.
        chain: String,
        /// The subtask index.
        subtask: usize,
        /// The operator that failed.
        operator: String,
        /// The last failure.
        cause: FailureCause,
        /// How many times the record failed.
        attempts: u32,
    },
    /// The checkpoint to start from could not be loaded.
    #[error("cannot restore the job: {0}")]
    Restore(#[from] riffle_framework::StoreError),
    /// The checkpoint to start from does not fit this job (another job, or other parallelism).
    #[error("checkpoint {checkpoint} does not fit this job: {reason}")]
    CheckpointMismatch {
        /// The checkpoint.
        checkpoint: u64,
        /// What does not fit.
        reason: riffle_framework::FitError,
    },
    /// The request (a savepoint, a rescale) needs checkpointing, which is off for this job
    /// (`JobConfig::checkpoint`; checkpoints in memory do).
    #[error("{what} needs checkpointing, which is off for this job (JobConfig::checkpoint)")]
    CheckpointingOff {
        /// What was asked for.
        what: &'static str,
    },
    /// The request needs checkpoints in a directory (`CheckpointStorage::Dir`), and this job
    /// keeps them in memory.
    #[error("{what} needs checkpoints in a directory; this job keeps them in memory")]
    NeedsCheckpointDir {
        /// What was asked for, and why it came to that.
        what: String,
    },
    /// A rescale in place did not switch to the new plan within
    /// `CheckpointConfig::rescale_timeout` (its checkpoint never completed, or the leaving
    /// subtasks never confirmed their commit); the sources were released and nothing changed.
    #[error("the rescale did not switch within {timeout:?}; nothing changed")]
    RescaleTimedOut {
        /// The deadline that passed.
        timeout: std::time::Duration,
    },
    /// Subtasks did not report ready within `JobConfig::ready_timeout`, at a distributed
    /// job's start (epoch 0) or in a recovery (a later epoch): their node never started or
    /// restored them.
    #[error("subtasks {subtasks:?} did not report ready within {waited:?} (epoch {epoch})")]
    NotReady {
        /// The epoch whose start or recovery did not complete.
        epoch: u64,
        /// The subtasks that did not report, as `chain[subtask]`.
        subtasks: Vec<String>,
        /// How long the job waited.
        waited: std::time::Duration,
    },
    /// No savepoint completed within three checkpoint timeouts of the request (checkpoints
    /// kept failing or timing out); the job goes on, and does not stop at a later one.
    #[error("no savepoint completed within {waited:?}")]
    SavepointTimedOut {
        /// How long the request waited.
        waited: std::time::Duration,
    },
    /// The job was stopped without a savepoint (`JobControl::cancel`, `POST /jobs/ID/stop`).
    #[error("the job was cancelled by {by}")]
    Cancelled {
        /// Who stopped it.
        by: String,
    },
    /// The job ended (or was not running) before the request could be carried out.
    #[error("the job ended before the request could be carried out")]
    JobEnded,
    /// A rescale cannot be done in place now (e.g. part of the job already finished its
    /// input); nothing changed. The job can still be rescaled by stopping at a savepoint.
    #[error("cannot rescale in place: {reason}")]
    RescaleRefused {
        /// Why.
        reason: String,
    },
    /// Every worker thread stopped; nothing can run the job.
    #[error("no worker thread is left to run the job")]
    NoWorkers,
    /// A node that ran some of the job's subtasks was lost and the job has no checkpoints
    /// to recover them from.
    #[error("node `{node}` was lost and the job has no checkpoints to recover from")]
    NodeLost {
        /// The lost node.
        node: String,
    },
    /// The cluster could not run or change the job.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The runtime's threads could not be started.
    #[error("cannot start the runtime: {0}")]
    Spawn(#[source] std::io::Error),
    /// The runtime stopped without reporting an outcome (a bug in Riffle).
    #[error("the runtime stopped without reporting the job's outcome")]
    RuntimeLost,
}

/// Why the cluster could not run or change a job.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Jobs are started and changed by their coordinator, the lowest live node id.
    #[error("node `{me}` is not the coordinator; `{coordinator}` (the lowest live id) is")]
    NotCoordinator {
        /// The node asked.
        me: String,
        /// The node that coordinates.
        coordinator: String,
    },
    /// No job of that name was registered on the node.
    #[error("no job registered as `{name}`")]
    UnknownJob {
        /// The name asked for.
        name: String,
    },
    /// A node the job was placed on has no link (it left meanwhile).
    #[error("no link to node `{node}`")]
    NoLink {
        /// The node.
        node: String,
    },
    /// The coordinator cannot move the job off itself.
    #[error("node `{node}` coordinates the job and cannot be drained")]
    DrainCoordinator {
        /// The node.
        node: String,
    },
    /// With etcd, jobs are started and changed by the cluster's elected leader.
    #[error("node `{me}` is not the cluster's leader (the leader is {})", leader.as_deref().unwrap_or("not elected yet"))]
    NotLeader {
        /// The node asked.
        me: String,
        /// The leader, if one is known.
        leader: Option<String>,
    },
    /// This node coordinated the job as leader of `epoch` and lost the leadership (its lease
    /// ended: paused, partitioned from etcd): it stopped the job without committing anything
    /// more, and the new leader continues it from its latest checkpoint.
    #[error("fenced: this node no longer leads the cluster (epoch {epoch}): {reason}")]
    Fenced {
        /// The epoch this node led in.
        epoch: u64,
        /// What showed it.
        reason: String,
    },
    /// Without etcd: a node that hosted part of the job declared this coordinator lost
    /// (the coordinator was paused or cut off for longer than the failure timeout) and
    /// dropped its part, which cannot run again; the job fails, on every node alike. With
    /// etcd, a new leader would have continued the job.
    #[error("node `{node}` declared this coordinator lost while the job ran (paused or cut off past the failure timeout) and dropped its part; the job fails on every node (run the cluster with etcd to survive this)")]
    DeclaredLost {
        /// The node that declared the coordinator lost.
        node: String,
    },
    /// etcd, which elects the leader and keeps the jobs' records, did not answer.
    #[error("etcd: {reason}")]
    Etcd {
        /// What failed.
        reason: String,
    },
    /// etcd kept failing (unreachable, restarting, paused) for as long as the caller waited
    /// (tried again with backoff meanwhile): what etcd records — a job's agreed end — is not
    /// known here. Every node that waited as long reports this same error.
    #[error("coordination unavailable: etcd kept failing for {waited:?}: {reason}")]
    CoordinationUnavailable {
        /// The last failure.
        reason: String,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// etcd answered, and job `name` had not ended by the deadline.
    #[error("job `{name}` had not ended by the deadline")]
    NotEnded {
        /// The job's registered name.
        name: String,
    },
    /// The node is not configured with etcd, which this needs.
    #[error("this node runs without etcd")]
    NoEtcd,
}

impl JobError {
    /// Whose problem this is; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        let of = |cause: &FailureCause| match cause {
            FailureCause::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::User,
        };
        match self {
            JobError::Graph(_) => ErrorKind::Config,
            JobError::SubtaskFailed { cause, .. }
            | JobError::RestartLimit { cause, .. }
            | JobError::PoisonRecord { cause, .. } => of(cause),
            JobError::NoWorkers
            | JobError::Spawn(_)
            | JobError::JobEnded
            | JobError::Cancelled { .. }
            | JobError::RescaleTimedOut { .. }
            | JobError::NotReady { .. }
            | JobError::SavepointTimedOut { .. }
            | JobError::RescaleRefused { .. }
            | JobError::NodeLost { .. }
            | JobError::Cluster(_) => ErrorKind::External,
            JobError::Restore(_) => ErrorKind::External,
            JobError::CheckpointMismatch { .. }
            | JobError::CheckpointingOff { .. }
            | JobError::NeedsCheckpointDir { .. } => ErrorKind::Config,
            JobError::RuntimeLost => ErrorKind::Internal,
        }
    }
}

/// How a job run ended.
pub(crate) type Outcome = Result<JobResult, JobError>;

/// One restart decided by the job supervisor.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartEvent {
    /// The chain of the restarted subtask.
    pub chain: String,
    /// The subtask index.
    pub subtask: usize,
    /// The attempt the restart starts (1 for the first restart).
    pub attempt: u32,
    /// The failure, as text.
    pub cause: String,
    /// The fault was injected by the chaos module.
    pub injected: bool,
    /// The backoff before the restart.
    pub backoff: Duration,
    /// Other subtasks restarted with it (one-for-all).
    pub also_restarted: usize,
}

/// A completed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Its id.
    pub id: u64,
    /// From trigger to saved.
    pub duration: Duration,
    /// Bytes of operator state.
    pub bytes: usize,
    /// Whether it was a savepoint.
    pub savepoint: bool,
}

/// A recovery of the whole job from a checkpoint (checkpointing on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryEvent {
    /// The epoch the recovery started.
    pub epoch: u64,
    /// What failed.
    pub cause: String,
    /// The checkpoint restored (`None`: from the start).
    pub restored_from: Option<u64>,
    /// From the failure to the first record processed again.
    pub restore_time: Option<Duration>,
    /// When the recovery started (wall clock, to compare with events in other processes).
    pub started_at: std::time::SystemTime,
}

/// What a completed job reports.
#[derive(Clone, Debug, Default)]
pub struct JobResult {
    /// Wall time from start to the last subtask finishing.
    pub elapsed: Duration,
    /// Per-subtask counters, ordered by chain then subtask.
    pub subtasks: Vec<SubtaskMetrics>,
    /// Every restart, in the order decided.
    pub restarts: Vec<RestartEvent>,
    /// Restarts that completed (the subtask resumed work), including one-for-all ones.
    pub restarts_completed: u64,
    /// Injected faults that fired (chaos panics, errors and stops that hit a running subtask).
    pub faults_injected: u64,
    /// Worker threads stopped during the run.
    pub workers_stopped: u64,
    /// Subtasks re-created on another worker after theirs stopped.
    pub recreated: u64,
    /// Records set aside as poison.
    pub dead_letters: Vec<DeadLetter>,
    /// Completed checkpoints (the last is the final one taken when the job ended).
    pub checkpoints: Vec<CheckpointStats>,
    /// Recoveries from checkpoints.
    pub recoveries: Vec<RecoveryEvent>,
    /// The savepoint the job was stopped at (`JobHandle::stop_with_savepoint`); the job did not
    /// run to its end, and `subtasks` lists only the subtasks that had finished.
    pub stopped_at_savepoint: Option<u64>,
    /// Nodes lost while the job ran (a distributed job), in order.
    pub nodes_lost: Vec<String>,
    /// Traffic of every link between the job's nodes while it ran (a distributed job).
    pub links: Vec<LinkFigures>,
}

/// What one node sent to another while a distributed job ran (every frame on the link,
/// heartbeats included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFigures {
    /// The sending node.
    pub from: String,
    /// The receiving node.
    pub to: String,
    /// Bytes written (whole frames).
    pub bytes: u64,
    /// Frames written.
    pub frames: u64,
    /// Of which data frames (batches, barriers, ends of input).
    pub data_frames: u64,
    /// Of which credit frames.
    pub credit_frames: u64,
}

/// What one node's subtasks did in a distributed job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// The node.
    pub node: String,
    /// Subtasks it ran at the end.
    pub subtasks: usize,
    /// Records its subtasks received (sources: produced).
    pub records_in: u64,
    /// Records its subtasks sent or wrote.
    pub records_out: u64,
    /// Batches its subtasks received.
    pub batches_in: u64,
    /// Times its subtasks waited for a credit.
    pub credit_stalls: u64,
}

impl JobResult {
    /// The counters of every subtask of the chain whose name contains `name`.
    pub fn chain(&self, name: &str) -> Vec<&SubtaskMetrics> {
        self.subtasks
            .iter()
            .filter(|m| m.chain.contains(name))
            .collect()
    }

    /// Total restarts over all subtasks (as counted by the subtasks).
    pub fn total_restarts(&self) -> u64 {
        self.subtasks.iter().map(|m| u64::from(m.restarts)).sum()
    }

    /// The subtasks' figures summed per node (a distributed job; one row `""` otherwise).
    pub fn per_node(&self) -> Vec<NodeFigures> {
        let mut by: std::collections::BTreeMap<&str, NodeFigures> = Default::default();
        for m in &self.subtasks {
            let f = by.entry(m.node.as_str()).or_insert_with(|| NodeFigures {
                node: m.node.clone(),
                ..NodeFigures::default()
            });
            f.subtasks += 1;
            f.records_in += m.records_in;
            f.records_out += m.records_out;
            f.batches_in += m.batches_in;
            f.credit_stalls += m.credit_stalls;
        }
        by.into_values().collect()
    }

    /// A table of records in/out and restarts per subtask, for printing.
    pub fn load_table(&self) -> String {
        let mut s = format!(
            "{:<40} {:>7} {:>12} {:>12} {:>8} {:>8} {:>8}\n",
            "chain", "subtask", "records in", "records out", "keys", "stalls", "restarts"
        );
        for m in &self.subtasks {
            let chain: String = m.chain.chars().take(40).collect();
            s.push_str(&format!(
                "{:<40} {:>7} {:>12} {:>12} {:>8} {:>8} {:>8}\n",
                chain,
                m.subtask,
                m.records_in,
                m.records_out,
                m.distinct_keys,
                m.credit_stalls,
                m.restarts
            ));
        }
        s
    }
}
