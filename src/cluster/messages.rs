//! Wire formats of the cluster: UDP heartbeats and mesh frames.
//!
//! Heartbeat datagram: `b"CRCL"`, format version (1 byte), flags (1 byte; bit 0 = tagged),
//! the postcard-encoded [`Heartbeat`], and, with `[cluster] key`, a 32-byte HMAC-SHA256 tag
//! over everything before it. The heartbeat carries a per-process sequence number and the
//! sender's wall-clock time so a captured packet cannot be replayed later.
//!
//! Mesh frame (inside a 4-byte length prefix): format version (1 byte), flags (1 byte; bit
//! 0 = tagged), the postcard-encoded [`MeshMessage`], and, with `[cluster] key`, a 32-byte
//! HMAC-SHA256 tag over everything before it: without the key nobody can inject changes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::lifecycle::State;
use crate::session::{Change, Fresher, FullSession};
pub(super) use crate::wire::ClusterKey;
use crate::wire::{flags, push_varint, tag, untag, TagError, TAG_LEN};

pub(super) const MAGIC: &[u8; 4] = b"CRCL";
pub(super) const HEARTBEAT_VERSION: u8 = 1;
/// 2: `Ack` carries the fenced sessions. 3: claims, votes and digests (REFERENCE 4.9).
pub const MESH_VERSION: u8 = 3;

/// What a node says about itself (in heartbeats and in mesh pongs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Random per process start: tells a restarted node from its previous life.
    pub node_id: u64,
    pub jvm_route: String,
    pub mesh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: State,
    pub alive_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub domain: String,
    pub info: NodeInfo,
    /// Grows by one per heartbeat of this process.
    pub seq: u64,
    /// Sender's wall clock (ms since the Unix epoch); checked only for tagged packets.
    pub sent_unix_ms: u64,
}

/// Why a heartbeat was dropped (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Reject {
    #[error("bad magic")]
    Magic,
    #[error("unsupported format version")]
    Version,
    #[error("truncated or undecodable")]
    Malformed,
    #[error("missing HMAC tag")]
    MissingTag,
    #[error("bad HMAC tag")]
    BadTag,
    #[error("tagged packet but no key configured")]
    UnexpectedTag,
    #[error("other cluster domain")]
    Domain,
    #[error("replayed or stale")]
    Replay,
}

impl Reject {
    pub(super) fn label(self) -> &'static str {
        match self {
            Reject::Magic => "magic",
            Reject::Version => "version",
            Reject::Malformed => "malformed",
            Reject::MissingTag => "missing_tag",
            Reject::BadTag => "bad_tag",
            Reject::UnexpectedTag => "unexpected_tag",
            Reject::Domain => "domain",
            Reject::Replay => "replay",
        }
    }
}

/// Encodes a heartbeat datagram.
pub fn encode_heartbeat(hb: &Heartbeat, key: Option<&ClusterKey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(MAGIC);
    out.push(HEARTBEAT_VERSION);
    out.push(flags(key));
    // Encoding plain structs into a Vec cannot fail.
    if let Ok(body) = postcard::to_stdvec(hb) {
        out.extend_from_slice(&body);
    }
    tag(out, key)
}

/// Decodes and authenticates a heartbeat datagram. Domain and replay checks are the
/// caller's (they need state).
pub(super) fn decode_heartbeat(pkt: &[u8], key: Option<&ClusterKey>) -> Result<Heartbeat, Reject> {
    if pkt.len() < 6 {
        return Err(if pkt.starts_with(&MAGIC[..pkt.len().min(4)]) {
            Reject::Malformed
        } else {
            Reject::Magic
        });
    }
    if &pkt[..4] != MAGIC {
        return Err(Reject::Magic);
    }
    if pkt[4] != HEARTBEAT_VERSION {
        return Err(Reject::Version);
    }
    let body = untag(pkt, 6, key).map_err(|e| match e {
        TagError::Missing => Reject::MissingTag,
        TagError::Unexpected => Reject::UnexpectedTag,
        TagError::Bad => Reject::BadTag,
        TagError::Short => Reject::Malformed,
    })?;
    let (hb, rest): (Heartbeat, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| Reject::Malformed)?;
    if !rest.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(hb)
}

