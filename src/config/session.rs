//! `[session]` (the cookie, the header prefix, limits) and `[replication]` (the filter).

use super::raw::{RawReplication, RawSession};
use super::source::{key, Source};
use super::ConfigError;
use crate::session::{CookieConfig, ReplicationConfig, SecureMode, SessionConfig, StaticFilter};

/// `[session]` and `[replication]`.
/// Largest `max_session_bytes` accepted.
const MAX_SESSION_BYTES: usize = 8 * 1024 * 1024;

pub(super) fn validate(
    rs: &RawSession,
    rr: &RawReplication,
    src: &Source,
) -> Result<(SessionConfig, ReplicationConfig), ConfigError> {
    let prefix = rs.header_prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() || http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
        return Err(src.error(
            &key("session.header_prefix"),
            format!("invalid header prefix {:?}", rs.header_prefix),
        ));
    }

    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token_ok(&rs.cookie_name) {
        return Err(src.error(
            &key("session.cookie_name"),
            format!("invalid cookie name {:?}", rs.cookie_name),
        ));
    }
    if !rs.cookie_path.starts_with('/') || rs.cookie_path.contains([';', ' ']) {
        return Err(src.error(
            &key("session.cookie_path"),
            "must start with '/' and have no ';' or space",
        ));
    }
    let secure = match rs.cookie_secure.as_str() {
        "auto" => SecureMode::Auto,
        "always" => SecureMode::Always,
        "never" => SecureMode::Never,
        other => {
            return Err(src.error(
                &key("session.cookie_secure"),
                format!("unknown value {other:?}: use auto, always or never"),
            ))
        }
    };
    let same_site = match rs.cookie_same_site.to_ascii_lowercase().as_str() {
        "lax" => cookie::SameSite::Lax,
        "strict" => cookie::SameSite::Strict,
        "none" => cookie::SameSite::None,
        _ => {
            return Err(src.error(
                &key("session.cookie_same_site"),
                format!(
                    "unknown value {:?}: use Lax, Strict or None",
                    rs.cookie_same_site
                ),
            ))
        }
    };
    if rs.max_inactive.0.is_zero() {
        return Err(src.error(&key("session.max_inactive"), "must be greater than 0"));
    }
    if rs.max_session_bytes < 2 {
        return Err(src.error(
            &key("session.max_session_bytes"),
            "must be at least 2 (\"{}\")",
        ));
    }
    // The whole session travels to the backend in one request header, and a write back in
    // one response header: past this, no backend's header limit would take it.
    if rs.max_session_bytes > MAX_SESSION_BYTES {
        return Err(src.error(
            &key("session.max_session_bytes"),
            format!("at most {MAX_SESSION_BYTES} (8 MiB): the session travels in a request header"),
        ));
    }
    let filter = StaticFilter::new(&rr.filter).map_err(|e| {
        src.error(
            &key("replication.filter"),
            format!("not a valid regex: {}", e.to_string().replace('\n', " ")),
        )
    })?;

    let session = SessionConfig {
        header_prefix: prefix,
        cookie: CookieConfig {
            name: rs.cookie_name.clone(),
            path_param: rs.cookie_name.to_ascii_lowercase(),
            path: rs.cookie_path.clone(),
            secure,
            same_site,
            http_only: rs.cookie_http_only,
        },
        max_inactive: rs.max_inactive.0,
        max_session_bytes: rs.max_session_bytes,
        max_active_sessions: rs.max_active_sessions,
    };
    Ok((session, ReplicationConfig { filter }))
}
