//! What a node wrote on its link to each peer: frames and bytes by kind, writes, links made
//! and the heartbeats' round trip — the figures behind `Node::links` and
//! `Node::link_writes`.

use crate::wire::Message;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per peer: bytes, frames, data frames, credit frames.
pub(crate) type LinkTotals = Vec<(String, u64, u64, u64, u64)>;

/// What a node wrote on its link to one peer, how often a link to it was made, and the
/// round trip of its heartbeats.
#[derive(Default)]
pub(crate) struct LinkCounters {
    bytes: AtomicU64,
    frames: AtomicU64,
    data: AtomicU64,
    credit: AtomicU64,
    /// Links made to the peer (authenticated and up).
    links: AtomicU64,
    /// The last heartbeat sent: its `seq` and when.
    ping: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// The last measured round trip in microseconds (0: none yet).
    rtt_micros: AtomicU64,
    /// Writes on the connection (each `write_all` of a gathered buffer) and their bytes.
    writes: AtomicU64,
    written: AtomicU64,
    /// Of the writes, those the sending thread made itself (no wake-up of the writer task).
    direct: AtomicU64,
}

impl LinkCounters {
    /// A gathered buffer of `bytes` was written on the connection.
    pub(crate) fn wrote(&self, bytes: usize) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A frame was written by the thread that sent it, `bytes` of it at once.
    pub(crate) fn wrote_direct(&self, bytes: usize) {
        self.direct.fetch_add(1, Ordering::Relaxed);
        self.wrote(bytes);
    }

    /// Writes the sending threads made themselves.
    pub(crate) fn direct_writes(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Writes on the connection so far, and their bytes.
    pub(crate) fn writes(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// A link to the peer came up.
    pub(crate) fn linked(&self) {
        self.links.fetch_add(1, Ordering::Relaxed);
    }

    /// Links made after the first: reconnects.
    pub(crate) fn reconnects(&self) -> u64 {
        self.links.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Heartbeat `seq` goes out now.
    pub(crate) fn pinged(&self, seq: u64) {
        let mut p = self.ping.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some((seq, std::time::Instant::now()));
    }

    /// The peer answered heartbeat `seq` (an answer to an older one is ignored).
    pub(crate) fn answered(&self, seq: u64) {
        let p = *self.ping.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, at)) = p.filter(|(sent, _)| *sent == seq) {
            let micros = (at.elapsed().as_micros() as u64).max(1);
            self.rtt_micros.store(micros, Ordering::Relaxed);
        }
    }

    /// The last heartbeat round trip, if one was measured.
    pub(crate) fn rtt(&self) -> Option<std::time::Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    pub(crate) fn count(&self, m: &Message, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        match m {
            Message::Data { .. } => self.data.fetch_add(1, Ordering::Relaxed),
            Message::Credit { .. } => self.credit.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// The totals for `peer`: (peer, bytes, frames, data frames, credit frames).
    pub(crate) fn totals(&self, peer: &str) -> (String, u64, u64, u64, u64) {
        (
            peer.to_string(),
            self.bytes.load(Ordering::Relaxed),
            self.frames.load(Ordering::Relaxed),
            self.data.load(Ordering::Relaxed),
            self.credit.load(Ordering::Relaxed),
        )
    }
}
