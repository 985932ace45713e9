//! Membership: who the members are, whether they are up, which links are open, and the
//! rules by which a node becomes a member.
//!
//! Membership is verified, never taken on a peer's word: a node id another member mentions in
//! its heartbeat becomes a *candidate*, and a candidate becomes a member only through a link
//! whose handshake proved both the secret and that node id (the dialling side names the id it
//! expects at the address). Candidates are bounded in number and forgotten after a while; a
//! member that stays down is forgotten after `NodeBuilder::forget_after`. A peer declared down
//! loses its link, so it can only come back through a new handshake; its session (the frames
//! it has not acknowledged) ends only when its loss is decided — by this node for the jobs it
//! coordinates and for a coordinator of jobs it hosts, by their coordinator otherwise
//! (`hosting::on_node_silent`) — so a link that comes back resumes without losing a frame.
//! While a member is up, a second link claiming its id from another address is refused.

use crate::config::NodeConfig;
use crate::counters::LinkCounters;
use crate::handshake::{valid_node_id, Peer};
use crate::session::{LinkSender, Session};
use crate::wire::RefuseReason;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Candidates (node ids heard of but not verified) kept at once, at most.
const MAX_CANDIDATES: usize = 64;
/// Dials under way at once, at most.
const MAX_DIALS: usize = 16;

/// Whether a member is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Heard from within the failure timeout.
    Up,
    /// Silent for longer than the failure timeout, or its link closed and was not re-made.
    /// Its session is kept until its loss is decided (see `verdict`): a link made again
    /// resumes it.
    Down,
    /// It said it was shutting down (a `Leave` frame): not dialled again; it is forgotten
    /// as a down member is, or comes back through a new handshake.
    Left,
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

/// A link that is up now: its id and the signal that closes it.
pub(crate) struct LinkUp {
    pub(crate) id: u64,
    pub(crate) kill: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) members: HashMap<String, MemberState>,
    pub(crate) candidates: HashMap<String, Candidate>,
    /// Per verified member: the session that outlives its links (until it is declared down).
    pub(crate) sessions: HashMap<String, Arc<Session>>,
    /// Per linked peer: the link that is up now.
    pub(crate) links: HashMap<String, LinkUp>,
    /// Addresses being dialled now.
    pub(crate) dialing: std::collections::HashSet<String>,
    pub(crate) next_link: u64,
    /// This node is shutting down (it sent its peers `Leave`): it dials nobody, and links
    /// that close now are no news.
    pub(crate) leaving: bool,
}

/// The membership state and the signal of its changes.
#[derive(Default)]
pub(crate) struct Membership {
    state: Mutex<State>,
    changed: Condvar,
}

impl Membership {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes everyone waiting for a change ([`Membership::wait_for`]).
    pub(crate) fn notify(&self) {
        self.changed.notify_all();
    }

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

    /// A sender into the session with `peer`, if it has one (a member whose loss was not
    /// decided; frames wait in the session while its link is being made again, also while it
    /// is suspected down).
    pub(crate) fn link_sender(&self, peer: &str) -> Option<LinkSender> {
        self.lock().sessions.get(peer).map(|s| s.sender(peer))
    }

    /// A sender into every session.
    pub(crate) fn all_links(&self) -> Vec<LinkSender> {
        self.lock()
            .sessions
            .iter()
            .map(|(peer, s)| s.sender(peer))
            .collect()
    }

