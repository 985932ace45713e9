//! One link to a peer: the handshake, then a writer fed by a channel (counting what it
//! writes, sealing it when the link is encrypted) and a reader that records liveness, learns
//! candidate members and hands job and data frames on.
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
use crate::members::{register, seen};
use crate::remote::{
    channel_key, deliver, ChannelKey, CreditsReturned, LinkBudget, LinkSender, Outgoing,
};
use crate::secure::Sealer;
use crate::shared::Shared;
use crate::wire::{encode, read_frame, write_frame, EdgeAddress, Message};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Bytes of queued frames a link writes at once, at most (plus one frame).
const WRITE_BATCH: usize = 256 * 1024;
/// Channels whose credits one write merges, at most.
const MAX_MERGED_CREDITS: usize = 64;

/// A link that passed its handshake and was registered.
struct Up {
    peer: crate::handshake::Peer,
    cipher: Option<crate::secure::LinkCipher>,
    id: u64,
    kill: Arc<tokio::sync::Notify>,
    tx: mpsc::UnboundedSender<Outgoing>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
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
            RefusedCounts::add(&shared.refused.handshakes);
            if let (Some(adm), Some(ip), Some(_)) = (&shared.admission, ip, ticket.as_ref()) {
                adm.failed(ip);
            }
            tracing::warn!(error = %e, "link refused");
            return None;
        }
    };
    if let Some(t) = ticket.as_mut() {
        t.linked();
    }
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    match register(&shared.net.members, &est.peer, ip, tx.clone()) {
        Ok((id, kill)) => Some(Up {
            peer: est.peer,
            cipher: est.cipher,
            id,
            kill,
            tx,
            rx,
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

/// Runs one link: handshake, registration, then writer and reader until it closes.
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
    let peer = up.peer;
    tracing::info!(peer = %peer.node, encrypted = up.cipher.is_some(), "link up");
    let (r, w) = stream.into_split();
    let sealer = up.cipher.as_ref().map(|c| c.sealer());
    let reader: Box<dyn AsyncRead + Unpin + Send> = match &up.cipher {
        Some(c) => Box::new(c.opener(r)),
        None => Box::new(r),
    };
    let counters = shared
        .net
        .counters
        .entry(peer.node.clone())
        .or_default()
        .clone();
    let writer = tokio::spawn(write_loop(up.rx, w, sealer, counters, peer.node.clone()));
    let reading = Reading {
        shared: shared.clone(),
        me: hs.node.clone(),
        peer: peer.clone(),
        back: LinkSender {
            tx: up.tx,
            peer: peer.node.clone(),
        },
        budget: Arc::new(LinkBudget {
            held: AtomicUsize::new(0),
            max: budget,
        }),
    };
    reading.run(reader, max, stop, up.kill).await;
    writer.abort();
    drop(ticket);
    let mut st = shared.net.members.lock();
    if st.kills.get(&peer.node).is_some_and(|(i, _)| *i == up.id) {
        st.kills.remove(&peer.node);
        st.links.remove(&peer.node);
    }
}

/// Writes what is queued for a link: frames queued together go out in one write (fewer
/// system calls under load); credits returned for one channel in the same write go out as one
/// frame; a flush request is answered once everything queued before it is written.
async fn write_loop(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut w: OwnedWriteHalf,
    mut sealer: Option<Sealer>,
    counters: Arc<crate::remote::LinkCounters>,
    peer: String,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut sealed: Vec<u8> = Vec::new();
    let mut flushed = Vec::new();
    let mut credits: Vec<(ChannelKey, EdgeAddress, u32)> = Vec::new();
    let put = |m: &Message, buf: &mut Vec<u8>| {
        let before = buf.len();
        if encode(m, buf).is_err() {
            tracing::error!(%peer, "cannot encode a frame; dropped");
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
        let out = match sealer.as_mut() {
            Some(s) => {
                sealed.clear();
                if s.seal(&buf, &mut sealed).is_err() {
                    break;
                }
                &sealed
            }
            None => &buf,
        };
        if w.write_all(out).await.is_err() || w.flush().await.is_err() {
            break;
        }
        buf.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The reading side of a link.
struct Reading {
    shared: Arc<Shared>,
    me: String,
    peer: crate::handshake::Peer,
    back: LinkSender,
    budget: Arc<LinkBudget>,
}

impl Reading {
    async fn run(
        self,
        mut r: Box<dyn AsyncRead + Unpin + Send>,
        max: u32,
        mut stop: watch::Receiver<bool>,
        kill: Arc<tokio::sync::Notify>,
    ) {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = kill.notified() => {
                    tracing::warn!(peer = %self.peer.node, "link to a peer declared down closed");
                    break;
                }
                frame = read_frame(&mut r, max) => match frame {
                    Ok(m) => {
                        if !self.on_frame(m) {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(peer = %self.peer.node, error = %e, "link closed");
                        break;
                    }
                }
            }
        }
    }

    /// Handles one frame; `false` if the link must close.
    fn on_frame(&self, m: Message) -> bool {
        let shared = &self.shared;
        match m {
            Message::Heartbeat { members, .. } => {
                seen(&shared.net.members, &self.peer, &self.me, members);
            }
            Message::Data { edge, event } => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                let inbox = shared
                    .net
                    .inboxes
                    .get(&(edge.job, edge.chain, edge.to))
                    .map(|i| i.clone());
                match inbox {
                    Some(inbox) => {
                        let back = self.back.clone();
                        if !deliver(&inbox, edge, event, back, &self.budget) {
                            RefusedCounts::add(&shared.refused.over_budget);
                            tracing::error!(peer = %self.peer.node, "peer exceeded its memory budget (it ignores credits); link closed");
                            return false;
                        }
                    }
                    None => {
                        tracing::warn!(peer = %self.peer.node, ?edge, "data for an unknown subtask; dropped");
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
            | Message::Spawn { .. }
            | Message::Control { .. }
            | Message::Report { .. }
            | Message::Decision { .. }
            | Message::Placement { .. }
            | Message::JobEnd { .. }
            | Message::StatsRequest { .. }
            | Message::Stats { .. }) => {
                seen(&shared.net.members, &self.peer, &self.me, Vec::new());
                crate::hosting::on_frame(shared, &self.me, &self.peer.node, m, self.back.clone());
            }
            Message::Hello(_) | Message::Noise(_) | Message::Refused(_) => {
                tracing::warn!(peer = %self.peer.node, "handshake frame on a linked link; closed");
                return false;
            }
        }
        true
    }
}
