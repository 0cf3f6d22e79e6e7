//! Header hygiene, both directions (REFERENCE 3, step 2):
//! - hop-by-hop headers and those named in `Connection` are removed;
//! - every header whose name starts with the session prefix (`X-Session`) is removed, so a
//!   client can never forge session data and a backend's directives never reach a client;
//! - `X-Forwarded-For` / `-Proto` / `-Host` are set, keeping client-supplied values only
//!   when the peer is a configured trusted proxy;
//! - a client header with `_` in its name that reads, with `_` as `-`, as one of those
//!   (`X_Session`, `X_Forwarded_For`, `X_Caracal_Hop`) is removed: CGI, WSGI and PHP
//!   backends map both to `HTTP_X_SESSION`, so it would forge what the strip protects;
//! - `Forwarded`, `X-Real-IP`, the request id header and every other `X-Forwarded-*`
//!   (`-Port`, `-Prefix`) are kept only from a trusted proxy or a member;
//! - an upgrade passes only for the allowed protocols (`[http] upgrades`, `websocket`);
//!   `HTTP2-Settings` never passes (an h2c upgrade would tunnel raw requests past all of
//!   this);
//! - trailers, both ways: `trailers`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub use super::client::ClientInfo;
pub(super) use super::client::ConnFlags;
use super::survey::{
    hop_index, Survey, FWD, HOP_BY_HOP, RID, UPGRADE_BIT, XFF, XFH, XFO, XFP, XRI,
};

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers a hop adds to a request, written by the upstream client after the request's own.
pub type Added = Vec<(HeaderName, HeaderValue)>;

/// Header rules configured for a node.
#[derive(Debug, Clone)]
pub struct Hygiene {
    /// Lower-case session header prefix.
    prefix: String,
    trusted: Vec<IpNet>,
    /// Lower-case protocols an `Upgrade` may name.
    upgrades: Vec<String>,
    request_id: Option<HeaderName>,
}

/// What [`Hygiene::request`] found worth keeping.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// The `Upgrade` value of an allowed protocol upgrade.
    pub upgrade: Option<HeaderValue>,
    /// The request id a trusted proxy or member sent (kept in the request).
    pub request_id: Option<HeaderValue>,
}

