//! The mesh behind a [`Node`](crate::Node): its listener, heartbeats, failure detector and
//! membership. Each link ([`crate::link`]) runs a handshake, then a writer and a reader.
//!
//! Membership is verified, never taken on a peer's word: a node id another member mentions in
//! its heartbeat becomes a *candidate*, and a candidate becomes a member only through a link
//! whose handshake proved both the secret and that node id (the dialling side names the id it
//! expects at the address). Candidates are bounded in number and forgotten after a while; a
//! member that stays down is forgotten after [`NodeBuilder::forget_after`]. A peer declared
//! down loses its link, so it can only come back through a new handshake, as a fresh member;
//! while a member is up, a second link claiming its id from another address is refused.
//! Members without a link — down ones included — are dialled every heartbeat, one dial per
//! address at a time, which is how a partition heals.
//!
//! [`NodeBuilder::forget_after`]: crate::NodeBuilder::forget_after

use crate::guard::{Admission, Ticket};
use crate::handshake::{valid_node_id, HandshakeConfig, Peer, Role};
use crate::hosting::{HostedEnd, HostedJob};
use crate::job::{CoordinatedJob, JobBuilder};
use crate::link::link;
use crate::node::{Member, NodeConfig, Status};
use crate::remote::{ChannelKey, CreditsReturned, Inbox, LinkSender, Outgoing};
use crate::wire::{Message, RefuseReason};
use actix::prelude::Recipient;
use dashmap::DashMap;
use riffle_actors::Decision;
use riffle_framework::TaskId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};

/// Candidates (node ids heard of but not verified) kept at once, at most.
const MAX_CANDIDATES: usize = 64;
/// Dials under way at once, at most.
const MAX_DIALS: usize = 16;
/// How long a dial may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node refused, since it started (see [`crate::Node::refusals`]).
#[derive(Default)]
pub(crate) struct RefusedCounts {
    /// Handshakes that failed (bad secret, malformed, timed out, refused by us).
    pub(crate) handshakes: AtomicU64,
    /// Authenticated links refused at registration (own id, id linked elsewhere).
    pub(crate) links: AtomicU64,
    /// Job frames from a node without authority over the job.
    pub(crate) frames: AtomicU64,
    /// Links closed because the peer held more memory than its budget.
    pub(crate) over_budget: AtomicU64,
}

impl RefusedCounts {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

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
    /// Admission control of incoming connections.
    pub(crate) admission: Option<Arc<Admission>>,
    /// What this node refused.
    pub(crate) refused: RefusedCounts,
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
    pub(crate) fn count(&self, m: &Message, bytes: usize) {
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

/// A verified member: one that linked with this node through a handshake.
#[derive(Clone, Debug)]
pub(crate) struct MemberState {
    pub(crate) listen: String,
    pub(crate) status: Status,
    /// When a frame last arrived from it.
    pub(crate) seen: Instant,
    /// The IP address its link came from.
    pub(crate) ip: Option<IpAddr>,
    /// Since when it is down.
    pub(crate) down_since: Option<Instant>,
}

/// A node id a member mentioned, not verified yet.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    listen: String,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) members: HashMap<String, MemberState>,
    pub(crate) candidates: HashMap<String, Candidate>,
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
            .filter(|(_, m)| m.status == Status::Up)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

pub(crate) fn members_of(state: &State) -> Vec<Member> {
    let mut v: Vec<Member> = state
        .members
        .iter()
        .map(|(node, m)| Member {
            node: node.clone(),
            listen: m.listen.clone(),
            status: m.status,
        })
        .collect();
    v.sort_by(|a, b| a.node.cmp(&b.node));
    v
}

pub(crate) fn handshake_config(cfg: &NodeConfig, local: SocketAddr) -> Option<HandshakeConfig> {
    Some(HandshakeConfig {
        cluster: cfg.cluster.clone(),
        node: cfg.name.clone(),
        listen: cfg.advertise.clone().unwrap_or_else(|| local.to_string()),
        secret: cfg.secret.clone()?,
        encrypt: cfg.encrypt,
        timeout: cfg.handshake_timeout,
    })
}

/// Refuses a connection before its handshake: one frame, written only if the socket takes
/// it at once, then the socket closes.
fn turn_away(stream: TcpStream, reason: RefuseReason) {
    let mut buf = Vec::new();
    if crate::wire::encode(&Message::Refused(reason), &mut buf).is_ok() {
        let _ = stream.try_write(&buf);
    }
}

pub(crate) async fn run(
    cfg: NodeConfig,
    hs: HandshakeConfig,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => accept(stream, from, &cfg, &hs, &shared, &stop),
                Err(e) => {
                    // Out of files, most likely: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tick.tick() => {
                seq += 1;
                heartbeat(&cfg, &hs, seq, &shared, &stop);
            }
        }
    }
    // Dropping every link's sender ends its writer; readers end with the runtime.
    shared.lock().links.clear();
}

