//! # riffle-cluster — nodes, wire protocol and remote mailboxes
//!
//! The third layer of Riffle (framework ← actors ← cluster ← riffle). It will stretch a job's
//! dataflow over several node processes: a TCP link per peer with length-prefixed frames and an
//! HMAC handshake, remote mailboxes that stand in for subtasks on other nodes behind the same
//! `Recipient` the local runtime uses, placement of subtasks on a consistent-hash ring of nodes,
//! membership and failover.
//!
//! **Status:** not built yet. Today every job runs in one process through `riffle-actors`;
//! this crate only fixes its place in the crate graph.

/// Where the cluster layer stands; see the crate docs.
pub const STATUS: &str = "single-process only: the cluster layer is not implemented yet";
