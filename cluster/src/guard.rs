//! Limits before trust: what a node grants a connection that has not authenticated yet.
//!
//! Every accepted connection needs a ticket before its handshake starts. A ticket is
//! refused (the connection gets `Refused(Busy)` or `Refused(RateLimited)` and is closed at
//! once, before anything is read) when
//! - the node already has [`Limits::max_pending`] handshakes under way, or
//!   [`Limits::max_pending_per_addr`] from the connection's IP address;
//! - the node has [`Limits::max_connections`] accepted connections (pending or linked), or
//!   [`Limits::max_connections_per_addr`] from the connection's IP address;
//! - the process is within [`Limits::fd_reserve`] files of its open-file limit, so that an
//!   attacker's connections can never take the files a running job needs.
//!
//! A ticket returns its place when dropped. Before the handshake completes a peer's frames are
//! limited to `HANDSHAKE_MAX_FRAME` bytes, and the handshake has a deadline, so an unfinished
//! handshake holds one socket and a few KiB for at most that long.
//!
//! Failed handshakes are counted ([`crate::Node::refusals`]) and end their own connection,
//! and nothing else: an address is never locked out for them. Nodes share addresses (the
//! processes of one host, pods behind one address), so a lockout by address would let anyone
//! who fails handshakes from that address — or a third party whose traffic appears to come
//! from it — keep the honest nodes there from linking again, for as long as it goes on. A
//! flood of handshakes is bounded by the pending limits instead: it costs a node at most
//! `max_pending` handshakes at once, and an address at most `max_pending_per_addr` of them,
//! however fast it fails.

use crate::wire::RefuseReason;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many connections, handshakes and failures a node accepts (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes under way at once (default 64).
    pub max_pending: usize,
    /// Handshakes under way at once from one IP address (default 16).
    pub max_pending_per_addr: usize,
    /// Accepted connections at once, pending or linked (default 256).
    pub max_connections: usize,
    /// Accepted connections at once from one IP address, pending or linked (default 64).
    pub max_connections_per_addr: usize,
    /// Open files kept free for the node's jobs: new connections are refused when fewer
    /// remain below the process's limit (default 128).
    pub fd_reserve: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: 64,
            max_pending_per_addr: 16,
            max_connections: 256,
            max_connections_per_addr: 64,
            fd_reserve: 128,
        }
    }
}

#[derive(Default)]
struct Counts {
    pending: usize,
    connections: usize,
    per_addr: HashMap<IpAddr, usize>,
    conns_per_addr: HashMap<IpAddr, usize>,
    refused: u64,
    files: FileGauge,
}

/// The process's open files, counted from `/proc/self/fd` only when needed: counting costs
/// about 0.5 ms with a thousand files open, too much for every connection of a flood.
#[derive(Default)]
struct FileGauge {
    /// Files open at the last count, and connections admitted since.
    counted: usize,
    admitted_since: usize,
    at: Option<Instant>,
    limit: Option<usize>,
}

impl FileGauge {
    /// Whether fewer than `reserve` files remain below the limit. Counts again when the last
    /// count is older than 100 ms or the estimate (last count + connections admitted since)
    /// comes within twice the reserve of the limit.
    fn near_limit(&mut self, reserve: usize) -> bool {
        let limit = match self.limit {
            Some(l) => l,
            None => match file_limit() {
                Some(l) => *self.limit.insert(l),
                None => return false,
            },
        };
        let estimate = self.counted + self.admitted_since;
        let stale = self
            .at
            .is_none_or(|t| t.elapsed() > Duration::from_millis(100));
        if stale || estimate + 2 * reserve >= limit {
            let Some(open) = open_files() else {
                return false;
            };
            self.counted = open;
            self.admitted_since = 0;
            self.at = Some(Instant::now());
        }
        self.counted + self.admitted_since + reserve >= limit
    }
}

/// A node's admission control for incoming connections.
pub(crate) struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// A connection's place: pending until [`Ticket::linked`], returned when dropped.
pub(crate) struct Ticket {
    adm: Arc<Admission>,
    ip: IpAddr,
    pending: bool,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, RefuseReason> {
        let mut c = self.lock();
        let l = &self.limits;
        let refuse = |c: &mut Counts, r| {
            c.refused += 1;
            Err(r)
        };
        let pending_from_ip = c.per_addr.get(&ip).copied().unwrap_or(0);
        let conns_from_ip = c.conns_per_addr.get(&ip).copied().unwrap_or(0);
        if c.pending >= l.max_pending
            || pending_from_ip >= l.max_pending_per_addr
            || c.connections >= l.max_connections
            || conns_from_ip >= l.max_connections_per_addr
            || c.files.near_limit(l.fd_reserve)
        {
            return refuse(&mut c, RefuseReason::Busy);
        }
        c.files.admitted_since += 1;
        c.pending += 1;
        c.connections += 1;
        *c.per_addr.entry(ip).or_default() += 1;
        *c.conns_per_addr.entry(ip).or_default() += 1;
        Ok(Ticket {
            adm: self.clone(),
            ip,
            pending: true,
        })
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.lock().refused
    }

