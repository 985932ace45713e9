//! Sessions: what a node sends a peer survives the TCP connection it travels on.
//!
//! A node keeps one *session* per verified member, from the member's first link until it is
//! declared down. Everything sent to the peer goes into the session, not into a connection:
//! the session's writer numbers every *sequenced* frame (every frame but heartbeats, acks and
//! the resume exchange; [`Message::sequenced`]), writes it on the current link, and keeps it
//! until the peer acknowledges it. The peer counts the sequenced frames it received and
//! handled, and says so with `Ack { received }` in its writes (at least once per heartbeat).
//! When a link breaks, frames queued meanwhile stay in the session; when a link is made
//! again, both sides start it with `Resume { session, peer_session, received }` and each
//! resends what the other has not received, in order — so a reset that heals within the
//! failure timeout costs a pause, never a frame, and nothing needs a recovery. Data frames are
//! bounded by the channels' credits, so what a session keeps is bounded by the credit windows
//! plus the control frames of one ack's delay.
//!
//! A session is continued only if both sides kept it: each side names its own session id and
//! the peer's as it knows it. If the peer restarted (another incarnation in its hello) or
//! replaced its session (it declared this node down in the meantime), frames may have been lost
//! either way, so the session is *broken*: the side that kept an established session declares
//! the peer down (its jobs recover, as for a lost node) and starts a fresh session, and the
//! link is made again. The rule is [`decide`], the same on both sides.

use crate::remote::{channel_key, ChannelKey, LinkCounters, LinkSender, Outgoing};
use crate::secure::Sealer;
use crate::wire::{encode, EdgeAddress, Message};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Bytes of queued frames a link writes at once, at most (plus one frame).
const WRITE_BATCH: usize = 256 * 1024;
/// Channels whose credits one write merges, at most.
const MAX_MERGED_CREDITS: usize = 64;

/// A random number (derived from the clock if randomness fails: it still differs from the
/// previous one) — for session ids and process incarnations.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        b = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            .to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// The resume exchange as one side sent it: `Resume { session, peer_session, received }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResumeState {
    /// The sender's session id (never 0).
    pub(crate) session: u64,
    /// The receiver's session id as the sender knows it (0: unknown).
    pub(crate) peer_session: u64,
    /// Sequenced frames of the receiver's that the sender has received.
    pub(crate) received: u64,
}

/// What one side keeps of a session, as [`decide`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    /// This side's session id.
    pub(crate) session: u64,
    /// The peer's session id (0: never linked).
    pub(crate) peer_session: u64,
    /// Sequenced frames this side has numbered so far.
    pub(crate) sent: u64,
    /// The first sequenced frame still kept (not acknowledged), or `sent + 1` if none is.
    pub(crate) first_kept: u64,
}

/// How a link made again goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Both sides kept the session: resend from frame `from + 1`.
    Resume {
        /// Frames the peer has received.
        from: u64,
    },
    /// Frames may be lost: the session cannot continue.
    Broken,
}

/// Whether the session continues, given what this side kept and what the peer sent. Both
/// sides decide the same: each must know the other's session id or not know one yet, and
/// the peer must claim no more than this side sent and no less than it still keeps.
pub(crate) fn decide(kept: Kept, theirs: ResumeState) -> Verdict {
    let peer_ok = kept.peer_session == 0 || kept.peer_session == theirs.session;
    let me_ok = theirs.peer_session == 0 || theirs.peer_session == kept.session;
    // A peer that does not know this session cannot have received anything of it.
    let count_ok = (theirs.peer_session != 0 || theirs.received == 0)
        && theirs.received <= kept.sent
        && theirs.received + 1 >= kept.first_kept;
    if theirs.session != 0 && peer_ok && me_ok && count_ok {
        Verdict::Resume {
            from: theirs.received,
        }
    } else {
        Verdict::Broken
    }
}

/// The sequenced frames sent and not acknowledged yet, encoded.
#[derive(Default)]
struct Replay {
    /// Sequenced frames numbered so far (the next gets `sent + 1`).
    sent: u64,
    /// `(sequence number, encoded frame)`, in order.
    frames: VecDeque<(u64, Vec<u8>)>,
    /// Bytes in `frames`.
    bytes: usize,
    /// Flush requests, each answered once the peer acknowledged the frames numbered up to
    /// its sequence number.
    waiters: Vec<(u64, std::sync::mpsc::Sender<()>)>,
}

impl Replay {
    fn first_kept(&self) -> u64 {
        self.frames.front().map_or(self.sent + 1, |f| f.0)
    }

