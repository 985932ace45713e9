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

use crate::session::LinkSender;
use crate::wire::{BatchBytes, EdgeAddress, Message, WireEvent};
use actix::prelude::{Actor, AsyncContext, Context, Handler, Recipient};
use riffle_actors::{Credit, DataMessage, RemoteCredit};
use riffle_framework::{BatchCodec, ChannelEvent, RecordBatch};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Credits returned by the receiving node for a remote mailbox's channel.
pub struct CreditsReturned(pub u32);

impl actix::Message for CreditsReturned {
    type Result = ();
}

/// Finds the current link to a peer (links close and open again).
pub type LinkLookup = Arc<dyn Fn(&str) -> Option<LinkSender> + Send + Sync>;

/// How long a mailbox waits before it looks for its link again.
const LINK_RETRY: Duration = Duration::from_millis(5);

/// Stands in for a subtask on another node (see the module docs).
pub struct RemoteMailbox {
    edge: EdgeAddress,
    link: Option<LinkSender>,
    peer: String,
    lookup: Option<LinkLookup>,
    codec: BatchCodec,
    held: VecDeque<Option<Credit>>,
    /// Frames waiting for a link, with their credits (at most the channel's credits).
    waiting: VecDeque<(Message, Option<Credit>)>,
    retry_scheduled: bool,
    /// The receiver is gone for good (its node was lost): drop everything.
    released: bool,
    /// Frames that could not be sent (closed link) or encoded.
    pub dropped: u64,
    /// The sending subtask's `riffle_remote_bytes_out_total`.
    bytes_out: Option<metrics::Counter>,
}

/// The receiver behind a mailbox is gone for good (its node was lost and the subtask was
/// placed elsewhere): the mailbox returns every credit it holds and drops what it gets.
pub struct Release;

impl actix::Message for Release {
    type Result = ();
}

impl RemoteMailbox {
    /// A mailbox for the channel `edge` on `link`, encoding batches with `codec`.
    pub fn new(edge: EdgeAddress, link: LinkSender, codec: BatchCodec) -> Self {
        RemoteMailbox {
            edge,
            peer: link.peer.clone(),
            link: Some(link),
            lookup: None,
            codec,
            held: VecDeque::new(),
            waiting: VecDeque::new(),
            retry_scheduled: false,
            released: false,
            dropped: 0,
            bytes_out: None,
        }
    }

    /// A mailbox for the channel `edge` to node `peer` that finds its link with `lookup` and
    /// keeps frames (with their credits, so at most the channel's credits of them) while no
    /// link to the peer is up — a link being formed, or one that was re-made.
    pub fn with_lookup(
        edge: EdgeAddress,
        peer: &str,
        lookup: LinkLookup,
        codec: BatchCodec,
    ) -> Self {
        RemoteMailbox {
            edge,
            link: None,
            peer: peer.to_string(),
            lookup: Some(lookup),
            codec,
            held: VecDeque::new(),
            waiting: VecDeque::new(),
            retry_scheduled: false,
            released: false,
            dropped: 0,
            bytes_out: None,
        }
    }

    /// Counts the bytes of the batches it sends on `counter` (the sending subtask's
    /// `riffle_remote_bytes_out_total`).
    pub fn counting(mut self, counter: metrics::Counter) -> Self {
        self.bytes_out = Some(counter);
        self
    }

    /// Sends waiting frames while a link is up; without one, waits (lookup) or drops.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        while let Some((frame, credit)) = self.waiting.pop_front() {
            if self.link.is_none() {
                self.link = self.lookup.as_ref().and_then(|l| l(&self.peer));
            }
            let Some(link) = &self.link else {
                self.waiting.push_front((frame, credit));
                break;
            };
            match link.try_send(frame) {
                // The credit returns when the receiving node says the subtask handled it.
                Ok(()) => self.held.push_back(credit),
                Err(frame) => {
                    self.link = None;
                    if self.lookup.is_some() {
                        self.waiting.push_front((frame, credit));
                        break;
                    }
                    tracing::warn!(peer = %self.peer, edge = ?self.edge, "link closed; event dropped");
                    self.dropped += 1;
                }
            }
        }
        if !self.waiting.is_empty() && !self.retry_scheduled {
            self.retry_scheduled = true;
            ctx.run_later(LINK_RETRY, |act, ctx| {
                act.retry_scheduled = false;
                act.flush(ctx);
            });
        }
    }
}

impl Actor for RemoteMailbox {
    type Context = Context<Self>;
}

