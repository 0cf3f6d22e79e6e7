//! What the store tells a durable tier (REFERENCE 4.11): every change it applies to a
//! session, owned or a replica's copy, in the order it applies them per session (it calls
//! [`Journal::record`] under the session's guard). The tier behind it (`persist`: a local
//! log; later a shared database) is set once the node has loaded its sessions.

use std::future::Future;
use std::pin::Pin;

use super::change::Change;

/// A change could not be made durable (the tier is failing): the write must not be
/// acknowledged as durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the session store could not make the write durable: {0}")]
pub(crate) struct NotDurable(pub String);

/// The wait for durability of what was recorded before it began.
pub(crate) type Durable = Pin<Box<dyn Future<Output = Result<(), NotDurable>> + Send + 'static>>;

pub(crate) trait Journal: Send + Sync + 'static {
    /// A change the store applied; called under the session's guard, so cheap: it queues.
    fn record(&self, change: &Change);
    /// Whether writes wait for durability (`fsync` mode); if not, `durable` is never asked.
    fn waits(&self) -> bool;
    /// Resolves once everything recorded before this call is durable, or failed to be.
    fn durable(&self) -> Durable;
}
