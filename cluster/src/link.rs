//! One link to a peer: the handshake, the resume exchange that continues the peer's session
//! ([`crate::session`]: the session's writer then writes on this link), and a reader that
//! records liveness, counts the session's frames, learns candidate members and hands job and
//! data frames on.
//!
//! What a peer can cost this node is bounded: before the handshake its frames are limited to
//! `HANDSHAKE_MAX_FRAME` and the connection holds a place of admission control
//! ([`crate::guard`]); after it, frames are limited to the node's maximum, and the batches it
//! delivered that the receiving subtasks have not handled yet (whose credits have not
//! returned) are limited to the link's memory budget — a peer past it broke the credit
//! protocol and its link closes.

use crate::guard::RefusedCounts;
use crate::guard::Ticket;
use crate::handshake::{handshake, HandshakeConfig, Role};
use crate::hosting::FrameError;
use crate::members::{declare_down, declare_left, register, seen, unregister, Registered};
use crate::remote::{deliver, CreditsReturned, Inbox, LinkBudget};
use crate::secure::Sealer;
use crate::session::{Conn, LinkSender, Outgoing, ResumeState, Session, Verdict};
use crate::shared::Shared;
use crate::wire::{channel_key, encode, read_frame, write_frame, EdgeAddress, Message};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A link that passed its handshake and was registered.
struct Up {
    peer: crate::handshake::Peer,
    cipher: Option<crate::secure::LinkCipher>,
    reg: Registered,
}

/// Runs the handshake and registers the link; `None` (counted and logged) if either refuses.
async fn establish(
    stream: &mut TcpStream,
    hs: &HandshakeConfig,
    role: Role,
    ticket: &mut Option<Ticket>,
    shared: &Arc<Shared>,
    ip: Option<std::net::IpAddr>,
) -> Option<Up> {
    let est = match handshake(stream, hs, role).await {
        Ok(e) => e,
        Err(e) => {
            // Counted; the connection ends, and nothing else is held against its address.
            RefusedCounts::add(&shared.refused.handshakes);
            tracing::warn!(error = %e, "link refused");
            return None;
        }
    };
    if let Some(t) = ticket.as_mut() {
        t.linked();
    }
    let counters = shared
        .net
        .counters
        .entry(est.peer.node.clone())
        .or_default()
        .clone();
    match register(&shared.net.members, &est.peer, ip, counters) {
        Ok(reg) => Some(Up {
            peer: est.peer,
            cipher: est.cipher,
            reg,
        }),
        Err(reason) => {
            // Already linked to this node (both dialled at once, or an id claimed from
            // elsewhere while its member is up): keep the older link.
            RefusedCounts::add(&shared.refused.links);
            tracing::warn!(peer = %est.peer.node, ?reason, "link refused after the handshake");
            if est.cipher.is_none() {
                let _ = write_frame(stream, &Message::Refused(reason)).await;
            }
            None
        }
    }
}

/// Tells `coordinator`, linked again, which of its jobs this node abandoned when it declared
/// it lost (see `Message::Abandoned`).
fn tell_abandoned(shared: &Shared, coordinator: &str) {
    let jobs = shared.jobs.take_abandoned(coordinator);
    if jobs.is_empty() {
        return;
    }
    if let Some(link) = shared.net.link_sender(coordinator) {
        for job in jobs {
            tracing::warn!(job, %coordinator, "telling the coordinator this node abandoned its job");
            let _ = link.send(Message::Abandoned { job });
        }
    }
}

/// Tells the jobs that `node` left on purpose (it said so with `Leave`): every node hears it,
/// so each decides for the jobs it answers for.
fn left(shared: &Arc<Shared>, me: &str, node: &str) {
    shared.net.members.notify();
    let up = shared.net.up_peers();
    crate::hosting::on_node_down(shared, me, node, &up);
}

/// Why a link's resume exchange failed.
#[derive(Debug, thiserror::Error)]
enum ResumeError {
    #[error("no resume from the peer in time")]
    Late,
    #[error("the peer's first frame was not a resume")]
    NotResume,
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
}