    /// The members that are up.
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

/// Marks silent members down, forgets long-down members and stale candidates; returns the
/// members just declared down.
pub(crate) fn detect(cfg: &NodeConfig, st: &mut State) -> Vec<String> {
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
    // A peer declared down loses its link, so that it is dialled afresh, but not its session:
    // a suspicion is not a decision (see `hosting::on_node_silent`). What was sent to it stays
    // kept until it acknowledges it on the next link, or until the node's loss is decided
    // (its session then ends), and its channels wait under their credits meanwhile.
    for node in &down {
        if let Some(l) = st.links.remove(node) {
            l.kill.notify_one();
        }
    }
    // A member forgotten has no session left either.
    let members = &st.members;
    st.sessions.retain(|node, s| {
        let keep = members.contains_key(node);
        if !keep {
            s.end();
        }
        keep
    });
    down
}

/// Ends the session with `node` and closes its link (what was queued for it is dropped).
pub(crate) fn drop_session(st: &mut State, node: &str) {
    if let Some(s) = st.sessions.remove(node) {
        s.end();
    }
    if let Some(l) = st.links.remove(node) {
        l.kill.notify_one();
    }
}

/// Declares `node` down at once (its session broke, or it restarted): the caller tells the
/// jobs, as for a node the failure detector declared down.
pub(crate) fn declare_down(st: &mut State, node: &str) {
    mark(st, node, Status::Down);
}

impl State {
    /// Whether member `node` left on purpose (see [`Status::Left`]).
    pub(crate) fn left(&self, node: &str) -> bool {
        self.members
            .get(node)
            .is_some_and(|m| m.status == Status::Left)
    }
}

/// `node` said it leaves (a `Leave` frame): as [`declare_down`], but it is not dialled again.
pub(crate) fn declare_left(st: &mut State, node: &str) {
    mark(st, node, Status::Left);
}

fn mark(st: &mut State, node: &str, status: Status) {
    if let Some(m) = st.members.get_mut(node) {
        m.status = status;
        m.down_since = Some(Instant::now());
    }
    drop_session(st, node);
}

/// The addresses to dial now, with the node id expected at each (`None` for a seed).
pub(crate) fn to_dial(cfg: &NodeConfig, st: &mut State) -> Vec<(String, Option<String>)> {
    let mut dial: Vec<(String, Option<String>)> = Vec::new();
    if st.leaving {
        return dial;
    }
    // Members without a link are dialled, down ones too (that is how a partition heals).
    // Between two live nodes only the one with the lower id dials: if both dialled at once,
    // each side could keep the link it registered first and refuse the other, so both links
    // would close — and frames already sent on them would be lost. Candidates are dialled by
    // the same rule; the other side learns of us and dials.
    for (node, m) in &st.members {
        if m.status == Status::Left {
            continue;
        }
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

/// A link that was registered.
pub(crate) struct Registered {
    /// The link's id.
    pub(crate) id: u64,
    /// The signal that closes it.
    pub(crate) kill: Arc<tokio::sync::Notify>,
    /// The session it carries.
    pub(crate) session: Arc<Session>,
    /// The peer restarted since its session began (another incarnation): the old process is
    /// gone, and the caller must tell the jobs it is lost.
    pub(crate) restarted: bool,
}

/// Registers an authenticated link (its id, close signal and session), or says why it is
/// refused: the node is linked already, or it is a live member whose links came from another
/// address. A peer with another incarnation than its session's restarted: its old session
/// and link end, and it starts a fresh one.
pub(crate) fn register(
    shared: &Membership,
    peer: &Peer,
    ip: Option<IpAddr>,
    counters: Arc<LinkCounters>,
) -> Result<Registered, RefuseReason> {
    let mut st = shared.lock();
    if let Some(m) = st.members.get(&peer.node) {
        if m.status == Status::Up && (m.listen != peer.listen || m.ip != ip) {
            return Err(RefuseReason::DuplicateNode);
        }
    }
    let restarted = st
        .sessions
        .get(&peer.node)
        .is_some_and(|s| s.incarnation != peer.incarnation);
    if restarted {
        tracing::warn!(peer = %peer.node, "peer restarted (another incarnation): its old process is lost");
        declare_down(&mut st, &peer.node);
    } else if st.links.contains_key(&peer.node) {
        return Err(RefuseReason::DuplicateNode);
    }
    st.next_link += 1;
    let id = st.next_link;
    let kill = Arc::new(tokio::sync::Notify::new());
    st.links.insert(
        peer.node.clone(),
        LinkUp {
            id,
            kill: kill.clone(),
        },
    );
    let session = st
        .sessions
        .entry(peer.node.clone())
        .or_insert_with(|| Session::start(&peer.node, peer.incarnation, counters))
        .clone();
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
    shared.notify();
    Ok(Registered {
        id,
        kill,
        session,
        restarted,
    })
}

/// The link `id` to `node` closed: it is no longer registered (its session stays).
pub(crate) fn unregister(shared: &Membership, node: &str, id: u64) {
    let mut st = shared.lock();
    if st.links.get(node).is_some_and(|l| l.id == id) {
        st.links.remove(node);
    }
}

/// A frame from `peer`: it is alive. Node ids it mentions that are not members become
/// candidates, to be verified by dialling them.
pub(crate) fn seen(shared: &Membership, peer: &Peer, me: &str, members: Vec<(String, String)>) {
    let mut st = shared.lock();
    let mut changed = false;
    if let Some(m) = st
        .members
        .get_mut(&peer.node)
        .filter(|m| m.status != Status::Left)
    {
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
        shared.notify();
    }
}
