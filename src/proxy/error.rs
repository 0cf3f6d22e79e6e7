//! Errors of the request path, each knowing whose fault it is and what the client gets.
//!
//! `Display` is the full detail, for the log (backend addresses, member routes, I/O
//! errors); [`ProxyError::client_text`] is what the response body says: a short fixed
//! reason per kind, built only from fixed text and typed fields (never a backend URL, a
//! member's route or an address: docs/REFERENCE.md, "Bad input"), with the request id that
//! finds the log line (as neon's proxy keeps `UserFacingError` apart from its logs).

use std::borrow::Cow;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::upstream::{Failure, UpstreamError};
use crate::session::{DirectiveError, SessionError, Unsafe};

/// Whose fault an error is: decides the log level and the status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blame {
    /// The client sent something this proxy will not pass on: a 4xx, never a backend's
    /// failure.
    Client,
    Backend,
    Proxy,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
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
    BadDirective(DirectiveError),
    /// `max_active_sessions` reached.
    #[error("session limit reached: max_active_sessions = {0}")]
    SessionLimit(usize),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The detail (for the log) names the owner; the client is told only the kind.
    #[error("cannot route the session: {0}")]
    Unroutable(String),
    /// The session's owner changed while the request ran: its write was refused (here, or
    /// fenced by the members that saw the takeover).
    #[error("the session moved to another node while this request ran: retry")]
    SessionMoved,
    /// This node cannot serve the session safely now (docs/REFERENCE.md, "Failure model"):
    /// no lease, no majority for a takeover, or a write that too few copies hold. The client
    /// is told `why`; `detail` (which may name the owner) is logged.
    #[error("{detail}: retry")]
    NoMajority { why: Unsafe, detail: String },
    /// The backend answered, but not with anything that can be passed on (a head over
    /// the limit, a transfer coding the proxy cannot carry): 502, the backend stays up.
    #[error("backend response refused: {0}")]
    Refused(Box<Failure>),
    /// The client's request body broke off or was malformed (REFERENCE 7): 400.
    #[error("bad request body: {0}")]
    ClientBody(String),
    /// A request this proxy refuses before any backend sees it (REFERENCE 7): 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// CONNECT (a proxy tunnel): 405, and the connection is closed.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// The request head is over `max_header_bytes`: 431.
    #[error("request header fields too large")]
    HeadTooLarge,
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NoHealthy => ProxyError::NoHealthyBackend,
            UpstreamError::Connect(f) => ProxyError::BackendConnect(f),
            UpstreamError::Failed(f) => ProxyError::BackendFailed(f),
            UpstreamError::Timeout => ProxyError::BackendTimeout,
            UpstreamError::Refused(f) => ProxyError::Refused(f),
            UpstreamError::Client(why) => ProxyError::ClientBody(why.into_string()),
        }
    }
}

impl From<SessionError> for ProxyError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Directive(d) => ProxyError::BadDirective(d),
            SessionError::Limit(max) => ProxyError::SessionLimit(max),
            SessionError::Random(e) => {
                tracing::error!(error = %e, "cannot generate a session id");
                ProxyError::Internal("cannot generate a session id")
            }
            SessionError::Moved => ProxyError::SessionMoved,
            SessionError::NoMajority { why, detail } => ProxyError::NoMajority { why, detail },
        }
    }
}

