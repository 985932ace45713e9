//! Sessions: what a node sends a peer survives the TCP connection it travels on.
//!
//! A node keeps one *session* per verified member, from the member's first link until it is
//! declared down. Everything sent to the peer goes into the session, not into a connection:
//! the session's writer numbers every *sequenced* frame (every frame but heartbeats, acks and
//! the resume exchange; [`Message::sequenced`]), writes it on the current link, and keeps it
//! until the peer acknowledges it. `Data` and `Credit` frames sent while the writer is idle
//! are numbered, kept and written by the sending thread itself, with a non-blocking write
//! (see [`Line`]): a record crossing to another node then wakes no thread on its way out,
//! which is most of a lightly loaded link's latency on a machine whose wake-ups are slow.
//! The peer counts the sequenced frames it received and
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

use crate::counters::LinkCounters;
use crate::secure::Sealer;
use crate::wire::{channel_key, encode, ChannelKey, EdgeAddress, Message};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Bytes of queued frames a link writes at once, at most (plus one frame).
const WRITE_BATCH: usize = 256 * 1024;
/// Channels whose credits one write merges, at most.
const MAX_MERGED_CREDITS: usize = 64;

/// What a session's writer takes: a frame, a request to say when the peer has
/// acknowledged everything before it, or a nudge to write what a sender left pending.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Message),
    Flushed(std::sync::mpsc::Sender<()>),
    Kick,
}

/// Sends frames on one link (to one peer node): into the peer's session, which numbers them,
/// keeps them until the peer acknowledges them and writes them on whatever connection to the
/// peer is up. A `Data` or `Credit` frame sent while the session's writer is idle is written
/// by the sending thread itself, without waking another thread.
#[derive(Clone)]
pub struct LinkSender {
    pub(crate) line: Arc<Line>,
    /// The peer's node id.
    pub peer: String,
}

impl std::fmt::Debug for LinkSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSender")
            .field("peer", &self.peer)
            .finish()
    }
}

impl LinkSender {
    /// A sender whose link is closed: everything sent on it is dropped (a peer that is gone).
    pub fn closed(peer: &str) -> Self {
        LinkSender {
            line: Line::closed(peer),
            peer: peer.to_string(),
        }
    }

    /// Sends a frame; `false` if the link is closed.
    pub fn send(&self, m: Message) -> bool {
        self.line.send(m).is_ok()
    }

    /// Sends a frame; gives it back if the link is closed.
    pub fn try_send(&self, m: Message) -> Result<(), Message> {
        self.line.send(m)
    }
}

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

/// A connection handed to a session's writer: its link's id, its write half, its sealer when
/// encrypted, and how many sequenced frames the peer has received.
pub(crate) struct Conn {
    pub(crate) id: u64,
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

/// What a session has on its connection, under one lock: the replay, the connection while
/// nobody writes on it, and the bytes numbered and not written yet. Frames are numbered,
/// sealed and appended in one critical section, so the order on the wire is the numbering.
#[derive(Default)]
struct Out {
    replay: Replay,
    /// The connection's write half while it is idle: the writer task takes it out for the
    /// duration of an asynchronous write, and a sender finding it here may write itself.
    idle: Option<OwnedWriteHalf>,
    sealer: Option<Sealer>,
    /// A connection is attached and has not failed.
    live: bool,
    /// The link id of the connection attached last (see [`Session::detach`]).
    conn: u64,
    /// The highest link id detached: a connection of that link or an older one that reaches
    /// the writer after its link closed is not attached.
    detached: u64,
    /// The writer task ended with the session: nothing is sent any more.
    closed: bool,
    /// The session is over for the membership (its peer left or was declared down): the
    /// peer will acknowledge nothing more, so nobody waits for it (see [`Session::end`]).
    ended: bool,
    /// Sealed bytes of numbered frames not written yet, in order (the writer task writes
    /// them).
    pending: Vec<u8>,
    /// Scratch for sealing a direct write.
    sealed: Vec<u8>,
}

impl Out {
    /// Appends `plain` (whole frames) to the bytes to write, sealed if the link is encrypted
    /// (if sealing fails, the connection is given up; the frames are in the replay).
    fn append(&mut self, plain: &[u8]) {
        let ok = match self.sealer.as_mut() {
            Some(s) => s.seal(plain, &mut self.pending).is_ok(),
            None => {
                self.pending.extend_from_slice(plain);
                true
            }
        };
        if !ok {
            self.broke();
        }
    }

