//! The wire format: length-prefixed frames with rmp-serde bodies.
//!
//! ```text
//! frame = len: u32 LE | version: u8 | tag: u8 | body: rmp-serde bytes
//! ```
//! `len` counts the bytes after itself (version + tag + body). A reader checks `len` against
//! its maximum *before* allocating, the version against its own, the tag against the known
//! ones, and decodes the body into the tag's type; any failure is a typed [`WireError`] and the
//! caller closes the link. Nothing a peer sends can make a reader panic or allocate more than
//! the maximum. See `cluster/PROTOCOL.md`.

use riffle_framework::{ChannelEvent, TaskId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 11;

/// Default largest frame accepted on an authenticated link (16 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;

/// Largest frame accepted before a link is authenticated (4 KiB): a peer that has not proved
/// the secret cannot make a node allocate more than this.
pub const HANDSHAKE_MAX_FRAME: u32 = 4 << 10;

/// Bytes of header after the length: version and tag.
const HEADER: usize = 2;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer announced a frame larger than the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u32,
        /// The maximum.
        max: u32,
    },
    /// A frame too short to hold its header.
    #[error("frame of {len} bytes is shorter than its header")]
    FrameTooShort {
        /// Announced length.
        len: u32,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {got}, expected {expected}")]
    Version {
        /// What the peer sent.
        got: u8,
        /// What this build speaks.
        expected: u8,
    },
    /// A tag no message has.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// The body does not decode as the tag's message.
    #[error("undecodable body for tag {tag}: {reason}")]
    BadBody {
        /// The tag.
        tag: u8,
        /// The decoder's complaint.
        reason: String,
    },
    /// A message could not be encoded.
    #[error("cannot encode a frame: {0}")]
    Encode(String),
    /// The link closed (cleanly, between frames).
    #[error("the link closed")]
    Closed,
    /// An I/O error on the link.
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Identifies one channel of a dataflow across nodes: every data frame carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EdgeAddress {
    /// The job (its name's hash, to stay `Copy`).
    pub job: u64,
    /// The job epoch (recoveries bump it; stale frames are dropped).
    pub epoch: u64,
    /// The receiving chain.
    pub chain: u32,
    /// The sending subtask.
    pub from: u32,
    /// The receiving subtask.
    pub to: u32,
    /// The receiver's input channel index.
    pub channel: u32,
}

/// A channel, without its epoch: what credits are returned to.
pub type ChannelKey = (u64, u32, u32, u32, u32);

/// The channel of an edge address.
pub fn channel_key(e: &EdgeAddress) -> ChannelKey {
    (e.job, e.chain, e.from, e.to, e.channel)
}

/// First frame on a link, both ways (the dialling side sends first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version (also in the header; repeated for the log).
    pub version: u8,
    /// The cluster the sender belongs to.
    pub cluster: String,
    /// The sender's node id.
    pub node: String,
    /// The address the sender listens on.
    pub listen: String,
    /// A fresh random value: the Noise handshake that follows is bound to both sides'
    /// hellos, so the responder's nonce makes the initiator's proof fresh.
    pub nonce: [u8; 32],
    /// Whether the sender encrypts the link after the handshake (both sides must agree).
    pub encrypt: bool,
    /// The sender's incarnation: a random number drawn when its process started. A node that
    /// restarts with the same id has another one, so its peers know the old process is gone
    /// (and with it everything it had not yet handled) even if it comes back at once.
    pub incarnation: u64,
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Another protocol version.
    Version,
    /// Another cluster name.
    Cluster,
    /// The secret did not match.
    BadAuth,
    /// The same node id is already linked (from another address, or at the same moment).
    DuplicateNode,
    /// The peer claimed the receiving node's own id.
    SelfId,
    /// The dialled address answered with another node id than the member dialled.
    UnexpectedNode,
    /// One side encrypts its links and the other does not.
    Encryption,
    /// The node is at its limit of connections or pending handshakes, or near its limit of
    /// open files; try again later.
    Busy,
    /// Too many failed handshakes from this address lately (not sent since protocol 11: an
    /// address is no longer locked out for failed handshakes; kept so that the reasons keep
    /// their numbers).
    RateLimited,
    /// A node id that is empty, too long or not printable.
    BadNodeId,
}