impl ProxyError {
    /// A refusal of a session this node cannot serve safely, with its detail for the log.
    pub(super) fn unsafe_now(why: Unsafe) -> Self {
        ProxyError::NoMajority {
            why,
            detail: why.client_text().to_string(),
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendConnect(_) | ProxyError::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadDirective(_) => StatusCode::BAD_GATEWAY,
            ProxyError::SessionLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Unroutable(_)
            | ProxyError::SessionMoved
            | ProxyError::NoMajority { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Refused(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ClientBody(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub(super) fn blame(&self) -> Blame {
        match self {
            ProxyError::ClientBody(_)
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::HeadTooLarge => Blame::Client,
            ProxyError::NoHealthyBackend
            | ProxyError::SessionLimit(_)
            | ProxyError::Internal(_)
            | ProxyError::SessionMoved
            | ProxyError::NoMajority { .. } => Blame::Proxy,
            _ => Blame::Backend,
        }
    }

    /// Short label for metrics.
    pub(super) fn reason(&self) -> &'static str {
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
            ProxyError::NoMajority {
                why: Unsafe::NotDurable,
                ..
            } => "not_durable",
            ProxyError::NoMajority { .. } => "no_majority",
            ProxyError::Refused(_) => "backend_response_refused",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::HeadTooLarge => "head_too_large",
        }
    }

    /// What the client is told: a short reason per kind (the body names the problem),
    /// built only from fixed text and typed fields, so no backend URL, member route, address
    /// or I/O detail can reach it; those stay in the log line under the same request id.
    pub(super) fn client_text(&self) -> Cow<'static, str> {
        match self {
            ProxyError::NoHealthyBackend => "no healthy backend".into(),
            ProxyError::BackendConnect(_) => "could not connect to a backend".into(),
            ProxyError::BackendFailed(_) => "backend failed".into(),
            ProxyError::BackendTimeout => "backend did not respond in time".into(),
            // The directive's problem is named (the header and the kind, not the value).
            ProxyError::BadDirective(d) => {
                format!("bad session directive from backend: {}", d.client_text()).into()
            }
            ProxyError::Refused(_) => "the backend's response cannot be forwarded".into(),
            ProxyError::SessionLimit(_) => "session limit reached (max_active_sessions)".into(),
            ProxyError::Internal(_) => "internal error".into(),
            ProxyError::Unroutable(_) => "cannot route the session: retry".into(),
            ProxyError::SessionMoved => {
                "the session moved to another node while this request ran: retry".into()
            }
            ProxyError::NoMajority { why, .. } => format!("{}: retry", why.client_text()).into(),
            ProxyError::ClientBody(_) => "bad request body".into(),
            ProxyError::BadRequest(why) => format!("bad request: {why}").into(),
            ProxyError::MethodNotAllowed(why) => format!("method not allowed: {why}").into(),
            ProxyError::HeadTooLarge => "request header fields too large".into(),
        }
    }

    /// A short plain-text response naming the reason and the request id (also in its
    /// `header`, when one is configured).
    pub(super) fn to_response(
        &self,
        request_id: &str,
        header: Option<&http::HeaderName>,
    ) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {} (request id {request_id})\n",
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
        if let (Some(h), Ok(v)) = (header, HeaderValue::from_str(request_id)) {
            resp.headers_mut().insert(h.clone(), v);
        }
        if self.blame() == Blame::Client {
            // A refused request leaves the connection in no known state (a tunnel request,
            // a broken body, a head cut at the size cap, an unknown Host): it is closed, as
            // for every other framing error (docs/REFERENCE.md, "Bad input").
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
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
        assert_eq!(e.client_text(), "backend failed");
        let e = ProxyError::from(UpstreamError::Connect(Failure::new(
            "http://10.1.2.3:9001",
            "connect failed: refused",
        )));
        assert!(!e.client_text().contains("10.1.2.3"));
        let e = ProxyError::Unroutable("the session's owner node2 cannot be reached".into());
        assert!(!e.client_text().contains("node2"), "no member route");
        let r = e.to_response("abc123", None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ProxyError::NoMajority {
            why: Unsafe::NoVote,
            detail: "no majority agreed the owner node7 is gone (1 of 2 votes)".into(),
        };
        assert!(e.to_string().contains("node7"), "the log has the owner");
        assert!(!e.client_text().contains("node7"), "the client does not");
        let e = ProxyError::BadDirective(DirectiveError::BadBool {
            header: "X-Session-Invalidate".into(),
            value: "10.9.8.7".into(),
        });
        assert!(!e.client_text().contains("10.9.8.7"), "{}", e.client_text());
        assert!(e.client_text().contains("expected true or false"));
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }
}
