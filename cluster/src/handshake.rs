//! The link handshake: versions, cluster name, node ids and a shared-secret
//! challenge–response (HMAC-SHA256), both ways.
//!
//! ```text
//! A → B  Hello { version, cluster, node: A, nonce: nA }     (and B → A the same, with nB)
//! A → B  Auth { HMAC(secret, "riffle-link-v1" | cluster | A | nB) }   (B → A likewise)
//! A → B  Welcome                                            (once B's Auth checked out)
//! ```
//! Each side signs the *other* side's fresh nonce, so a recorded handshake cannot be replayed,
//! and checks the peer's MAC in constant time. A mismatch of version, cluster or secret makes
//! the checking side send `Refused(reason)` and close; the whole handshake has a deadline.

use crate::wire::{
    read_frame, write_frame, Auth, Hello, Message, RefuseReason, WireError, PROTOCOL_VERSION,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a node presents when it links to a peer.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The cluster's name; peers of another cluster are refused.
    pub cluster: String,
    /// This node's id.
    pub node: String,
    /// The address this node listens on (told to the peer).
    pub listen: String,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// Largest frame accepted.
    pub max_frame: u32,
    /// Deadline for the whole handshake.
    pub timeout: Duration,
}

/// The peer at the other end of an established link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// The address it listens on.
    pub listen: String,
}

/// Why a link could not be established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A frame was bad or the link failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer refused us.
    #[error("refused by the peer: {0:?}")]
    Refused(RefuseReason),
    /// We refused the peer (told it so, and closed).
    #[error("refused peer `{peer}`: {reason:?}")]
    Rejected {
        /// Why.
        reason: RefuseReason,
        /// Its node id as it claimed.
        peer: String,
    },
    /// The peer sent a message out of order.
    #[error("expected {expected} during the handshake, got a frame of tag {got}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// The tag received.
        got: u8,
    },
    /// The handshake did not finish in time.
    #[error("the handshake timed out")]
    Timeout,
    /// No randomness for the challenge, or an unusable secret.
    #[error("cannot run the handshake: {0}")]
    Setup(String),
}

/// HMAC-SHA256(secret, "riffle-link-v1" | cluster | 0 | signer | 0 | nonce).
fn mac(
    secret: &[u8],
    cluster: &str,
    signer: &str,
    nonce: &[u8; 32],
) -> Result<Hmac<Sha256>, HandshakeError> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|e| HandshakeError::Setup(e.to_string()))?;
    m.update(b"riffle-link-v1");
    m.update(cluster.as_bytes());
    m.update(&[0]);
    m.update(signer.as_bytes());
    m.update(&[0]);
    m.update(nonce);
    Ok(m)
}

async fn expect<S: AsyncRead + Unpin>(
    s: &mut S,
    max: u32,
    expected: &'static str,
) -> Result<Message, HandshakeError> {
    match read_frame(s, max).await? {
        Message::Refused(r) => Err(HandshakeError::Refused(r)),
        m => {
            let ok = matches!(
                (&m, expected),
                (Message::Hello(_), "Hello")
                    | (Message::Auth(_), "Auth")
                    | (Message::Welcome, "Welcome")
            );
            if ok {
                Ok(m)
            } else {
                Err(HandshakeError::Unexpected {
                    expected,
                    got: m.tag(),
                })
            }
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    reason: RefuseReason,
    peer: &str,
) -> HandshakeError {
    let _ = write_frame(s, &Message::Refused(reason.clone())).await;
    tracing::warn!(peer, ?reason, "peer refused");
    HandshakeError::Rejected {
        reason,
        peer: peer.to_string(),
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &HandshakeConfig,
) -> Result<Peer, HandshakeError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Setup(e.to_string()))?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        cluster: cfg.cluster.clone(),
        node: cfg.node.clone(),
        listen: cfg.listen.clone(),
        nonce,
    };
    write_frame(s, &Message::Hello(hello)).await?;
    let Message::Hello(theirs) = expect(s, cfg.max_frame, "Hello").await? else {
        return Err(HandshakeError::Unexpected {
            expected: "Hello",
            got: 0,
        });
    };
    if theirs.version != PROTOCOL_VERSION {
        return Err(refuse(s, RefuseReason::Version, &theirs.node).await);
    }
    if theirs.cluster != cfg.cluster {
        return Err(refuse(s, RefuseReason::Cluster, &theirs.node).await);
    }
    let proof = mac(&cfg.secret, &cfg.cluster, &cfg.node, &theirs.nonce)?
        .finalize()
        .into_bytes();
    write_frame(
        s,
        &Message::Auth(Auth {
            mac: proof.to_vec(),
        }),
    )
    .await?;
    let Message::Auth(auth) = expect(s, cfg.max_frame, "Auth").await? else {
        return Err(HandshakeError::Unexpected {
            expected: "Auth",
            got: 0,
        });
    };
    if mac(&cfg.secret, &cfg.cluster, &theirs.node, &nonce)?
        .verify_slice(&auth.mac)
        .is_err()
    {
        return Err(refuse(s, RefuseReason::BadAuth, &theirs.node).await);
    }
    write_frame(s, &Message::Welcome).await?;
    expect(s, cfg.max_frame, "Welcome").await?;
    Ok(Peer {
        node: theirs.node,
        listen: theirs.listen,
    })
}

