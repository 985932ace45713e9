//! Errors and results of a job run.

use crate::message::SubtaskMetrics;
use riffle_framework::{FailureCause, GraphError};
use std::time::Duration;

/// Who a [`JobError`] is up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The job as written cannot run (graph or configuration); fix the job.
    Config,
    /// User code failed (panic or error); fix the code or the data. Retrying the same input
    /// fails the same way unless the failure was transient (e.g. an unreachable socket).
    User,
    /// The runtime could not run (threads could not start); retrying may help.
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
    /// A subtask failed and the job was stopped.
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
    /// The runtime's threads could not be started.
    #[error("cannot start the runtime: {0}")]
    Spawn(#[source] std::io::Error),
    /// The runtime stopped without reporting an outcome (a bug in Riffle).
    #[error("the runtime stopped without reporting the job's outcome")]
    RuntimeLost,
}

impl JobError {
    /// Whose problem this is; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::Graph(_) => ErrorKind::Config,
            JobError::SubtaskFailed { cause, .. } => match cause {
                FailureCause::Internal(_) => ErrorKind::Internal,
                _ => ErrorKind::User,
            },
            JobError::Spawn(_) => ErrorKind::External,
            JobError::RuntimeLost => ErrorKind::Internal,
        }
    }
}

/// What a completed job reports.
#[derive(Clone, Debug, Default)]
pub struct JobResult {
    /// Wall time from start to the last sink finishing.
    pub elapsed: Duration,
    /// Per-subtask counters, ordered by chain then subtask.
    pub subtasks: Vec<SubtaskMetrics>,
}

impl JobResult {
    /// The counters of every subtask of the chain whose name contains `name`.
    pub fn chain(&self, name: &str) -> Vec<&SubtaskMetrics> {
        self.subtasks
            .iter()
            .filter(|m| m.chain.contains(name))
            .collect()
    }

    /// A table of records in/out per subtask, for printing.
    pub fn load_table(&self) -> String {
        let mut s = format!(
            "{:<40} {:>7} {:>12} {:>12} {:>8}\n",
            "chain", "subtask", "records in", "records out", "stalls"
        );
        for m in &self.subtasks {
            let chain: String = m.chain.chars().take(40).collect();
            s.push_str(&format!(
                "{:<40} {:>7} {:>12} {:>12} {:>8}\n",
                chain, m.subtask, m.records_in, m.records_out, m.credit_stalls
            ));
        }
        s
    }
}