    /// The connection failed: what it did not take is in the replay, for the next one.
    fn broke(&mut self) {
        self.live = false;
        self.idle = None;
        self.pending.clear();
    }

    /// Writes `plain` on the idle connection without waiting: what the socket does not take
    /// now stays pending for the writer task. The bytes it wrote, and whether some are left.
    fn write_now(&mut self, plain: &[u8]) -> (usize, bool) {
        let bytes: &[u8] = match self.sealer.as_mut() {
            Some(s) => {
                self.sealed.clear();
                if s.seal(plain, &mut self.sealed).is_err() {
                    self.broke();
                    return (0, false);
                }
                &self.sealed
            }
            None => plain,
        };
        let Some(w) = self.idle.as_ref() else {
            return (0, false);
        };
        let mut at = 0;
        while at < bytes.len() {
            match w.try_write(&bytes[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.pending.extend_from_slice(&bytes[at..]);
                    return (at, true);
                }
                Err(_) => break,
            }
        }
        if at < bytes.len() {
            self.broke();
        }
        (at, false)
    }
}

/// How a frame offered for a direct write fared.
enum Direct {
    /// Numbered, kept, and written (or pending for the writer task).
    Done,
    /// The writer task is busy or has frames queued: the frame goes behind them.
    Queue(Message),
    /// The session is over.
    Closed(Message),
}

/// The sending side of a session, shared by its writer task and every [`LinkSender`].
///
/// Frames go through the writer task's queue, except `Data` and `Credit` frames offered while
/// the writer is idle and has nothing queued: those the sending thread numbers, keeps, seals
/// and writes itself with a non-blocking write, so that a record crossing to another node
/// wakes no thread on the way out (what the socket does not take at once is left for the
/// writer task). Order is kept: a frame is written directly only when no frame sent before
/// it is still queued (`queued` counts them) and no write is under way.
pub(crate) struct Line {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Items put in `tx` and not yet taken by the writer task.
    queued: AtomicUsize,
    out: Mutex<Out>,
    /// Sequenced frames received from the peer and handled.
    received: AtomicU64,
    /// The last `Ack` written (reset for a new connection).
    acked: AtomicU64,
    /// Signalled when a connection is detached: a write under way on it is abandoned.
    detached: tokio::sync::Notify,
    counters: Arc<LinkCounters>,
    peer: String,
}

fn lock(o: &Mutex<Out>) -> MutexGuard<'_, Out> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

impl Line {
    fn new(
        peer: &str,
        counters: Arc<LinkCounters>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let line = Line {
            tx,
            queued: AtomicUsize::new(0),
            out: Mutex::default(),
            received: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            detached: tokio::sync::Notify::new(),
            counters,
            peer: peer.to_string(),
        };
        (Arc::new(line), rx)
    }

    /// A line whose session is over: everything sent on it is refused.
    pub(crate) fn closed(peer: &str) -> Arc<Self> {
        let (line, _) = Line::new(peer, Arc::default());
        lock(&line.out).closed = true;
        line
    }

    /// Puts `o` in the writer task's queue; gives it back if the session is over.
    fn enqueue(&self, o: Outgoing) -> Option<Outgoing> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let refused = self.tx.send(o).err()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(refused.0)
    }

    /// Sends a frame: written at once when it may be (see [`Line`]), else queued; given back
    /// if the session is over.
    pub(crate) fn send(&self, m: Message) -> Result<(), Message> {
        let m = if matches!(m, Message::Data { .. } | Message::Credit { .. }) {
            match self.direct(m) {
                Direct::Done => return Ok(()),
                Direct::Closed(m) => return Err(m),
                Direct::Queue(m) => m,
            }
        } else {
            m
        };
        match self.enqueue(Outgoing::Frame(m)) {
            Some(Outgoing::Frame(m)) => Err(m),
            // Nothing, or what was sent: a frame.
            _ => Ok(()),
        }
    }