/// Messages on the TCP mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeshMessage {
    /// Liveness check (verification of a silent member, static membership).
    Ping {
        domain: String,
        from: NodeInfo,
    },
    Pong {
        from: NodeInfo,
    },
    /// First frame of a replication connection: who is sending.
    Hello {
        domain: String,
        from: NodeInfo,
    },
    /// A batch of changes; answered by an `Ack` with the same `seq` once applied.
    Replicate {
        seq: u64,
        changes: Vec<std::sync::Arc<Change>>,
    },
    /// The batch `seq` is applied; sessions in `need_full` were not (a gap): send full
    /// copies of them. `fenced`: changes from an owner with an older epoch than the
    /// receiver's copy (a paused or cut-off old owner): the receiver's copies of those
    /// sessions, so the sender learns who owns them now; its writes there did not count.
    Ack {
        seq: u64,
        need_full: Vec<u128>,
        fenced: Vec<FullSession>,
    },
    /// A starting node asks for the sessions it must hold.
    StateRequest {
        domain: String,
        from: NodeInfo,
    },
    StateChunk {
        sessions: Vec<FullSession>,
    },
    StateDone {
        count: u64,
    },
    /// A claimant in a majority asks for promises: for each (session, epoch), that the
    /// member fences changes of older epochs, because `owner` is gone (REFERENCE 4.9).
    Claim {
        domain: String,
        from: NodeInfo,
        owner: String,
        claims: Vec<(u128, u64)>,
    },
    /// The answers to a `Claim`, in its order.
    Votes {
        votes: Vec<Vote>,
    },
    /// A node whose lease lapsed: what it holds, (session, epoch, version).
    Digest {
        domain: String,
        from: NodeInfo,
        entries: Vec<(u128, u64, u64)>,
    },
    /// The answer to a `Digest`: what the member knows that is newer.
    Fresher(Fresher),
    /// After a `Hello`: this connection becomes a forwarding channel (HTTP/1.1 from here
    /// on), the authenticated path of forwards between members with `[cluster.tls]`.
    Channel {
        domain: String,
    },
    /// The receiver took the channel: the opener's HTTP starts after this frame.
    ChannelOpen,
    /// After a `Hello`, from a draining owner (REFERENCE 4.8): take these sessions of mine over
    /// (each by a majority's vote, as a failover), and answer once their copies acked.
    HandOver {
        keys: Vec<u128>,
    },
    /// The answer to a `HandOver`: how many the receiver took over; `refused` says why
    /// the others were not.
    HandedOver {
        taken: u64,
        refused: Option<String>,
    },
}

/// A member's answer to one claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Vote {
    /// Promised: the member's copy, and where it saw the session removed.
    Granted {
        copy: Option<FullSession>,
        removed: Option<(u64, u64)>,
    },
    /// The member holds or promised an epoch at least as high.
    Refused { top: u64 },
    /// The member still hears the owner (within the lease) or reaches it.
    OwnerAlive,
}

impl MeshMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            MeshMessage::Ping { .. } => "ping",
            MeshMessage::Pong { .. } => "pong",
            MeshMessage::Hello { .. } => "hello",
            MeshMessage::Replicate { .. } => "replicate",
            MeshMessage::Ack { .. } => "ack",
            MeshMessage::StateRequest { .. } => "state request",
            MeshMessage::StateChunk { .. } => "state chunk",
            MeshMessage::StateDone { .. } => "state done",
            MeshMessage::Claim { .. } => "claim",
            MeshMessage::Votes { .. } => "votes",
            MeshMessage::Digest { .. } => "digest",
            MeshMessage::Fresher(_) => "fresher",
            MeshMessage::Channel { .. } => "channel",
            MeshMessage::ChannelOpen => "channel open",
            MeshMessage::HandOver { .. } => "hand over",
            MeshMessage::HandedOver { .. } => "handed over",
        }
    }
}

