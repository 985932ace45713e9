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
//! - [`recovery`]: recovery of the whole job from a checkpoint — epochs, one recovery at a
//!   time, who must still reset, when everyone runs again, the restore time.
//! - [`rescale`]: rescale in place — hold the sources after a checkpoint, the leaving
//!   subtasks' commits, the switch, the confirmations, resume; starting over after a failure.
//!
//! Each machine's file has its unit tests and a property test over random interleavings; none
//! starts an actor system. The supervisor's side of each is a file of
//! `actors/src/supervisor/` (`restarting.rs`, `checkpointing.rs`, `recovering.rs`,
//! `rescaling.rs`). A new protocol gets a machine here and a file there.

pub(crate) mod checkpoints;
pub(crate) mod recovery;
pub(crate) mod rescale;
pub(crate) mod restarts;
