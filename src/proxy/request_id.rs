//! The request id (`[http] request_id_header`, `X-Request-Id` by default): sent to the
//! backend, named in the proxy's own error responses and in their log line, so a client's
//! report finds the details the response leaves out. A trusted proxy's or
//! a forwarding member's id is kept, so one request has one id across the cluster.

use std::fmt;

use http::HeaderValue;

/// One request's id: 64 random bits (no shared counter: nothing to contend on), written as
/// 16 hex digits only when needed. A kept one is boxed: the id lives in every request's
/// future, which is moved whole, so it stays two words.
#[derive(Debug, Clone)]
pub(super) enum RequestId {
    Own(u64),
    Theirs(Box<HeaderValue>),
}

impl RequestId {
    pub(super) fn new() -> Self {
        RequestId::Own(fastrand::u64(..))
    }

    /// Word operations, no loop over digits (this runs for every request).
    fn own_hex(n: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&hex8((n >> 32) as u32));
        out[8..].copy_from_slice(&hex8(n as u32));
        out
    }

    /// This hop's own id, as 16 hex digits.
    pub(super) fn hex(&self) -> Option<[u8; 16]> {
        match self {
            RequestId::Own(n) => Some(Self::own_hex(*n)),
            RequestId::Theirs(_) => None,
        }
    }

    /// The id as a header value.
    pub(super) fn value(&self) -> HeaderValue {
        match self {
            RequestId::Own(n) => {
                HeaderValue::from_bytes(&Self::own_hex(*n)).unwrap_or(HeaderValue::from_static("-"))
            }
            RequestId::Theirs(v) => (**v).clone(),
        }
    }
}

/// The 8 hex digits of `v`, most significant first: each nibble spread into its own byte,
/// then turned into `0`-`9` / `a`-`f` (the bytes holding 10-15 get 39 more).
fn hex8(v: u32) -> [u8; 8] {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Own(n) => write!(f, "{n:016x}"),
            // Only visible ASCII reaches the client's error text and the log.
            RequestId::Theirs(v) => {
                let s = v.to_str().unwrap_or("-");
                let clean: String = s
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(128)
                    .collect();
                f.write_str(&clean)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_are_16_hex_digits_both_ways() {
        let id = RequestId::Own(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert_eq!(id.value(), "0123456789abcdef");
        for n in [0, u64::MAX, 0x9a0f_f0a9_1234_5678, fastrand::u64(..)] {
            assert_eq!(RequestId::Own(n).value(), format!("{n:016x}").as_str());
        }
        let theirs = RequestId::Theirs(Box::new(HeaderValue::from_static("a b<c>")));
        assert_eq!(theirs.to_string(), "ab<c>");
    }
}