    /// Writes a sequenced frame on the idle connection, if nothing sent before it waits.
    fn direct(&self, m: Message) -> Direct {
        let mut o = lock(&self.out);
        if o.closed {
            return Direct::Closed(m);
        }
        if o.idle.is_none() || !o.pending.is_empty() || self.queued.load(Ordering::Acquire) != 0 {
            return Direct::Queue(m);
        }
        let mut plain = Vec::new();
        self.put_ack(&mut plain);
        self.put(&m, &mut plain, Some(&mut o.replay));
        let (wrote, left) = o.write_now(&plain);
        drop(o);
        if wrote > 0 {
            self.counters.wrote_direct(wrote);
        }
        if left {
            // The socket is full: the writer task writes the rest when it can.
            let _ = self.tx.send(Outgoing::Kick);
        }
        Direct::Done
    }

    /// Encodes an `Ack` onto `buf` if the peer has not been told of everything received.
    fn put_ack(&self, buf: &mut Vec<u8>) {
        let received = self.received.load(Ordering::Acquire);
        if received > self.acked.fetch_max(received, Ordering::AcqRel) {
            self.put(&Message::Ack { received }, buf, None);
        }
    }

    /// Encodes `m` onto `buf`; with a replay, the frame is also numbered and kept.
    fn put(&self, m: &Message, buf: &mut Vec<u8>, replay: Option<&mut Replay>) {
        let before = buf.len();
        if encode(m, buf).is_err() {
            tracing::error!(peer = %self.peer, "cannot encode a frame; dropped");
            buf.truncate(before);
            return;
        }
        self.counters.count(m, buf.len() - before);
        if let Some(r) = replay {
            keep(r, buf[before..].to_vec());
        }
    }
}

/// Numbers a sequenced frame and keeps it until the peer acknowledges it.
fn keep(r: &mut Replay, frame: Vec<u8>) {
    r.sent += 1;
    r.bytes += frame.len();
    r.frames.push_back((r.sent, frame));
}

/// One session with a peer (see the module docs).
pub(crate) struct Session {
    /// This side's id for the session: random, never 0.
    pub(crate) id: u64,
    /// The peer's incarnation when the session started.
    pub(crate) incarnation: u64,
    /// The peer's session id (0 until the first resume exchange).
    peer_session: AtomicU64,
    line: Arc<Line>,
    conns: mpsc::UnboundedSender<Conn>,
    links: AtomicU64,
    resent: Arc<AtomicU64>,
}

impl Session {
    /// A fresh session with `peer` (incarnation `incarnation`); its writer runs on the current
    /// tokio runtime until the session is dropped.
    pub(crate) fn start(peer: &str, incarnation: u64, counters: Arc<LinkCounters>) -> Arc<Self> {
        let (line, rx) = Line::new(peer, counters);
        let (conns, conn_rx) = mpsc::unbounded_channel();
        let mut id = 0;
        while id == 0 {
            id = random_u64();
        }
        let s = Arc::new(Session {
            id,
            incarnation,
            peer_session: AtomicU64::new(0),
            line: line.clone(),
            conns,
            links: AtomicU64::new(0),
            resent: Arc::default(),
        });
        let writer = Writer {
            rx,
            conns: conn_rx,
            line,
            resent: s.resent.clone(),
        };
        tokio::spawn(writer.run());
        s
    }

    /// A sender into this session.
    pub(crate) fn sender(&self, peer: &str) -> LinkSender {
        LinkSender {
            line: self.line.clone(),
            peer: peer.to_string(),
        }
    }

    /// Puts `o` in the writer's queue (heartbeats, flush requests); `false` if the session
    /// is over.
    /// The session is over (its peer left or was declared down): whoever waits for the peer
    /// to acknowledge what was sent ([`Outgoing::Flushed`]) stops waiting.
    pub(crate) fn end(&self) {
        let mut o = lock(&self.line.out);
        o.ended = true;
        o.replay.waiters.clear();
    }

    pub(crate) fn enqueue(&self, o: Outgoing) -> bool {
        self.line.enqueue(o).is_none()
    }