/// Encodes a mesh frame body (the length prefix is the codec's), tagged when `key` is set.
pub fn seal_mesh(msg: &MeshMessage, key: Option<&ClusterKey>) -> Vec<u8> {
    let mut out = vec![MESH_VERSION, flags(key)];
    if let Ok(body) = postcard::to_stdvec(msg) {
        out.extend_from_slice(&body);
    }
    tag(out, key)
}

/// One change as it goes inside a `Replicate` frame: encoded once, however many peers it
/// goes to ([`seal_replicate`]).
pub(super) fn encode_change(c: &Change) -> bytes::Bytes {
    postcard::to_stdvec(c).map(Into::into).unwrap_or_default()
}

/// Postcard's index of [`MeshMessage::Replicate`]: its position in the enum.
const REPLICATE_VARIANT: u64 = 3;

/// The frame of `MeshMessage::Replicate { seq, changes }` from changes encoded by
/// [`encode_change`]. Postcard's wire format is specified and stable: a variant is its
/// index and a sequence its length, each as a varint, followed by the elements; a test
/// checks this frame equals [`seal_mesh`] of the message.
pub(super) fn seal_replicate<'a>(
    seq: u64,
    changes: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    key: Option<&ClusterKey>,
) -> Vec<u8> {
    let len = changes.clone().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(2 + 3 * 10 + len + TAG_LEN);
    out.extend_from_slice(&[MESH_VERSION, flags(key)]);
    push_varint(&mut out, REPLICATE_VARIANT);
    push_varint(&mut out, seq);
    push_varint(&mut out, changes.len() as u64);
    for c in changes {
        out.extend_from_slice(c);
    }
    tag(out, key)
}

/// An untagged frame (a cluster without a key).
pub fn encode_mesh(msg: &MeshMessage) -> Vec<u8> {
    seal_mesh(msg, None)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unsupported mesh format version {0}")]
    Version(u8),
    #[error("undecodable frame")]
    Malformed,
    #[error("frame without the HMAC tag the cluster key requires")]
    MissingTag,
    #[error("frame with a bad HMAC tag")]
    BadTag,
    #[error("tagged frame but no cluster key configured")]
    UnexpectedTag,
}

impl FrameError {
    pub fn label(self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::Version(_) => "version",
            FrameError::Malformed => "malformed",
            FrameError::MissingTag => "missing_tag",
            FrameError::BadTag => "bad_tag",
            FrameError::UnexpectedTag => "unexpected_tag",
        }
    }
}

