//! Wire codecs (floor 1) shared by heartbeats and mesh frames: the HMAC-SHA256 tag that a
//! `[cluster] key` puts on every packet and frame, the length-delimited frame codec with its
//! size cap, and postcard's varint. What the packets carry is the cluster's
//! (`cluster::messages`).

use ring::hmac;
use tokio_util::codec::LengthDelimitedCodec;

/// Length of the HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;
/// Bit 0 of a packet's flags byte: a tag follows the body.
pub(crate) const FLAG_TAGGED: u8 = 1;

/// The cluster's HMAC key.
#[derive(Clone)]
pub struct ClusterKey(hmac::Key);

impl ClusterKey {
    pub fn new(secret: &[u8]) -> Self {
        ClusterKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// The flags byte of a packet sealed with `key`.
pub(crate) fn flags(key: Option<&ClusterKey>) -> u8 {
    if key.is_some() {
        FLAG_TAGGED
    } else {
        0
    }
}

/// Appends the tag over everything in `out`, when there is a key.
pub(crate) fn tag(mut out: Vec<u8>, key: Option<&ClusterKey>) -> Vec<u8> {
    if let Some(k) = key {
        let tag = hmac::sign(&k.0, &out);
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// Why a packet's tag does not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagError {
    /// The key requires a tag and there is none.
    Missing,
    Bad,
    /// A tag, and no key to check it with.
    Unexpected,
    /// Flagged as tagged but too short to hold a tag.
    Short,
}

/// Checks the tag of `packet`: a header of `header` bytes whose last byte is the flags,
/// the body, and the tag when flagged. Returns the body. The caller checked that `packet`
/// holds the header.
pub(crate) fn untag<'a>(
    packet: &'a [u8],
    header: usize,
    key: Option<&ClusterKey>,
) -> Result<&'a [u8], TagError> {
    let tagged = packet
        .get(header.wrapping_sub(1))
        .is_some_and(|f| f & FLAG_TAGGED != 0);
    match (tagged, key) {
        (false, Some(_)) => Err(TagError::Missing),
        (true, None) => Err(TagError::Unexpected),
        (false, None) => packet.get(header..).ok_or(TagError::Short),
        (true, Some(k)) => {
            if packet.len() < header + TAG_LEN {
                return Err(TagError::Short);
            }
            let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
            hmac::verify(&k.0, signed, tag).map_err(|_| TagError::Bad)?;
            Ok(&signed[header..])
        }
    }
}

/// The HMAC-SHA256 of `data` (the forwarding marker's: a member's signature).
pub(crate) fn sign(key: &ClusterKey, data: &[u8]) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(hmac::sign(&key.0, data).as_ref());
    out
}

/// Whether `tag` is the HMAC of `data` under `key` (compared in constant time).
pub(crate) fn verify(key: &ClusterKey, data: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&key.0, data, tag).is_ok()
}

/// Postcard's varint: seven bits per byte, lowest first, the high bit set on all but the
/// last byte.
pub(crate) fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Mesh frames: a 4-byte length prefix, at most `max_frame` bytes.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_check_both_ways() {
        let k = ClusterKey::new(b"a-secret-of-some-length");
        let sealed = tag(vec![7, flags(Some(&k)), 1, 2, 3], Some(&k));
        assert_eq!(untag(&sealed, 2, Some(&k)), Ok(&[1u8, 2, 3][..]));
        assert_eq!(untag(&sealed, 2, None), Err(TagError::Unexpected));
        let other = ClusterKey::new(b"another-secret-entirely");
        assert_eq!(untag(&sealed, 2, Some(&other)), Err(TagError::Bad));
        let plain = tag(vec![7, flags(None), 1], None);
        assert_eq!(untag(&plain, 2, None), Ok(&[1u8][..]));
        assert_eq!(untag(&plain, 2, Some(&k)), Err(TagError::Missing));
        assert_eq!(
            untag(&[7, FLAG_TAGGED, 1], 2, Some(&k)),
            Err(TagError::Short)
        );
        let mut v = Vec::new();
        push_varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
    }
}