    /// What this side sends first on a new link.
    pub(crate) fn resume_frame(&self) -> Message {
        Message::Resume {
            session: self.id,
            peer_session: self.peer_session.load(Ordering::Acquire),
            received: self.line.received.load(Ordering::Acquire),
        }
    }

    /// Whether a session with this id of the peer's ever ran on a link (it was established).
    pub(crate) fn established(&self) -> bool {
        self.peer_session.load(Ordering::Acquire) != 0
    }

    /// Takes the peer's `Resume`: the verdict, and on `Resume` the peer's session id is
    /// adopted and what it received is forgotten here.
    pub(crate) fn on_resume(&self, theirs: ResumeState) -> Verdict {
        let mut o = lock(&self.line.out);
        let kept = Kept {
            session: self.id,
            peer_session: self.peer_session.load(Ordering::Acquire),
            sent: o.replay.sent,
            first_kept: o.replay.first_kept(),
        };
        let v = decide(kept, theirs);
        if let Verdict::Resume { from } = v {
            self.peer_session.store(theirs.session, Ordering::Release);
            o.replay.trim(from);
        }
        v
    }

    /// Hands a connection whose resume exchange succeeded to the writer.
    pub(crate) fn attach(&self, conn: Conn) {
        self.links.fetch_add(1, Ordering::Relaxed);
        let _ = self.conns.send(conn);
    }

    /// The link `id` closed (its reader ended): its connection is given up, both halves — a
    /// write under way on it is abandoned, and what it did not deliver is in the replay for
    /// the next link. A link that is not the one attached changes nothing.
    pub(crate) fn detach(&self, id: u64) {
        let mut o = lock(&self.line.out);
        o.detached = o.detached.max(id);
        if o.conn == id {
            o.broke();
            drop(o);
            self.line.detached.notify_one();
        }
    }

    /// A sequenced frame from the peer was handled.
    pub(crate) fn on_received(&self) {
        self.line.received.fetch_add(1, Ordering::AcqRel);
    }

    /// The peer acknowledged the first `received` sequenced frames.
    pub(crate) fn on_ack(&self, received: u64) {
        lock(&self.line.out).replay.trim(received);
    }

    /// This session's figures.
    pub(crate) fn stats(&self, peer: &str) -> SessionStats {
        let o = lock(&self.line.out);
        SessionStats {
            peer: peer.to_string(),
            links: self.links.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            unacked: o.replay.frames.len() as u64,
            unacked_bytes: o.replay.bytes as u64,
        }
    }
}

/// The writing task of a session: numbers and keeps the frames of its queue, writes what is
/// pending on the current connection, resends what a new connection's peer has not received.
struct Writer {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    conns: mpsc::UnboundedReceiver<Conn>,
    line: Arc<Line>,
    resent: Arc<AtomicU64>,
}

/// What one round of the writer took from its queue (flush requests are answered once the
/// peer acknowledged everything before them, so a node that stops after a flush knows its
/// last frames arrived).
#[derive(Default)]
struct Gathered {
    /// Encoded frames, and the ends of the sequenced ones in `buf`.
    buf: Vec<u8>,
    sequenced: Vec<(usize, usize)>,
    flushed: Vec<std::sync::mpsc::Sender<()>>,
    credits: Vec<(ChannelKey, EdgeAddress, u32)>,
    /// Queue items taken (for [`Line::queued`]).
    taken: usize,
    /// A connection was up when the round began: without one, unsequenced frames and acks
    /// are not even encoded (nor counted as written).
    live: bool,
}

