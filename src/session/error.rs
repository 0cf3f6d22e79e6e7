//! The session layer's errors: a backend's malformed directive, and what stops a change.
//! Each becomes a 5xx for the client (`proxy::ProxyError` maps them).

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

/// Why a change was refused (the session stays as it was).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Directive(#[from] DirectiveError),
    #[error("session limit reached: max_active_sessions = {0}")]
    Limit(usize),
    #[error("cannot generate a session id: {0}")]
    Random(getrandom::Error),
    /// The session moved to another owner while the request ran (this node was paused or
    /// cut off, and a takeover happened): its write is refused.
    #[error("the session moved to another node while this request ran: retry")]
    Moved,
    /// The change cannot count now (SPEC 4.9): too few copies hold it, or no majority.
    #[error("{0}")]
    NoMajority(String),
}