/// Sends this side's `Resume` and reads the peer's.
async fn exchange(
    w: &mut OwnedWriteHalf,
    sealer: &mut Option<Sealer>,
    r: &mut Box<dyn AsyncRead + Unpin + Send>,
    max: u32,
    mine: &Message,
) -> Result<ResumeState, ResumeError> {
    let mut buf = Vec::new();
    encode(mine, &mut buf)?;
    if let Some(s) = sealer.as_mut() {
        let mut sealed = Vec::new();
        s.seal(&buf, &mut sealed)?;
        buf = sealed;
    }
    w.write_all(&buf)
        .await
        .map_err(crate::wire::WireError::from)?;
    match read_frame(r, max).await? {
        Message::Resume {
            session,
            peer_session,
            received,
        } => Ok(ResumeState {
            session,
            peer_session,
            received,
        }),
        _ => Err(ResumeError::NotResume),
    }
}

/// The resume exchange on a link just registered: on a session both sides kept, the write
/// half goes to the session's writer and the reader comes back; otherwise `None` (and a
/// session that had run is over: the peer is lost to the jobs).
async fn resume(
    shared: &Arc<Shared>,
    hs: &HandshakeConfig,
    peer: &crate::handshake::Peer,
    up: &Up,
    stream: TcpStream,
    max: u32,
) -> Option<Box<dyn AsyncRead + Unpin + Send>> {
    let (r, mut w) = stream.into_split();
    let mut sealer = up.cipher.as_ref().map(|c| c.sealer());
    let mut reader: Box<dyn AsyncRead + Unpin + Send> = match &up.cipher {
        Some(c) => Box::new(c.opener(r)),
        None => Box::new(r),
    };
    let session = &up.reg.session;
    let mine = session.resume_frame();
    let theirs = tokio::time::timeout(
        hs.timeout,
        exchange(&mut w, &mut sealer, &mut reader, max, &mine),
    )
    .await
    .unwrap_or(Err(ResumeError::Late));
    let theirs = match theirs {
        Ok(theirs) => theirs,
        Err(e) => {
            tracing::warn!(peer = %peer.node, error = %e, "link closed before its session resumed");
            return None;
        }
    };
    match session.on_resume(theirs) {
        Verdict::Resume { from } => {
            // Under the membership's lock, so that a waiter on the sessions cannot miss it.
            let st = shared.net.members.lock();
            let id = up.reg.id;
            session.attach(Conn {
                id,
                w,
                sealer,
                from,
            });
            drop(st);
            crate::verdict::on_reachable(shared, &peer.node);
            tell_abandoned(shared, &peer.node);
            crate::hosting::deliver_owed_ends(shared, &peer.node);
            shared.net.members.notify();
            Some(reader)
        }
        Verdict::Broken => {
            // Frames may be lost either way: a session that had run is over, and the peer
            // is lost to the jobs; the next link starts afresh.
            let ran = session.established();
            tracing::warn!(peer = %peer.node, ran, "the peer did not keep our session; link closed");
            if ran {
                declare_down(&mut shared.net.members.lock(), &peer.node);
                crate::verdict::on_session_lost(shared, &hs.node, &peer.node);
            }
            None
        }
    }
}

