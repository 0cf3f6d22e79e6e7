//! The session cookie and the `;jsessionid=` path parameter (REFERENCE 2).
//!
//! Reading: the cookie first, the path parameter second. Writing: `Path=/`, `HttpOnly`,
//! `SameSite=Lax`, `Secure` per `cookie_secure` (auto = when the request came over TLS),
//! no `Max-Age` (a browser-session cookie); clearing sets `Max-Age=0`.

use cookie::{Cookie, SameSite};
use http::header::{HeaderMap, HeaderValue, COOKIE};

/// When the cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    Auto,
    Always,
    Never,
}

/// How this node writes its session cookie.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    /// Lower-case name of the path parameter (`jsessionid` for `JSESSIONID`).
    pub path_param: String,
    pub path: String,
    pub secure: SecureMode,
    pub same_site: SameSite,
    pub http_only: bool,
}

impl CookieConfig {
    /// `Set-Cookie` for a session id.
    pub fn set(&self, full_id: &str, tls: bool) -> Option<HeaderValue> {
        let c = self.builder(full_id.to_string(), tls).build();
        HeaderValue::from_str(&c.to_string()).ok()
    }

    /// `Set-Cookie` that makes the browser drop the cookie.
    pub fn clear(&self, tls: bool) -> Option<HeaderValue> {
        let c = self
            .builder(String::new(), tls)
            .max_age(cookie::time::Duration::ZERO)
            .build();
        HeaderValue::from_str(&c.to_string()).ok()
    }

    fn builder(&self, value: String, tls: bool) -> cookie::CookieBuilder<'static> {
        let secure = match self.secure {
            SecureMode::Auto => tls,
            SecureMode::Always => true,
            SecureMode::Never => false,
        };
        Cookie::build((self.name.clone(), value))
            .path(self.path.clone())
            .http_only(self.http_only)
            .same_site(self.same_site)
            .secure(secure)
    }

    /// The session id value of the first cookie named `name`, if any.
    ///
    /// Hand-scanned rather than `Cookie::split_parse`: this runs on every request and only
    /// needs one pair, so it jumps (memchr) to the places the name can start instead of
    /// building a `Cookie` for each pair.
    pub fn from_cookies<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let name = self.name.as_bytes();
        headers
            .get_all(COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), name))
    }
}

/// The value of the first `name=value` pair of one `Cookie` header, unquoted and trimmed.
fn cookie_value<'h>(v: &'h [u8], name: &[u8]) -> Option<&'h str> {
    let first = *name.first()?;
    memchr::memchr_iter(first, v).find_map(|at| {
        // A pair starts the header or follows `;` (spaces allowed), else it is in a value.
        let before = v[..at].trim_ascii_end();
        if !(before.is_empty() || before.ends_with(b";")) {
            return None;
        }
        let rest = v[at..].strip_prefix(name)?;
        let value = rest.trim_ascii_start().strip_prefix(b"=")?;
        let end = memchr::memchr(b';', value).unwrap_or(value.len());
        let value = value[..end].trim_ascii();
        let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|&b| b != b'"')
            .map_or(start, |i| i + 1);
        std::str::from_utf8(&value[start..end]).ok()
    })
}