impl Handler<DataMessage> for RemoteMailbox {
    type Result = ();
    fn handle(&mut self, msg: DataMessage, ctx: &mut Context<Self>) {
        if self.released {
            self.dropped += 1;
            return; // the message's credit returns as it drops
        }
        let event = match msg.event.try_map_batch(|b| {
            let bytes = self.codec.encode(&b.payload);
            b.recycle();
            bytes.map(BatchBytes)
        }) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(edge = ?self.edge, error = %e, "cannot encode a batch; dropped");
                self.dropped += 1;
                return;
            }
        };
        if let (Some(c), ChannelEvent::Batch(b)) = (&self.bytes_out, &event) {
            c.increment(b.len() as u64);
        }
        let edge = EdgeAddress {
            epoch: msg.epoch,
            channel: msg.channel,
            ..self.edge
        };
        self.waiting
            .push_back((Message::Data { edge, event }, msg.credit));
        self.flush(ctx);
    }
}

impl Handler<Release> for RemoteMailbox {
    type Result = ();
    fn handle(&mut self, _msg: Release, _ctx: &mut Context<Self>) {
        self.released = true;
        self.dropped += self.waiting.len() as u64;
        self.waiting.clear();
        self.held.clear();
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
    /// How many input channels it has: a frame naming another is refused.
    pub channels: u32,
    /// The subtask's `riffle_remote_bytes_in_total`, if counted.
    pub bytes_in: Option<metrics::Counter>,
    /// Credits of a channel returned together (1: each as its batch is handled). A sender
    /// holds more credits than this, so it never waits for the ones held back, and a
    /// `Credit` frame (and the wake-ups on both sides) serves several batches.
    pub credit_batch: u32,
    /// Credits handled and not returned yet, by sending subtask and input channel.
    pub pending: Arc<PendingCredits>,
}

/// Credits held back by a receiving node until a channel has [`Inbox::credit_batch`] of them.
#[derive(Debug, Default)]
pub struct PendingCredits(std::sync::Mutex<std::collections::HashMap<(u32, u32), u32>>);

impl PendingCredits {
    /// One more credit of `channel` (sender and input channel); the credits to return now, if
    /// it has `every` of them.
    fn add(&self, channel: (u32, u32), every: u32) -> Option<u32> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = p.entry(channel).or_insert(0);
        *n += 1;
        if *n < every {
            return None;
        }
        p.remove(&channel)
    }
}

/// Delivers a `Data` frame into `inbox`, with a credit that answers on `link` when dropped.
/// The batch's bytes count against the link's `budget` until then; `false` (and nothing
/// delivered) if the budget is exceeded — the peer sent more than its credits allow.
pub(crate) fn deliver(
    inbox: &Inbox,
    edge: EdgeAddress,
    event: WireEvent,
    link: LinkSender,
    budget: &Arc<LinkBudget>,
) -> bool {
    let bytes = match &event {
        ChannelEvent::Batch(b) => b.len(),
        _ => 0,
    };
    if !budget.take(bytes) {
        return false;
    }
    if let Some(c) = &inbox.bytes_in {
        c.increment(bytes as u64);
    }
    let decoded = event.try_map_batch(|b| {
        let (payload, len) = inbox.codec.decode(&b.0)?;
        Ok::<_, riffle_framework::CodecError>(RecordBatch::new(payload, len))
    });
    let event = match decoded {
        Ok(event) => event,
        Err(e) => {
            budget.give(bytes);
            tracing::error!(?edge, error = %e, "undecodable batch; dropped");
            let _ = link.send(Message::Credit { edge, n: 1 });
            return true;
        }
    };
    let held = budget.clone();
    let (pending, every) = (inbox.pending.clone(), inbox.credit_batch.max(1));
    let credit = RemoteCredit::new(move || {
        held.give(bytes);
        if let Some(n) = pending.add((edge.from, edge.channel), every) {
            let _ = link.send(Message::Credit { edge, n });
        }
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
    true
}

/// The memory a peer's delivered, not yet handled batches hold on this node.
pub(crate) struct LinkBudget {
    pub(crate) held: AtomicUsize,
    pub(crate) max: usize,
}

impl LinkBudget {
    /// Takes `bytes` from the budget; `false` (and nothing taken) if that would exceed it.
    pub(crate) fn take(&self, bytes: usize) -> bool {
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(bytes) > self.max {
                return false;
            }
            match self.held.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `bytes` back.
    pub(crate) fn give(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_budget_refuses_past_its_maximum_and_takes_back_what_returns() {
        let b = LinkBudget {
            held: AtomicUsize::new(0),
            max: 100,
        };
        assert!(b.take(60));
        assert!(b.take(40));
        assert!(!b.take(1), "the budget is spent");
        b.give(60);
        assert!(b.take(50));
        assert!(!b.take(usize::MAX), "no overflow");
    }
}
