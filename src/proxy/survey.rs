//! One pass over a request's headers before anything changes them: what the head checks
//! (`checks`) and the hygiene (`headers`) need to know about the names present, so neither
//! walks the map again, and names that are usually absent (`Upgrade`, the hop marker) are
//! not looked up by hash. Each extra walk or lookup cost every request (callgrind,
//! bench/RESULTS.md section 5).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Bits of [`Survey::forwarded`]: which `X-Forwarded-*` the request carries.
pub(super) const XFF: u8 = 1;
pub(super) const XFP: u8 = 2;
pub(super) const XFH: u8 = 4;
// And the others kept only when trusted.
pub(super) const FWD: u8 = 8;
pub(super) const XRI: u8 = 16;
pub(super) const RID: u8 = 32;
/// Any other `X-Forwarded-*` (`-Port`, `-Prefix`, ...: Spring and others read them).
pub(super) const XFO: u8 = 64;

/// The bit of `Upgrade` in [`Survey::hop`] (after those of [`HOP_BY_HOP`]).
pub(super) const UPGRADE_BIT: u16 = 1 << HOP_BY_HOP.len();
/// `Transfer-Encoding`'s index in [`HOP_BY_HOP`].
const TE_BIT: u16 = 1 << 7;

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1, plus the legacy ones).
/// A `static`, not a `const`: a `const` array of `HeaderName`s is built and dropped at every
/// use (callgrind: ~300 instructions a request).
pub(super) static HOP_BY_HOP: [HeaderName; 9] = [
    // First: strip_hop_by_hop reads the Connection bit as bit 0.
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// The index in [`HOP_BY_HOP`] of a (lower-case) name, or `HOP_BY_HOP.len()` for
/// `Upgrade`. By length first: comparing each name with every entry cost ~700 instructions
/// a request (callgrind) once the list grew past what the compiler unrolls.
#[inline]
pub(super) fn hop_index(n: &str) -> Option<usize> {
    Some(match n.len() {
        2 if n == "te" => 5,
        7 if n == "trailer" => 6,
        7 if n == "upgrade" => HOP_BY_HOP.len(),
        10 if n == "connection" => 0,
        10 if n == "keep-alive" => 1,
        14 if n == "http2-settings" => 8,
        16 if n == "proxy-connection" => 2,
        17 if n == "transfer-encoding" => 7,
        18 if n == "proxy-authenticate" => 3,
        19 if n == "proxy-authorization" => 4,
        _ => return None,
    })
}

/// What a request's header names say.
#[derive(Debug, Default)]
pub(super) struct Survey {
    /// Bit `i`: `HOP_BY_HOP[i]` is present; [`UPGRADE_BIT`]: `Upgrade`.
    pub hop: u16,
    /// A name starts with the session prefix.
    pub prefixed: bool,
    /// Bits `XFF`.. `XFO`.
    pub forwarded: u8,
    /// A name has a `_`.
    pub underscored: bool,
    /// The hop marker (`X-Caracal-Hop`) is present.
    pub marker: bool,
    /// `Host` headers, and the first one's value.
    pub hosts: usize,
    pub host: Option<HeaderValue>,
    /// A `Host` value is not an authority.
    pub bad_host: bool,
    /// `Content-Length` values (a list counts each), and `Transfer-Encoding` headers.
    pub lengths: usize,
    pub codings: usize,
    /// A `Transfer-Encoding` other than `chunked`.
    pub bad_coding: bool,
    /// The head as the backend would get it (request line aside), when counted.
    pub size: usize,
}

impl Survey {
    /// `prefix`: the lower-case session prefix; `count_size`: also add up the head's size.
    pub(super) fn of(
        headers: &HeaderMap,
        prefix: &str,
        request_id: Option<&HeaderName>,
        count_size: bool,
    ) -> Self {
        let mut s = Survey::default();
        for (name, value) in headers {
            let n = name.as_str();
            if count_size {
                s.size += n.len() + value.len() + 4;
            }
            if let Some(i) = hop_index(n) {
                let bit = 1u16 << i;
                s.hop |= bit;
                if bit == TE_BIT {
                    s.codings += 1;
                    s.bad_coding |= !value
                        .as_bytes()
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"chunked");
                }
                continue;
            }
            match n.len() {
                4 if n == "host" => {
                    s.hosts += 1;
                    if s.host.is_none() {
                        s.host = Some(value.clone());
                    }
                    s.bad_host |= !is_authority(value.as_bytes());
                    continue;
                }
                14 if n == "content-length" => {
                    // HTTP/1 ones hyper merged already (and the framing guard refused); an
                    // HTTP/2 request can still bring two, or a list.
                    s.lengths += 1 + value.as_bytes().iter().filter(|&&b| b == b',').count();
                    continue;
                }
                9 if n == "forwarded" => s.forwarded |= FWD,
                9 if n == "x-real-ip" => s.forwarded |= XRI,
                13 if n == "x-caracal-hop" => s.marker = true,
                _ => {}
            }
            if let Some(rest) = n.strip_prefix("x-forwarded-") {
                s.forwarded |= match rest {
                    "for" => XFF,
                    "proto" => XFP,
                    "host" => XFH,
                    _ => XFO,
                };
            } else if request_id == Some(name) {
                s.forwarded |= RID;
            }
            s.prefixed |= n.starts_with(prefix);
            s.underscored |= n.as_bytes().contains(&b'_');
        }
        s
    }
}

/// A `Host` value: `host[:port]` with a reg-name, IPv4 or bracketed IPv6 host (RFC 3986
/// 3.2.2), no userinfo, no whitespace; or empty (RFC 9112 3.2: a target without an
/// authority). Byte classes only: this runs on every request.
pub(super) fn is_authority(v: &[u8]) -> bool {
    v.iter().all(|&b| AUTHORITY[usize::from(b)])
}

/// The bytes of an authority: unreserved, sub-delims, `%`, `:`, `[`, `]`.
static AUTHORITY: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        for ok in [
            "example.com",
            "a:8080",
            "[::1]:80",
            "10.0.0.1",
            "xn--bcher-kva.de",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        assert!(is_authority(b""), "empty is allowed");
        for bad in ["a b", "u@h", "a/b", "a?b", "a\tb", "h#x"] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn one_pass_sees_every_name_that_matters() {
        let mut m = HeaderMap::new();
        for (n, v) in [
            ("host", "a"),
            ("host", "b c"),
            ("content-length", "1, 2"),
            ("transfer-encoding", "gzip"),
            ("upgrade", "websocket"),
            ("x-forwarded-port", "1"),
            ("x-real-ip", "1.2.3.4"),
            ("x-caracal-hop", "1"),
            ("x-session-id", "1"),
            ("x_forwarded_for", "1"),
            ("x-request-id", "1"),
        ] {
            m.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let rid = HeaderName::from_static("x-request-id");
        let s = Survey::of(&m, "x-session", Some(&rid), true);
        assert_eq!(
            (s.hosts, s.host.as_ref().map(|h| h.as_bytes())),
            (2, Some(&b"a"[..]))
        );
        assert!(s.bad_host && s.bad_coding && s.marker && s.prefixed && s.underscored);
        assert_eq!((s.lengths, s.codings), (2, 1));
        assert_eq!(s.forwarded, XFO | XRI | RID);
        assert!(s.hop & UPGRADE_BIT != 0 && s.hop & TE_BIT != 0);
        assert!(s.size > 100);
    }
}
