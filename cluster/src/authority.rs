//! The records of the cluster's jobs in etcd and the authority a leader holds over the jobs
//! it coordinates (the `failover` module describes the protocol as a whole).
//!
//! Every write of a record goes through [`Leadership::put_fenced`]: it holds only while this
//! node still leads in the epoch the job runs under. [`Authority::checkpoint`] is the
//! checkpoint gate (a checkpoint completes only once recorded), [`Authority::check`] the
//! lease clock (a leader acts only while its lease is surely alive), and [`agreed_end`] the
//! end every node reports.

use crate::leader::{LeaderError, Leadership};
use riffle_actors::ClusterError;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How a job stands, as its record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordState {
    /// It runs (or must be continued by the next leader).
    Running,
    /// It finished.
    Succeeded,
    /// It failed with this error.
    Failed(String),
}

/// A job's record in etcd (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    /// The registered builder's name.
    pub(crate) name: String,
    /// The default parallelism it was submitted with.
    pub(crate) parallelism: Option<usize>,
    /// Operators at another parallelism (submitted so, or rescaled in place since).
    pub(crate) rescaled: Vec<(String, usize)>,
    /// The id of the instance that runs it now.
    pub(crate) job: u64,
    /// The epoch of the leader that runs it.
    pub(crate) epoch: u64,
    /// Its latest completed checkpoint, once it has one.
    pub(crate) checkpoint: Option<u64>,
    /// Whether it runs or ended.
    pub(crate) state: RecordState,
}

/// A job continued by this node after it won the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The job's name.
    pub name: String,
    /// The epoch this node continued it in.
    pub epoch: u64,
    /// When this node won the election.
    pub elected_at: SystemTime,
    /// When the continued job processed its first record after restoring (`None` if it
    /// ended first).
    pub flowing_at: Option<SystemTime>,
}

fn cluster_error(e: LeaderError) -> ClusterError {
    match e {
        LeaderError::Fenced { epoch } => ClusterError::Fenced {
            epoch,
            reason: "etcd refused the leader's write: its election key is gone (its lease expired or was revoked), so another node leads or will".to_string(),
        },
        LeaderError::Lapsed { epoch } => ClusterError::Fenced {
            epoch,
            reason: "the leader's lease was not surely alive (etcd did not renew it in time, or the node was paused): it wrote nothing (etcd was not asked) and gives the leadership up".to_string(),
        },
        LeaderError::Etcd(reason) => ClusterError::Etcd { reason },
    }
}

/// The authority of the leader over one job it coordinates: its epoch, and the job's record
/// it keeps in etcd.
pub(crate) struct Authority {
    pub(crate) leadership: Arc<Leadership>,
    pub(crate) epoch: u64,
    record: Mutex<JobRecord>,
}

impl Authority {
    /// Takes the authority over job `record` in `epoch`: writes the record (fenced).
    ///
    /// # Errors
    /// [`ClusterError::Fenced`] if this node no longer leads in `epoch`,
    /// [`ClusterError::Etcd`] if etcd did not answer.
    pub(crate) fn take(
        leadership: Arc<Leadership>,
        epoch: u64,
        record: JobRecord,
    ) -> Result<Arc<Authority>, ClusterError> {
        let a = Authority {
            leadership,
            epoch,
            record: Mutex::new(record),
        };
        a.write(|_| ())?;
        Ok(Arc::new(a))
    }

    /// Changes the record with `f` and writes it, fenced (the change stays only if written).
    fn write(&self, f: impl FnOnce(&mut JobRecord)) -> Result<(), ClusterError> {
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = record.clone();
        f(&mut next);
        let body = serde_json::to_vec(&next).map_err(|e| ClusterError::Etcd {
            reason: format!("cannot encode the job's record: {e}"),
        })?;
        let key = self.leadership.job_key(&next.name);
        self.leadership
            .put_fenced(self.epoch, &key, body)
            .map_err(cluster_error)?;
        *record = next;
        Ok(())
    }

