//! Remote mailboxes: the data plane between nodes.
//!
//! A [`RemoteMailbox`] is an actor on the sending node that stands in for a subtask on another
//! node: it accepts the same [`DataMessage`]s as a local subtask (so routers hold one kind of
//! address, a `Recipient<DataMessage>`), encodes each event into a `Data` frame with its
//! [`EdgeAddress`] and sends it on the link to the receiver's node. The credit a message
//! carries is *held* by the mailbox until the receiving node reports, with a `Credit` frame,
//! that the subtask handled it — so the per-channel credits of the local runtime stretch over
//! the wire, and one slow subtask stalls only its own channels, never the link.
//!
//! The receiving node keeps a directory of inboxes (`(job, chain, subtask)` → the local
//! subtask's address and its record codec); a `Data` frame is decoded into the typed batch
//! and delivered with a [`RemoteCredit`] whose drop sends the `Credit` frame back.

use crate::wire::{EdgeAddress, Message, WireEvent};
use actix::prelude::{Actor, Context, Handler, Recipient};
use riffle_actors::{Credit, DataMessage, Event, RemoteCredit};
use riffle_framework::BatchCodec;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Sends frames on one link (to one peer node).
#[derive(Clone, Debug)]
pub struct LinkSender {
    pub(crate) tx: mpsc::UnboundedSender<Message>,
    /// The peer's node id.
    pub peer: String,
}

impl LinkSender {
    /// Queues a frame; `false` if the link is closed.
    pub fn send(&self, m: Message) -> bool {
        self.tx.send(m).is_ok()
    }
}

/// A channel, without its epoch: what credits are returned to.
pub type ChannelKey = (u64, u32, u32, u32, u32);

/// The channel of an edge address.
pub fn channel_key(e: &EdgeAddress) -> ChannelKey {
    (e.job, e.chain, e.from, e.to, e.channel)
}

/// Credits returned by the receiving node for a remote mailbox's channel.
pub struct CreditsReturned(pub u32);

impl actix::Message for CreditsReturned {
    type Result = ();
}

/// Stands in for a subtask on another node (see the module docs).
pub struct RemoteMailbox {
    edge: EdgeAddress,
    link: LinkSender,
    codec: BatchCodec,
    held: VecDeque<Option<Credit>>,
    /// Frames that could not be sent (closed link) or encoded.
    pub dropped: u64,
}

impl RemoteMailbox {
    /// A mailbox for the channel `edge` on `link`, encoding batches with `codec`.
    pub fn new(edge: EdgeAddress, link: LinkSender, codec: BatchCodec) -> Self {
        RemoteMailbox {
            edge,
            link,
            codec,
            held: VecDeque::new(),
            dropped: 0,
        }
    }
}

impl Actor for RemoteMailbox {
    type Context = Context<Self>;
}

impl Handler<DataMessage> for RemoteMailbox {
    type Result = ();
    fn handle(&mut self, msg: DataMessage, _ctx: &mut Context<Self>) {
        let event = match msg.event {
            Event::Batch { payload, .. } => match self.codec.encode(&payload) {
                Ok(bytes) => WireEvent::Batch(bytes),
                Err(e) => {
                    tracing::error!(edge = ?self.edge, error = %e, "cannot encode a batch; dropped");
                    self.dropped += 1;
                    return;
                }
            },
            Event::Barrier(n) => WireEvent::Barrier(n),
            Event::EndOfInput => WireEvent::EndOfInput,
        };
        let edge = EdgeAddress {
            epoch: msg.epoch,
            channel: msg.channel,
            ..self.edge
        };
        if self.link.send(Message::Data { edge, event }) {
            // The credit returns when the receiving node says the subtask handled the event.
            self.held.push_back(msg.credit);
        } else {
            tracing::warn!(peer = %self.link.peer, edge = ?edge, "link closed; event dropped");
            self.dropped += 1;
        }
    }
}

impl Handler<CreditsReturned> for RemoteMailbox {
    type Result = ();
    fn handle(&mut self, msg: CreditsReturned, _ctx: &mut Context<Self>) {
        for _ in 0..msg.0 {
            if self.held.pop_front().is_none() {
                break;
            }
        }
    }
}

/// Where `Data` frames for a local subtask go.
#[derive(Clone)]
pub struct Inbox {
    /// The local subtask.
    pub to: Recipient<DataMessage>,
    /// The codec of the records it receives.
    pub codec: BatchCodec,
}

/// Delivers a `Data` frame into `inbox`, with a credit that answers on `link` when dropped.
pub(crate) fn deliver(inbox: &Inbox, edge: EdgeAddress, event: WireEvent, link: LinkSender) {
    let event = match event {
        WireEvent::Batch(bytes) => match inbox.codec.decode(&bytes) {
            Ok((payload, len)) => Event::Batch { payload, len },
            Err(e) => {
                tracing::error!(?edge, error = %e, "undecodable batch; dropped");
                let _ = link.send(Message::Credit { edge, n: 1 });
                return;
            }
        },
        WireEvent::Barrier(n) => Event::Barrier(n),
        WireEvent::EndOfInput => Event::EndOfInput,
    };
    let credit = RemoteCredit::new(move || {
        let _ = link.send(Message::Credit { edge, n: 1 });
    });
    let msg = DataMessage {
        epoch: edge.epoch,
        channel: edge.channel,
        event,
        credit: Some(Credit::Remote(credit)),
    };
    if let Err(e) = inbox.to.try_send(msg) {
        // Dropping the message returns the credit; the sender is not stalled by a dead inbox.
        tracing::warn!(?edge, error = %e, "inbox unavailable; event dropped");
    }
}