/// An incoming connection: a place from admission control, then the link.
fn accept(
    stream: TcpStream,
    from: SocketAddr,
    cfg: &NodeConfig,
    hs: &HandshakeConfig,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    let ticket: Option<Ticket> = match &shared.admission {
        Some(adm) => match adm.admit(from.ip()) {
            Ok(t) => Some(t),
            Err(reason) => {
                tracing::debug!(%from, ?reason, "connection turned away");
                return turn_away(stream, reason);
            }
        },
        None => None,
    };
    tokio::spawn(link(
        stream,
        hs.clone(),
        Role::Responder,
        ticket,
        cfg.max_frame,
        cfg.link_budget,
        shared.clone(),
        stop.clone(),
        None,
    ));
}

/// Marks silent members down, forgets long-down members and stale candidates; returns the
/// members just declared down.
fn detect(cfg: &NodeConfig, st: &mut State) -> Vec<String> {
    let now = Instant::now();
    let mut down = Vec::new();
    for (node, m) in st.members.iter_mut() {
        if m.status == Status::Up && now.duration_since(m.seen) > cfg.failure_timeout {
            m.status = Status::Down;
            m.down_since = Some(now);
            down.push(node.clone());
            tracing::warn!(peer = %node, "peer declared down");
        }
    }
    st.members.retain(|node, m| {
        let keep = m
            .down_since
            .is_none_or(|t| now.duration_since(t) < cfg.forget_after);
        if !keep {
            tracing::info!(peer = %node, "member down for too long; forgotten");
        }
        keep
    });
    let ttl = cfg.failure_timeout * 5;
    st.candidates
        .retain(|_, c| now.duration_since(c.since) < ttl);
    // A peer declared down loses its link: if it comes back, it does so through a new
    // handshake, as a fresh member.
    for node in &down {
        st.links.remove(node);
        if let Some((_, kill)) = st.kills.remove(node) {
            kill.notify_one();
        }
    }
    down
}

/// The addresses to dial now, with the node id expected at each (`None` for a seed).
fn to_dial(cfg: &NodeConfig, st: &mut State) -> Vec<(String, Option<String>)> {
    let mut dial: Vec<(String, Option<String>)> = Vec::new();
    // Members without a link are dialled, down ones too (that is how a partition heals).
    // Between two live nodes only the one with the lower id dials: if both dialled at once,
    // each side could keep the link it registered first and refuse the other, so both links
    // would close — and frames already sent on them would be lost. Candidates are dialled by
    // the same rule; the other side learns of us and dials.
    for (node, m) in &st.members {
        let mine = cfg.name < *node || m.status == Status::Down;
        if !st.links.contains_key(node) && mine {
            dial.push((m.listen.clone(), Some(node.clone())));
        }
    }
    for (node, c) in &st.candidates {
        if cfg.name < *node && !st.links.contains_key(node) {
            dial.push((c.listen.clone(), Some(node.clone())));
        }
    }
    if st.members.is_empty() {
        dial.extend(cfg.seeds.iter().map(|s| (s.clone(), None)));
    }
    dial.retain(|(a, _)| !st.dialing.contains(a));
    dial.truncate(MAX_DIALS.saturating_sub(st.dialing.len()));
    for (a, _) in &dial {
        st.dialing.insert(a.clone());
    }
    dial
}

