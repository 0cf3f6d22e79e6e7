//! The backend session protocol (REFERENCE 5), with a configurable prefix (default `X-Session`).
//!
//! To the backend: `X-Session-Id`, `X-Session` (ASCII JSON of the attributes),
//! `X-Session-Node`, and `X-Session-Original-Id` after a failover rebind.
//! From the backend: `-Set` (JSON object, several merged in order), `-Remove` (names),
//! `-Renew: true`, `-Invalidate: true` (wins over the rest), `-Max-Inactive: <seconds>`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::attrs;
use super::error::DirectiveError;

/// Header names built once from the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub id: HeaderName,
    pub session: HeaderName,
    pub node: HeaderName,
    pub original_id: HeaderName,
    pub set: HeaderName,
    pub remove: HeaderName,
    pub renew: HeaderName,
    pub invalidate: HeaderName,
    pub max_inactive: HeaderName,
}

impl Names {
    /// `prefix` was checked to be a legal header name by the config.
    pub(crate) fn new(prefix: &str) -> Result<Self, http::header::InvalidHeaderName> {
        let n = |suffix: &str| static_name(&format!("{prefix}{suffix}"));
        Ok(Self {
            id: n("-id")?,
            session: n("")?,
            node: n("-node")?,
            original_id: n("-original-id")?,
            set: n("-set")?,
            remove: n("-remove")?,
            renew: n("-renew")?,
            invalidate: n("-invalidate")?,
            max_inactive: n("-max-inactive")?,
        })
    }
}

/// A header name built once per node, leaked to `'static`: the proxy adds three of these to
/// every sticky request, and a clone of a static name costs no reference count (two
/// atomic operations per header otherwise). A node leaks a few hundred bytes, once.
fn static_name(name: &str) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let lower = name.to_ascii_lowercase();
    // `from_static` panics where `from_lowercase` errs (the same table): only a name that
    // passes `from_lowercase` is made static; `from_bytes` reports the error of any other.
    if HeaderName::from_lowercase(lower.as_bytes()).is_err() {
        return HeaderName::from_bytes(name.as_bytes());
    }
    Ok(HeaderName::from_static(Box::leak(lower.into_boxed_str())))
}

/// The value of a header added to every request, leaked to `'static` like the session
/// header names (only visible ASCII and spaces, which `from_static` accepts).
pub(crate) fn static_value(value: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let checked = HeaderValue::from_str(value)?;
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Ok(checked);
    }
    Ok(HeaderValue::from_static(Box::leak(
        value.to_owned().into_boxed_str(),
    )))
}

/// What a backend asked for in one response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    /// The `-Set` objects merged in order, as canonical text ([`attrs::canonical`]): what
    /// the store merges and what a delta replicates. `None` when no `-Set` header came.
    pub set: Option<String>,
    pub remove: Vec<String>,
    pub renew: bool,
    pub invalidate: bool,
    pub max_inactive: Option<Duration>,
}

impl Directives {
    pub fn is_empty(&self) -> bool {
        self.set.is_none()
            && self.remove.is_empty()
            && !self.renew
            && !self.invalidate
            && self.max_inactive.is_none()
    }

    /// Changes the attributes or the timeout (create-worthy when there is no session yet
    /// only if `set` is present).
    pub fn changes_data(&self) -> bool {
        self.set.is_some() || !self.remove.is_empty() || self.max_inactive.is_some()
    }
}