/// Checks (version, tag) and decodes a mesh frame.
pub fn open_mesh(frame: &[u8], key: Option<&ClusterKey>) -> Result<MeshMessage, FrameError> {
    let (&v, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    if v != MESH_VERSION {
        return Err(FrameError::Version(v));
    }
    if rest.is_empty() {
        return Err(FrameError::Malformed);
    }
    let body = untag(frame, 2, key).map_err(|e| match e {
        TagError::Missing => FrameError::MissingTag,
        TagError::Unexpected => FrameError::UnexpectedTag,
        TagError::Bad => FrameError::BadTag,
        TagError::Short => FrameError::Malformed,
    })?;
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(msg)
}

/// Decodes an untagged frame.
pub fn decode_mesh(frame: &[u8]) -> Result<MeshMessage, FrameError> {
    open_mesh(frame, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicate_frame_of_encoded_changes_is_the_sealed_message() {
        let changes = vec![
            std::sync::Arc::new(Change::Delta {
                key: u128::MAX - 5,
                epoch: 3,
                version: 300,
                set: Some(r#"{"a":1}"#.into()),
                remove: vec!["b".into()],
                max_inactive_ms: Some(60_000),
            }),
            std::sync::Arc::new(Change::Touch {
                key: 1,
                epoch: 1,
                version: 2,
            }),
        ];
        let encoded: Vec<bytes::Bytes> = changes.iter().map(|c| encode_change(c)).collect();
        for key in [None, Some(ClusterKey::new(b"secret"))] {
            for seq in [0, 127, 128, u64::MAX] {
                let msg = MeshMessage::Replicate {
                    seq,
                    changes: changes.clone(),
                };
                let frame = seal_replicate(seq, encoded.iter().map(|b| &b[..]), key.as_ref());
                assert_eq!(frame, seal_mesh(&msg, key.as_ref()), "seq {seq}");
                assert_eq!(open_mesh(&frame, key.as_ref()).unwrap(), msg);
            }
        }
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            domain: "d".into(),
            info: NodeInfo {
                node_id: 7,
                jvm_route: "node1".into(),
                mesh_addr: "127.0.0.1:4000".parse().unwrap(),
                http_addr: "127.0.0.1:8080".parse().unwrap(),
                state: State::Ready,
                alive_ms: 12,
            },
            seq: 3,
            sent_unix_ms: 1_000,
        }
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let k = ClusterKey::new(b"secret");
        assert_eq!(
            decode_heartbeat(&encode_heartbeat(&hb(), None), None),
            Ok(hb())
        );
        assert_eq!(
            decode_heartbeat(&encode_heartbeat(&hb(), Some(&k)), Some(&k)),
            Ok(hb())
        );
    }

    #[test]
    fn rejects_bad_packets() {
        let k = ClusterKey::new(b"secret");
        let other = ClusterKey::new(b"other");
        let plain = encode_heartbeat(&hb(), None);
        let tagged = encode_heartbeat(&hb(), Some(&k));
        assert_eq!(decode_heartbeat(&plain, Some(&k)), Err(Reject::MissingTag));
        assert_eq!(decode_heartbeat(&tagged, Some(&other)), Err(Reject::BadTag));
        assert_eq!(decode_heartbeat(&tagged, None), Err(Reject::UnexpectedTag));
        assert_eq!(decode_heartbeat(b"XXXXXXXXXX", None), Err(Reject::Magic));
        assert_eq!(
            decode_heartbeat(&plain[..plain.len() - 3], None),
            Err(Reject::Malformed)
        );
        let mut v2 = plain.clone();
        v2[4] = 9;
        assert_eq!(decode_heartbeat(&v2, None), Err(Reject::Version));
        let mut flipped = tagged.clone();
        flipped[10] ^= 1;
        assert_eq!(decode_heartbeat(&flipped, Some(&k)), Err(Reject::BadTag));
        for n in 0..plain.len() {
            let _ = decode_heartbeat(&plain[..n], None);
        }
    }

    #[test]
    fn mesh_frames() {
        let m = MeshMessage::Pong { from: hb().info };
        assert_eq!(decode_mesh(&encode_mesh(&m)), Ok(m.clone()));
        assert_eq!(decode_mesh(&[]), Err(FrameError::Empty));
        assert_eq!(decode_mesh(&[9, 1, 2]), Err(FrameError::Version(9)));
        assert_eq!(
            decode_mesh(&[MESH_VERSION, 0, 200, 200, 200]),
            Err(FrameError::Malformed)
        );
        let k = ClusterKey::new(b"a-mesh-secret-of-some-length");
        let sealed = seal_mesh(&m, Some(&k));
        assert_eq!(open_mesh(&sealed, Some(&k)), Ok(m.clone()));
        assert_eq!(
            open_mesh(&encode_mesh(&m), Some(&k)),
            Err(FrameError::MissingTag)
        );
        assert_eq!(open_mesh(&sealed, None), Err(FrameError::UnexpectedTag));
        let other = ClusterKey::new(b"another-secret-entirely");
        assert_eq!(open_mesh(&sealed, Some(&other)), Err(FrameError::BadTag));
    }
}
