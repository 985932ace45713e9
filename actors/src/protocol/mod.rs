//! The job's protocols as plain state machines: each takes events (with the time they
//! happen) and returns what to do, with no actors in it, so that it can be read, changed and
//! tested on its own. The job supervisor actor feeds them and carries their decisions out.
//!
//! - [`restarts`]: restart supervision — strategies, the intensity window, backoff with
//!   jitter, attempts, poison records.
//! - [`checkpoints`]: checkpoint coordination — the checkpoint in flight and its
//!   acknowledgements, when the next one is due, timeouts, direct triggers of drained
//!   subtasks, commit confirmations.
//!
//! The handlers that carry these out still live in the supervisor's files
//! (`coordinator.rs` saves checkpoints and sends triggers and commits; recovery is in
//! `supervisor.rs`), and rescale in place (`rescale.rs`) moves here next.

pub(crate) mod checkpoints;
pub(crate) mod restarts;
