//! Coordinator failover with etcd: the records of the cluster's jobs, the authority a leader
//! holds over the jobs it coordinates, and what a node does when the leadership changes.
//!
//! Every job the leader runs has a **record** in etcd (`/riffle/CLUSTER/jobs/NAME`, JSON):
//! the options it was submitted with, the id of the instance that runs now, the leader epoch
//! that runs it, its latest completed checkpoint and whether it ended. The leader writes it
//! only through fenced transactions ([`crate::leader`]): when the job starts, at every
//! completed checkpoint (before the checkpoint is saved and its sinks commit — the
//! checkpoint gate), after a rescale in place, and when the job ends (before the other nodes
//! are told: the end is agreed in etcd first).
//!
//! When a node **wins the election**, it reads every record; each job still running is
//! continued from its latest checkpoint in the shared checkpoint directory (a new instance,
//! placed over the live nodes, which keep their processes and host it). When a node **loses
//! the leadership**, it stops the jobs it coordinated without committing anything more. When
//! any node **learns of a newer leader**, it stops hosting what an older one started (the
//! new leader starts it again) and refuses every frame of those jobs
//! ([`crate::Refusals::fenced`]).

pub use crate::authority::Failover;
use crate::authority::{Authority, JobRecord, RecordState};
use crate::hosting::HostedEnd;
use crate::job::{run_job_in, JobOptions};
use crate::leader::LeaderEvent;
use crate::shared::Shared;
use riffle_actors::{ClusterError, Fence, JobError};
use riffle_framework::{CheckpointStorage, RestoreFrom};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a node does on an event of its etcd agent (on the node's leader-events thread).
pub(crate) fn on_event(shared: &Arc<Shared>, me: &str, event: LeaderEvent) {
    match event {
        LeaderEvent::Elected(epoch) => continue_jobs(shared, me, epoch),
        LeaderEvent::Deposed(epoch) => fence_coordinated(shared, epoch),
        LeaderEvent::Changed(view) => {
            fence_coordinated(shared, view.epoch.saturating_sub(1));
            crate::hosting::drop_stale_hosted(shared, view.epoch);
        }
    }
}

/// Stops every job this node coordinates under an epoch up to `epoch`, committing nothing
/// more (each counts as an action refused to a deposed leader).
fn fence_coordinated(shared: &Shared, epoch: u64) {
    for e in shared.jobs.coordinated.iter() {
        let Some(a) = &e.value().authority else {
            continue;
        };
        if a.epoch > epoch {
            continue;
        }
        if let Some(p) = e
            .value()
            .ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            tracing::warn!(
                job = *e.key(),
                epoch = a.epoch,
                "no longer the leader: the job stops here"
            );
            a.leadership.refused();
            p.fence.do_send(Fence {
                reason: ClusterError::Fenced {
                    epoch: a.epoch,
                    reason: "this node lost the leadership".to_string(),
                },
            });
        }
    }
}

/// This node won the election in `epoch`: continue every job whose record says it runs.
fn continue_jobs(shared: &Arc<Shared>, me: &str, epoch: u64) {
    let Some(l) = shared.leadership.clone() else {
        return;
    };
    let elected_at = SystemTime::now();
    let records = match l.list(&l.jobs_prefix()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the jobs' records; no job is continued");
            return;
        }
    };
    for (key, body) in records {
        let record: JobRecord = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%key, error = %e, "a job's record does not decode; skipped");
                continue;
            }
        };
        if record.state != RecordState::Running || record.epoch >= epoch {
            continue;
        }
        let (shared, me) = (shared.clone(), me.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("riffle-failover-{}", record.name))
            .spawn(move || continue_job(&shared, &me, epoch, record, elected_at));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to continue a job");
        }
    }
}

/// How long a new leader tries to start a job again while a node it placed on is going away.
const CONTINUE_FOR: Duration = Duration::from_secs(10);

