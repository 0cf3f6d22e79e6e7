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

use ring::hmac;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"CRCL";
pub const HEARTBEAT_VERSION: u8 = 1;
pub const MESH_VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const FLAG_TAGGED: u8 = 1;

/// A member's lifecycle as it announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerState {
    Starting,
    Ready,
    Draining,
    Leaving,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Starting => "starting",
            PeerState::Ready => "ready",
            PeerState::Draining => "draining",
            PeerState::Leaving => "leaving",
        }
    }
}

/// What a node says about itself (in heartbeats and in mesh pongs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Random per process start: tells a restarted node from its previous life.
    pub node_id: u64,
    pub jvm_route: String,
    pub mesh_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: PeerState,
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
pub enum Reject {
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
    pub fn label(self) -> &'static str {
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

/// The HMAC key, when the cluster has one.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Encodes a heartbeat datagram.
pub fn encode_heartbeat(hb: &Heartbeat, key: Option<&Key>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(MAGIC);
    out.push(HEARTBEAT_VERSION);
    out.push(if key.is_some() { FLAG_TAGGED } else { 0 });
    // Encoding plain structs into a Vec cannot fail.
    if let Ok(body) = postcard::to_stdvec(hb) {
        out.extend_from_slice(&body);
    }
    if let Some(k) = key {
        let tag = hmac::sign(&k.0, &out);
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// Decodes and authenticates a heartbeat datagram. Domain and replay checks are the
/// caller's (they need state).
pub fn decode_heartbeat(pkt: &[u8], key: Option<&Key>) -> Result<Heartbeat, Reject> {
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
    let tagged = pkt[5] & FLAG_TAGGED != 0;
    let body = match (tagged, key) {
        (false, Some(_)) => return Err(Reject::MissingTag),
        (true, None) => return Err(Reject::UnexpectedTag),
        (false, None) => &pkt[6..],
        (true, Some(k)) => {
            if pkt.len() < 6 + TAG_LEN {
                return Err(Reject::Malformed);
            }
            let (signed, tag) = pkt.split_at(pkt.len() - TAG_LEN);
            hmac::verify(&k.0, signed, tag).map_err(|_| Reject::BadTag)?;
            &signed[6..]
        }
    };
    let (hb, rest): (Heartbeat, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| Reject::Malformed)?;
    if !rest.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(hb)
}

/// A whole session on the wire (create, full copy, state transfer, takeover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullSession {
    pub key: u128,
    pub owner: String,
    pub epoch: u64,
    pub version: u64,
    /// The attributes as an ASCII JSON object.
    pub attrs: String,
    pub max_inactive_ms: u64,
    /// How long the session has been idle on the sender: the receiver sets its own
    /// monotonic last-access from it (no wall clocks compared).
    pub idle_ms: u64,
}

/// One replicated change; (epoch, version) is the session's after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Full(FullSession),
    /// Only what changed: `set` (a JSON object, merged) then `remove`.
    Delta {
        key: u128,
        epoch: u64,
        version: u64,
        set: Option<String>,
        remove: Vec<String>,
        max_inactive_ms: Option<u64>,
    },
    /// Accessed without change: keeps replicas from expiring it.
    Touch {
        key: u128,
        epoch: u64,
        version: u64,
    },
    /// Invalidated or expired on the owner (also the old id of a renew).
    Remove {
        key: u128,
        epoch: u64,
        version: u64,
    },
    /// BackupManager: this node is no longer the session's backup; forget the copy (no
    /// tombstone: the session lives on).
    Drop {
        key: u128,
        epoch: u64,
        version: u64,
    },
}

impl Change {
    pub fn key(&self) -> u128 {
        match self {
            Change::Full(f) => f.key,
            Change::Delta { key, .. }
            | Change::Touch { key, .. }
            | Change::Remove { key, .. }
            | Change::Drop { key, .. } => *key,
        }
    }

    /// Metric label.
    /// Metric label of each kind, by [`Change::kind_index`].
    pub const KINDS: [&'static str; 5] = ["full", "delta", "touch", "remove", "drop"];

    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.kind_index()]
    }