    /// Forgets the frames the peer has received (`received` of them), and answers the flush
    /// requests they cover.
    fn trim(&mut self, received: u64) {
        while self.frames.front().is_some_and(|f| f.0 <= received) {
            if let Some((_, f)) = self.frames.pop_front() {
                self.bytes -= f.len();
            }
        }
        let acked = self.first_kept().saturating_sub(1);
        self.waiters.retain(|(upto, done)| {
            let answered = *upto <= acked;
            if answered {
                let _ = done.send(());
            }
            !answered
        });
    }

    /// Answers `done` once the peer has every frame numbered so far.
    fn flushed_when_acked(&mut self, done: std::sync::mpsc::Sender<()>) {
        self.waiters.push((self.sent, done));
        self.trim(0);
    }

    /// The frames after the first `received`, one after the other.
    fn since(&self, received: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, f) in self.frames.iter().filter(|f| f.0 > received) {
            out.extend_from_slice(f);
        }
        out
    }
}

/// A connection handed to a session's writer: its write half, its sealer when encrypted, and
/// how many sequenced frames the peer has received.
pub(crate) struct Conn {
    pub(crate) w: OwnedWriteHalf,
    pub(crate) sealer: Option<Sealer>,
    pub(crate) from: u64,
}

/// Figures of one session ([`crate::Node::sessions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// The peer's node id.
    pub peer: String,
    /// Links this session ran on (1 for a session that never broke).
    pub links: u64,
    /// Sequenced frames resent after links were made again.
    pub resent: u64,
    /// Sequenced frames sent and not acknowledged yet.
    pub unacked: u64,
    /// Bytes of them.
    pub unacked_bytes: u64,
}

/// One session with a peer (see the module docs).
pub(crate) struct Session {
    /// This side's id for the session: random, never 0.
    pub(crate) id: u64,
    /// The peer's incarnation when the session started.
    pub(crate) incarnation: u64,
    /// The peer's session id (0 until the first resume exchange).
    peer_session: AtomicU64,
    tx: mpsc::UnboundedSender<Outgoing>,
    conns: mpsc::UnboundedSender<Conn>,
    /// Sequenced frames received from the peer and handled.
    received: Arc<AtomicU64>,
    replay: Arc<Mutex<Replay>>,
    links: AtomicU64,
    resent: Arc<AtomicU64>,
}

fn lock(r: &Mutex<Replay>) -> MutexGuard<'_, Replay> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// A fresh session with `peer` (incarnation `incarnation`); its writer runs on the current
    /// tokio runtime until the session is dropped.
    pub(crate) fn start(peer: &str, incarnation: u64, counters: Arc<LinkCounters>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conns, conn_rx) = mpsc::unbounded_channel();
        let mut id = 0;
        while id == 0 {
            id = random_u64();
        }
        let s = Arc::new(Session {
            id,
            incarnation,
            peer_session: AtomicU64::new(0),
            tx,
            conns,
            received: Arc::default(),
            replay: Arc::default(),
            links: AtomicU64::new(0),
            resent: Arc::default(),
        });
        let writer = Writer {
            rx,
            conns: conn_rx,
            replay: s.replay.clone(),
            received: s.received.clone(),
            resent: s.resent.clone(),
            counters,
            peer: peer.to_string(),
        };
        tokio::spawn(writer.run());
        s
    }

    /// A sender into this session.
    pub(crate) fn sender(&self, peer: &str) -> LinkSender {
        LinkSender {
            tx: self.tx.clone(),
            peer: peer.to_string(),
        }
    }

    /// The raw queue into this session (heartbeats, flush requests).
    pub(crate) fn queue(&self) -> &mpsc::UnboundedSender<Outgoing> {
        &self.tx
    }

    /// What this side sends first on a new link.
    pub(crate) fn resume_frame(&self) -> Message {
        Message::Resume {
            session: self.id,
            peer_session: self.peer_session.load(Ordering::Acquire),
            received: self.received.load(Ordering::Acquire),
        }
    }

    /// Whether a session with this id of the peer's ever ran on a link (it was established).
    pub(crate) fn established(&self) -> bool {
        self.peer_session.load(Ordering::Acquire) != 0
    }

    /// Takes the peer's `Resume`: the verdict, and on `Resume` the peer's session id is
    /// adopted and what it received is forgotten here.
    pub(crate) fn on_resume(&self, theirs: ResumeState) -> Verdict {
        let mut r = lock(&self.replay);
        let kept = Kept {
            session: self.id,
            peer_session: self.peer_session.load(Ordering::Acquire),
            sent: r.sent,
            first_kept: r.first_kept(),
        };
        let v = decide(kept, theirs);
        if let Verdict::Resume { from } = v {
            self.peer_session.store(theirs.session, Ordering::Release);
            r.trim(from);
        }
        v
    }

    /// Hands a connection whose resume exchange succeeded to the writer.
    pub(crate) fn attach(&self, conn: Conn) {
        self.links.fetch_add(1, Ordering::Relaxed);
        let _ = self.conns.send(conn);
    }

    /// A sequenced frame from the peer was handled.
    pub(crate) fn on_received(&self) {
        self.received.fetch_add(1, Ordering::AcqRel);
    }

    /// The peer acknowledged the first `received` sequenced frames.
    pub(crate) fn on_ack(&self, received: u64) {
        lock(&self.replay).trim(received);
    }

    /// This session's figures.
    pub(crate) fn stats(&self, peer: &str) -> SessionStats {
        let r = lock(&self.replay);
        SessionStats {
            peer: peer.to_string(),
            links: self.links.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            unacked: r.frames.len() as u64,
            unacked_bytes: r.bytes as u64,
        }
    }
}

