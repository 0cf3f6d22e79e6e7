//! Errors of the request path, each knowing whose fault it is and what the client gets.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

/// Whose fault an error is: decides the log level and the status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Backend,
    Proxy,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("could not connect to a backend: {0}")]
    BackendConnect(String),
    #[error("backend failed: {0}")]
    BackendFailed(String),
    #[error("backend did not respond in time")]
    BackendTimeout,
    #[error("bad session directive from backend: {0}")]
    BadDirective(String),
    #[error("{0}")]
    SessionLimit(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot route the session: {0}")]
    Unroutable(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendConnect(_) | ProxyError::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadDirective(_) => StatusCode::BAD_GATEWAY,
            ProxyError::SessionLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Unroutable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadRequest(_) => Blame::Client,
            ProxyError::NoHealthyBackend
            | ProxyError::SessionLimit(_)
            | ProxyError::Internal(_) => Blame::Proxy,
            _ => Blame::Backend,
        }
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoHealthyBackend => "no_healthy_backend",
            ProxyError::BackendConnect(_) => "backend_connect",
            ProxyError::BackendFailed(_) => "backend_failed",
            ProxyError::BackendTimeout => "backend_timeout",
            ProxyError::BadDirective(_) => "bad_session_directive",
            ProxyError::SessionLimit(_) => "session_limit",
            ProxyError::Internal(_) => "internal",
            ProxyError::Unroutable(_) => "unroutable",
        }
    }

    /// A short plain-text response naming the reason.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self
        );
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.blame() == Blame::Client {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
