//! The backend session protocol (SPEC 5), with a configurable prefix (default `X-Session`).
//!
//! To the backend: `X-Session-Id`, `X-Session` (ASCII JSON of the attributes),
//! `X-Session-Node`, and `X-Session-Original-Id` after a failover rebind.
//! From the backend: `-Set` (JSON object, several merged in order), `-Remove` (names),
//! `-Renew: true`, `-Invalidate: true` (wins over the rest), `-Max-Inactive: <seconds>`.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

/// Header names built once from the prefix.
#[derive(Debug, Clone)]
pub struct Names {
    /// Lower-case prefix: a response with no header starting with it has no directives.
    pub prefix: String,
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
    pub fn new(prefix: &str) -> Result<Self, http::header::InvalidHeaderName> {
        let n = |suffix: &str| HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes());
        Ok(Self {
            prefix: prefix.to_ascii_lowercase(),
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

/// What a backend asked for in one response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    /// Merged `-Set` objects; `None` when no `-Set` header came.
    pub set: Option<Map<String, Value>>,
    /// The `-Set` header when exactly one came: replicated as sent, not rendered again.
    pub set_source: Option<http::HeaderValue>,
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

    /// The merged `-Set` object as JSON text, for replication.
    pub fn set_json(&self) -> Option<String> {
        let set = self.set.as_ref()?;
        Some(match &self.set_source {
            Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            None => Value::Object(set.clone()).to_string(),
        })
    }

    /// Changes the attributes or the timeout (create-worthy when there is no session yet
    /// only if `set` is present).
    pub fn changes_data(&self) -> bool {
        self.set.is_some() || !self.remove.is_empty() || self.max_inactive.is_some()
    }
}

/// A malformed directive: the response becomes 502 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    #[error("{header}: not valid JSON: {reason}")]
    BadJson { header: String, reason: String },
    #[error("{header}: must be a JSON object")]
    NotObject { header: String },
    #[error("{header}: expected true or false, got {value:?}")]
    BadBool { header: String, value: String },
    #[error("{header}: expected whole seconds from 1 to 31536000, got {value:?}")]
    BadSeconds { header: String, value: String },
    #[error("{header}: not valid text")]
    NotText { header: String },
    #[error("session attributes would be {bytes} bytes, over max_session_bytes ({limit})")]
    TooLarge { bytes: usize, limit: usize },
}

/// Reads the directives from a backend's response headers.
pub fn parse(headers: &HeaderMap, names: &Names) -> Result<Directives, DirectiveError> {
    let mut d = Directives::default();
    // Most responses carry no directive: one scan of the names instead of five lookups.
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with(&names.prefix))
    {
        return Ok(d);
    }
    let mut sets = 0;
    for v in headers.get_all(&names.set) {
        sets += 1;
        d.set_source = (sets == 1).then(|| v.clone());
        let header = names.set.to_string();
        let value: Value =
            serde_json::from_slice(v.as_bytes()).map_err(|e| DirectiveError::BadJson {
                header: header.clone(),
                reason: e.to_string(),
            })?;
        let Value::Object(obj) = value else {
            return Err(DirectiveError::NotObject { header });
        };
        d.set.get_or_insert_with(Map::new).extend(obj);
    }
    for v in headers.get_all(&names.remove) {
        let s = v.to_str().map_err(|_| DirectiveError::NotText {
            header: names.remove.to_string(),
        })?;
        d.remove.extend(
            s.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        );
    }
    d.renew = flag(headers, &names.renew)?;
    d.invalidate = flag(headers, &names.invalidate)?;
    if let Some(v) = headers.get(&names.max_inactive) {
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

fn flag(headers: &HeaderMap, name: &HeaderName) -> Result<bool, DirectiveError> {
    let Some(v) = headers.get(name) else {
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
    use http::HeaderValue;

    #[test]
    fn parses_and_merges() {
        let n = Names::new("x-session").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-session-set",
            HeaderValue::from_static(r#"{"a":1,"b":2}"#),
        );
        h.append("x-session-set", HeaderValue::from_static(r#"{"b":3}"#));
        h.append("x-session-remove", HeaderValue::from_static("c, d,,"));
        h.append("x-session-renew", HeaderValue::from_static("TRUE"));
        h.append("x-session-max-inactive", HeaderValue::from_static("60"));
        let d = parse(&h, &n).unwrap();
        assert_eq!(
            d.set.clone().unwrap(),
            serde_json::json!({"a":1,"b":3})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(d.remove, vec!["c", "d"]);
        assert!(d.renew && !d.invalidate);
        assert_eq!(d.max_inactive, Some(Duration::from_secs(60)));
        // Two -Set headers replicate as their merge, one as sent.
        assert_eq!(d.set_json().as_deref(), Some(r#"{"a":1,"b":3}"#));
        let mut one = HeaderMap::new();
        one.append(
            "x-session-set",
            HeaderValue::from_static(r#"{ "z": [1, 2] }"#),
        );
        let d = parse(&one, &n).unwrap();
        assert_eq!(d.set_json().as_deref(), Some(r#"{ "z": [1, 2] }"#));
        assert!(parse(&HeaderMap::new(), &n).unwrap().is_empty());
        // Headers that only look alike are not directives.
        let mut other = HeaderMap::new();
        other.append("x-sessions", HeaderValue::from_static("1"));
        other.append("content-type", HeaderValue::from_static("text/plain"));
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
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            assert!(parse(&h, &n).is_err(), "{k}: {v}");
        }
    }
}
