//! Task ownership (floor 1): every task a node starts is spawned through a [`Tasks`], which
//! tracks it (tokio-util's `TaskTracker`) and hands it the shutdown token it must end on.
//! `node::run` stops its `Tasks` last and waits for them, so a node that returns has no
//! task left (a test counts the runtime's live tasks).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of tracked tasks sharing one shutdown token.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Spawns a task that watches [`Tasks::token`] itself (a loop with its own `select!`).
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a task that is dropped where it stands when the token is cancelled.
    pub(crate) fn spawn_until_stopped<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        })
    }

    /// The token the tasks end on.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels the token and waits at most `grace` for every task to end; `false` if some
    /// did not.
    pub(crate) async fn stop(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