/// What a `Data` frame carries, in the channel's order: the channel event of every layer
/// ([`ChannelEvent`]) with its batch encoded (the records, encoded by the channel's codec).
pub type WireEvent = ChannelEvent<BatchBytes>;

/// A batch's records as the channel's codec encoded them. On the wire they are one msgpack
/// `bin` (a length and the bytes, copied as a block), not an array of numbers to walk byte by
/// byte.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl BatchBytes {
    /// The number of encoded bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every message of the protocol. The tag on the wire is [`Message::tag`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake: who I am, with a fresh nonce.
    Hello(Hello),
    /// Handshake: a message of the Noise `NNpsk0` handshake bound to both hellos
    /// (see `handshake`).
    Noise(Vec<u8>),
    /// Handshake: the peer is refused; the link closes.
    Refused(RefuseReason),
    /// Liveness, with the sender's view of the cluster (node id, listen address).
    Heartbeat {
        /// Increases by one per heartbeat.
        seq: u64,
        /// The members the sender knows.
        members: Vec<(String, String)>,
        /// Figures its subtasks published since its last heartbeat (for the coordinators'
        /// views of their jobs).
        figures: Vec<riffle_actors::telemetry::LiveUpdate>,
    },
    /// The answer to a heartbeat, at once: its sender measures the link's round trip.
    HeartbeatAck {
        /// The heartbeat's `seq`.
        seq: u64,
    },
    /// An event of a channel to a remote subtask: a batch, a barrier or end of input.
    Data {
        /// Which channel.
        edge: EdgeAddress,
        /// What it carries.
        event: WireEvent,
    },
    /// The receiver handled `n` batches of the edge: the sender may send `n` more.
    Credit {
        /// Which channel.
        edge: EdgeAddress,
        /// How many credits return.
        n: u32,
    },
    /// Coordinator → node: host subtasks of job `job`, built from the builder registered as
    /// `name`; `placement` says where every subtask runs.
    JobStart {
        /// The job's id in the cluster.
        job: u64,
        /// The registered builder's name.
        name: String,
        /// The coordinating node.
        coordinator: String,
        /// Every subtask and its node.
        placement: Vec<(TaskId, String)>,
        /// The default parallelism the job runs at, if the coordinator changed it.
        parallelism: Option<u32>,
        /// Operators whose parallelism the coordinator changed, and their parallelism.
        rescaled: Vec<(String, u32)>,
        /// The epoch of the leader that started the job (0 without leader election): a node
        /// refuses a start, and every later frame of the job, once it knows a higher one.
        epoch: u64,
    },
    /// Coordinator → node: start subtask `task` (`spec`: an rmp-serde `SpawnSpec`).
    Spawn {
        /// The job.
        job: u64,
        /// The subtask.
        task: TaskId,
        /// The encoded spawn spec.
        spec: Vec<u8>,
    },
    /// Coordinator → node: a control message for subtask `task` (rmp-serde `Control`).
    Control {
        /// The job.
        job: u64,
        /// The subtask.
        task: TaskId,
        /// The encoded control message.
        body: Vec<u8>,
    },
    /// Node → coordinator: a subtask's report (rmp-serde `ToJob`).
    Report {
        /// The job.
        job: u64,
        /// The encoded report.
        body: Vec<u8>,
    },
    /// Coordinator → node: the decision about subtask `task`'s failure (rmp-serde `Decision`).
    Decision {
        /// The job.
        job: u64,
        /// The subtask that failed.
        task: TaskId,
        /// The encoded decision.
        body: Vec<u8>,
    },
    /// Coordinator → node: subtasks moved to other nodes (after a node loss).
    Placement {
        /// The job.
        job: u64,
        /// The moved subtasks and their new nodes.
        moves: Vec<(TaskId, String)>,
    },
    /// Coordinator → node: report what you sent on your links since job `job` started.
    StatsRequest {
        /// The job.
        job: u64,
    },
    /// Node → coordinator: per peer, (peer, bytes, frames, data frames, credit frames) sent
    /// since job `job` started.
    Stats {
        /// The job.
        job: u64,
        /// Per peer.
        links: Vec<(String, u64, u64, u64, u64)>,
    },
    /// Coordinator → node: the job ended (`error`: why it failed); stop hosting it.
    JobEnd {
        /// The job.
        job: u64,
        /// The job's error, if it failed.
        error: Option<String>,
    },
    /// The sender has received and handled the first `received` sequenced frames of the
    /// session: the peer may forget them (not sequenced itself).
    Ack {
        /// Sequenced frames received so far.
        received: u64,
    },
    /// First frame after the handshake, both ways (not sequenced): which session the sender
    /// keeps with the peer and how much of it it has received, so that a link made again
    /// continues the session where the old link broke (see `session`).
    Resume {
        /// The sender's id for its session with the receiver (never 0).
        session: u64,
        /// The receiver's session id as the sender knows it (0: not known yet).
        peer_session: u64,
        /// Sequenced frames of the receiver's the sender has received.
        received: u64,
    },
    /// Node → coordinator, without etcd: this node declared you lost while it hosted job
    /// `job`, stopped its part and reported the job failed (sent once the two are linked
    /// again); the coordinator fails the job too, so that every node reports one outcome.
    Abandoned {
        /// The job.
        job: u64,
    },
    /// The sender shuts down on purpose: its last frame on the link. The receiver takes it
    /// for gone at once (its jobs' parts there are lost, as for a node declared down), does
    /// not dial it again, and logs it at info instead of warning of a closed link.
    Leave,
    /// Hosting node → the coordinator of a job it hosts: the sender has not heard from
    /// `node`, another member, for longer than the failure timeout (`lost: false`; the
    /// session with it is kept, and the channels to it wait), or their session broke and
    /// frames between them may be lost (`lost: true`). The coordinator decides: unless the
    /// sender says `Reachable` within a failure timeout, or at once when `lost`, `node` is
    /// declared lost to every job that has parts on both.
    Unreachable {
        /// The member the sender cannot reach.
        node: String,
        /// Frames between the two may be lost (their session broke).
        lost: bool,
    },
    /// Hosting node → coordinator: the link to `node` came back and its session resumed
    /// with every frame kept; the suspicion of `Unreachable` is withdrawn.
    Reachable {
        /// The member reached again.
        node: String,
    },
    /// Coordinator → hosting node: the coordinator declared the receiver lost to job `job`
    /// (a link between it and another node of the job stayed down) and placed its subtasks
    /// elsewhere; the receiver stops its part and waits for the job's end, as a node that
    /// lost its coordinator does.
    Dismiss {
        /// The job.
        job: u64,
    },
    /// Hosting node → coordinator, without etcd: the sender stopped its part of job `job`
    /// when it lost the coordinator, and waits for the coordinator's word of the job's end;
    /// the coordinator, running again and driving the job, goes on without the sender (its
    /// subtasks are placed elsewhere and the job recovers), and tells it the end.
    Stopped {
        /// The job.
        job: u64,
    },
}