impl Hygiene {
    pub fn new(
        prefix: &str,
        trusted: Vec<IpNet>,
        upgrades: Vec<String>,
        request_id: Option<HeaderName>,
    ) -> Self {
        Self {
            prefix: prefix.to_ascii_lowercase(),
            trusted,
            upgrades,
            request_id,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Cleans a request before it goes to a backend. `host` is the request's authority (the
    /// `Host` header or, under HTTP/2, `:authority`). The `X-Forwarded-*` values this hop
    /// sets go to `added`, which the upstream client writes after the request's own
    /// headers: they never enter (or grow) the map. Returns the `Upgrade` value when the
    /// request is an allowed protocol upgrade, which is then kept as the one hop-by-hop
    /// exception.
    pub fn request(
        &self,
        headers: &mut HeaderMap,
        added: &mut Added,
        client: &ClientInfo,
        host: Option<&HeaderValue>,
        from_member: bool,
    ) -> Cleaned {
        let seen = Survey::of(headers, &self.prefix, self.request_id.as_ref(), false);
        self.request_surveyed(headers, &seen, added, client, host, from_member)
    }

    /// [`Hygiene::request`] with the names already surveyed (the request path's one pass).
    pub(super) fn request_surveyed(
        &self,
        headers: &mut HeaderMap,
        seen: &Survey,
        added: &mut Added,
        client: &ClientInfo,
        host: Option<&HeaderValue>,
        from_member: bool,
    ) -> Cleaned {
        let upgrade = if seen.hop & UPGRADE_BIT != 0 {
            upgrade_requested(headers).filter(|u| self.upgrade_allowed(u))
        } else {
            None
        };
        let again;
        let seen = if strip_present(headers, seen.hop) {
            // `Connection` named other headers, now gone: what is left is looked at again.
            again = Survey::of(headers, &self.prefix, self.request_id.as_ref(), false);
            &again
        } else {
            seen
        };
        let (prefixed, forwarded, underscored) = (seen.prefixed, seen.forwarded, seen.underscored);
        if prefixed {
            strip_prefixed(headers, &self.prefix);
        }
        if underscored {
            strip_underscored(headers, &self.prefix);
        }

        // A cluster member forwarding a request is a proxy of ours.
        let trusted =
            from_member || (forwarded != 0 && self.is_trusted(client.peer.ip().to_canonical()));
        let mut cleaned = Cleaned::default();
        if forwarded & XFO != 0 && !trusted {
            let others: Vec<HeaderName> = headers
                .keys()
                .filter(|k| {
                    k.as_str().starts_with("x-forwarded-")
                        && !matches!(&k.as_str()[12..], "for" | "proto" | "host")
                })
                .cloned()
                .collect();
            for n in others {
                headers.remove(n);
            }
        }
        if forwarded & (FWD | XRI | RID) != 0 {
            if trusted {
                if let Some(n) = &self.request_id {
                    cleaned.request_id = headers.get(n).cloned();
                }
            } else {
                headers.remove(header::FORWARDED);
                headers.remove(X_REAL_IP);
                if let Some(n) = &self.request_id {
                    headers.remove(n);
                }
            }
        }
        // Kept as sent: the client's values, from a trusted proxy. Else this hop's replace them.
        let keep = |bit: u8| trusted && forwarded & bit != 0;
        let replace = |headers: &mut HeaderMap, bit: u8, name: &HeaderName| {
            if forwarded & bit != 0 {
                headers.remove(name);
            }
        };
        if keep(XFF) {
            let mut chain = join_values(headers, &X_FORWARDED_FOR);
            chain.push_str(", ");
            chain.push_str(client.ip_value.to_str().unwrap_or("unknown"));
            headers.remove(X_FORWARDED_FOR);
            added.push((
                X_FORWARDED_FOR,
                HeaderValue::from_str(&chain).unwrap_or_else(|_| client.ip_value.clone()),
            ));
        } else {
            replace(headers, XFF, &X_FORWARDED_FOR);
            added.push((X_FORWARDED_FOR, client.ip_value.clone()));
        }
        if !keep(XFP) {
            replace(headers, XFP, &X_FORWARDED_PROTO);
            let proto = if client.tls { "https" } else { "http" };
            added.push((X_FORWARDED_PROTO, HeaderValue::from_static(proto)));
        }
        if !keep(XFH) {
            replace(headers, XFH, &X_FORWARDED_HOST);
            if let Some(h) = host {
                added.push((X_FORWARDED_HOST, h.clone()));
            }
        }
        if let Some(u) = &upgrade {
            set_upgrade(headers, u.clone());
        }
        cleaned.upgrade = upgrade;
        cleaned
    }

    /// Every protocol an `Upgrade` value lists (`name` or `name/version`) is allowed.
    fn upgrade_allowed(&self, value: &HeaderValue) -> bool {
        let Ok(v) = value.to_str() else {
            return false;
        };
        v.split(',').all(|p| {
            let name = p.trim().split('/').next().unwrap_or_default();
            self.upgrades.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// Cleans trailers (either way): what the head loses, and the fields that must not
    /// come in trailers (RFC 9110 6.5.1).
    pub fn trailers(&self, t: &mut HeaderMap) {
        super::trailers::clean(t, self.prefix.as_bytes());
    }

    /// Cleans a backend response before it goes to the client. A `101 Switching Protocols`
    /// keeps its `Upgrade`.
    pub fn response(&self, headers: &mut HeaderMap, switching: bool) {
        let upgrade = if switching {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(headers);
        strip_prefixed(headers, &self.prefix);
        if let Some(u) = upgrade {
            set_upgrade(headers, u);
        }
    }
}

fn set_upgrade(headers: &mut HeaderMap, value: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, value);
}

/// The comma-separated tokens of every `Connection` header, trimmed.
pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `Connection: upgrade` + `Upgrade: x` present.
fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let up = headers.get(header::UPGRADE)?;
    let listed = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    listed.then(|| up.clone())
}

/// Removes the standard hop-by-hop headers and every header named in `Connection`.
/// One pass over the names; nothing is allocated unless `Connection` names other headers.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Bit i: HOP_BY_HOP[i] is present; the bit past them: Upgrade.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    strip_present(headers, present);
}

/// [`strip_hop_by_hop`] for the `present` names (bits as [`Survey::hop`]); true when
/// `Connection` named other headers, which were removed too.
fn strip_present(headers: &mut HeaderMap, present: u16) -> bool {
    if present == 0 {
        return false;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        for token in connection_tokens(headers) {
            // The usual values name no header: skip parsing them.
            if token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("upgrade")
                || token.is_empty()
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                // Host is needed to reach the backend; listing it must not remove it.
                if n != header::HOST {
                    listed.push(n);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
    let named = !listed.is_empty();
    for n in listed {
        headers.remove(n);
    }
    named
}

/// Removes every header whose name, with `_` read as `-`, is one this hop protects: the
/// session prefix, `X-Forwarded-*`, the hop marker.
fn strip_underscored(headers: &mut HeaderMap, prefix: &str) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let n = k.as_str();
            n.contains('_') && {
                let dashed = n.replace('_', "-");
                dashed.starts_with(prefix)
                    || dashed.starts_with("x-forwarded-")
                    || dashed == "x-caracal-hop"
            }
        })
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Removes every header whose (lower-case) name starts with `prefix`.
pub(super) fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
    // Scan first: the common case finds nothing and allocates nothing.
    if !headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        if let Ok(s) = v.to_str() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(s.trim());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Hygiene::request`, then the added headers merged as the upstream client writes
    /// them; none may end up twice.
    fn request(
        h: &Hygiene,
        m: &mut HeaderMap,
        client: &ClientInfo,
        host: Option<&HeaderValue>,
        from_member: bool,
    ) -> Option<HeaderValue> {
        let mut added = Added::new();
        let up = h.request(m, &mut added, client, host, from_member).upgrade;
        for (n, v) in added {
            m.append(n, v);
        }
        for n in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST] {
            assert!(m.get_all(&n).iter().count() <= 1, "{n} twice");
        }
        up
    }

    fn client(ip: &str) -> ClientInfo {
        ClientInfo::new(format!("{ip}:5555").parse().unwrap(), false)
    }

    #[test]
    fn strips_prefix_connection_listed_and_hop_by_hop() {
        let h = Hygiene::new("X-Session", vec![], vec!["websocket".into()], None);
        let mut m = HeaderMap::new();
        m.insert("x-session-id", HeaderValue::from_static("forged"));
        m.insert("X-SESSION", HeaderValue::from_static("{}"));
        m.insert("x-secret", HeaderValue::from_static("1"));
        m.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret, host"),
        );
        m.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        m.insert("te", HeaderValue::from_static("trailers"));
        m.insert("host", HeaderValue::from_static("example"));
        m.insert("accept", HeaderValue::from_static("*/*"));
        let host = m.get("host").cloned();
        let up = request(&h, &mut m, &client("10.1.2.3"), host.as_ref(), false);
        assert!(up.is_none());
        for gone in [
            "x-session-id",
            "x-session",
            "x-secret",
            "connection",
            "keep-alive",
            "te",
        ] {
            assert!(!m.contains_key(gone), "{gone} kept");
        }
        assert_eq!(m["host"], "example");
        assert_eq!(m["accept"], "*/*");
        assert_eq!(m["x-forwarded-for"], "10.1.2.3");
        assert_eq!(m["x-forwarded-proto"], "http");
        assert_eq!(m["x-forwarded-host"], "example");
    }

    #[test]
    fn forwarded_headers_trusted_only_from_trusted_proxies() {
        let h = Hygiene::new(
            "x-session",
            vec!["10.0.0.0/8".parse().unwrap()],
            vec![],
            None,
        );
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        m.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        request(&h, &mut m, &client("10.0.0.9"), None, false);
        assert_eq!(m["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(m["x-forwarded-proto"], "https");

        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        m.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        m.insert("x-forwarded-host", HeaderValue::from_static("forged"));
        request(&h, &mut m, &client("192.168.1.1"), None, false);
        assert_eq!(m["x-forwarded-for"], "192.168.1.1");
        assert_eq!(m["x-forwarded-proto"], "http");
        assert!(
            !m.contains_key("x-forwarded-host"),
            "no authority: none sent"
        );

        let mut m = HeaderMap::new();
        m.insert("x-forwarded-host", HeaderValue::from_static("forged"));
        let host = HeaderValue::from_static("real");
        request(&h, &mut m, &client("192.168.1.1"), Some(&host), false);
        assert_eq!(m["x-forwarded-host"], "real");

        // A member forwarding: its values are kept, the chain grows.
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        m.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        m.insert("x-forwarded-host", HeaderValue::from_static("shop"));
        request(&h, &mut m, &client("192.168.1.2"), Some(&host), true);
        assert_eq!(m["x-forwarded-for"], "1.1.1.1, 192.168.1.2");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "shop");
    }

    #[test]
    fn upgrade_is_kept_as_the_one_exception() {
        let h = Hygiene::new("x-session", vec![], vec!["websocket".into()], None);
        let mut m = HeaderMap::new();
        m.insert("connection", HeaderValue::from_static("Upgrade"));
        m.insert("upgrade", HeaderValue::from_static("websocket"));
        let up = request(&h, &mut m, &client("127.0.0.1"), None, false);
        assert_eq!(up.unwrap(), "websocket");
        assert_eq!(m["upgrade"], "websocket");
        assert_eq!(m["connection"], "upgrade");
    }

    #[test]
    fn hop_index_matches_the_list() {
        for (i, h) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(h.as_str()), Some(i), "{h}");
        }
        assert_eq!(hop_index("upgrade"), Some(HOP_BY_HOP.len()));
        assert_eq!(hop_index("accept"), None);
    }

    #[test]
    fn only_allowed_upgrades_pass_and_http2_settings_never() {
        let h = Hygiene::new("x-session", vec![], vec!["websocket".into()], None);
        let mut m = HeaderMap::new();
        m.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        m.insert("upgrade", HeaderValue::from_static("h2c"));
        m.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        assert!(request(&h, &mut m, &client("127.0.0.1"), None, false).is_none());
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert!(!m.contains_key(gone), "{gone} kept");
        }
        let mut m = HeaderMap::new();
        m.insert("connection", HeaderValue::from_static("upgrade"));
        m.insert("upgrade", HeaderValue::from_static("websocket, h2c"));
        assert!(request(&h, &mut m, &client("127.0.0.1"), None, false).is_none());
    }

    #[test]
    fn forwarded_real_ip_and_request_id_only_from_the_trusted() {
        let rid = HeaderName::from_static("x-request-id");
        let h = Hygiene::new(
            "x-session",
            vec!["10.0.0.0/8".parse().unwrap()],
            vec![],
            Some(rid.clone()),
        );
        let headers = || {
            let mut m = HeaderMap::new();
            m.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
            m.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
            m.insert("x-request-id", HeaderValue::from_static("theirs"));
            m.insert("x-forwarded-prefix", HeaderValue::from_static("/admin"));
            m
        };
        let mut m = headers();
        let mut added = Added::new();
        let c = h.request(&mut m, &mut added, &client("192.168.0.1"), None, false);
        assert!(c.request_id.is_none());
        assert!(m.is_empty(), "all four dropped from a client: {m:?}");
        let mut m = headers();
        let c = h.request(&mut m, &mut added, &client("10.0.0.1"), None, false);
        assert_eq!(c.request_id.unwrap(), "theirs");
        assert_eq!(m.len(), 4, "kept from a trusted proxy");
    }

    #[test]
    fn response_loses_session_directives_and_hop_by_hop() {
        let h = Hygiene::new("x-session", vec![], vec!["websocket".into()], None);
        let mut m = HeaderMap::new();
        m.insert("x-session-set", HeaderValue::from_static("{}"));
        m.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        m.insert("content-type", HeaderValue::from_static("text/plain"));
        h.response(&mut m, false);
        assert!(!m.contains_key("x-session-set"));
        assert!(!m.contains_key("transfer-encoding"));
        assert!(m.contains_key("content-type"));
    }
}