/// Runs the handshake on a fresh link (either side; it is symmetric).
///
/// # Errors
/// [`HandshakeError::Rejected`] when this side refused the peer (wrong version, cluster or
/// secret), [`HandshakeError::Refused`] when the peer refused us, [`HandshakeError::Timeout`],
/// or a wire error for a malformed or unexpected frame.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &HandshakeConfig,
) -> Result<Peer, HandshakeError> {
    tokio::time::timeout(cfg.timeout, run(s, cfg))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DEFAULT_MAX_FRAME;
    use tokio::io::AsyncWriteExt;

    fn cfg(node: &str, secret: &[u8], cluster: &str) -> HandshakeConfig {
        HandshakeConfig {
            cluster: cluster.to_string(),
            node: node.to_string(),
            listen: format!("{node}:0"),
            secret: secret.to_vec(),
            max_frame: DEFAULT_MAX_FRAME,
            timeout: Duration::from_secs(5),
        }
    }

    async fn pair(
        a: HandshakeConfig,
        b: HandshakeConfig,
    ) -> (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>) {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        tokio::join!(handshake(&mut x, &a), handshake(&mut y, &b))
    }

    #[tokio::test]
    async fn same_secret_links_and_learns_the_peer() {
        let (a, b) = pair(cfg("a", b"s3cret", "c"), cfg("b", b"s3cret", "c")).await;
        assert_eq!(a.expect("a links").node, "b");
        assert_eq!(b.expect("b links").node, "a");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_both_ways() {
        let (a, b) = pair(cfg("a", b"s3cret", "c"), cfg("b", b"guess", "c")).await;
        for r in [a, b] {
            assert!(
                matches!(
                    r,
                    Err(HandshakeError::Rejected {
                        reason: RefuseReason::BadAuth,
                        ..
                    }) | Err(HandshakeError::Refused(RefuseReason::BadAuth))
                ),
                "{r:?}"
            );
        }
    }

    #[tokio::test]
    async fn another_cluster_is_refused() {
        let (a, _b) = pair(cfg("a", b"s", "blue"), cfg("b", b"s", "green")).await;
        assert!(
            matches!(
                a,
                Err(HandshakeError::Rejected {
                    reason: RefuseReason::Cluster,
                    ..
                })
            ),
            "{a:?}"
        );
    }

    #[tokio::test]
    async fn garbage_and_silence_are_typed_errors() {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let garbage = async move {
            let _ = y.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
            y
        };
        let c = cfg("a", b"s", "c");
        let (r, _y) = tokio::join!(handshake(&mut x, &c), garbage);
        assert!(
            matches!(
                r,
                Err(HandshakeError::Wire(WireError::FrameTooLarge { .. }))
            ),
            "{r:?}"
        );

        let (mut x, _y) = tokio::io::duplex(1 << 16);
        let mut quick = cfg("a", b"s", "c");
        quick.timeout = Duration::from_millis(50);
        let r = handshake(&mut x, &quick).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn links_over_tcp_on_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            handshake(&mut s, &cfg("server", b"k", "c")).await
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let client = handshake(&mut c, &cfg("client", b"k", "c")).await;
        assert_eq!(client.expect("client").node, "server");
        assert_eq!(server.await.expect("join").expect("server").node, "client");
    }
}