impl Message {
    /// The tag byte of this message on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Noise(_) => 2,
            Message::Refused(_) => 4,
            Message::Heartbeat { .. } => 5,
            Message::Data { .. } => 6,
            Message::Credit { .. } => 7,
            Message::JobStart { .. } => 8,
            Message::Spawn { .. } => 9,
            Message::Control { .. } => 10,
            Message::Report { .. } => 11,
            Message::Decision { .. } => 12,
            Message::Placement { .. } => 13,
            Message::JobEnd { .. } => 14,
            Message::StatsRequest { .. } => 15,
            Message::Stats { .. } => 16,
            Message::Ack { .. } => 17,
            Message::Resume { .. } => 18,
            Message::Abandoned { .. } => 19,
            Message::HeartbeatAck { .. } => 20,
            Message::Leave => 21,
            Message::Unreachable { .. } => 22,
            Message::Reachable { .. } => 23,
            Message::Dismiss { .. } => 24,
            Message::Stopped { .. } => 25,
        }
    }

    /// The job a coordinator's command to a hosting node is about (`None` for every other
    /// frame).
    pub fn command_job(&self) -> Option<u64> {
        match self {
            Message::JobStart { job, .. }
            | Message::Spawn { job, .. }
            | Message::Control { job, .. }
            | Message::Decision { job, .. }
            | Message::Placement { job, .. }
            | Message::StatsRequest { job }
            | Message::Dismiss { job }
            | Message::JobEnd { job, .. } => Some(*job),
            _ => None,
        }
    }

    /// Whether the frame is numbered in its session (and so kept until acknowledged and sent
    /// again after a reset): every frame but the handshake's, heartbeats, acks and resumes.
    pub fn sequenced(&self) -> bool {
        !matches!(
            self,
            Message::Hello(_)
                | Message::Noise(_)
                | Message::Refused(_)
                | Message::Heartbeat { .. }
                | Message::HeartbeatAck { .. }
                | Message::Ack { .. }
                | Message::Resume { .. }
                | Message::Leave
        )
    }
}

