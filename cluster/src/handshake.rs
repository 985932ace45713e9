//! The link handshake: versions, cluster name and node ids in the clear, then a Noise
//! `NNpsk0` handshake over the cluster's pre-shared key that binds all of it.
//!
//! ```text
//! I → R  Hello { version, cluster, node: I, listen, nonce: nI, encrypt, incarnation }
//! R → I  Hello { version, cluster, node: R, listen, nonce: nR, encrypt, incarnation }
//! I → R  Noise(psk, e)       prologue = "riffle-link-v3" | Hello_I | Hello_R
//! R → I  Noise(e, ee)
//! ```
//! The initiator (I) is the side that dialled, the responder (R) the side that accepted.
//!
//! Why Noise and not a home-made MAC exchange: the first protocol (version 1) had each side
//! sign the other's nonce with an HMAC over its own id, and sent its proof before checking the
//! peer's — so a client without the secret could have node A sign node B's challenge and
//! reflect it (found by a probe: 12 of 12 attempts accepted). `NNpsk0` from the Noise framework
//! (through the `snow` crate) is a reviewed construction that gives what the link needs:
//! - **Both hellos are in the prologue**, so each side's proof covers both node ids, both
//!   nonces, the listen addresses, the version, the cluster name and the encryption choice;
//!   a relay that changes a byte of either hello makes the handshake fail.
//! - **Roles are part of Noise**: the initiator's message and the responder's message are not
//!   interchangeable, so nothing can be reflected from one connection into another.
//! - **The responder proves itself only after verifying the initiator**: it sends its Noise
//!   message only once the initiator's decrypted under the pre-shared key, and the responder's
//!   fresh nonce is in that message's prologue, so a recorded first message cannot be replayed.
//! - **Fresh keys per link** (ephemeral Diffie–Hellman), which encrypt the link after the
//!   handshake when both sides ask for it ([`crate::secure`]).
//!
//! A node refuses a peer that claims its own id, a dialled address that answers with another
//! node id than the member dialled, another version, cluster or encryption setting, and a
//! malformed node id. Every frame of the handshake is read with [`HANDSHAKE_MAX_FRAME`] as its
//! limit, and the whole handshake has a deadline.
//!
//! [`Handshake`] is the state machine without I/O (its property test lets an attacker relay,
//! reorder and replay messages between connections); [`handshake`] drives it over a stream.

use crate::secret::Secret;
use crate::secure::LinkCipher;
use crate::wire::{
    read_frame, write_frame, Hello, Message, RefuseReason, WireError, HANDSHAKE_MAX_FRAME,
    PROTOCOL_VERSION,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The Noise protocol the handshake runs.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Longest node id accepted, in bytes.
pub const MAX_NODE_ID: usize = 128;

/// Longest handshake message (Noise's limit).
const NOISE_MAX: usize = 65535;

/// What a node presents when it links to a peer.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// The cluster's name; peers of another cluster are refused.
    pub cluster: String,
    /// This node's id.
    pub node: String,
    /// The address this node listens on (told to the peer).
    pub listen: String,
    /// The shared secret (its `Debug` is redacted).
    pub secret: Secret,
    /// Encrypt the link after the handshake; both sides must agree.
    pub encrypt: bool,
    /// Deadline for the whole handshake.
    pub timeout: Duration,
    /// This process's incarnation (random, drawn when the node started; see
    /// [`crate::wire::Hello::incarnation`]).
    pub incarnation: u64,
}

/// Which side of a link this node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It dialled; `expect` is the node id it means to reach, when it knows it (a member, not
    /// a seed address): any other id answering there is refused.
    Initiator {
        /// The node id expected at the dialled address.
        expect: Option<String>,
    },
    /// It accepted the connection.
    Responder,
}

/// The peer at the other end of an established link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// The address it listens on.
    pub listen: String,
    /// Its process's incarnation: another one under the same id is a restarted process.
    pub incarnation: u64,
}

