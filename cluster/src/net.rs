//! What a node's links and the subtasks behind them share: the membership (with the open
//! links), the directory of local inboxes that receive remote channels, the credit returns of
//! remote mailboxes, the figures of each link, and the failure reports waiting for their
//! coordinator's decision. Job proxies and resolvers hold this part, not the whole node.

use crate::counters::{LinkCounters, LinkTotals};
use crate::members::Membership;
use crate::remote::{CreditsReturned, Inbox};
use crate::session::LinkSender;
use crate::wire::ChannelKey;
use actix::prelude::Recipient;
use dashmap::DashMap;
use riffle_actors::Decision;
use riffle_framework::TaskId;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The network side of a node (see the module docs).
#[derive(Default)]
pub(crate) struct Net {
    /// Members and links.
    pub(crate) members: Membership,
    /// Local subtasks that receive remote channels: (job, chain, subtask) → inbox.
    pub(crate) inboxes: DashMap<(u64, u32, u32), Inbox>,
    /// Remote mailboxes waiting for credits, by channel.
    pub(crate) returns: DashMap<ChannelKey, Recipient<CreditsReturned>>,
    /// What this node wrote on its link to each peer (since it started).
    pub(crate) counters: DashMap<String, Arc<LinkCounters>>,
    /// Failure reports of hosted subtasks waiting for the coordinator's decision.
    pub(crate) replies: DashMap<(u64, TaskId), oneshot::Sender<Decision>>,
}

impl Net {
    /// The link to `peer`, if it is up.
    pub(crate) fn link_sender(&self, peer: &str) -> Option<LinkSender> {
        self.members.link_sender(peer)
    }

    /// Every link that is up.
    pub(crate) fn all_links(&self) -> Vec<LinkSender> {
        self.members.all_links()
    }

    /// The members that are up.
    pub(crate) fn up_peers(&self) -> Vec<String> {
        self.members.up_peers()
    }

    /// What this node wrote to each peer so far.
    pub(crate) fn link_totals(&self) -> LinkTotals {
        let mut v: LinkTotals = self
            .counters
            .iter()
            .map(|e| e.value().totals(e.key()))
            .collect();
        v.sort();
        v
    }
}
