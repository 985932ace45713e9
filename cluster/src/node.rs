//! A cluster node: a TCP listener, one authenticated link per peer, heartbeats and a
//! timeout failure detector.
//!
//! A node dials its seeds, learns the other members from the member lists that every
//! heartbeat carries, and dials them too, so the cluster becomes a full mesh. A peer from
//! which no frame arrived for `failure_timeout` is declared down; a node that comes back
//! (a new handshake) rejoins as a fresh member. The node runs on its own thread with a tokio
//! runtime; its API is blocking and waits on signals ([`Node::wait_members`]).
//!
//! Jobs registered on the builder run across the nodes (see [`crate::job`]).

use crate::handshake::{handshake, HandshakeConfig, Peer};
use crate::job::{ClusterJob, CoordinatedJob, HostedEnd, HostedJob, JobBuilder};
use crate::remote::{
    channel_key, deliver, ChannelKey, CreditsReturned, Inbox, LinkSender, Outgoing, RemoteMailbox,
};
use crate::wire::{read_frame, write_frame, EdgeAddress, Message, RefuseReason, DEFAULT_MAX_FRAME};
use actix::prelude::{Actor, Addr, Recipient};
use dashmap::DashMap;
use riffle_actors::{Decision, JobError};
use riffle_framework::BatchCodec;
use riffle_framework::TaskId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
/// Default failure timeout: a peer silent this long is down.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A required setting is missing.
    #[error("node configuration: {0}")]
    Config(&'static str),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node's thread or runtime could not start.
    #[error("cannot start the node runtime: {0}")]
    Runtime(std::io::Error),
    /// No link to that peer is up.
    #[error("no link to node `{0}`")]
    NoLink(String),
}

/// Whether a member is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Heard from within the failure timeout.
    Up,
    /// Silent for longer than the failure timeout, or its link closed and was not re-made.
    Down,
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub node: String,
    /// Its listen address.
    pub listen: String,
    /// Alive or not.
    pub status: Status,
}

/// Settings of a node; see [`NodeBuilder`].
#[derive(Clone)]
struct NodeConfig {
    name: String,
    cluster: String,
    listen: String,
    seeds: Vec<String>,
    secret: Vec<u8>,
    heartbeat: Duration,
    failure_timeout: Duration,
    max_frame: u32,
    jobs: Vec<(String, JobBuilder)>,
    advertise: Option<String>,
    dial_via: Option<DialVia>,
    checkpoint_dir: Option<std::path::PathBuf>,
}