/// A link that passed the handshake.
#[derive(Debug)]
pub struct Established {
    /// Who is at the other end.
    pub peer: Peer,
    /// The link's keys, when both sides encrypt.
    pub cipher: Option<LinkCipher>,
    /// The Noise handshake hash: equal at both ends of one link, and unique to it.
    pub transcript: Vec<u8>,
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
        /// Its node id as it claimed (empty before its hello).
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
    /// No randomness for the handshake, or an internal error of the Noise library.
    #[error("cannot run the handshake: {0}")]
    Setup(String),
}

/// What the state machine asks its driver to do after a message.
#[derive(Debug)]
pub enum Step {
    /// Send this message and wait for the next one.
    Send(Message),
    /// The link is established (after sending `send`, if any).
    Done {
        /// The last message to send.
        send: Option<Message>,
        /// The established link.
        link: Established,
    },
}

enum Phase {
    AwaitHello,
    AwaitNoise(Box<snow::HandshakeState>),
    Over,
}

/// The handshake of one side of one link, as a state machine without I/O.
pub struct Handshake {
    cfg: HandshakeConfig,
    psk: [u8; 32],
    role: Role,
    mine: Hello,
    peer_id: String,
    peer_listen: String,
    peer_incarnation: u64,
    phase: Phase,
}

fn setup(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Setup(e.to_string())
}

/// Whether `id` can be a node id: 1 to [`MAX_NODE_ID`] bytes, printable, no whitespace.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NODE_ID && id.chars().all(|c| c.is_ascii_graphic())
}