/// Reads the directives from a backend's session-prefixed response headers (as received:
/// the name in any case, the value), which the upstream client set aside. Repeated `-Set`
/// and `-Remove` headers all count, in order; of the others the first counts.
pub(crate) fn parse(
    headers: &[(Bytes, HeaderValue)],
    names: &Names,
) -> Result<Directives, DirectiveError> {
    let mut d = Directives::default();
    if headers.is_empty() {
        return Ok(d);
    }
    let is = |name: &[u8], n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
    let mut set: Option<Map<String, Value>> = None;
    let (mut renew, mut invalidate, mut max_inactive) = (None, None, None);
    for (name, v) in headers {
        if is(name, &names.set) {
            let value: Value =
                serde_json::from_slice(v.as_bytes()).map_err(|e| DirectiveError::BadJson {
                    header: names.set.to_string(),
                    reason: e.to_string(),
                })?;
            let Value::Object(obj) = value else {
                return Err(DirectiveError::NotObject {
                    header: names.set.to_string(),
                });
            };
            set.get_or_insert_with(Map::new).extend(obj);
        } else if is(name, &names.remove) {
            let s = v.to_str().map_err(|_| DirectiveError::NotText {
                header: names.remove.to_string(),
            })?;
            d.remove.extend(
                s.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            );
        } else if is(name, &names.renew) {
            renew = renew.or(Some(v));
        } else if is(name, &names.invalidate) {
            invalidate = invalidate.or(Some(v));
        } else if is(name, &names.max_inactive) {
            max_inactive = max_inactive.or(Some(v));
        }
    }
    if let Some(set) = set {
        // The canonical text is ASCII: never an error in practice.
        d.set = Some(String::from_utf8(attrs::canonical(&set)).map_err(|_| {
            DirectiveError::NotText {
                header: names.set.to_string(),
            }
        })?);
    }
    d.renew = flag(renew, &names.renew)?;
    d.invalidate = flag(invalidate, &names.invalidate)?;
    if let Some(v) = max_inactive {
        let s = v.to_str().unwrap_or("").trim();
        let secs: u64 = s
            .parse()
            .ok()
            .filter(|n| (1..=31_536_000).contains(n))
            .ok_or_else(|| DirectiveError::BadSeconds {
                header: names.max_inactive.to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })?;
        d.max_inactive = Some(Duration::from_secs(secs));
    }
    Ok(d)
}

fn flag(v: Option<&HeaderValue>, name: &HeaderName) -> Result<bool, DirectiveError> {
    let Some(v) = v else {
        return Ok(false);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(DirectiveError::BadBool {
            header: name.to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(h: &[(&'static str, &'static str)]) -> Vec<(Bytes, HeaderValue)> {
        h.iter()
            .map(|(k, v)| {
                (
                    Bytes::from_static(k.as_bytes()),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn parses_and_merges() {
        let n = Names::new("x-session").unwrap();
        let h = heads(&[
            ("X-Session-Set", r#"{"a":1,"b":2}"#),
            ("x-session-renew", "TRUE"),
            ("x-session-set", r#"{"b":3}"#),
            ("x-session-remove", "c, d,,"),
            ("x-session-max-inactive", "60"),
            ("x-session-REMOVE", "e"),
            ("x-session-renew", "not looked at: the first counts"),
        ]);
        let d = parse(&h, &n).unwrap();
        assert_eq!(d.set.as_deref(), Some(r#"{"a":1,"b":3}"#));
        assert_eq!(d.remove, vec!["c", "d", "e"]);
        assert!(d.renew && !d.invalidate);
        assert_eq!(d.max_inactive, Some(Duration::from_secs(60)));
        // Two -Set headers replicate as their merge; any -Set in canonical form.
        let one = heads(&[("x-session-set", r#"{ "z": [1, 2.50], "a": "\u00e9" }"#)]);
        let d = parse(&one, &n).unwrap();
        assert_eq!(d.set.as_deref(), Some(r#"{"a":"\u00e9","z":[1,2.5]}"#));
        assert!(parse(&[], &n).unwrap().is_empty());
        // Prefixed headers that are no directive change nothing.
        let other = heads(&[("x-sessions", "1"), ("x-session-id", "FORGED")]);
        assert!(parse(&other, &n).unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed() {
        let n = Names::new("x-session").unwrap();
        for (k, v) in [
            ("x-session-set", "{bad"),
            ("x-session-set", "[1,2]"),
            ("x-session-renew", "yes"),
            ("x-session-max-inactive", "-5"),
            ("x-session-max-inactive", "0"),
        ] {
            assert!(parse(&heads(&[(k, v)]), &n).is_err(), "{k}: {v}");
        }
    }

    #[test]
    fn names_and_values_made_static_or_refused_without_panic() {
        let n = Names::new("X-Session").unwrap();
        assert_eq!(n.id.as_str(), "x-session-id");
        assert_eq!(n.session.as_str(), "x-session");
        // A prefix that makes a standard name, and ones that are no name at all.
        assert_eq!(Names::new("Content").unwrap().session.as_str(), "content");
        assert!(Names::new("bad name").is_err());
        assert!(Names::new("x-s\u{e9}").is_err());
        assert!(Names::new("").is_err());
        assert_eq!(static_value("n1").unwrap(), "n1");
        assert!(static_value("bad\nroute").is_err());
        // Tab is legal in a value but not made static (`from_static` is not asked to judge).
        assert_eq!(static_value("a\tb").unwrap().as_bytes(), b"a\tb");
    }
}
