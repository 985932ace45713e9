//! The mesh behind a [`Node`](crate::Node): its listener, heartbeats, failure detector and
//! the dials that keep the members a full mesh of verified links. The membership rules are in
//! [`crate::members`]; each link runs in [`crate::link`].

use crate::config::NodeConfig;
use crate::guard::Ticket;
use crate::handshake::{HandshakeConfig, Role};
use crate::link::link;
use crate::members::{detect, to_dial, Status};
use crate::session::Outgoing;
use crate::shared::Shared;
use crate::wire::{Message, RefuseReason};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a dial may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn handshake_config(
    cfg: &NodeConfig,
    local: SocketAddr,
    incarnation: u64,
) -> Option<HandshakeConfig> {
    Some(HandshakeConfig {
        incarnation,
        cluster: cfg.cluster.clone(),
        node: cfg.name.clone(),
        listen: cfg.advertise.clone().unwrap_or_else(|| local.to_string()),
        secret: cfg.secret.clone()?,
        encrypt: cfg.encrypt,
        timeout: cfg.handshake_timeout,
    })
}

/// Refuses a connection before its handshake: one frame, written only if the socket takes
/// it at once, then the socket closes.
fn turn_away(stream: TcpStream, reason: RefuseReason) {
    let mut buf = Vec::new();
    if crate::wire::encode(&Message::Refused(reason), &mut buf).is_ok() {
        let _ = stream.try_write(&buf);
    }
}

pub(crate) async fn run(
    cfg: NodeConfig,
    hs: HandshakeConfig,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => accept(stream, from, &cfg, &hs, &shared, &stop),
                Err(e) => {
                    // Out of files, most likely: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tick.tick() => {
                seq += 1;
                heartbeat(&cfg, &hs, seq, &shared, &stop);
            }
        }
    }
    // Dropping every session ends its writer; readers end with the runtime.
    shared.net.members.lock().sessions.clear();
}

/// An incoming connection: a place from admission control, then the link.
fn accept(
    stream: TcpStream,
    from: SocketAddr,
    cfg: &NodeConfig,
    hs: &HandshakeConfig,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    let ticket: Option<Ticket> = match &shared.admission {
        Some(adm) => match adm.admit(from.ip()) {
            Ok(t) => Some(t),
            Err(reason) => {
                tracing::debug!(%from, ?reason, "connection turned away");
                return turn_away(stream, reason);
            }
        },
        None => None,
    };
    tokio::spawn(link(
        stream,
        hs.clone(),
        Role::Responder,
        ticket,
        cfg.max_frame,
        cfg.link_budget,
        shared.clone(),
        stop.clone(),
        None,
    ));
}

/// One heartbeat round: detect silent peers (suspicions: see [`crate::verdict`]), send
/// heartbeats, decide the suspicions that are due, dial unlinked members.
fn heartbeat(
    cfg: &NodeConfig,
    hs: &HandshakeConfig,
    seq: u64,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    let (down, dial) = {
        let mut st = shared.net.members.lock();
        let down = detect(cfg, &mut st);
        let members: Vec<(String, String)> = st
            .members
            .iter()
            .filter(|(_, m)| m.status == Status::Up)
            .map(|(n, m)| (n.clone(), m.listen.clone()))
            .collect();
        // Heartbeats go on the links that are up (a session without a link drops them).
        let figures = riffle_actors::telemetry::take_live_updates();
        for (peer, s) in &st.sessions {
            let sent = s.enqueue(Outgoing::Frame(Message::Heartbeat {
                seq,
                members: members.clone(),
                figures: figures.clone(),
            }));
            if let (true, Some(c)) = (sent, shared.net.counters.get(peer)) {
                c.pinged(seq);
            }
        }
        let dial = to_dial(cfg, &mut st);
        (down, dial)
    };
    crate::hosting::expire_orphans(shared);
    publish_links(&cfg.name, shared);
    if !down.is_empty() {
        shared.net.members.notify();
        for node in down {
            crate::verdict::on_node_silent(shared, &cfg.name, &node);
        }
    }
    crate::verdict::judge(shared, &cfg.name);
    for (addr, expect) in dial {
        let (hs, shared, stop) = (hs.clone(), shared.clone(), stop.clone());
        let (max, budget) = (cfg.max_frame, cfg.link_budget);
        let target = match &cfg.dial_via {
            Some(via) => via(&addr),
            None => addr.clone(),
        };
        tokio::spawn(async move {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target));
            let connected = match connected.await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    dial_failed(&target, &e.to_string());
                    None
                }
                Err(_) => {
                    dial_failed(&target, &format!("no answer within {CONNECT_TIMEOUT:?}"));
                    None
                }
            };
            if let Some(stream) = connected {
                let role = Role::Initiator { expect };
                let dialled = Some(addr.clone());
                link(
                    stream,
                    hs,
                    role,
                    None,
                    max,
                    budget,
                    shared.clone(),
                    stop,
                    dialled,
                )
                .await;
            }
            shared.net.members.lock().dialing.remove(&addr);
        });
    }
}

/// Logs a failed dial of `addr` at warn, at most once every 5 s per address (dials are
/// retried on every tick), and at debug in between.
fn dial_failed(addr: &str, cause: &str) {
    type Seen = std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>;
    static LAST: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let last = LAST.get_or_init(Default::default);
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let due = last
        .get(addr)
        .is_none_or(|t| now.duration_since(*t) >= std::time::Duration::from_secs(5));
    if due {
        last.insert(addr.to_string(), now);
        tracing::warn!(%addr, %cause, "cannot reach a peer; retrying");
    } else {
        tracing::debug!(%addr, %cause, "cannot reach a peer; retrying");
    }
}

/// Publishes each link's figures to the metrics recorder (labels `from` and `to`): what
/// this node wrote (`riffle_link_bytes_total`, `riffle_link_frames_total`), the links made
/// again (`riffle_link_reconnects_total`) and the heartbeat round trip
/// (`riffle_link_rtt_seconds`).
fn publish_links(me: &str, shared: &Shared) {
    for e in shared.net.counters.iter() {
        let (peer, c) = (e.key(), e.value());
        let (_, bytes, frames, _, _) = c.totals(peer);
        let labels = [
            metrics::Label::new("from", me.to_string()),
            metrics::Label::new("to", peer.clone()),
        ];
        metrics::counter!("riffle_link_bytes_total", labels.iter()).absolute(bytes);
        metrics::counter!("riffle_link_frames_total", labels.iter()).absolute(frames);
        metrics::counter!("riffle_link_reconnects_total", labels.iter()).absolute(c.reconnects());
        if let Some(rtt) = c.rtt() {
            metrics::gauge!("riffle_link_rtt_seconds", labels.iter()).set(rtt.as_secs_f64());
        }
    }
}