    pub fn kind_index(&self) -> usize {
        match self {
            Change::Full(_) => 0,
            Change::Delta { .. } => 1,
            Change::Touch { .. } => 2,
            Change::Remove { .. } => 3,
            Change::Drop { .. } => 4,
        }
    }
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
    /// copies of them.
    Ack {
        seq: u64,
        need_full: Vec<u128>,
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
}

/// Encodes a mesh frame body (the length prefix is the codec's), tagged when `key` is set.
pub fn seal_mesh(msg: &MeshMessage, key: Option<&Key>) -> Vec<u8> {
    let mut out = vec![MESH_VERSION, if key.is_some() { FLAG_TAGGED } else { 0 }];
    if let Ok(body) = postcard::to_stdvec(msg) {
        out.extend_from_slice(&body);
    }
    tag(out, key)
}

fn tag(mut out: Vec<u8>, key: Option<&Key>) -> Vec<u8> {
    if let Some(k) = key {
        let tag = hmac::sign(&k.0, &out);
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// One change as it goes inside a `Replicate` frame: encoded once, however many peers it
/// goes to ([`seal_replicate`]).
pub fn encode_change(c: &Change) -> bytes::Bytes {
    postcard::to_stdvec(c).map(Into::into).unwrap_or_default()
}

/// Postcard's index of [`MeshMessage::Replicate`]: its position in the enum.
const REPLICATE_VARIANT: u64 = 3;

/// The frame of `MeshMessage::Replicate { seq, changes }` from changes encoded by
/// [`encode_change`]. Postcard's wire format is specified and stable: a variant is its
/// index and a sequence its length, each as a varint, followed by the elements; a test
/// checks this frame equals [`seal_mesh`] of the message.
pub fn seal_replicate<'a>(
    seq: u64,
    changes: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    key: Option<&Key>,
) -> Vec<u8> {
    let len = changes.clone().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(2 + 3 * 10 + len + TAG_LEN);
    out.extend_from_slice(&[MESH_VERSION, if key.is_some() { FLAG_TAGGED } else { 0 }]);
    push_varint(&mut out, REPLICATE_VARIANT);
    push_varint(&mut out, seq);
    push_varint(&mut out, changes.len() as u64);
    for c in changes {
        out.extend_from_slice(c);
    }
    tag(out, key)
}

/// Postcard's varint: seven bits per byte, lowest first, the high bit set on all but the
/// last byte.
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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
pub fn open_mesh(frame: &[u8], key: Option<&Key>) -> Result<MeshMessage, FrameError> {
    let (&v, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    if v != MESH_VERSION {
        return Err(FrameError::Version(v));
    }
    let (&flags, rest) = rest.split_first().ok_or(FrameError::Malformed)?;
    let tagged = flags & FLAG_TAGGED != 0;
    let body = match (tagged, key) {
        (false, Some(_)) => return Err(FrameError::MissingTag),
        (true, None) => return Err(FrameError::UnexpectedTag),
        (false, None) => rest,
        (true, Some(k)) => {
            if frame.len() < 2 + TAG_LEN {
                return Err(FrameError::Malformed);
            }
            let (signed, tag) = frame.split_at(frame.len() - TAG_LEN);
            hmac::verify(&k.0, signed, tag).map_err(|_| FrameError::BadTag)?;
            &signed[2..]
        }
    };
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
        for key in [None, Some(Key::new(b"secret"))] {
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
                state: PeerState::Ready,
                alive_ms: 12,
            },
            seq: 3,
            sent_unix_ms: 1_000,
        }
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let k = Key::new(b"secret");
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
        let k = Key::new(b"secret");
        let other = Key::new(b"other");
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
        let k = Key::new(b"a-mesh-secret-of-some-length");
        let sealed = seal_mesh(&m, Some(&k));
        assert_eq!(open_mesh(&sealed, Some(&k)), Ok(m.clone()));
        assert_eq!(
            open_mesh(&encode_mesh(&m), Some(&k)),
            Err(FrameError::MissingTag)
        );
        assert_eq!(open_mesh(&sealed, None), Err(FrameError::UnexpectedTag));
        let other = Key::new(b"another-secret-entirely");
        assert_eq!(open_mesh(&sealed, Some(&other)), Err(FrameError::BadTag));
    }
}