/// Runs one link: handshake, registration, the resume exchange, then the session's writer
/// writes on it and the reader reads until it closes.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn link(
    mut stream: TcpStream,
    hs: HandshakeConfig,
    role: Role,
    mut ticket: Option<Ticket>,
    max: u32,
    budget: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    dialled: Option<String>,
) {
    let _ = stream.set_nodelay(true);
    let ip = stream.peer_addr().ok().map(|a| a.ip());
    let Some(up) = establish(&mut stream, &hs, role, &mut ticket, &shared, ip).await else {
        return;
    };
    if let Some(a) = dialled {
        // Linked: a later dial to this address may happen once this link is gone.
        shared.net.members.lock().dialing.remove(&a);
    }
    let peer = up.peer.clone();
    if up.reg.restarted {
        crate::verdict::on_session_lost(&shared, &hs.node, &peer.node);
    }
    let Some(reader) = resume(&shared, &hs, &peer, &up, stream, max).await else {
        return unregister(&shared.net.members, &peer.node, up.reg.id);
    };
    let session = up.reg.session.clone();
    tracing::info!(peer = %peer.node, encrypted = up.cipher.is_some(), "link up");
    if let Some(c) = shared.net.counters.get(&peer.node) {
        c.linked();
    }
    let reading = Reading {
        shared: shared.clone(),
        me: hs.node.clone(),
        peer: peer.clone(),
        back: session.sender(&peer.node),
        session,
        budget: Arc::new(LinkBudget {
            held: AtomicUsize::new(0),
            max: budget,
        }),
    };
    // Read in large pieces: one system call takes every frame that has arrived, instead of
    // two (length, then body) per frame.
    let reader = Box::new(tokio::io::BufReader::with_capacity(READ_BUFFER, reader));
    let lost_peer = reading.run(reader, max, stop, up.reg.kill).await;
    // The whole link closes, both halves: the peer sees it closed and links again.
    up.reg.session.detach(up.reg.id);
    drop(ticket);
    if lost_peer {
        declare_down(&mut shared.net.members.lock(), &peer.node);
        crate::verdict::on_session_lost(&shared, &hs.node, &peer.node);
    }
    unregister(&shared.net.members, &peer.node, up.reg.id);
}

/// The buffer a link reads into (bytes).
const READ_BUFFER: usize = 256 << 10;

/// Where a `Data` frame for `edge` goes: the local subtask's inbox, `None` for a frame that is
/// late (its job ended here lately, or its subtask does not run here now), or why the frame
/// is wrong (it names a job, subtask or channel that does not exist).
fn inbox_of(shared: &Shared, edge: &EdgeAddress) -> Result<Option<Inbox>, FrameError> {
    let key = (edge.job, edge.chain, edge.to);
    if let Some(inbox) = shared.net.inboxes.get(&key).map(|i| i.clone()) {
        if edge.channel >= inbox.channels {
            return Err(FrameError::UnknownChannel {
                job: edge.job,
                chain: edge.chain,
                subtask: edge.to,
                channel: edge.channel,
                channels: inbox.channels,
            });
        }
        return Ok(Some(inbox));
    }
    let task = riffle_framework::TaskId {
        chain: edge.chain as usize,
        subtask: edge.to as usize,
    };
    match shared.jobs.placed(edge.job, task) {
        Some(true) => Ok(None),
        Some(false) => Err(FrameError::UnknownTask {
            job: edge.job,
            chain: task.chain,
            subtask: task.subtask,
        }),
        None if shared.jobs.ended_lately(edge.job) => Ok(None),
        None => Err(FrameError::UnknownJob { job: edge.job }),
    }
}

/// The reading side of a link.
struct Reading {
    shared: Arc<Shared>,
    me: String,
    peer: crate::handshake::Peer,
    back: LinkSender,
    session: Arc<Session>,
    budget: Arc<LinkBudget>,
}

/// What a frame leaves the link in.
enum After {
    /// Read on.
    Go,
    /// Close this link (the session stays: the next link continues it).
    Close,
    /// The peer broke the protocol in a way no link can mend: its session ends and it is
    /// lost to the jobs.
    Lost,
    /// The peer left on purpose (its session ended and the jobs were told already).
    Left,
}

impl Reading {
    /// Reads until the link closes; `true` if the peer is lost (see [`After::Lost`]).
    async fn run(
        self,
        mut r: Box<dyn AsyncRead + Unpin + Send>,
        max: u32,
        mut stop: watch::Receiver<bool>,
        kill: Arc<tokio::sync::Notify>,
    ) -> bool {
        loop {
            tokio::select! {
                _ = stop.changed() => return false,
                _ = kill.notified() => {
                    tracing::warn!(peer = %self.peer.node, "link to a peer declared down closed");
                    return false;
                }
                frame = read_frame(&mut r, max) => match frame {
                    Ok(m) => {
                        let sequenced = m.sequenced();
                        let after = self.on_frame(m);
                        // A frame that was handled, or refused for good, is not sent again.
                        if sequenced && !matches!(after, After::Lost) {
                            self.session.on_received();
                        }
                        match after {
                            After::Go => {}
                            After::Close | After::Left => return false,
                            After::Lost => return true,
                        }
                    }
                    Err(e) => {
                        if self.shared.net.members.lock().leaving {
                            tracing::debug!(peer = %self.peer.node, error = %e, "link closed while this node leaves");
                        } else {
                            tracing::warn!(peer = %self.peer.node, error = %e, "link closed");
                        }
                        return false;
                    }
                }
            }
        }
    }