impl Writer {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                c = self.conns.recv() => {
                    let Some(c) = c else { break };
                    self.attach(c);
                }
                m = self.rx.recv() => {
                    let Some(first) = m else { break };
                    let g = self.gather(first);
                    self.number(g);
                }
            }
            self.drain().await;
        }
        let mut o = lock(&self.line.out);
        o.closed = true;
        o.broke();
    }

    /// A new connection: what its peer has not received goes first.
    fn attach(&mut self, c: Conn) {
        let mut o = lock(&self.line.out);
        if c.id <= o.detached {
            // Its link closed before the writer took it.
            return;
        }
        let again = o.replay.since(c.from);
        let frames = o.replay.frames.iter().filter(|f| f.0 > c.from).count();
        self.resent.fetch_add(frames as u64, Ordering::Relaxed);
        o.broke();
        o.sealer = c.sealer;
        o.idle = Some(c.w);
        o.live = true;
        o.conn = c.id;
        self.line.acked.store(0, Ordering::Release);
        o.append(&again);
    }

    /// Takes `first` and whatever else is queued (up to a write's worth), encoded; credits
    /// for one channel are merged.
    fn gather(&mut self, first: Outgoing) -> Gathered {
        let mut g = Gathered {
            live: lock(&self.line.out).live,
            ..Gathered::default()
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if !matches!(m, Outgoing::Kick) {
                g.taken += 1;
            }
            match m {
                Outgoing::Frame(Message::Credit { edge, n }) => {
                    let key = channel_key(&edge);
                    match g.credits.iter_mut().find(|c| c.0 == key) {
                        Some(c) => c.2 = c.2.saturating_add(n),
                        None => g.credits.push((key, edge, n)),
                    }
                }
                Outgoing::Frame(m) if g.live || m.sequenced() => g.put(&self.line, &m),
                Outgoing::Frame(_) => {}
                Outgoing::Flushed(done) => g.flushed.push(done),
                Outgoing::Kick => {}
            }
            if g.buf.len() < WRITE_BATCH && g.credits.len() < MAX_MERGED_CREDITS {
                next = self.rx.try_recv().ok();
            }
        }
        for (_, edge, n) in std::mem::take(&mut g.credits) {
            g.put(&self.line, &Message::Credit { edge, n });
        }
        g
    }

    /// Numbers and keeps the gathered sequenced frames and appends what goes on the wire
    /// (unsequenced frames only on a live connection; sequenced ones wait in the replay while
    /// there is none).
    fn number(&mut self, g: Gathered) {
        let mut ack = Vec::new();
        if g.live {
            self.line.put_ack(&mut ack);
        }
        let mut o = lock(&self.line.out);
        for &(from, to) in &g.sequenced {
            keep(&mut o.replay, g.buf[from..to].to_vec());
        }
        for done in g.flushed {
            // Over: dropping `done` ends the wait.
            if !o.ended {
                o.replay.flushed_when_acked(done);
            }
        }
        self.line.queued.fetch_sub(g.taken, Ordering::AcqRel);
        if o.live && !(ack.is_empty() && g.buf.is_empty()) {
            ack.extend_from_slice(&g.buf);
            o.append(&ack);
        }
    }

    /// Writes what is pending while the connection takes it (and it stays attached: a peer
    /// that stopped reading holds a write only until its link is detached).
    async fn drain(&mut self) {
        let mut spare = Vec::new();
        loop {
            let (mut w, bytes) = {
                let mut o = lock(&self.line.out);
                if o.pending.is_empty() {
                    return;
                }
                let Some(w) = o.idle.take() else { return };
                let bytes = std::mem::replace(&mut o.pending, std::mem::take(&mut spare));
                (w, bytes)
            };
            let ok = {
                let write = async { w.write_all(&bytes).await.and(w.flush().await) };
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        r = &mut write => break r.is_ok(),
                        _ = self.line.detached.notified() => {
                            if !lock(&self.line.out).live {
                                break false;
                            }
                        }
                    }
                }
            };
            let mut o = lock(&self.line.out);
            if !o.live {
                // Detached: the next connection starts from the replay, and this one is
                // dropped (closed).
                return;
            }
            if ok {
                self.line.counters.wrote(bytes.len());
                o.idle = Some(w);
                spare = bytes;
                spare.clear();
            } else {
                // The link broke: what it did not take is kept and resent on the next.
                o.broke();
                return;
            }
        }
    }
}