/// One heartbeat round: detect silent peers, send heartbeats, dial unlinked members.
fn heartbeat(
    cfg: &NodeConfig,
    hs: &HandshakeConfig,
    seq: u64,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    let (down, dial) = {
        let mut st = shared.lock();
        let down = detect(cfg, &mut st);
        let members: Vec<(String, String)> = st
            .members
            .iter()
            .filter(|(_, m)| m.status == Status::Up)
            .map(|(n, m)| (n.clone(), m.listen.clone()))
            .collect();
        st.links.retain(|_, tx| {
            tx.send(Outgoing::Frame(Message::Heartbeat {
                seq,
                members: members.clone(),
            }))
            .is_ok()
        });
        let dial = to_dial(cfg, &mut st);
        if !down.is_empty() {
            shared.changed.notify_all();
        }
        (down, dial)
    };
    if !down.is_empty() {
        let up = shared.up_peers();
        for node in down {
            crate::hosting::on_node_down(shared, &cfg.name, &node, &up);
        }
    }
    for (addr, expect) in dial {
        let (hs, shared, stop) = (hs.clone(), shared.clone(), stop.clone());
        let (max, budget) = (cfg.max_frame, cfg.link_budget);
        let target = match &cfg.dial_via {
            Some(via) => via(&addr),
            None => addr.clone(),
        };
        tokio::spawn(async move {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target));
            if let Ok(Ok(stream)) = connected.await {
                let role = Role::Initiator { expect };
                let dialled = Some(addr.clone());
                link(
                    stream,
                    hs,
                    role,
                    None,
                    max,
                    budget,
                    shared.clone(),
                    stop,
                    dialled,
                )
                .await;
            }
            shared.lock().dialing.remove(&addr);
        });
    }
}

/// Registers an authenticated link (its id and close signal), or says why it is refused: the
/// node is linked already, or it is a live member whose links came from another address.
pub(crate) fn register(
    shared: &Arc<Shared>,
    peer: &Peer,
    ip: Option<IpAddr>,
    tx: mpsc::UnboundedSender<Outgoing>,
) -> Result<(u64, Arc<tokio::sync::Notify>), RefuseReason> {
    let mut st = shared.lock();
    if st.links.contains_key(&peer.node) {
        return Err(RefuseReason::DuplicateNode);
    }
    if let Some(m) = st.members.get(&peer.node) {
        if m.status == Status::Up && (m.listen != peer.listen || m.ip != ip) {
            return Err(RefuseReason::DuplicateNode);
        }
    }
    st.next_link += 1;
    let id = st.next_link;
    let kill = Arc::new(tokio::sync::Notify::new());
    st.kills.insert(peer.node.clone(), (id, kill.clone()));
    st.links.insert(peer.node.clone(), tx);
    st.candidates.remove(&peer.node);
    st.members.insert(
        peer.node.clone(),
        MemberState {
            listen: peer.listen.clone(),
            status: Status::Up,
            seen: Instant::now(),
            ip,
            down_since: None,
        },
    );
    shared.changed.notify_all();
    Ok((id, kill))
}

/// A frame from `peer`: it is alive. Node ids it mentions that are not members become
/// candidates, to be verified by dialling them.
pub(crate) fn seen(shared: &Arc<Shared>, peer: &Peer, me: &str, members: Vec<(String, String)>) {
    let mut st = shared.lock();
    let mut changed = false;
    if let Some(m) = st.members.get_mut(&peer.node) {
        if m.status == Status::Down {
            changed = true;
        }
        m.status = Status::Up;
        m.down_since = None;
        m.seen = Instant::now();
    }
    for (node, listen) in members {
        if node == me || st.members.contains_key(&node) || st.candidates.contains_key(&node) {
            continue;
        }
        if st.candidates.len() >= MAX_CANDIDATES || !valid_node_id(&node) || listen.len() > 256 {
            continue;
        }
        let since = Instant::now();
        st.candidates.insert(node, Candidate { listen, since });
    }
    if changed {
        shared.changed.notify_all();
    }
}