    /// An authenticated peer's frame named something that does not exist: counted, logged,
    /// and the link closes (the session stays; the frame is not sent again).
    fn bad_frame(&self, e: FrameError) -> After {
        RefusedCounts::add(&self.shared.refused.bad_frames);
        tracing::error!(peer = %self.peer.node, error = %e, "bad frame from a member; link closed");
        After::Close
    }

    /// A heartbeat: the peer is alive (and names its members), its subtasks' figures are
    /// kept, and the heartbeat is answered at once for the peer's round trip.
    fn on_heartbeat(
        &self,
        seq: u64,
        members: Vec<(String, String)>,
        figures: Vec<riffle_actors::telemetry::LiveUpdate>,
    ) {
        seen(&self.shared.net.members, &self.peer, &self.me, members);
        figures
            .into_iter()
            .for_each(riffle_actors::telemetry::put_live);
        self.session
            .enqueue(Outgoing::Frame(Message::HeartbeatAck { seq }));
    }

    /// Handles one frame.
    fn on_frame(&self, m: Message) -> After {
        let shared = &self.shared;
        match m {
            Message::Heartbeat {
                members,
                seq,
                figures,
            } => self.on_heartbeat(seq, members, figures),
            Message::HeartbeatAck { seq } => {
                if let Some(c) = shared.net.counters.get(&self.peer.node) {
                    c.answered(seq);
                }
            }
            Message::Data { edge, event } => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                let inbox = match inbox_of(shared, &edge) {
                    Ok(inbox) => inbox,
                    Err(e) => return self.bad_frame(e),
                };
                match inbox {
                    Some(inbox) => {
                        let back = self.back.clone();
                        if !deliver(&inbox, edge, event, back, &self.budget) {
                            RefusedCounts::add(&shared.refused.over_budget);
                            tracing::error!(peer = %self.peer.node, "peer exceeded its memory budget (it ignores credits); link closed");
                            return After::Lost;
                        }
                    }
                    None => {
                        // A job that ended here, or a subtask not started here yet.
                        tracing::debug!(peer = %self.peer.node, ?edge, "data for a subtask not running here; dropped");
                        self.back.send(Message::Credit { edge, n: 1 });
                    }
                }
            }
            Message::Credit { edge, n } => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                if let Some(r) = shared.net.returns.get(&channel_key(&edge)) {
                    r.do_send(CreditsReturned(n));
                }
            }
            m @ (Message::JobStart { .. }
            | Message::Abandoned { .. }
            | Message::Spawn { .. }
            | Message::Control { .. }
            | Message::Report { .. }
            | Message::Decision { .. }
            | Message::Placement { .. }
            | Message::JobEnd { .. }
            | Message::StatsRequest { .. }
            | Message::Stats { .. }
            | Message::Dismiss { .. }
            | Message::Stopped { .. }) => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                let back = self.back.clone();
                if let Err(e) = crate::hosting::on_frame(shared, &self.me, &self.peer.node, m, back)
                {
                    return self.bad_frame(e);
                }
            }
            m @ (Message::Unreachable { .. } | Message::Reachable { .. }) => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                crate::verdict::on_frame(shared, &self.me, &self.peer.node, m);
            }
            Message::Ack { received } => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                self.session.on_ack(received);
            }
            Message::Leave => {
                tracing::info!(peer = %self.peer.node, "peer left (it shut down)");
                declare_left(&mut shared.net.members.lock(), &self.peer.node);
                left(shared, &self.me, &self.peer.node);
                return After::Left;
            }
            Message::Hello(_)
            | Message::Noise(_)
            | Message::Refused(_)
            | Message::Resume { .. } => {
                tracing::warn!(peer = %self.peer.node, "handshake frame on a linked link; closed");
                return After::Close;
            }
        }
        After::Go
    }
}
