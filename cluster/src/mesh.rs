//! The mesh behind a [`Node`](crate::Node): its listener, heartbeats, failure detector and
//! links. Each link runs a handshake, then a writer fed by a channel (counting what it writes)
//! and a reader that records liveness, learns members and hands job and data frames on. A peer
//! declared down loses its link, so it can only come back through a new handshake, as a
//! fresh member; members without a link — down ones included — are dialled every heartbeat,
//! one dial per address at a time, which is how a partition heals.

use crate::handshake::{handshake, HandshakeConfig, Peer};
use crate::hosting::{HostedEnd, HostedJob};
use crate::job::{CoordinatedJob, JobBuilder};
use crate::node::{Member, NodeConfig, Status};
use crate::remote::{
    channel_key, deliver, ChannelKey, CreditsReturned, Inbox, LinkSender, Outgoing,
};
use crate::wire::{encode, read_frame, write_frame, EdgeAddress, Message, RefuseReason};
use tokio::io::AsyncWriteExt;

/// Bytes of queued frames a link writes at once, at most (plus one frame).
const WRITE_BATCH: usize = 256 * 1024;
/// Channels whose credits one write merges, at most.
const MAX_MERGED_CREDITS: usize = 64;
use actix::prelude::Recipient;
use dashmap::DashMap;
use riffle_actors::Decision;
use riffle_framework::TaskId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};

/// State shared between the node's runtime and its blocking API.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Condvar,
    /// Local subtasks that receive remote channels: (job, chain, subtask) → inbox.
    pub(crate) inboxes: DashMap<(u64, u32, u32), Inbox>,
    /// Remote mailboxes waiting for credits, by channel.
    pub(crate) returns: DashMap<ChannelKey, Recipient<CreditsReturned>>,
    /// Registered job builders.
    pub(crate) builders: HashMap<String, JobBuilder>,
    /// Where coordinated jobs keep their checkpoints (overrides the job's setting).
    pub(crate) checkpoint_dir: Option<std::path::PathBuf>,
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
    /// Blocks until `check(state, deadline passed)` gives an answer; it is asked again on
    /// every change of the state, and must answer once the deadline has passed.
    pub(crate) fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&mut State, bool) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(t) = check(&mut g, Instant::now() >= deadline) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            g = self
                .changed
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

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
pub(crate) struct State {
    pub(crate) members: HashMap<String, (String, Status, Instant)>,
    pub(crate) links: HashMap<String, mpsc::UnboundedSender<Outgoing>>,
    /// Per linked peer: the link's id and the signal that closes it.
    pub(crate) kills: HashMap<String, (u64, Arc<tokio::sync::Notify>)>,
    /// Addresses being dialled now.
    pub(crate) dialing: std::collections::HashSet<String>,
    pub(crate) next_link: u64,
    /// Hosted jobs that ended, oldest first, until [`Node::wait_hosted`] takes them.
    pub(crate) ended: std::collections::VecDeque<HostedEnd>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
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

    pub(crate) fn up_peers(&self) -> Vec<String> {
        self.lock()
            .members
            .iter()
            .filter(|(_, (_, s, _))| *s == Status::Up)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

pub(crate) fn members_of(state: &State) -> Vec<Member> {
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

pub(crate) async fn run(
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
        // Between two live members only the one with the lower id dials: if both dialled at
        // once, each side could keep the link it registered first and refuse the other, so
        // both links would close — and frames already sent on them would be lost.
        for (node, (listen, status, _)) in &st.members {
            let mine = cfg.name < *node || *status == Status::Down;
            if !st.links.contains_key(node) && *node != cfg.name && mine {
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
            crate::hosting::on_node_down(shared, &cfg.name, &node, &up);
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
    let counters_peer = peer.node.clone();
    let counters = shared
        .counters
        .entry(peer.node.clone())
        .or_default()
        .clone();
    let writer = tokio::spawn(async move {
        // Frames queued together go out in one write (fewer syscalls under load); a flush
        // request is answered once everything queued before it is written.
        // Credits returned for one channel in the same batch go out as one frame.
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut flushed = Vec::new();
        let mut credits: Vec<(ChannelKey, EdgeAddress, u32)> = Vec::new();
        let put = |m: &Message, buf: &mut Vec<u8>| {
            let before = buf.len();
            if encode(m, buf).is_err() {
                tracing::error!(peer = %counters_peer, "cannot encode a frame; dropped");
                buf.truncate(before);
            } else {
                counters.count(m, buf.len() - before);
            }
        };
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Outgoing::Frame(Message::Credit { edge, n }) => {
                        let key = channel_key(&edge);
                        match credits.iter_mut().find(|c| c.0 == key) {
                            Some(c) => c.2 = c.2.saturating_add(n),
                            None => credits.push((key, edge, n)),
                        }
                    }
                    Outgoing::Frame(m) => put(&m, &mut buf),
                    Outgoing::Flushed(done) => flushed.push(done),
                }
                if buf.len() < WRITE_BATCH && credits.len() < MAX_MERGED_CREDITS {
                    next = rx.try_recv().ok();
                }
            }
            for (_, edge, n) in credits.drain(..) {
                put(&Message::Credit { edge, n }, &mut buf);
            }
            if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                break;
            }
            buf.clear();
            for done in flushed.drain(..) {
                let _ = done.send(());
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
                    crate::hosting::on_frame(&shared, &hs.node, &peer.node, m, back);
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
