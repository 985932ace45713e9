//! Errors of the framework layer: graph validation, user code and connectors.

use std::fmt;

/// An error returned by user code (an operator, source or sink).
///
/// Any `std::error::Error` converts into it with `?` or `.into()`.
pub type UserError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A job graph that cannot run. Returned when a job is built, before any actor starts.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    /// An operator (or the job default) asked for zero parallel subtasks.
    #[error("operator `{operator}` has parallelism 0; every operator needs at least one subtask")]
    ZeroParallelism {
        /// The operator's name.
        operator: String,
    },
    /// A `forward()` edge joins operators of different parallelism; forward means subtask i
    /// feeds subtask i, so both sides need the same count. Use `rebalance()` instead.
    #[error(
        "forward edge `{from}` (parallelism {from_parallelism}) -> `{to}` (parallelism \
         {to_parallelism}) needs equal parallelism; use rebalance() or set both parallelisms equal"
    )]
    ForwardParallelismMismatch {
        /// Upstream operator.
        from: String,
        /// Downstream operator.
        to: String,
        /// Upstream parallelism.
        from_parallelism: usize,
        /// Downstream parallelism.
        to_parallelism: usize,
    },
    /// An operator that can only run as one subtask (e.g. the socket source) was given more.
    #[error(
        "operator `{operator}` cannot run in parallel but was given parallelism {parallelism}"
    )]
    NonParallel {
        /// The operator's name.
        operator: String,
        /// The parallelism asked for.
        parallelism: usize,
    },
    /// The job has no sink, so nothing it computes would be seen.
    #[error("the job has no sink; end each stream with sink(), sink_fn(), print() or collect()")]
    NoSink,
    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value} ({reason})")]
    InvalidConfig {
        /// Which setting.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What a valid value is.
        reason: &'static str,
    },
    /// A window operator is not set up so that it can run (a zero size, no timestamps for
    /// event time, a trigger its assigner does not support).
    #[error("window operator `{operator}`: {reason}")]
    InvalidWindow {
        /// The operator's name.
        operator: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An operator cannot be rescaled as asked.
    #[error("cannot rescale operator `{operator}` to {parallelism}: {reason}")]
    Rescale {
        /// The operator.
        operator: String,
        /// The parallelism asked for.
        parallelism: usize,
        /// Why not.
        reason: &'static str,
    },
}

/// Why a batch could not be encoded for, or decoded from, a remote channel.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The batch holds records of another type than the codec's.
    #[error("batch of another record type")]
    WrongType,
    /// The records do not serialize.
    #[error("records do not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a batch of the codec's record type.
    #[error("bytes do not decode as a batch: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The bytes are not a column-encoded batch of the codec's record type (see the
    /// codec's docs for which types are written in columns).
    #[error("bytes do not decode as a batch in columns: {0}")]
    Columns(&'static str),
}

/// Errors of the built-in connectors (sources and sinks).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An input file could not be opened or read.
    #[error("cannot read input file {path}: {source}")]
    ReadFile {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An output file could not be created or written.
    #[error("cannot write output file {path}: {source}")]
    WriteFile {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A socket source could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A socket source failed while reading.
    #[error("socket {addr} failed while reading: {source}")]
    SocketRead {
        /// The address as given.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ConnectorError {
    /// Whether no restart can fix it: a file or directory that is missing or may not be
    /// read or written (a transient I/O error or a refused connection may pass).
    pub fn is_permanent(&self) -> bool {
        use std::io::ErrorKind::{NotFound, PermissionDenied};
        match self {
            ConnectorError::ReadFile { source, .. } | ConnectorError::WriteFile { source, .. } => {
                matches!(source.kind(), NotFound | PermissionDenied)
            }
            _ => false,
        }
    }
}

/// A user error that no restart can fix (bad configuration, a missing resource): returned
/// from an operator, source or sink, it fails the job at once instead of being retried as
/// the restart strategy says. Wrap any error: `Err(Permanent::new("no such table").into())`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub UserError);

impl Permanent {
    /// Marks `e` as permanent.
    pub fn new(e: impl Into<UserError>) -> Self {
        Permanent(e.into())
    }
}

/// Why a subtask failed.
#[derive(Debug)]
pub enum FailureCause {
    /// User code panicked; the panic message.
    Panic(String),
    /// User code returned an error.
    Error(UserError),
    /// The subtask was stopped from outside (e.g. by the chaos module).
    Stopped,
    /// The runtime broke one of its own invariants (a bug in Riffle).
    Internal(&'static str),
}

impl FailureCause {
    /// Whether no restart can fix it: a [`Permanent`] error, or a connector's error that is
    /// (see [`ConnectorError::is_permanent`]).
    pub fn is_permanent(&self) -> bool {
        let FailureCause::Error(e) = self else {
            return false;
        };
        e.is::<Permanent>()
            || e.downcast_ref::<ConnectorError>()
                .is_some_and(ConnectorError::is_permanent)
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Panic(m) => write!(f, "panicked: {m}"),
            FailureCause::Error(e) => write!(f, "returned error: {e}"),
            FailureCause::Stopped => write!(f, "was stopped from outside"),
            FailureCause::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// A failure inside a subtask's operator chain, naming the operator that failed.
#[derive(Debug, thiserror::Error)]
#[error("operator `{operator}` {cause}")]
pub struct StageError {
    /// The failed operator's name.
    pub operator: String,
    /// What happened.
    pub cause: FailureCause,
}

impl StageError {
    /// A failure of `operator` from a caught panic payload.
    pub fn from_panic(operator: &str, payload: Box<dyn std::any::Any + Send>) -> Self {
        StageError {
            operator: operator.to_string(),
            cause: FailureCause::Panic(panic_message(payload.as_ref())),
        }
    }

    /// A failure of `operator` from an error returned by user code.
    pub fn from_error(operator: &str, err: UserError) -> Self {
        StageError {
            operator: operator.to_string(),
            cause: FailureCause::Error(err),
        }
    }
}

/// The message of a caught panic payload (`&str` or `String`; anything else is described).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