/// Maps a peer's advertised address to the address to connect to.
pub type DialVia = Arc<dyn Fn(&str) -> String + Send + Sync>;

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("cluster", &self.cluster)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("jobs", &self.jobs.iter().map(|j| &j.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Node`]: `Node::builder().name("n1").listen("127.0.0.1:0").secret(b"..").start()`.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    cfg: NodeConfig,
}

impl NodeBuilder {
    /// The node's id (required; unique in the cluster).
    pub fn name(mut self, name: &str) -> Self {
        self.cfg.name = name.to_string();
        self
    }
    /// The cluster's name (default `riffle`).
    pub fn cluster(mut self, cluster: &str) -> Self {
        self.cfg.cluster = cluster.to_string();
        self
    }
    /// Where to listen (default `127.0.0.1:0`, any free port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.cfg.listen = addr.to_string();
        self
    }
    /// Addresses of nodes to join through.
    pub fn seeds<I: IntoIterator<Item = S>, S: Into<String>>(mut self, seeds: I) -> Self {
        self.cfg.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }
    /// The shared secret every member must hold (required).
    pub fn secret(mut self, secret: &[u8]) -> Self {
        self.cfg.secret = secret.to_vec();
        self
    }
    /// Heartbeat interval (default [`DEFAULT_HEARTBEAT`]).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.cfg.heartbeat = every;
        self
    }
    /// Silence after which a peer is down (default [`DEFAULT_FAILURE_TIMEOUT`]).
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.failure_timeout = timeout;
        self
    }
    /// The address announced to peers (default: the bound address) — e.g. a NAT's or a
    /// proxy's address in front of this node.
    pub fn advertise(mut self, addr: &str) -> Self {
        self.cfg.advertise = Some(addr.to_string());
        self
    }
    /// Connects to peers through `via(advertised address)` instead of the address itself
    /// (a proxy or tunnel in between).
    pub fn dial_via(mut self, via: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.cfg.dial_via = Some(Arc::new(via));
        self
    }
    /// Where the jobs this node coordinates keep their checkpoints (overrides the job's own
    /// setting; a job without checkpointing gets none). Give every node the same directory
    /// on storage they share, so that any of them can restore the job.
    pub fn checkpoint_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.cfg.checkpoint_dir = Some(dir.into());
        self
    }
    /// Registers a job builder under `name`. Every node of a cluster registers the same
    /// builders (same binary); the coordinator submits a job by name ([`Node::run_job`]).
    pub fn register_job(
        mut self,
        name: &str,
        build: impl Fn() -> riffle_framework::StreamEnv + Send + Sync + 'static,
    ) -> Self {
        self.cfg.jobs.push((name.to_string(), Arc::new(build)));
        self
    }

    /// Binds the listener and starts the node on its own thread.
    ///
    /// # Errors
    /// [`NodeError::Config`] without a name or a secret, [`NodeError::Bind`] if the address
    /// cannot be bound, [`NodeError::Runtime`] if the thread cannot start.
    pub fn start(self) -> Result<Node, NodeError> {
        let cfg = self.cfg;
        if cfg.name.is_empty() {
            return Err(NodeError::Config("a node needs a name"));
        }
        if cfg.secret.is_empty() {
            return Err(NodeError::Config("a node needs a shared secret"));
        }
        let std_listener =
            std::net::TcpListener::bind(&cfg.listen).map_err(|source| NodeError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(NodeError::Runtime)?;
        let local = std_listener.local_addr().map_err(NodeError::Runtime)?;
        let shared = Arc::new(Shared {
            builders: cfg.jobs.iter().cloned().collect(),
            checkpoint_dir: cfg.checkpoint_dir.clone(),
            ..Shared::default()
        });
        let name = cfg.name.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("riffle-node-{}", cfg.name))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => run(cfg, local, listener, s, stop_rx).await,
                        Err(e) => tracing::error!(error = %e, "listener unusable"),
                    }
                })
            })
            .map_err(NodeError::Runtime)?;
        Ok(Node {
            name,
            local,
            shared,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

/// State shared between the node's runtime and its blocking API.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Local subtasks that receive remote channels: (job, chain, subtask) → inbox.
    pub(crate) inboxes: DashMap<(u64, u32, u32), Inbox>,
    /// Remote mailboxes waiting for credits, by channel.
    pub(crate) returns: DashMap<ChannelKey, Recipient<CreditsReturned>>,
    /// Registered job builders.
    builders: HashMap<String, JobBuilder>,
    /// Where coordinated jobs keep their checkpoints (overrides the job's setting).
    checkpoint_dir: Option<std::path::PathBuf>,
    /// Jobs this node coordinates.
    pub(crate) coordinated: DashMap<u64, Arc<CoordinatedJob>>,
    /// Jobs this node hosts subtasks of.
    pub(crate) hosted: DashMap<u64, Arc<HostedJob>>,
    /// Failure reports of hosted subtasks waiting for the coordinator's decision.
    pub(crate) replies: DashMap<(u64, TaskId), oneshot::Sender<Decision>>,
    /// What this node wrote on its link to each peer (since it started).
    pub(crate) counters: DashMap<String, Arc<LinkCounters>>,
    /// Coordinators waiting for the nodes' link figures of a job.
    pub(crate) stats_waiters: DashMap<u64, std::sync::mpsc::Sender<(String, LinkTotals)>>,
}

/// Per peer: bytes, frames, data frames, credit frames.
pub(crate) type LinkTotals = Vec<(String, u64, u64, u64, u64)>;

/// What a node wrote on its link to one peer.
#[derive(Default)]
pub(crate) struct LinkCounters {
    bytes: AtomicU64,
    frames: AtomicU64,
    data: AtomicU64,
    credit: AtomicU64,
}

impl LinkCounters {
    fn count(&self, m: &Message, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        match m {
            Message::Data { .. } => self.data.fetch_add(1, Ordering::Relaxed),
            Message::Credit { .. } => self.credit.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

impl Shared {
    /// What this node wrote to each peer so far.
    pub(crate) fn link_totals(&self) -> LinkTotals {
        let mut v: LinkTotals = self
            .counters
            .iter()
            .map(|e| {
                let c = e.value();
                (
                    e.key().clone(),
                    c.bytes.load(Ordering::Relaxed),
                    c.frames.load(Ordering::Relaxed),
                    c.data.load(Ordering::Relaxed),
                    c.credit.load(Ordering::Relaxed),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[derive(Default)]
struct State {
    members: HashMap<String, (String, Status, Instant)>,
    links: HashMap<String, mpsc::UnboundedSender<Outgoing>>,
    /// Per linked peer: the link's id and the signal that closes it.
    kills: HashMap<String, (u64, Arc<tokio::sync::Notify>)>,
    /// Addresses being dialled now.
    dialing: std::collections::HashSet<String>,
    next_link: u64,
    /// Hosted jobs that ended, oldest first, until [`Node::wait_hosted`] takes them.
    ended: std::collections::VecDeque<HostedEnd>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The link to `peer`, if it is up.
    pub(crate) fn link_sender(&self, peer: &str) -> Option<LinkSender> {
        self.lock().links.get(peer).map(|tx| LinkSender {
            tx: tx.clone(),
            peer: peer.to_string(),
        })
    }

    /// Every link that is up.
    pub(crate) fn all_links(&self) -> Vec<LinkSender> {
        self.lock()
            .links
            .iter()
            .map(|(peer, tx)| LinkSender {
                tx: tx.clone(),
                peer: peer.clone(),
            })
            .collect()
    }

    /// The builder registered as `name`, with this node's checkpoint directory applied.
    pub(crate) fn builder(&self, name: &str) -> Option<JobBuilder> {
        let build = self.builders.get(name).cloned()?;
        let Some(dir) = self.checkpoint_dir.clone() else {
            return Some(build);
        };
        Some(Arc::new(move || {
            let env = build();
            env.configure(|c| {
                if let Some(cp) = &mut c.checkpoint {
                    cp.storage = riffle_framework::CheckpointStorage::Dir(dir.clone());
                }
            });
            env
        }))
    }

    /// Records that a hosted job ended and wakes [`Node::wait_hosted`].
    pub(crate) fn hosted_ended(&self, end: HostedEnd) {
        self.lock().ended.push_back(end);
        self.changed.notify_all();
    }

    fn up_peers(&self) -> Vec<String> {
        self.lock()
            .members
            .iter()
            .filter(|(_, (_, s, _))| *s == Status::Up)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    name: String,
    local: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// A builder with the documented defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            cfg: NodeConfig {
                name: String::new(),
                cluster: "riffle".to_string(),
                listen: "127.0.0.1:0".to_string(),
                seeds: Vec::new(),
                secret: Vec::new(),
                heartbeat: DEFAULT_HEARTBEAT,
                failure_timeout: DEFAULT_FAILURE_TIMEOUT,
                max_frame: DEFAULT_MAX_FRAME,
                jobs: Vec::new(),
                advertise: None,
                dial_via: None,
                checkpoint_dir: None,
            },
        }
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The node's id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The coordinator of jobs submitted now: the live node with the lowest id.
    pub fn coordinator(&self) -> String {
        let mut ids = self.shared.up_peers();
        ids.push(self.name.clone());
        ids.into_iter().min().unwrap_or_default()
    }

    /// Submits the job registered as `name`, spread over every live node. Only the
    /// coordinator ([`Node::coordinator`]) runs jobs; see [`crate::job`].
    ///
    /// # Errors
    /// [`JobError::Cluster`] if this node is not the coordinator, no job is registered under
    /// `name`, or a node cannot be reached; the job's graph and start errors.
    pub fn run_job(&self, name: &str) -> Result<ClusterJob, JobError> {
        crate::job::run_job(&self.shared, &self.name, name, self.shared.up_peers())
    }

    /// Blocks until a job this node hosted (as a non-coordinator) ends, or `timeout` passes.
    pub fn wait_hosted(&self, timeout: Duration) -> Option<HostedEnd> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = g.ended.pop_front() {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The other members this node knows, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        members_of(&self.shared.lock())
    }

    /// Blocks until `cond` holds for the member list or `timeout` passes; returns the list.
    pub fn wait_members(&self, timeout: Duration, cond: impl Fn(&[Member]) -> bool) -> Vec<Member> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            let m = members_of(&g);
            let now = Instant::now();
            if cond(&m) || now >= deadline {
                return m;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The link to `peer`, if it is up.
    pub fn link(&self, peer: &str) -> Option<LinkSender> {
        let st = self.shared.lock();
        st.links.get(peer).map(|tx| LinkSender {
            tx: tx.clone(),
            peer: peer.to_string(),
        })
    }

    /// Routes `Data` frames for subtask `to` of `chain` of `job` to `inbox`.
    pub fn register_inbox(&self, job: u64, chain: u32, to: u32, inbox: Inbox) {
        self.shared.inboxes.insert((job, chain, to), inbox);
    }

    /// Starts a remote mailbox (in the current actix system) for channel `edge` to `peer` and
    /// routes the channel's returned credits to it.
    ///
    /// # Errors
    /// [`NodeError::NoLink`] if there is no link to `peer`.
    pub fn remote_mailbox(
        &self,
        edge: EdgeAddress,
        peer: &str,
        codec: BatchCodec,
    ) -> Result<Addr<RemoteMailbox>, NodeError> {
        let link = self
            .link(peer)
            .ok_or_else(|| NodeError::NoLink(peer.to_string()))?;
        let addr = RemoteMailbox::new(edge, link, codec).start();
        self.shared
            .returns
            .insert(channel_key(&edge), addr.clone().recipient());
        Ok(addr)
    }

    /// Stops the node: closes its listener and links, and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        // Frames already queued (a job's end, for one) go out before the links close.
        let waits: Vec<_> = self
            .shared
            .lock()
            .links
            .values()
            .filter_map(|tx| {
                let (done, wait) = std::sync::mpsc::channel();
                tx.send(Outgoing::Flushed(done)).ok().map(|()| wait)
            })
            .collect();
        for w in waits {
            let _ = w.recv_timeout(Duration::from_secs(1));
        }
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn members_of(state: &State) -> Vec<Member> {
    let mut v: Vec<Member> = state
        .members
        .iter()
        .map(|(node, (listen, status, _))| Member {
            node: node.clone(),
            listen: listen.clone(),
            status: *status,
        })
        .collect();
    v.sort_by(|a, b| a.node.cmp(&b.node));
    v
}

fn handshake_config(cfg: &NodeConfig, local: SocketAddr) -> HandshakeConfig {
    HandshakeConfig {
        cluster: cfg.cluster.clone(),
        node: cfg.name.clone(),
        listen: cfg.advertise.clone().unwrap_or_else(|| local.to_string()),
        secret: cfg.secret.clone(),
        max_frame: cfg.max_frame,
        timeout: Duration::from_secs(5),
    }
}

async fn run(
    cfg: NodeConfig,
    local: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let hs = handshake_config(&cfg, local);
    let mut tick = tokio::time::interval(cfg.heartbeat);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(link(stream, hs.clone(), cfg.max_frame, shared.clone(), stop.clone(), None));
                }
            }
            _ = tick.tick() => {
                seq += 1;
                heartbeat(&cfg, &hs, seq, &shared, &stop);
            }
        }
    }
    // Dropping every link's sender ends its writer; readers end with the runtime.
    shared.lock().links.clear();
}

/// One heartbeat round: detect silent peers, send heartbeats, dial unlinked members.
fn heartbeat(
    cfg: &NodeConfig,
    hs: &HandshakeConfig,
    seq: u64,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    let mut dial: Vec<String> = Vec::new();
    let mut down: Vec<String> = Vec::new();
    {
        let mut st = shared.lock();
        let now = Instant::now();
        let mut changed = false;
        for (node, (_, status, seen)) in st.members.iter_mut() {
            if *status == Status::Up && now.duration_since(*seen) > cfg.failure_timeout {
                *status = Status::Down;
                changed = true;
                down.push(node.clone());
                tracing::warn!(peer = %node, "peer declared down");
            }
        }
        // A peer declared down loses its link: if it comes back, it does so through a new
        // handshake, as a fresh member.
        for node in &down {
            st.links.remove(node);
            if let Some((_, kill)) = st.kills.remove(node) {
                kill.notify_one();
            }
        }
        let members: Vec<(String, String)> = st
            .members
            .iter()
            .filter(|(_, (_, s, _))| *s == Status::Up)
            .map(|(n, (l, _, _))| (n.clone(), l.clone()))
            .collect();
        st.links.retain(|_, tx| {
            tx.send(Outgoing::Frame(Message::Heartbeat {
                seq,
                members: members.clone(),
            }))
            .is_ok()
        });
        // Members without a link are dialled, down ones too (that is how a partition heals).
        for (node, (listen, _, _)) in &st.members {
            if !st.links.contains_key(node) && *node != cfg.name {
                dial.push(listen.clone());
            }
        }
        if st.members.is_empty() {
            dial.extend(cfg.seeds.iter().cloned());
        }
        dial.retain(|a| !st.dialing.contains(a));
        for a in &dial {
            st.dialing.insert(a.clone());
        }
        if changed {
            shared.changed.notify_all();
        }
    }
    if !down.is_empty() {
        let up = shared.up_peers();
        for node in down {
            crate::job::on_node_down(shared, &cfg.name, &node, &up);
        }
    }
    for addr in dial {
        let (hs, shared, stop) = (hs.clone(), shared.clone(), stop.clone());
        let max = cfg.max_frame;
        let target = match &cfg.dial_via {
            Some(via) => via(&addr),
            None => addr.clone(),
        };
        tokio::spawn(async move {
            if let Ok(stream) = TcpStream::connect(&target).await {
                link(stream, hs, max, shared.clone(), stop, Some(addr.clone())).await;
            }
            shared.lock().dialing.remove(&addr);
        });
    }
}

/// Runs one link: handshake, then a writer fed by a channel and a reader that records
/// liveness and learns members.
async fn link(
    mut stream: TcpStream,
    hs: HandshakeConfig,
    max: u32,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    dialled: Option<String>,
) {
    let _ = stream.set_nodelay(true);
    let peer = match handshake(&mut stream, &hs).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "link refused");
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let tx_back = tx.clone();
    let Some((id, kill)) = register(&shared, &peer, tx) else {
        // Already linked to this node (both dialled at once): keep the older link.
        let _ = write_frame(&mut stream, &Message::Refused(RefuseReason::DuplicateNode)).await;
        return;
    };
    if let Some(a) = dialled {
        // Linked: a later dial to this address may happen once this link is gone.
        shared.lock().dialing.remove(&a);
    }
    tracing::info!(peer = %peer.node, "link up");
    let (mut r, mut w) = stream.into_split();
    let counters = shared
        .counters
        .entry(peer.node.clone())
        .or_default()
        .clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            match m {
                Outgoing::Frame(m) => match write_frame(&mut w, &m).await {
                    Ok(n) => counters.count(&m, n),
                    Err(_) => break,
                },
                Outgoing::Flushed(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = kill.notified() => {
                tracing::warn!(peer = %peer.node, "link to a peer declared down closed");
                break;
            }
            frame = read_frame(&mut r, max) => match frame {
                Ok(Message::Heartbeat { members, .. }) => seen(&shared, &peer, &hs.node, members),
                Ok(Message::Data { edge, event }) => {
                    seen(&shared, &peer, &hs.node, Vec::new());
                    let back = LinkSender { tx: tx_back.clone(), peer: peer.node.clone() };
                    match shared.inboxes.get(&(edge.job, edge.chain, edge.to)).map(|i| i.clone()) {
                        Some(inbox) => deliver(&inbox, edge, event, back),
                        None => {
                            tracing::warn!(peer = %peer.node, ?edge, "data for an unknown subtask; dropped");
                            back.send(Message::Credit { edge, n: 1 });
                        }
                    }
                }
                Ok(Message::Credit { edge, n }) => {
                    seen(&shared, &peer, &hs.node, Vec::new());
                    if let Some(r) = shared.returns.get(&channel_key(&edge)) {
                        r.do_send(CreditsReturned(n));
                    }
                }
                Ok(m @ (Message::JobStart { .. } | Message::Spawn { .. } | Message::Control { .. }
                    | Message::Report { .. } | Message::Decision { .. } | Message::Placement { .. }
                    | Message::JobEnd { .. } | Message::StatsRequest { .. } | Message::Stats { .. })) => {
                    seen(&shared, &peer, &hs.node, Vec::new());
                    let back = LinkSender { tx: tx_back.clone(), peer: peer.node.clone() };
                    crate::job::on_frame(&shared, &hs.node, &peer.node, m, back);
                }
                Ok(_) => seen(&shared, &peer, &hs.node, Vec::new()),
                Err(e) => {
                    tracing::warn!(peer = %peer.node, error = %e, "link closed");
                    break;
                }
            }
        }
    }
    writer.abort();
    let mut st = shared.lock();
    if st.kills.get(&peer.node).is_some_and(|(i, _)| *i == id) {
        st.kills.remove(&peer.node);
        st.links.remove(&peer.node);
    }
}

/// Registers an authenticated link (its id and close signal); `None` if the node is linked
/// already.
fn register(
    shared: &Arc<Shared>,
    peer: &Peer,
    tx: mpsc::UnboundedSender<Outgoing>,
) -> Option<(u64, Arc<tokio::sync::Notify>)> {
    let mut st = shared.lock();
    if st.links.contains_key(&peer.node) {
        return None;
    }
    st.next_link += 1;
    let id = st.next_link;
    let kill = Arc::new(tokio::sync::Notify::new());
    st.kills.insert(peer.node.clone(), (id, kill.clone()));
    st.links.insert(peer.node.clone(), tx);
    st.members.insert(
        peer.node.clone(),
        (peer.listen.clone(), Status::Up, Instant::now()),
    );
    shared.changed.notify_all();
    Some((id, kill))
}

/// A frame from `peer`: it is alive; members it knows that we do not are added (and dialled
/// at the next heartbeat).
fn seen(shared: &Arc<Shared>, peer: &Peer, me: &str, members: Vec<(String, String)>) {
    let mut st = shared.lock();
    let mut changed = false;
    let e = st
        .members
        .entry(peer.node.clone())
        .or_insert_with(|| (peer.listen.clone(), Status::Up, Instant::now()));
    if e.1 == Status::Down {
        changed = true;
    }
    e.1 = Status::Up;
    e.2 = Instant::now();
    for (node, listen) in members {
        if node != me && !st.members.contains_key(&node) {
            st.members
                .insert(node, (listen, Status::Up, Instant::now()));
            changed = true;
        }
    }
    if changed {
        shared.changed.notify_all();
    }
}