const MAX_TAG: u8 = 25;
/// Tag 3 was version 1's `Welcome`; no message has it now.
const RETIRED_TAG: u8 = 3;

/// Appends the frame of `msg` to `out`.
///
/// # Errors
/// [`WireError::Encode`] if the body cannot be serialized, [`WireError::FrameTooLarge`] if it
/// would exceed `u32`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body = rmp_serde::to_vec(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len() + HEADER).map_err(|_| WireError::FrameTooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(msg.tag());
    out.extend_from_slice(&body);
    Ok(())
}

/// Checks a frame's length field against `max` before anything is allocated.
fn check_len(len: u32, max: u32) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    if (len as usize) < HEADER {
        return Err(WireError::FrameTooShort { len });
    }
    Ok(())
}

/// Decodes the part of a frame after its length: version, tag, body.
fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    let (version, tag, body) = match payload {
        [v, t, body @ ..] => (*v, *t, body),
        _ => {
            return Err(WireError::FrameTooShort {
                len: payload.len() as u32,
            })
        }
    };
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            got: version,
            expected: PROTOCOL_VERSION,
        });
    }
    if tag == 0 || tag == RETIRED_TAG || tag > MAX_TAG {
        return Err(WireError::UnknownTag(tag));
    }
    let msg: Message = rmp_serde::from_slice(body).map_err(|e| WireError::BadBody {
        tag,
        reason: e.to_string(),
    })?;
    if msg.tag() != tag {
        return Err(WireError::BadBody {
            tag,
            reason: format!("body is a message of tag {}", msg.tag()),
        });
    }
    Ok(msg)
}

/// Decodes one frame from the start of `buf`; returns the message and the bytes it used, or
/// `Ok(None)` if `buf` does not hold a whole frame yet.
///
/// # Errors
/// Any [`WireError`] about the frame; the link should close.
pub fn decode(buf: &[u8], max: u32) -> Result<Option<(Message, usize)>, WireError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let mut l = [0u8; 4];
    l.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(l);
    check_len(len, max)?;
    let end = 4 + len as usize;
    let Some(payload) = buf.get(4..end) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, end)))
}

/// Reads one frame from `r`, allocating at most `max` bytes.
///
/// # Errors
/// [`WireError::Closed`] at a clean end of stream between frames; any other [`WireError`]
/// for a bad frame or an I/O failure.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Message, WireError> {
    let mut l = [0u8; 4];
    match r.read_exact(&mut l).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(l);
    check_len(len, max)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    decode_payload(&payload)
}