/// The writing side of a session: numbers and keeps sequenced frames, writes them on the
/// current connection, resends what a new connection's peer has not received.
struct Writer {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    conns: mpsc::UnboundedReceiver<Conn>,
    replay: Arc<Mutex<Replay>>,
    received: Arc<AtomicU64>,
    resent: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
    peer: String,
}

/// What one round of the writer gathered from its queue (flush requests are answered once
/// the peer acknowledged everything before them, so a node that stops after a flush knows
/// its last frames arrived).
#[derive(Default)]
struct Gathered {
    buf: Vec<u8>,
    flushed: Vec<std::sync::mpsc::Sender<()>>,
    credits: Vec<(ChannelKey, EdgeAddress, u32)>,
}

impl Writer {
    async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut acked = 0u64;
        let mut sealed = Vec::new();
        loop {
            tokio::select! {
                biased;
                c = self.conns.recv() => {
                    let Some(c) = c else { break };
                    let again = lock(&self.replay).since(c.from);
                    let frames = lock(&self.replay).frames.iter().filter(|f| f.0 > c.from).count();
                    self.resent.fetch_add(frames as u64, Ordering::Relaxed);
                    conn = Some(c);
                    if !again.is_empty() {
                        write(&mut conn, &again, &mut sealed).await;
                    }
                }
                m = self.rx.recv() => {
                    let Some(first) = m else { break };
                    let mut g = self.gather(first, conn.is_some());
                    let received = self.received.load(Ordering::Acquire);
                    if received > acked && conn.is_some() {
                        self.put(&Message::Ack { received }, &mut g.buf, false);
                        acked = received;
                    }
                    if !g.flushed.is_empty() {
                        let mut r = lock(&self.replay);
                        for done in g.flushed.drain(..) {
                            r.flushed_when_acked(done);
                        }
                    }
                    if g.buf.is_empty() {
                        continue;
                    }
                    if write(&mut conn, &g.buf, &mut sealed).await {
                        self.counters.wrote(g.buf.len());
                    } else {
                        // The link broke: what it did not take is kept and resent on the next.
                        acked = 0;
                    }
                }
            }
        }
    }

    /// Takes `first` and whatever else is queued (up to a write's worth): sequenced frames
    /// are numbered and kept, credits for one channel merged; unsequenced frames are written
    /// only on a live connection.
    fn gather(&mut self, first: Outgoing, live: bool) -> Gathered {
        let mut g = Gathered::default();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Outgoing::Frame(Message::Credit { edge, n }) => {
                    let key = channel_key(&edge);
                    match g.credits.iter_mut().find(|c| c.0 == key) {
                        Some(c) => c.2 = c.2.saturating_add(n),
                        None => g.credits.push((key, edge, n)),
                    }
                }
                Outgoing::Frame(m) if m.sequenced() => self.put(&m, &mut g.buf, true),
                Outgoing::Frame(m) => {
                    if live {
                        self.put(&m, &mut g.buf, false);
                    }
                }
                Outgoing::Flushed(done) => g.flushed.push(done),
            }
            if g.buf.len() < WRITE_BATCH && g.credits.len() < MAX_MERGED_CREDITS {
                next = self.rx.try_recv().ok();
            }
        }
        for (_, edge, n) in std::mem::take(&mut g.credits) {
            self.put(&Message::Credit { edge, n }, &mut g.buf, true);
        }
        if !live {
            g.buf.clear(); // kept in the replay; written when a link is made again
        }
        g
    }

    /// Encodes `m` onto `buf`; a sequenced frame is also numbered and kept.
    fn put(&self, m: &Message, buf: &mut Vec<u8>, sequenced: bool) {
        let before = buf.len();
        if encode(m, buf).is_err() {
            tracing::error!(peer = %self.peer, "cannot encode a frame; dropped");
            buf.truncate(before);
            return;
        }
        self.counters.count(m, buf.len() - before);
        if sequenced {
            let frame = buf[before..].to_vec();
            let mut r = lock(&self.replay);
            r.sent += 1;
            let seq = r.sent;
            r.bytes += frame.len();
            r.frames.push_back((seq, frame));
        }
    }
}

