//! The job's protocols as plain state machines: each takes events (with the time they
//! happen) and returns what to do, with no actors in it, so that it can be read, changed and
//! tested on its own. The job supervisor actor feeds them and carries their decisions out.
//!
//! - [`restarts`]: restart supervision — strategies, the intensity window, backoff with
//!   jitter, attempts, poison records.
//!
//! Checkpoint coordination and rescale in place still live in the supervisor's files
//! (`coordinator.rs`, `rescale.rs`); they move here next, one machine each.

pub(crate) mod restarts;
