//! Sessions, the domain (floor 2; SPEC 2, 4.3, 4.6, 5): what a session is and how it
//! changes, with no knowledge of the network. The cluster carries [`Change`]s; the proxy's
//! sticky layer calls the [`SessionStore`].
//!
//! - `id`: generating and parsing `BASE.route` ids.
//! - `cookie`: the `JSESSIONID` cookie and the `;jsessionid=` path parameter.
//! - `protocol`: the backend header protocol (`X-Session*`).
//! - `store`: the session map, atomic per-session changes, expiry, limits; the replica side.
//! - `change`: [`Change`] and [`FullSession`], what an owner's change is.
//! - `epoch`: ownership epochs, unique cluster-wide.
//! - `apply`: the replica's apply rule (SPEC 4.6), one pure function (proptested).
//! - `attrs`: the stored attributes (canonical JSON text) and the merge of a change.
//! - `json`: ASCII-only JSON for header values.
//! - `filter`: the ReplicationValve-style static filter.
//! - `config`, `error`: the layer's settings and errors.

mod apply;
pub mod attrs;
mod change;
mod config;
mod cookie;
pub mod epoch;
mod error;
mod filter;
pub mod id;
mod json;
mod protocol;
mod store;

pub use apply::{decide, Decision, Kind, Ver};
pub use change::{Change, FullSession};
pub use config::{ReplicationConfig, SessionConfig};
pub use cookie::{take_path_param, CookieConfig, SecureMode};
pub use epoch::hash64;
pub use error::{DirectiveError, SessionError};
pub use filter::{StaticFilter, TOMCAT_DEFAULT};
pub use id::{valid_route, Key};
pub use protocol::{parse as parse_directives, static_value, Directives, Names};
pub use store::{
    Digest, Emit, Found, Fresher, Limits, Outcome, Planned, Promise, Remote, Session, SessionStore,
    MOVING, PROMISE_TTL, TOMBSTONE_TTL,
};