/// Writes `bytes` on the connection (sealed when it is encrypted); `false` (and the
/// connection dropped) if it broke or there is none.
async fn write(conn: &mut Option<Conn>, bytes: &[u8], sealed: &mut Vec<u8>) -> bool {
    let Some(c) = conn.as_mut() else {
        return false;
    };
    let out: &[u8] = match c.sealer.as_mut() {
        Some(s) => {
            sealed.clear();
            if s.seal(bytes, sealed).is_err() {
                *conn = None;
                return false;
            }
            sealed
        }
        None => bytes,
    };
    if c.w.write_all(out).await.is_err() || c.w.flush().await.is_err() {
        *conn = None;
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(session: u64, peer_session: u64, sent: u64, first_kept: u64) -> Kept {
        Kept {
            session,
            peer_session,
            sent,
            first_kept,
        }
    }

    fn theirs(session: u64, peer_session: u64, received: u64) -> ResumeState {
        ResumeState {
            session,
            peer_session,
            received,
        }
    }

    #[test]
    fn a_first_link_starts_both_sessions() {
        // Nothing sent yet, or frames queued before the first link: all of them go.
        assert_eq!(
            decide(kept(1, 0, 0, 1), theirs(2, 0, 0)),
            Verdict::Resume { from: 0 }
        );
        assert_eq!(
            decide(kept(1, 0, 5, 1), theirs(2, 0, 0)),
            Verdict::Resume { from: 0 }
        );
    }

    #[test]
    fn a_link_made_again_resends_what_the_peer_did_not_receive() {
        assert_eq!(
            decide(kept(1, 2, 10, 7), theirs(2, 1, 8)),
            Verdict::Resume { from: 8 }
        );
        // Everything kept was received: nothing to resend.
        assert_eq!(
            decide(kept(1, 2, 10, 11), theirs(2, 1, 10)),
            Verdict::Resume { from: 10 }
        );
        // The first exchange broke half way: one side learnt the other's id, not back.
        assert_eq!(
            decide(kept(1, 0, 3, 1), theirs(2, 1, 0)),
            Verdict::Resume { from: 0 }
        );
        assert_eq!(
            decide(kept(1, 2, 3, 1), theirs(2, 0, 0)),
            Verdict::Resume { from: 0 }
        );
    }

    #[test]
    fn a_replaced_or_restarted_session_is_broken_on_both_sides() {
        // The peer replaced its session (it declared us down): we kept 2, it sends 3.
        assert_eq!(decide(kept(1, 2, 10, 7), theirs(3, 0, 0)), Verdict::Broken);
        // ... and the peer, fresh, hears of our old session of it.
        assert_eq!(decide(kept(3, 0, 0, 1), theirs(1, 2, 8)), Verdict::Broken);
        // The peer knows another session of ours.
        assert_eq!(decide(kept(1, 2, 10, 7), theirs(2, 9, 8)), Verdict::Broken);
    }

    #[test]
    fn impossible_counts_are_broken() {
        // The peer claims more than we sent.
        assert_eq!(decide(kept(1, 2, 10, 7), theirs(2, 1, 11)), Verdict::Broken);
        // The peer claims less than we still keep (we forgot frames it never got).
        assert_eq!(decide(kept(1, 2, 10, 7), theirs(2, 1, 5)), Verdict::Broken);
        // A peer that does not know this session cannot have received from it.
        assert_eq!(decide(kept(1, 0, 10, 1), theirs(2, 0, 3)), Verdict::Broken);
        // A session id of 0 is no session.
        assert_eq!(decide(kept(1, 0, 0, 1), theirs(0, 0, 0)), Verdict::Broken);
    }

    #[test]
    fn the_replay_forgets_only_what_was_received() {
        let mut r = Replay::default();
        for i in 1..=5u8 {
            r.sent += 1;
            r.bytes += 1;
            r.frames.push_back((r.sent, vec![i]));
        }
        r.trim(2);
        assert_eq!(r.first_kept(), 3);
        assert_eq!(r.since(3), vec![4, 5]);
        assert_eq!(r.bytes, 3);
        r.trim(5);
        assert_eq!(r.first_kept(), 6);
        assert!(r.since(0).is_empty());
    }
}