    fn leave_pending(c: &mut Counts, ip: IpAddr) {
        c.pending = c.pending.saturating_sub(1);
        decrement(&mut c.per_addr, ip);
    }
}

impl Ticket {
    /// The handshake succeeded: the connection no longer counts as pending.
    pub(crate) fn linked(&mut self) {
        if std::mem::take(&mut self.pending) {
            Admission::leave_pending(&mut self.adm.lock(), self.ip);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.adm.lock();
        if self.pending {
            Admission::leave_pending(&mut c, self.ip);
        }
        c.connections = c.connections.saturating_sub(1);
        decrement(&mut c.conns_per_addr, self.ip);
    }
}

/// One less for `ip`; the entry goes at zero (the tables hold only addresses in use).
fn decrement(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = counts.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&ip);
        }
    }
}

/// The process's open files (Linux: `/proc/self/fd`).
fn open_files() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// The process's soft limit of open files, if it has one (Linux: `/proc/self/limits`).
fn file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What a node refused, since it started (see [`crate::Node::refusals`]).
#[derive(Default)]
pub(crate) struct RefusedCounts {
    /// Handshakes that failed (bad secret, malformed, timed out, refused by us).
    pub(crate) handshakes: AtomicU64,
    /// Authenticated links refused at registration (own id, id linked elsewhere).
    pub(crate) links: AtomicU64,
    /// Job frames from a node without authority over the job.
    pub(crate) frames: AtomicU64,
    /// Links closed because the peer held more memory than its budget.
    pub(crate) over_budget: AtomicU64,
    /// Links closed because an authenticated peer sent a frame naming something that does
    /// not exist ([`crate::FrameError`]).
    pub(crate) bad_frames: AtomicU64,
    /// Job frames refused because the leader that started the job was superseded.
    pub(crate) fenced: AtomicU64,
}

impl RefusedCounts {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn pending_limits_hold_and_tickets_return_their_place() {
        let adm = Admission::new(Limits {
            max_pending: 3,
            max_pending_per_addr: 2,
            ..Limits::default()
        });
        let a1 = adm.admit(ip(1)).expect("first");
        let _a2 = adm.admit(ip(1)).expect("second");
        assert_eq!(
            adm.admit(ip(1)).err(),
            Some(RefuseReason::Busy),
            "per address"
        );
        let _b = adm.admit(ip(2)).expect("another address");
        assert_eq!(adm.admit(ip(3)).err(), Some(RefuseReason::Busy), "per node");
        drop(a1);
        let mut c = adm.admit(ip(3)).expect("a place came back");
        c.linked();
        let _d = adm
            .admit(ip(4))
            .expect("a linked connection is not pending");
        assert_eq!(adm.refused(), 2);
    }

    #[test]
    fn connections_per_address_count_linked_ones_too() {
        let adm = Admission::new(Limits {
            max_connections_per_addr: 2,
            ..Limits::default()
        });
        let mut a = adm.admit(ip(1)).expect("first");
        a.linked();
        let _b = adm.admit(ip(1)).expect("second");
        assert_eq!(adm.admit(ip(1)).err(), Some(RefuseReason::Busy));
        drop(a);
        assert!(
            adm.admit(ip(1)).is_ok(),
            "a closed link gives its place back"
        );
    }

    #[test]
    fn failed_handshakes_never_lock_an_address_out() {
        let adm = Admission::new(Limits {
            max_pending_per_addr: 2,
            ..Limits::default()
        });
        // A thousand failed handshakes from an address: each held a place while it ran and
        // gave it back when it failed.
        for _ in 0..1000 {
            drop(adm.admit(ip(1)).expect("a place"));
        }
        let mut honest = adm
            .admit(ip(1))
            .expect("a node at that address is admitted");
        honest.linked();
        assert_eq!(adm.refused(), 0);
    }

    #[test]
    fn the_open_file_limit_is_read_and_approached() {
        let limit = file_limit().expect("a limit");
        let open = open_files().expect("open files");
        let mut g = FileGauge::default();
        assert!(
            !g.near_limit(limit.saturating_sub(open + 8)),
            "well below the limit"
        );
        assert!(g.near_limit(limit - open + 1), "within the reserve");
    }
}