impl Handshake {
    /// Starts one side of a handshake; the initiator's first message comes back with it.
    ///
    /// # Errors
    /// [`HandshakeError::Setup`] without randomness.
    pub fn start(
        cfg: &HandshakeConfig,
        role: Role,
    ) -> Result<(Handshake, Option<Message>), HandshakeError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(setup)?;
        let mine = Hello {
            version: PROTOCOL_VERSION,
            cluster: cfg.cluster.clone(),
            node: cfg.node.clone(),
            listen: cfg.listen.clone(),
            nonce,
            encrypt: cfg.encrypt,
            incarnation: cfg.incarnation,
        };
        let first = matches!(role, Role::Initiator { .. }).then(|| Message::Hello(mine.clone()));
        let hs = Handshake {
            psk: cfg.secret.psk(&cfg.cluster),
            cfg: cfg.clone(),
            role,
            mine,
            peer_id: String::new(),
            peer_listen: String::new(),
            peer_incarnation: 0,
            phase: Phase::AwaitHello,
        };
        Ok((hs, first))
    }

    fn reject(&self, reason: RefuseReason) -> HandshakeError {
        HandshakeError::Rejected {
            reason,
            peer: self.peer_id.clone(),
        }
    }

    /// Why the peer's hello is refused, if it is.
    fn check(&self, theirs: &Hello) -> Option<RefuseReason> {
        if theirs.version != PROTOCOL_VERSION {
            return Some(RefuseReason::Version);
        }
        if theirs.cluster != self.cfg.cluster {
            return Some(RefuseReason::Cluster);
        }
        if !valid_node_id(&theirs.node) || theirs.listen.len() > 256 {
            return Some(RefuseReason::BadNodeId);
        }
        if theirs.node == self.cfg.node {
            return Some(RefuseReason::SelfId);
        }
        if let Role::Initiator { expect: Some(e) } = &self.role {
            if *e != theirs.node {
                return Some(RefuseReason::UnexpectedNode);
            }
        }
        if theirs.encrypt != self.cfg.encrypt {
            return Some(RefuseReason::Encryption);
        }
        None
    }

    /// The Noise state for this side, bound to both hellos.
    fn noise(&self, theirs: &Hello) -> Result<snow::HandshakeState, HandshakeError> {
        let (first, second) = match self.role {
            Role::Initiator { .. } => (&self.mine, theirs),
            Role::Responder => (theirs, &self.mine),
        };
        let mut prologue = b"riffle-link-v3".to_vec();
        prologue.extend(rmp_serde::to_vec(first).map_err(setup)?);
        prologue.extend(rmp_serde::to_vec(second).map_err(setup)?);
        let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(setup)?;
        let b = snow::Builder::new(params)
            .psk(0, &self.psk)
            .map_err(setup)?
            .prologue(&prologue)
            .map_err(setup)?;
        match self.role {
            Role::Initiator { .. } => b.build_initiator(),
            Role::Responder => b.build_responder(),
        }
        .map_err(setup)
    }

    fn on_hello(&mut self, theirs: Hello) -> Result<Step, HandshakeError> {
        self.peer_id = theirs.node.clone();
        if let Some(reason) = self.check(&theirs) {
            return Err(self.reject(reason));
        }
        let mut noise = self.noise(&theirs)?;
        let reply = match self.role {
            Role::Responder => Message::Hello(self.mine.clone()),
            Role::Initiator { .. } => {
                let mut buf = vec![0u8; NOISE_MAX];
                let n = noise.write_message(&[], &mut buf).map_err(setup)?;
                buf.truncate(n);
                Message::Noise(buf)
            }
        };
        self.phase = Phase::AwaitNoise(Box::new(noise));
        self.peer_listen = theirs.listen;
        self.peer_incarnation = theirs.incarnation;
        Ok(Step::Send(reply))
    }

    fn on_noise(
        &mut self,
        mut noise: Box<snow::HandshakeState>,
        msg: &[u8],
    ) -> Result<Step, HandshakeError> {
        let mut payload = vec![0u8; NOISE_MAX];
        if noise.read_message(msg, &mut payload).is_err() {
            return Err(self.reject(RefuseReason::BadAuth));
        }
        let send = if noise.is_handshake_finished() {
            None
        } else {
            let mut buf = vec![0u8; NOISE_MAX];
            let n = noise.write_message(&[], &mut buf).map_err(setup)?;
            buf.truncate(n);
            Some(Message::Noise(buf))
        };
        if !noise.is_handshake_finished() {
            return Err(setup("the Noise handshake did not finish in two messages"));
        }
        let transcript = noise.get_handshake_hash().to_vec();
        let cipher = if self.cfg.encrypt {
            Some(LinkCipher::new(
                noise.into_stateless_transport_mode().map_err(setup)?,
            ))
        } else {
            None
        };
        let link = Established {
            peer: Peer {
                node: self.peer_id.clone(),
                listen: std::mem::take(&mut self.peer_listen),
                incarnation: self.peer_incarnation,
            },
            cipher,
            transcript,
        };
        Ok(Step::Done { send, link })
    }

    /// Takes the peer's next message.
    ///
    /// # Errors
    /// [`HandshakeError::Rejected`] when this side refuses the peer (the driver sends
    /// `Refused` with the reason), [`HandshakeError::Refused`] when the peer refused us,
    /// [`HandshakeError::Unexpected`] for a message out of order. After an error the
    /// handshake is over.
    pub fn on_message(&mut self, msg: Message) -> Result<Step, HandshakeError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Over);
        match (phase, msg) {
            (_, Message::Refused(r)) => Err(HandshakeError::Refused(r)),
            (Phase::AwaitHello, Message::Hello(h)) => self.on_hello(h),
            (Phase::AwaitNoise(n), Message::Noise(m)) => self.on_noise(n, &m),
            (Phase::AwaitHello, m) => Err(HandshakeError::Unexpected {
                expected: "Hello",
                got: m.tag(),
            }),
            (Phase::AwaitNoise(_), m) => Err(HandshakeError::Unexpected {
                expected: "Noise",
                got: m.tag(),
            }),
            (Phase::Over, m) => Err(HandshakeError::Unexpected {
                expected: "nothing (the handshake is over)",
                got: m.tag(),
            }),
        }
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &HandshakeConfig,
    role: Role,
) -> Result<Established, HandshakeError> {
    let (mut hs, first) = Handshake::start(cfg, role)?;
    if let Some(m) = first {
        write_frame(s, &m).await?;
    }
    loop {
        let m = read_frame(s, HANDSHAKE_MAX_FRAME).await?;
        match hs.on_message(m) {
            Ok(Step::Send(m)) => {
                write_frame(s, &m).await?;
            }
            Ok(Step::Done { send, link }) => {
                if let Some(m) = send {
                    write_frame(s, &m).await?;
                }
                return Ok(link);
            }
            Err(HandshakeError::Rejected { reason, peer }) => {
                let _ = write_frame(s, &Message::Refused(reason.clone())).await;
                tracing::warn!(%peer, ?reason, "peer refused");
                return Err(HandshakeError::Rejected { reason, peer });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the handshake on a fresh link as `role`.
///
/// # Errors
/// [`HandshakeError::Rejected`] when this side refused the peer (wrong version, cluster,
/// secret, encryption setting, its own id, or another node than the one dialled),
/// [`HandshakeError::Refused`] when the peer refused us, [`HandshakeError::Timeout`], or a
/// wire error for a malformed, oversized or unexpected frame.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cfg: &HandshakeConfig,
    role: Role,
) -> Result<Established, HandshakeError> {
    tokio::time::timeout(cfg.timeout, run(s, cfg, role))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode, DEFAULT_MAX_FRAME};
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    const KEY: &[u8] = b"the cluster's shared secret";

    fn cfg(node: &str, secret: &[u8], cluster: &str) -> HandshakeConfig {
        HandshakeConfig {
            cluster: cluster.to_string(),
            node: node.to_string(),
            listen: format!("{node}:0"),
            secret: Secret::new(secret.to_vec()).expect("secret"),
            encrypt: false,
            timeout: Duration::from_secs(5),
            incarnation: 1,
        }
    }

    fn dial() -> Role {
        Role::Initiator { expect: None }
    }

    async fn pair(
        a: HandshakeConfig,
        ra: Role,
        b: HandshakeConfig,
    ) -> (
        Result<Established, HandshakeError>,
        Result<Established, HandshakeError>,
    ) {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        tokio::join!(
            handshake(&mut x, &a, ra),
            handshake(&mut y, &b, Role::Responder)
        )
    }

    fn refused_with(r: &Result<Established, HandshakeError>, want: RefuseReason) -> bool {
        matches!(r, Err(HandshakeError::Rejected { reason, .. }) if *reason == want)
            || matches!(r, Err(HandshakeError::Refused(reason)) if *reason == want)
    }

    #[tokio::test]
    async fn same_secret_links_and_learns_the_peer() {
        let (a, b) = pair(cfg("a", KEY, "c"), dial(), cfg("b", KEY, "c")).await;
        let (a, b) = (a.expect("a links"), b.expect("b links"));
        assert_eq!(a.peer.node, "b");
        assert_eq!(b.peer.node, "a");
        assert_eq!(a.transcript, b.transcript, "one link, one transcript");
        assert!(a.cipher.is_none() && b.cipher.is_none());
    }

    #[tokio::test]
    async fn encrypted_links_agree_on_keys() {
        let mut ca = cfg("a", KEY, "c");
        let mut cb = cfg("b", KEY, "c");
        ca.encrypt = true;
        cb.encrypt = true;
        let (a, b) = pair(ca, dial(), cb).await;
        let (a, b) = (a.expect("a"), b.expect("b"));
        let (ka, kb) = (a.cipher.expect("keys"), b.cipher.expect("keys"));
        let mut sealed = Vec::new();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ka.sealer().seal(&plain, &mut sealed).expect("seal");
        assert!(
            sealed.windows(64).all(|w| w != &plain[..64]),
            "not in the clear"
        );
        let mut opened = Vec::new();
        let mut r = kb.opener(&sealed[..]);
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut opened)
            .await
            .expect("open");
        assert_eq!(opened, plain);
        // One flipped bit anywhere fails the record.
        sealed[70_000] ^= 1;
        let mut r = kb.opener(&sealed[..]);
        let mut out = Vec::new();
        assert!(tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_both_ways() {
        let other = b"another secret entirely";
        let (a, b) = pair(cfg("a", KEY, "c"), dial(), cfg("b", other, "c")).await;
        for r in [a, b] {
            assert!(refused_with(&r, RefuseReason::BadAuth), "{r:?}");
        }
    }

    #[tokio::test]
    async fn another_cluster_or_encryption_setting_is_refused() {
        let (a, _b) = pair(cfg("a", KEY, "blue"), dial(), cfg("b", KEY, "green")).await;
        assert!(refused_with(&a, RefuseReason::Cluster), "{a:?}");
        let mut enc = cfg("b", KEY, "c");
        enc.encrypt = true;
        let (a, b) = pair(cfg("a", KEY, "c"), dial(), enc).await;
        assert!(refused_with(&a, RefuseReason::Encryption), "{a:?}");
        assert!(refused_with(&b, RefuseReason::Encryption), "{b:?}");
    }

    #[tokio::test]
    async fn own_id_and_an_unexpected_node_are_refused() {
        let (a, b) = pair(cfg("a", KEY, "c"), dial(), cfg("a", KEY, "c")).await;
        assert!(refused_with(&b, RefuseReason::SelfId), "{b:?}");
        assert!(refused_with(&a, RefuseReason::SelfId), "{a:?}");
        let expect = Role::Initiator {
            expect: Some("b".to_string()),
        };
        let (a, _) = pair(cfg("a", KEY, "c"), expect, cfg("mallory", KEY, "c")).await;
        assert!(refused_with(&a, RefuseReason::UnexpectedNode), "{a:?}");
    }

    #[tokio::test]
    async fn garbage_oversized_frames_and_silence_are_typed_errors() {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let garbage = async move {
            let _ = y.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
            y
        };
        let c = cfg("a", KEY, "c");
        let (r, _y) = tokio::join!(handshake(&mut x, &c, Role::Responder), garbage);
        assert!(
            matches!(
                r,
                Err(HandshakeError::Wire(WireError::FrameTooLarge { .. }))
            ),
            "{r:?}"
        );
        // Before authentication even a frame the node would take later is too large.
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let big = async move {
            let len = (DEFAULT_MAX_FRAME / 2).to_le_bytes();
            let _ = y.write_all(&[len[0], len[1], len[2], len[3], 2, 1]).await;
            y
        };
        let (r, _y) = tokio::join!(handshake(&mut x, &c, Role::Responder), big);
        assert!(
            matches!(r, Err(HandshakeError::Wire(WireError::FrameTooLarge { max, .. })) if max == HANDSHAKE_MAX_FRAME),
            "{r:?}"
        );
        let (mut x, _y) = tokio::io::duplex(1 << 16);
        let mut quick = cfg("a", KEY, "c");
        quick.timeout = Duration::from_millis(50);
        let r = handshake(&mut x, &quick, Role::Responder).await;
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
            handshake(&mut s, &cfg("server", KEY, "c"), Role::Responder).await
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let client = handshake(&mut c, &cfg("client", KEY, "c"), dial()).await;
        assert_eq!(client.expect("client").peer.node, "server");
        let server = server.await.expect("join").expect("server");
        assert_eq!(server.peer.node, "client");
    }

    // ---- the state machine against an attacker who relays, reorders and replays ----

    /// Who produced a message of the pool.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Source {
        Honest(usize),
        Attacker,
    }

    struct Session {
        owner: &'static str,
        initiator: bool,
        hs: Handshake,
        over: bool,
        link: Option<Established>,
        /// The source of the last Noise message this session took.
        noise_from: Option<Source>,
    }

    #[derive(Clone, Debug)]
    enum Action {
        /// An honest node (0: "a", 1: "b") starts a session (dialling, or accepting).
        Honest {
            node: u8,
            initiator: bool,
            expect: Option<u8>,
        },
        /// The attacker starts a session of its own, claiming an id, with a guessed secret.
        Attacker { claim: u8, initiator: bool },
        /// Message `msg` of the pool (everything ever sent) goes to session `to`.
        Deliver { msg: usize, to: usize },
        /// The newest message of the pool goes to session `to` (a relay).
        Relay { to: usize },
    }

    const IDS: [&str; 3] = ["a", "b", "m"];

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0u8..2, any::<bool>(), prop::option::of(0u8..3)).prop_map(
                |(node, initiator, expect)| {
                    Action::Honest {
                        node,
                        initiator,
                        expect,
                    }
                }
            ),
            (0u8..3, any::<bool>())
                .prop_map(|(claim, initiator)| Action::Attacker { claim, initiator }),
            (any::<usize>(), any::<usize>()).prop_map(|(msg, to)| Action::Deliver { msg, to }),
            any::<usize>().prop_map(|to| Action::Relay { to }),
        ]
    }

    /// Feeds `m` (from `src`) to session `to`; what it sends joins the pool.
    fn feed(
        sessions: &mut [Session],
        pool: &mut Vec<(Message, Source)>,
        to: usize,
        m: Message,
        src: Source,
    ) {
        let s = &mut sessions[to];
        if s.over {
            return;
        }
        let is_noise = matches!(m, Message::Noise(_));
        match s.hs.on_message(m) {
            Ok(Step::Send(out)) => pool.push((out, Source::Honest(to))),
            Ok(Step::Done { send, link }) => {
                if let Some(out) = send {
                    pool.push((out, Source::Honest(to)));
                }
                if is_noise {
                    s.noise_from = Some(src);
                }
                s.link = Some(link);
                s.over = true;
            }
            Err(_) => s.over = true,
        }
    }

    /// Runs the actions; honest sessions only (attacker sessions only feed the pool).
    fn play(actions: &[Action]) -> Vec<Session> {
        let mut sessions: Vec<Session> = Vec::new();
        let mut attackers: Vec<Handshake> = Vec::new();
        let mut pool: Vec<(Message, Source)> = Vec::new();
        for a in actions {
            match a {
                Action::Honest {
                    node,
                    initiator,
                    expect,
                } => {
                    let owner = IDS[*node as usize];
                    let role = if *initiator {
                        Role::Initiator {
                            expect: expect.map(|e| IDS[e as usize].to_string()),
                        }
                    } else {
                        Role::Responder
                    };
                    let (hs, first) = Handshake::start(&cfg(owner, KEY, "c"), role).expect("start");
                    if let Some(m) = first {
                        pool.push((m, Source::Honest(sessions.len())));
                    }
                    sessions.push(Session {
                        owner,
                        initiator: *initiator,
                        hs,
                        over: false,
                        link: None,
                        noise_from: None,
                    });
                }
                Action::Attacker { claim, initiator } => {
                    let role = if *initiator { dial() } else { Role::Responder };
                    let guess = cfg(IDS[*claim as usize], b"a guess at the secret", "c");
                    let (hs, first) = Handshake::start(&guess, role).expect("start");
                    if let Some(m) = first {
                        pool.push((m, Source::Attacker));
                    }
                    attackers.push(hs);
                }
                Action::Deliver { .. } | Action::Relay { .. } if !pool.is_empty() => {
                    let (i, to) = match a {
                        Action::Deliver { msg, to } => (msg % pool.len(), *to),
                        Action::Relay { to } => (pool.len() - 1, *to),
                        _ => continue,
                    };
                    let (m, src) = pool[i].clone();
                    // Half the targets are the attacker's own sessions, which answer too.
                    let n = sessions.len() + attackers.len();
                    if n == 0 {
                        continue;
                    }
                    let t = to % n;
                    if t < sessions.len() {
                        feed(&mut sessions, &mut pool, t, m, src);
                    } else if let Ok(Step::Send(out)) = attackers[t - sessions.len()].on_message(m)
                    {
                        pool.push((out, Source::Attacker));
                    }
                }
                _ => {}
            }
        }
        sessions
    }

    /// Every honest session that accepted a peer accepted the honest node it names, through
    /// a matching session of that node: never the attacker, never itself.
    fn check(sessions: &[Session]) -> Result<(), String> {
        for (i, s) in sessions.iter().enumerate() {
            let Some(link) = &s.link else { continue };
            let p = &link.peer.node;
            if p == s.owner || !["a", "b"].contains(&p.as_str()) {
                return Err(format!("session {i} of {} accepted `{p}`", s.owner));
            }
            let Some(Source::Honest(t)) = s.noise_from else {
                return Err(format!(
                    "session {i} accepted a Noise message from {:?}",
                    s.noise_from
                ));
            };
            let partner = &sessions[t];
            if partner.owner != p || partner.initiator == s.initiator {
                return Err(format!(
                    "session {i} ({}) took its proof from session {t} ({})",
                    s.owner, partner.owner
                ));
            }
            if let Some(pl) = &partner.link {
                if pl.transcript != link.transcript || pl.peer.node != s.owner {
                    return Err(format!("sessions {i} and {t} disagree"));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn an_honest_relay_links_the_two_honest_nodes() {
        // a dials, the attacker relays every message to b and back: a link a–b, nothing else.
        let actions = vec![
            Action::Honest {
                node: 0,
                initiator: true,
                expect: Some(1),
            },
            Action::Honest {
                node: 1,
                initiator: false,
                expect: None,
            },
            Action::Relay { to: 1 },
            Action::Relay { to: 0 },
            Action::Relay { to: 1 },
            Action::Relay { to: 0 },
        ];
        let s = play(&actions);
        assert!(
            s[0].link.is_some() && s[1].link.is_some(),
            "a relay that changes nothing links"
        );
        check(&s).expect("the honest link passes the check");
    }

    #[test]
    fn reflection_into_the_same_node_is_refused() {
        // a dials; its hello is reflected into a's own listener and the answers back.
        let actions = vec![
            Action::Honest {
                node: 0,
                initiator: true,
                expect: None,
            },
            Action::Honest {
                node: 0,
                initiator: false,
                expect: None,
            },
            Action::Relay { to: 1 },
            Action::Relay { to: 0 },
            Action::Relay { to: 1 },
            Action::Relay { to: 0 },
        ];
        let s = play(&actions);
        assert!(s.iter().all(|s| s.link.is_none()), "nobody accepted itself");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn the_attacker_is_never_accepted(actions in prop::collection::vec(action(), 1..40)) {
            let sessions = play(&actions);
            if let Err(e) = check(&sessions) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    #[test]
    fn a_recorded_first_noise_message_cannot_be_replayed() {
        // Record a's first Noise message to b, then replay it to a fresh session of b.
        let actions = vec![
            Action::Honest {
                node: 0,
                initiator: true,
                expect: None,
            },
            Action::Honest {
                node: 1,
                initiator: false,
                expect: None,
            },
            Action::Relay { to: 1 },
            Action::Relay { to: 0 }, // a's Noise message is now the newest in the pool
            Action::Honest {
                node: 1,
                initiator: false,
                expect: None,
            },
            Action::Deliver { msg: 0, to: 2 }, // a's hello to the new session
            Action::Deliver { msg: 3, to: 2 }, // the recorded Noise message
        ];
        let s = play(&actions);
        assert!(s[2].link.is_none(), "a replayed proof was accepted");
        let mut buf = Vec::new();
        encode(&Message::Noise(vec![0; 8]), &mut buf).expect("encode");
        assert!(buf.len() < HANDSHAKE_MAX_FRAME as usize);
    }
}
