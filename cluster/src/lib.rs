//! # riffle-cluster — nodes, wire protocol and remote mailboxes
//!
//! The third layer of Riffle (framework ← actors ← **cluster** ← riffle). It stretches a
//! job's dataflow over several node processes. Built so far:
//!
//! - [`wire`]: length-prefixed frames with rmp-serde bodies, a protocol version and a tag per
//!   message; every data frame carries its [`wire::EdgeAddress`]. Lengths are checked against a
//!   maximum before anything is allocated, and every malformed frame is a typed
//!   [`wire::WireError`]; nothing a peer sends can panic a node.
//! - [`handshake`]: version, cluster name, node ids and a mutual HMAC-SHA256
//!   challenge–response over a shared secret; peers without the secret are refused.
//!
//! Still to come (see the project's cluster issue and `cluster/PROTOCOL.md`): the `Node`
//! process with its listener and peer links, remote mailboxes with per-channel credits,
//! placement on a ring of nodes, membership with a failure detector, and failover. Today every
//! job runs in one process through `riffle-actors`.

pub mod handshake;
pub mod wire;

pub use handshake::{handshake, HandshakeConfig, HandshakeError, Peer};
pub use wire::{EdgeAddress, Message, WireError, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
