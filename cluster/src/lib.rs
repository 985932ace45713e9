//! # riffle-cluster — nodes, wire protocol and remote mailboxes
//!
//! The third layer of Riffle (framework ← actors ← **cluster** ← riffle). It stretches a
//! job's dataflow over several node processes. Built so far:
//!
//! - [`wire`]: length-prefixed frames with rmp-serde bodies, a protocol version and a tag per
//!   message; every data frame carries its [`wire::EdgeAddress`]. Lengths are checked against a
//!   maximum before anything is allocated, and every malformed frame is a typed
//!   [`wire::WireError`]; nothing a peer sends can panic a node.
//! - [`mod@handshake`]: version, cluster name and node ids, bound by a Noise `NNpsk0`
//!   handshake over the cluster's pre-shared key ([`Secret`]); peers without the secret are
//!   refused, and nothing can be reflected or replayed between connections. [`secure`]
//!   encrypts links after it when the cluster asks for it.
//! - [`guard`]: limits before trust — pending handshakes, connections and failed handshakes per
//!   address, and the open files a node keeps for its jobs.
//!
//! - [`node`]: a [`Node`] with a TCP listener, one authenticated link per peer (a full mesh
//!   learnt from seeds and heartbeats) and a timeout failure detector.
//!
//! - [`remote`]: remote mailboxes — an actor that stands in for a subtask on another node,
//!   behind the same `Recipient<DataMessage>` as a local subtask — and the receiving
//!   directory, with the local runtime's per-channel credits carried over the wire.
//!
//! - [`placement`]: subtasks placed on a consistent-hash ring of node ids (weighted), so losing
//!   or adding one of n nodes moves only about 1/n of the subtasks.
//!
//! - [`job`]: jobs spread over nodes — the lowest live node coordinates, subtasks are placed
//!   on the node ring, the job supervisor reaches remote subtasks through control frames and
//!   they report back through the node's job proxy; a lost node's subtasks are re-placed and
//!   the job recovers from its latest checkpoint.
//!
//! Inside, the node's state is in owned parts with calls in one direction (the README's
//! Architecture section has the table): membership (`members`), the network side that job
//! proxies use (`net`), the registry of jobs (`jobs`), and `shared`, which holds them; the
//! mesh's runtime (`mesh`) and each link (`link`) sit on top.
//!
//! - `session`: what a node sends a peer survives the TCP link it travels on — frames are
//!   numbered, kept until acknowledged and resent after a reset ([`SessionStats`]); a peer
//!   that restarted or lost the session is a lost node.
//!
//! - [`leader`] and [`failover`]: with etcd, the cluster elects a leader that coordinates
//!   every job; its epoch fences a leader that lost its lease (paused, cut off), and a new
//!   leader continues every running job from its latest checkpoint. Without etcd, the lowest
//!   live node id coordinates and its loss ends the jobs (see `cluster/PROTOCOL.md`).

mod authority;
mod config;
mod counters;
pub mod failover;
pub mod guard;
pub mod handshake;
mod hosting;
pub mod job;
mod jobs;
pub mod leader;
mod link;
mod members;
mod mesh;
mod net;
pub mod node;
pub mod placement;
mod proxy;
pub mod remote;
pub mod secret;
pub mod secure;
mod session;
mod shared;
mod suspicions;
mod verdict;
pub mod wire;

pub use authority::Failover;
pub use guard::Limits;
pub use handshake::{handshake, Established, HandshakeConfig, HandshakeError, Peer, Role};
pub use hosting::{FrameError, HostedEnd};
pub use job::{ClusterJob, JobBuilder, JobOptions};
pub use leader::{EtcdAuth, EtcdSettings, EtcdTls, LeaderView};
pub use node::{LinkWrites, Member, Node, NodeBuilder, NodeError, Refusals, Status};
pub use placement::Placement;
pub use remote::{Inbox, PendingCredits, RemoteMailbox};
pub use secret::{Secret, SecretError};
pub use session::LinkSender;
pub use session::SessionStats;
pub use wire::{
    BatchBytes, EdgeAddress, Message, WireError, WireEvent, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
