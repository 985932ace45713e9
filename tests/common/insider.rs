//! A client that holds the cluster's secret and speaks the wire protocol by hand: an
//! authenticated member that does whatever a test tells it (forge frames, stay silent).

use riffle::cluster::Secret;
use riffle::internals::cluster::wire::{encode, Message};
use riffle::internals::cluster::{handshake, HandshakeConfig, Role};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Opens an authenticated link to `addr` as node `id` (announcing `listen`), with the
/// cluster's `secret`, and starts a fresh session on it: the node then reads frames from it
/// as from any member.
pub async fn insider(addr: &str, id: &str, listen: &str, secret: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let cfg = HandshakeConfig {
        cluster: "riffle".into(),
        node: id.into(),
        listen: listen.into(),
        secret: Secret::new(secret).expect("secret"),
        encrypt: false,
        timeout: Duration::from_secs(5),
        incarnation: 7,
    };
    handshake(&mut s, &cfg, Role::Initiator { expect: None })
        .await
        .expect("the insider holds the secret");
    send(
        &mut s,
        &Message::Resume {
            session: 1,
            peer_session: 0,
            received: 0,
        },
    )
    .await;
    s
}

/// Writes the frame of `m` (a write error is ignored: the node may have closed the link).
pub async fn send<W: tokio::io::AsyncWrite + Unpin>(s: &mut W, m: &Message) {
    let mut buf = Vec::new();
    encode(m, &mut buf).expect("encode");
    let _ = s.write_all(&buf).await;
}