/// Writes one frame of `msg` to `w`; returns its size in bytes.
///
/// # Errors
/// Encoding or I/O failures.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<usize, WireError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster: "c".into(),
                node: "n1".into(),
                listen: "127.0.0.1:1".into(),
                nonce: [7; 32],
                encrypt: true,
                incarnation: 42,
            }),
            Message::Noise(vec![1, 2, 3]),
            Message::Refused(RefuseReason::BadAuth),
            Message::Heartbeat {
                seq: 9,
                members: vec![("n2".into(), "a".into())],
                figures: vec![("job".into(), "op".into(), 1, Default::default())],
            },
            Message::HeartbeatAck { seq: 9 },
            Message::Leave,
            Message::Data {
                edge: EdgeAddress {
                    job: 1,
                    epoch: 2,
                    chain: 3,
                    from: 4,
                    to: 5,
                    channel: 6,
                },
                event: WireEvent::Batch(BatchBytes(vec![0; 100])),
            },
            Message::Credit {
                edge: EdgeAddress {
                    job: 1,
                    epoch: 2,
                    chain: 3,
                    from: 4,
                    to: 5,
                    channel: 6,
                },
                n: 2,
            },
            Message::Ack { received: 77 },
            Message::Unreachable {
                node: "n3".into(),
                lost: true,
            },
            Message::Reachable { node: "n3".into() },
            Message::Dismiss { job: 8 },
            Message::Stopped { job: 9 },
            Message::Resume {
                session: 5,
                peer_session: 0,
                received: 3,
            },
        ]
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut buf = Vec::new();
        for m in sample() {
            encode(&m, &mut buf).expect("encode");
        }
        // Fed one prefix at a time, the decoder waits for whole frames.
        let mut at = 0;
        let mut got = Vec::new();
        for end in 0..=buf.len() {
            while let Some((m, n)) = decode(&buf[at..end], DEFAULT_MAX_FRAME).expect("decode") {
                got.push(m);
                at += n;
            }
        }
        assert_eq!(got, sample());
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let max = 1024;
        let huge = [0xFF, 0xFF, 0xFF, 0x7F, PROTOCOL_VERSION, 1];
        assert!(matches!(
            decode(&huge, max),
            Err(WireError::FrameTooLarge { max: 1024, .. })
        ));
        let short = [1, 0, 0, 0, PROTOCOL_VERSION];
        assert!(matches!(
            decode(&short, max),
            Err(WireError::FrameTooShort { len: 1 })
        ));
        let version = [2, 0, 0, 0, 99, 1];
        assert!(matches!(
            decode(&version, max),
            Err(WireError::Version { got: 99, .. })
        ));
        let tag = [2, 0, 0, 0, PROTOCOL_VERSION, 200];
        assert!(matches!(decode(&tag, max), Err(WireError::UnknownTag(200))));
        let body = [5, 0, 0, 0, PROTOCOL_VERSION, 1, 0xc1, 0xc1, 0xc1];
        assert!(matches!(
            decode(&body, max),
            Err(WireError::BadBody { tag: 1, .. })
        ));
        // A valid body under the wrong tag.
        let mut refused = Vec::new();
        encode(&Message::Refused(RefuseReason::Busy), &mut refused).expect("encode");
        refused[5] = 2;
        assert!(matches!(
            decode(&refused, max),
            Err(WireError::BadBody { tag: 2, .. })
        ));
        let retired = [2, 0, 0, 0, PROTOCOL_VERSION, 3];
        assert!(matches!(
            decode(&retired, max),
            Err(WireError::UnknownTag(3))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 256);
        }

        #[test]
        fn arbitrary_bodies_never_panic(tag in 0u8..10, body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut frame = ((body.len() + 2) as u32).to_le_bytes().to_vec();
            frame.push(PROTOCOL_VERSION);
            frame.push(tag);
            frame.extend_from_slice(&body);
            let _ = decode(&frame, 1024);
        }
    }
}