impl Gathered {
    /// Encodes `m` onto the buffer, noting where a sequenced frame lies.
    fn put(&mut self, line: &Line, m: &Message) {
        let before = self.buf.len();
        line.put(m, &mut self.buf, None);
        if m.sequenced() && self.buf.len() > before {
            self.sequenced.push((before, self.buf.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{read_frame, BatchBytes};
    use riffle_framework::ChannelEvent;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// A session with a connection attached, its counters, and the peer's end.
    async fn linked() -> (Arc<Session>, Arc<LinkCounters>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let counters = Arc::new(LinkCounters::default());
        let session = Session::start("peer", 1, counters.clone());
        let (_r, w) = client.into_split();
        session.attach(Conn {
            id: 1,
            w,
            sealer: None,
            from: 0,
        });
        (session, counters, server)
    }

    /// A `Data` frame on `channel` carrying `bytes`.
    fn data(channel: u32, n: u32, mut bytes: Vec<u8>) -> Message {
        bytes.extend_from_slice(&n.to_le_bytes());
        Message::Data {
            edge: EdgeAddress {
                job: 1,
                epoch: 0,
                chain: 0,
                from: 0,
                to: 0,
                channel,
            },
            event: ChannelEvent::Batch(BatchBytes(bytes)),
        }
    }

    /// The next frame from the session.
    async fn next(server: &mut TcpStream) -> Message {
        tokio::time::timeout(Duration::from_secs(30), read_frame(server, 1 << 24))
            .await
            .expect("frames keep coming")
            .expect("a frame")
    }

    /// A frame sent on an idle session is written by the sending thread; frames that two
    /// threads send while heartbeat answers are queued between them arrive in each thread's
    /// order, every one numbered and kept once.
    #[tokio::test]
    async fn frames_written_directly_and_queued_keep_each_senders_order() {
        const N: u32 = 3_000;
        let (session, counters, mut server) = linked().await;
        let data = |channel: u32, n: u32| data(channel, n, Vec::new());
        // An idle session: the sending thread writes the frame itself.
        let link = session.sender("peer");
        for n in 1..=2 {
            assert!(link.send(data(2, n)));
            assert_eq!(next(&mut server).await, data(2, n));
        }
        assert!(
            counters.direct_writes() > 0,
            "no frame was written directly"
        );
        let senders: Vec<_> = (0..2u32)
            .map(|channel| {
                let (link, s) = (session.sender("peer"), session.clone());
                std::thread::spawn(move || {
                    for n in 1..=N {
                        assert!(link.send(data(channel, n)), "session closed");
                        if n % 7 == 0 {
                            s.enqueue(Outgoing::Frame(Message::HeartbeatAck { seq: n.into() }));
                        }
                    }
                })
            })
            .collect();
        let mut last = [0u32; 2];
        let mut got = 0;
        while got < 2 * N {
            let frame = next(&mut server).await;
            if let Message::Data {
                edge,
                event: ChannelEvent::Batch(b),
            } = frame
            {
                let c = edge.channel as usize;
                let n = u32::from_le_bytes(b.0.try_into().expect("four bytes"));
                assert_eq!(n, last[c] + 1, "channel {c} out of order");
                last[c] = n;
                got += 1;
            }
        }
        for s in senders {
            s.join().expect("sender");
        }
        assert_eq!(session.stats("peer").unacked, u64::from(2 * N + 2));
    }

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

    /// Frames larger than the socket takes at once: the first is written in part by the
    /// sending thread and finished by the writer task, the rest queue behind it, and all
    /// arrive whole and in order.
    #[tokio::test]
    async fn what_the_socket_does_not_take_at_once_follows_in_order() {
        const FRAMES: u32 = 32;
        let (session, counters, mut server) = linked().await;
        let link = session.sender("peer");
        assert!(link.send(data(0, 0, Vec::new())));
        assert_eq!(next(&mut server).await, data(0, 0, Vec::new()));
        let big = |n: u32| data(0, n, vec![n as u8; 256 * 1024]);
        // 8 MiB while nobody reads: more than the socket's buffers hold.
        let sender = std::thread::spawn(move || {
            for n in 1..=FRAMES {
                assert!(link.send(big(n)), "session closed");
            }
        });
        sender.join().expect("sender");
        for n in 1..=FRAMES {
            assert_eq!(next(&mut server).await, big(n), "frame {n}");
        }
        // Some went directly; what the socket did not take, the writer task wrote.
        let (writes, direct) = (counters.writes().0, counters.direct_writes());
        assert!(
            direct >= 2 && writes > direct,
            "{writes} writes, {direct} direct"
        );
        assert_eq!(session.stats("peer").unacked, u64::from(FRAMES) + 1);
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
