//! Errors of the request path, each knowing whose fault it is and what the client gets.
//!
//! `Display` is the full detail, for the log (backend addresses, I/O errors);
//! [`ProxyError::client_text`] is what the response body says: the reason, without the
//! proxy's internals (as neon's proxy keeps `UserFacingError` apart from its logs).

use std::borrow::Cow;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::upstream::{Failure, UpstreamError};
use crate::session::SessionError;

/// Whose fault an error is: decides the log level and the status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Backend,
    Proxy,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("could not connect to a backend: {0}")]
    BackendConnect(Box<Failure>),
    /// The failure names the server or member, and what went wrong.
    #[error("backend failed: {0}")]
    BackendFailed(Box<Failure>),
    #[error("backend did not respond in time")]
    BackendTimeout,
    #[error("bad session directive from backend: {0}")]
    BadDirective(String),
    #[error("{0}")]
    SessionLimit(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The text is the client's: it names the reason, never an address.
    #[error("cannot route the session: {0}")]
    Unroutable(String),
    /// The session's owner changed while the request ran: its write was refused (here, or
    /// fenced by the members that saw the takeover).
    #[error("the session moved to another node while this request ran: retry")]
    SessionMoved,
    /// This node cannot serve the session safely now (SPEC 4.9): no lease, no majority for
    /// a takeover, or a write that too few copies hold. The text is the client's.
    #[error("{0}: retry")]
    NoMajority(String),
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NoHealthy => ProxyError::NoHealthyBackend,
            UpstreamError::Connect(f) => ProxyError::BackendConnect(f),
            UpstreamError::Failed(f) => ProxyError::BackendFailed(f),
            UpstreamError::Timeout => ProxyError::BackendTimeout,
        }
    }
}

impl From<SessionError> for ProxyError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Directive(d) => ProxyError::BadDirective(d.to_string()),
            SessionError::Limit(_) => ProxyError::SessionLimit(e.to_string()),
            SessionError::Random(_) => ProxyError::Internal(e.to_string()),
            SessionError::Moved => ProxyError::SessionMoved,
            SessionError::NoMajority(why) => ProxyError::NoMajority(why),
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendConnect(_) | ProxyError::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadDirective(_) => StatusCode::BAD_GATEWAY,
            ProxyError::SessionLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Unroutable(_) | ProxyError::SessionMoved | ProxyError::NoMajority(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoHealthyBackend
            | ProxyError::SessionLimit(_)
            | ProxyError::Internal(_)
            | ProxyError::SessionMoved
            | ProxyError::NoMajority(_) => Blame::Proxy,
            _ => Blame::Backend,
        }
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::BackendConnect(_) => "backend_connect",
            ProxyError::BackendFailed(_) => "backend_failed",
            ProxyError::BackendTimeout => "backend_timeout",
            ProxyError::BadDirective(_) => "bad_session_directive",
            ProxyError::SessionLimit(_) => "session_limit",
            ProxyError::Internal(_) => "internal",
            ProxyError::Unroutable(_) => "unroutable",
            ProxyError::SessionMoved => "session_moved",
            ProxyError::NoMajority(_) => "no_majority",
        }
    }

    /// What the client is told: the reason (SPEC 3 and 5: the body names the problem),
    /// without the backend's or member's address, which stays in the log.
    pub fn client_text(&self) -> Cow<'_, str> {
        match self {
            ProxyError::BackendConnect(f) => {
                format!("could not connect to a backend: {}", f.reason).into()
            }
            ProxyError::BackendFailed(f) => format!("backend failed: {}", f.reason).into(),
            ProxyError::Internal(_) => "internal error".into(),
            ProxyError::NoHealthyBackend
            | ProxyError::BackendTimeout
            | ProxyError::BadDirective(_)
            | ProxyError::SessionLimit(_)
            | ProxyError::Unroutable(_)
            | ProxyError::SessionMoved
            | ProxyError::NoMajority(_) => self.to_string().into(),
        }
    }

    /// A short plain-text response naming the reason.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.client_text()
        );
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_text_keeps_addresses_out() {
        let e = ProxyError::from(UpstreamError::Failed(Failure::new(
            "http://10.1.2.3:9001",
            "reading the response: connection reset",
        )));
        assert!(e.to_string().contains("10.1.2.3"), "the log has the detail");
        assert_eq!(
            e.client_text(),
            "backend failed: reading the response: connection reset"
        );
        let e = ProxyError::from(UpstreamError::Connect(Failure::new(
            "http://10.1.2.3:9001",
            "connect failed: refused",
        )));
        assert!(!e.client_text().contains("10.1.2.3"));
        assert!(e.client_text().contains("refused"));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }
}
