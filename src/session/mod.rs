//! Sessions, the domain (floor 2; REFERENCE 2, 4.3, 4.6, 5): what a session is and how it
//! changes, with no knowledge of the network. The cluster carries [`Change`]s; the proxy's
//! sticky layer calls the [`SessionStore`].
//!
//! - `id`: generating and parsing `BASE.route` ids.
//! - `cookie`: the `JSESSIONID` cookie and the `;jsessionid=` path parameter.
//! - `protocol`: the backend header protocol (`X-Session*`).
//! - `store`: the session map, atomic per-session changes, expiry, limits; the replica side.
//! - `change`: [`Change`] and [`FullSession`], what an owner's change is.
//! - `epoch`: ownership epochs, unique cluster-wide.
//! - `apply`: the replica's apply rule (REFERENCE 4.6), one pure function (proptested).
//! - `attrs`: the stored attributes (canonical JSON text) and the merge of a change.
//! - `journal`: what the store tells a durable tier (the `Journal` trait `persist` implements).
//! - `swap`: where idle sessions go (the `SwapSpace` trait `persist` implements).
//! - `json`: ASCII-only JSON for header values.
//! - `filter`: the ReplicationValve-style static filter.
//! - `config`, `error`: the layer's settings and errors.

mod apply;
mod attrs;
mod change;
mod config;
mod cookie;
mod epoch;
mod error;
mod filter;
mod id;
mod journal;
mod json;
mod protocol;
mod store;
mod swap;

pub(crate) use apply::Ver;
pub use attrs::canonical as canonical_attrs;
pub use change::{Change, FullSession};
pub(crate) use config::{ReplicationConfig, SessionConfig};
pub(crate) use cookie::take_path_param;
pub use cookie::{CookieConfig, SecureMode};
pub(crate) use epoch::hash64;
pub use epoch::{next as next_epoch, tag as epoch_tag};
pub(crate) use error::{DirectiveError, SessionError, Unsafe};
pub(crate) use filter::{StaticFilter, TOMCAT_DEFAULT};
pub(crate) use id::{full as full_id, valid_route};
pub use id::{parse as parse_id, Key};
pub(crate) use journal::{Durable, Journal, NotDurable};
pub use protocol::Directives;
pub(crate) use protocol::{parse as parse_directives, static_value, Names};
pub(crate) use store::{Fresher, Planned, Promise, Remote, PROMISE_TTL};
pub use store::{Outcome, SessionLimits, SessionStore};
pub(crate) use swap::{Slot, SwapSpace};