    /// Whether this node surely still leads in the job's epoch.
    pub(crate) fn check(&self) -> Result<(), ClusterError> {
        if self.leadership.holds_epoch(self.epoch) {
            return Ok(());
        }
        self.leadership.refused();
        self.leadership.resign();
        Err(ClusterError::Fenced {
            epoch: self.epoch,
            reason: "the leader's lease is not surely alive".to_string(),
        })
    }

    /// Checkpoint `id` completed: record it (the checkpoint gate).
    pub(crate) fn checkpoint(&self, id: u64) -> Result<(), ClusterError> {
        self.write(|r| r.checkpoint = Some(id))
    }

    /// The job now runs with these rescales.
    pub(crate) fn rescaled(&self, rescaled: &[(String, usize)]) -> Result<(), ClusterError> {
        self.write(|r| r.rescaled = rescaled.to_vec())
    }

    /// The job ended (`error`: why it failed): agreed in etcd before anyone is told. While
    /// etcd fails, the write is tried again with backoff for [`END_WRITE_DEADLINE`].
    ///
    /// # Errors
    /// [`ClusterError::Fenced`] if this node no longer leads (the next leader continues the
    /// job and records its end); [`ClusterError::CoordinationUnavailable`] if etcd failed
    /// until the deadline.
    pub(crate) fn ended(&self, error: Option<&str>) -> Result<(), ClusterError> {
        let state = match error {
            None => RecordState::Succeeded,
            Some(e) => RecordState::Failed(e.to_string()),
        };
        let deadline = std::time::Instant::now() + END_WRITE_DEADLINE;
        let mut pause = END_RETRY.0;
        loop {
            match self.write(|r| r.state = state.clone()) {
                Err(ClusterError::Etcd { reason }) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(ClusterError::CoordinationUnavailable {
                            reason,
                            waited: END_WRITE_DEADLINE,
                        });
                    }
                    tracing::warn!(job = %self.name(), %reason, "cannot record the job's end in etcd; trying again");
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(END_RETRY.1);
                }
                other => return other,
            }
        }
    }

    fn name(&self) -> String {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone()
    }
}

/// How long a leader tries to record a job's end while etcd fails.
pub(crate) const END_WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// How long one watch for a job's end waits before it is made again (so a watch that etcd
/// dropped silently, as a restarted etcd does, is replaced).
const END_WATCH: Duration = Duration::from_secs(5);

/// The first and the longest pause between tries while etcd fails.
const END_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The outcome of job `name` as its record says once it ended: `Ok(Ok(()))` if it succeeded,
/// `Ok(Err(error))` if it failed. While etcd fails (unreachable, restarting, paused), it is
/// tried again with backoff until `timeout` passes.
///
/// # Errors
/// [`ClusterError::CoordinationUnavailable`] if etcd failed until `timeout` passed (the
/// outcome is not known here); [`ClusterError::NotEnded`] if etcd answered and the job had
/// not ended by then.
pub(crate) fn agreed_end(
    l: &Leadership,
    name: &str,
    timeout: Duration,
) -> Result<Result<(), String>, ClusterError> {
    let ended = |b: &[u8]| {
        serde_json::from_slice::<JobRecord>(b).is_ok_and(|r| r.state != RecordState::Running)
    };
    let deadline = std::time::Instant::now() + timeout;
    let (mut pause, mut failure) = (END_RETRY.0, None::<String>);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(match failure {
                Some(reason) => ClusterError::CoordinationUnavailable {
                    reason,
                    waited: timeout,
                },
                None => ClusterError::NotEnded {
                    name: name.to_string(),
                },
            });
        }
        match l.await_value(&l.job_key(name), ended, left.min(END_WATCH)) {
            Ok(Some(body)) => match serde_json::from_slice::<JobRecord>(&body).map(|r| r.state) {
                Ok(RecordState::Succeeded) => return Ok(Ok(())),
                Ok(RecordState::Failed(e)) => return Ok(Err(e)),
                _ => failure = Some("the job's record does not decode".to_string()),
            },
            Ok(None) => failure = None,
            Err(e) => {
                if failure.is_none() {
                    tracing::warn!(job = %name, error = %e, "cannot read the job's agreed end from etcd; trying again");
                }
                failure = Some(e.to_string());
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(END_RETRY.1);
            }
        }
    }
}