/// Finds `;<param>=value` in a path (any segment, name case-insensitive) and returns the
/// first value and the path without any such parameter (a second one, or one on a static
/// path, must not reach the backend either). `None` when the path has none.
pub(crate) fn take_path_param<'p>(path: &'p str, param: &str) -> Option<(&'p str, String)> {
    let mut first: Option<&'p str> = None;
    let mut stripped = String::new();
    // The end of what has been copied to `stripped` (or skipped) so far.
    let mut copied = 0;
    let mut search = 0;
    while let Some(rel) = path[search..].find(';') {
        let semi = search + rel;
        let rest = &path[semi + 1..];
        let name_ok = rest.len() > param.len()
            && rest.as_bytes()[param.len()] == b'='
            && rest[..param.len()].eq_ignore_ascii_case(param);
        if name_ok {
            let vstart = semi + 1 + param.len() + 1;
            let vend = path[vstart..]
                .find([';', '/', '?', '#'])
                .map_or(path.len(), |i| vstart + i);
            if first.is_none() {
                stripped.reserve(path.len());
                first = Some(&path[vstart..vend]);
            }
            stripped.push_str(&path[copied..semi]);
            copied = vend;
            search = vend;
        } else {
            search = semi + 1;
        }
        if search >= path.len() {
            break;
        }
    }
    let first = first?;
    stripped.push_str(&path[copied..]);
    Some((first, stripped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secure: SecureMode) -> CookieConfig {
        CookieConfig {
            name: "JSESSIONID".into(),
            path_param: "jsessionid".into(),
            path: "/".into(),
            secure,
            same_site: SameSite::Lax,
            http_only: true,
        }
    }

    #[test]
    fn set_cookie_flags() {
        let c = cfg(SecureMode::Auto);
        let plain = c.set("ABC.node1", false).unwrap();
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("JSESSIONID=ABC.node1"), "{plain}");
        for part in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(plain.contains(part), "{plain}");
        }
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(!plain.contains("Max-Age"), "{plain}");
        assert!(c
            .set("ABC.node1", true)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert!(cfg(SecureMode::Always)
            .set("A", false)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert!(!cfg(SecureMode::Never)
            .set("A", true)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"));
        assert!(c
            .clear(false)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    }

    #[test]
    fn reads_the_named_cookie() {
        let c = cfg(SecureMode::Auto);
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; JSESSIONIDX=no"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("JSESSIONID=\"ABC.n1\"; JSESSIONID=second"),
        );
        assert_eq!(c.from_cookies(&h), Some("ABC.n1"));
        assert_eq!(c.from_cookies(&HeaderMap::new()), None);
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1;  JSESSIONID = \"\"XY.n2\" ;b=2"),
        );
        assert_eq!(c.from_cookies(&h), Some("XY.n2"));
        h.insert(COOKIE, HeaderValue::from_static("JSESSIONID=\"\""));
        assert_eq!(c.from_cookies(&h), Some(""));
    }

    /// The plain split-and-compare reading the scan replaced.
    fn reference<'h>(v: &'h [u8], name: &[u8]) -> Option<&'h str> {
        v.split(|&b| b == b';').find_map(|pair| {
            let rest = pair.trim_ascii_start().strip_prefix(name)?;
            let value = rest.trim_ascii_start().strip_prefix(b"=")?.trim_ascii();
            let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
            let end = value
                .iter()
                .rposition(|&b| b != b'"')
                .map_or(start, |i| i + 1);
            std::str::from_utf8(&value[start..end]).ok()
        })
    }

    proptest::proptest! {
        #[test]
        fn scan_agrees_with_split_and_compare(v in "([ ;=\"a]|JSESSIONID|JSESSION|ID|A\\.n1){0,12}") {
            proptest::prop_assert_eq!(
                cookie_value(v.as_bytes(), b"JSESSIONID"),
                reference(v.as_bytes(), b"JSESSIONID"),
                "{:?}", v
            );
        }
    }

    #[test]
    fn path_parameter() {
        assert_eq!(
            take_path_param("/shop/cart;jsessionid=ABC.n1", "jsessionid"),
            Some(("ABC.n1", "/shop/cart".to_string()))
        );
        assert_eq!(
            take_path_param("/a;JSESSIONID=X;v=1/b", "jsessionid"),
            Some(("X", "/a;v=1/b".to_string()))
        );
        assert_eq!(take_path_param("/a;foo=1", "jsessionid"), None);
        assert_eq!(
            take_path_param(
                "/a;jsessionid=A.n1;jsessionid=B.n2/b;JSESSIONID=C",
                "jsessionid"
            ),
            Some(("A.n1", "/a/b".to_string())),
            "every one is stripped, the first is read"
        );
        assert_eq!(take_path_param("/a;jsessionid", "jsessionid"), None);
        assert_eq!(take_path_param("/;", "jsessionid"), None);
    }
}
