//! Agreement about who is down: a node's failure detector only *suspects*; the loss of a node
//! is decided by whoever answers for the jobs concerned, and applied by every node.
//!
//! - A node decides for itself about the members its own jobs depend on: the hosts of a job it
//!   coordinates (their subtasks are re-placed and the job recovers), and the coordinator of a
//!   job it hosts (its part stops and waits for the job's end). Their sessions end then.
//! - About any other member — another host of the same jobs — it decides nothing: the session
//!   is kept with every frame not acknowledged, the channels to that member wait under their
//!   credits, its link is dialled again, and the coordinator of every job this node hosts is
//!   told (`Unreachable`). If the link comes back within a failure timeout, the session
//!   resumes and the suspicion is withdrawn (`Reachable`); otherwise, or at once if their
//!   session broke and frames may be lost, the coordinator declares the suspect lost to every
//!   job that has parts on both: its subtasks are re-placed, the job recovers from its latest
//!   checkpoint, and the suspect is told to stop its part (`Dismiss`).
//!
//! So a link that stays down between two nodes that both reach the coordinator ends in one
//! decision, and no node ever drops frames a job still needs on its own suspicion (a barrier
//! that crosses a session arrives after every frame sent before it, so a checkpoint cannot
//! complete across a channel whose frames were lost). The suspicions themselves are plain
//! state in [`crate::suspicions`].

use crate::hosting::{coordinated_jobs, on_node_down, re_place, survivors};
use crate::members::declare_down;
use crate::shared::Shared;
use crate::wire::Message;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

fn suspicions(shared: &Shared) -> MutexGuard<'_, crate::suspicions::Suspicions> {
    shared.suspicions.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this node decides about `node` itself: it coordinates a job with parts on it, or
/// `node` coordinates a job hosted here.
fn decides(shared: &Shared, node: &str) -> bool {
    hosts_here(shared, node) || shared.jobs.hosted.iter().any(|h| h.coordinator == node)
}

/// The failure detector declared `node` down (silent past the failure timeout; its session is
/// kept): decided here if this node answers for it, else reported to the coordinators.
pub(crate) fn on_node_silent(shared: &Arc<Shared>, me: &str, node: &str) {
    if decides(shared, node) {
        declare_down(&mut shared.net.members.lock(), node);
        let up = shared.net.up_peers();
        on_node_down(shared, me, node, &up);
    } else {
        report(shared, node, false);
    }
}

/// The session with `node` ended without a decision (the peer restarted, did not keep the
/// session, or broke the protocol): frames between the two may be lost, and a job with
/// parts on both cannot go on from where it is.
pub(crate) fn on_session_lost(shared: &Arc<Shared>, me: &str, node: &str) {
    shared.net.members.notify();
    if decides(shared, node) {
        let up = shared.net.up_peers();
        on_node_down(shared, me, node, &up);
    } else {
        report(shared, node, true);
    }
}

/// Tells the coordinators of the jobs hosted here that `node` is unreachable.
fn report(shared: &Shared, node: &str, lost: bool) {
    let mut coordinators: Vec<String> = shared
        .jobs
        .hosted
        .iter()
        .map(|h| h.coordinator.clone())
        .filter(|c| c != node)
        .collect();
    coordinators.sort();
    coordinators.dedup();
    if coordinators.is_empty() {
        tracing::debug!(peer = %node, lost, "a member is unreachable; no job here depends on it");
        return;
    }
    for c in &coordinators {
        if let Some(link) = shared.net.link_sender(c) {
            let _ = link.send(Message::Unreachable {
                node: node.to_string(),
                lost,
            });
        }
    }
    if lost {
        tracing::warn!(peer = %node, ?coordinators, "the session with a member broke (frames may be lost); its jobs' coordinators decide");
    } else {
        tracing::warn!(peer = %node, ?coordinators, "a member is unreachable; its session is kept and its jobs' coordinators decide");
    }
    suspicions(shared).reported(node, &coordinators);
}

/// The session with `node` resumed on a new link: the coordinators told it was unreachable
/// are told it is reachable again.
pub(crate) fn on_reachable(shared: &Shared, node: &str) {
    let coordinators = suspicions(shared).take_reported(node);
    for c in &coordinators {
        if let Some(link) = shared.net.link_sender(c) {
            let _ = link.send(Message::Reachable {
                node: node.to_string(),
            });
        }
    }
    if !coordinators.is_empty() {
        tracing::info!(peer = %node, "a member is reachable again; its session resumed with every frame kept");
    }
}

/// Whether `peer` hosts part of a job this node coordinates (only they may report).
fn hosts_here(shared: &Shared, peer: &str) -> bool {
    shared.jobs.coordinated.iter().any(|c| c.has_part_on(peer))
}

/// An `Unreachable` or `Reachable` frame from `peer` (other frames are ignored). An
/// `Unreachable` from a node that hosts nothing this node coordinates is refused and counted.
pub(crate) fn on_frame(shared: &Arc<Shared>, me: &str, peer: &str, msg: Message) {
    let (node, lost) = match msg {
        Message::Unreachable { node, lost } => (node, Some(lost)),
        Message::Reachable { node } => (node, None),
        _ => return,
    };
    // A withdrawal changes nothing but its sender's own report (it may come after the job
    // ended); a report must come from a node of a job coordinated here.
    if lost.is_some() && !hosts_here(shared, peer) {
        crate::guard::RefusedCounts::add(&shared.refused.frames);
        tracing::warn!(%peer, %node, "a reachability report from a node that hosts no job coordinated here; refused");
        return;
    }
    match lost {
        Some(lost) => {
            tracing::warn!(reporter = %peer, suspect = %node, lost, "a hosting node cannot reach another");
            suspicions(shared).report(peer, &node, lost, Instant::now());
            if lost {
                judge(shared, me);
            }
        }
        None => {
            if suspicions(shared).withdraw(peer, &node) {
                tracing::info!(reporter = %peer, suspect = %node, "the suspicion is withdrawn: the link is back");
            }
        }
    }
}

/// Decides the suspicions that are due (every heartbeat, and at once for lost frames).
pub(crate) fn judge(shared: &Arc<Shared>, me: &str) {
    let due = suspicions(shared).due(Instant::now());
    for (reporter, suspect) in due {
        evict(shared, me, &suspect, &reporter);
    }
}

/// `reporter` could not reach `suspect` in time: `suspect` is declared lost to every job this
/// node coordinates that has parts on both, and told so.
fn evict(shared: &Arc<Shared>, me: &str, suspect: &str, reporter: &str) {
    if suspect == me {
        // A host that cannot reach its coordinator decides that itself.
        return;
    }
    let survivors = survivors(me, suspect, &shared.net.up_peers());
    for (job, c) in coordinated_jobs(shared) {
        let both = c.resolver.placement.iter().any(|e| e.value() == reporter);
        if !both || !re_place(me, job, &c, suspect, &survivors) {
            continue;
        }
        tracing::warn!(job, node = %suspect, %reporter, "a link between two nodes of the job stayed down: the node is declared lost to the job, which recovers without it");
        if let Some(link) = shared.net.link_sender(suspect) {
            let _ = link.send(Message::Dismiss { job });
        }
    }
}