/// Continues job `record` from its latest checkpoint as leader of `epoch`, waits for its
/// end and reports it ([`crate::Node::wait_hosted`]).
fn continue_job(
    shared: &Arc<Shared>,
    me: &str,
    epoch: u64,
    record: JobRecord,
    elected_at: SystemTime,
) {
    let name = record.name.clone();
    tracing::warn!(job = %name, epoch, checkpoint = ?record.checkpoint, "continuing the job as the new leader");
    let job = match start_continued(shared, me, &record) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(job = %name, error = %e, "cannot continue the job; it failed");
            record_failed(shared, epoch, record, &e);
            return;
        }
    };
    let id = job.id();
    let mut failover = Failover {
        name: name.clone(),
        epoch,
        elected_at,
        flowing_at: None,
    };
    let p = job.wait_until(|p| p.restored_record || p.ended);
    if p.restored_record {
        failover.flowing_at = Some(SystemTime::now());
    }
    shared.jobs.failed_over(failover);
    let error = job.wait().err().map(|e| e.to_string());
    match &error {
        None => tracing::info!(job = %name, "the continued job finished"),
        Some(e) => tracing::error!(job = %name, error = %e, "the continued job failed"),
    }
    if !matches!(error.as_deref(), Some(e) if e.starts_with("cluster: fenced")) {
        shared.jobs.hosted_ended(HostedEnd {
            job: id,
            name,
            error,
        });
    }
}

/// Records that job `record` failed because it could not be continued in `epoch` (so that
/// every node learns its end), and reports it here.
fn record_failed(shared: &Shared, epoch: u64, record: JobRecord, error: &JobError) {
    let Some(l) = shared.leadership.clone() else {
        return;
    };
    let error = format!("the new leader could not continue the job: {error}");
    let (job, name) = (record.job, record.name.clone());
    let failed = JobRecord {
        epoch,
        state: RecordState::Failed(error.clone()),
        ..record
    };
    if let Err(e) = Authority::take(l, epoch, failed) {
        tracing::error!(job = %name, error = %e, "cannot record the job's failure");
        return;
    }
    shared.jobs.hosted_ended(HostedEnd {
        job,
        name,
        error: Some(error),
    });
}

/// Starts job `record` again from its latest checkpoint; retries while a node it placed on
/// is still going away.
fn start_continued(
    shared: &Arc<Shared>,
    me: &str,
    record: &JobRecord,
) -> Result<crate::ClusterJob, JobError> {
    let builder = shared
        .jobs
        .builder(&record.name)
        .ok_or_else(|| ClusterError::UnknownJob {
            name: record.name.clone(),
        })?;
    let options = JobOptions {
        parallelism: record.parallelism,
        rescaled: record.rescaled.clone(),
        ..JobOptions::default()
    };
    let plan = crate::job::plan_with(&builder, &options)?;
    let Some(CheckpointStorage::Dir(dir)) =
        plan.config().checkpoint.as_ref().map(|c| c.storage.clone())
    else {
        return Err(JobError::NeedsCheckpointDir {
            what: "continuing a job on a new leader".to_string(),
        });
    };
    let restore = match record.checkpoint {
        Some(_) => RestoreFrom::Latest(dir),
        None => RestoreFrom::LatestOrFresh(dir),
    };
    let options = JobOptions {
        restore: Some(restore),
        ..options
    };
    let deadline = Instant::now() + CONTINUE_FOR;
    loop {
        let up = shared.net.up_peers();
        match run_job_in(
            shared,
            me,
            &record.name,
            up,
            options.clone(),
            record.checkpoint,
        ) {
            Err(JobError::Cluster(ClusterError::NoLink { node })) if Instant::now() < deadline => {
                tracing::info!(%node, "a node of the placement has no link; placing again");
                let left = deadline.saturating_duration_since(Instant::now());
                shared
                    .net
                    .members
                    .wait_for(left.min(Duration::from_millis(200)), |st, late| {
                        let up = st
                            .members
                            .get(&node)
                            .is_some_and(|m| m.status == crate::Status::Up);
                        (late || !up).then_some(())
                    });
            }
            other => return other,
        }
    }
}
