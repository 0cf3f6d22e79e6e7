//! The session layer's errors: a backend's malformed directive, and what stops a change.
//! Each becomes a 5xx for the client (`proxy::ProxyError` maps them). The client's text is
//! typed (`client_text`): it names the kind of problem, never a value, a route or an address;
//! `Display` is the detail for the log.

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

impl DirectiveError {
    /// What the client is told: the header (a name from the configured prefix) and the
    /// kind of problem, without the value the backend sent.
    pub fn client_text(&self) -> String {
        match self {
            DirectiveError::BadJson { header, .. } => format!("{header}: not valid JSON"),
            DirectiveError::NotObject { header } => format!("{header}: must be a JSON object"),
            DirectiveError::BadBool { header, .. } => format!("{header}: expected true or false"),
            DirectiveError::BadSeconds { header, .. } => {
                format!("{header}: expected whole seconds from 1 to 31536000")
            }
            DirectiveError::NotText { header } => format!("{header}: not valid text"),
            DirectiveError::TooLarge { .. } => {
                "session attributes would be over max_session_bytes".to_string()
            }
        }
    }
}

/// Why a node cannot serve or write a session safely now (docs/REFERENCE.md, "Failure
/// model"). Each kind has one fixed client text; the detail (routes, counts) is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// This node holds no lease: it is cut off from the cluster majority.
    NoLease,
    /// A takeover found no majority that agreed the owner is gone.
    NoVote,
    /// Another node claimed the session at the same time.
    ClaimLost,
    /// Taken over, and still not servable here.
    NotServable,
    /// A sync write reached fewer copies than a majority needs.
    NotReplicated,
    /// `fsync` persistence: the write could not be made durable (a full disk).
    NotDurable,
    /// Every member is leaving, and this node holds no copy of the session.
    ShuttingDown,
}

impl Unsafe {
    pub fn client_text(self) -> &'static str {
        match self {
            Unsafe::NoLease => {
                "this node is cut off from the cluster majority and cannot serve this session safely"
            }
            Unsafe::NoVote => "no majority agreed that the session's owner is gone",
            Unsafe::ClaimLost => "another node claimed the session at the same time",
            Unsafe::NotServable => "the session was taken over but is still not servable here",
            Unsafe::NotReplicated => "the write reached fewer copies than a majority needs",
            Unsafe::ShuttingDown => "the cluster is shutting down and cannot serve this session now",
            Unsafe::NotDurable => {
                "the write could not be made durable: the session store cannot write to disk"
            }
        }
    }
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
    /// The change cannot count now: too few copies hold it, or no majority. `detail` is
    /// for the log only.
    #[error("{detail}")]
    NoMajority { why: Unsafe, detail: String },
}
