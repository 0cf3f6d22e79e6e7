//! Telling open client connections to finish (graceful shutdown).
//!
//! Every connection polls its own flag and waker; shutdown walks the list once. A shared
//! `CancellationToken` would do the same job, but every poll of its future takes two locks
//! that all connections share (its node's and its `Notify`'s): a cost on each request, and
//! contention between worker threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(super) struct Drain {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    closing: bool,
    next: u64,
    open: HashMap<u64, Arc<Flag>>,
}

#[derive(Default)]
struct Flag {
    stop: AtomicBool,
    waker: AtomicWaker,
}

impl Drain {
    /// Tells every open connection, and every one registered from now on, to finish.
    pub(super) fn close_all(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.closing = true;
        for f in inner.open.values() {
            f.stop.store(true, Ordering::Release);
            f.waker.wake();
        }
    }

    /// The signal of one connection; unregisters itself when dropped.
    pub(super) fn register(self: &Arc<Self>) -> Signal {
        let flag = Arc::new(Flag::default());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.closing {
            flag.stop.store(true, Ordering::Release);
        }
        let id = inner.next;
        inner.next += 1;
        inner.open.insert(id, flag.clone());
        Signal {
            drain: self.clone(),
            id,
            flag,
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }
}

/// One connection's view of [`Drain`].
pub(super) struct Signal {
    drain: Arc<Drain>,
    id: u64,
    flag: Arc<Flag>,
}

impl Signal {
    /// Whether the connection must finish; if not yet, the task is woken when it must.
    pub(super) fn poll_stop(&self, cx: &mut Context<'_>) -> bool {
        if self.flag.stop.load(Ordering::Acquire) {
            return true;
        }
        self.flag.waker.register(cx.waker());
        // Set between the load and the registration: the wake may have been missed.
        self.flag.stop.load(Ordering::Acquire)
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        let mut inner = self.drain.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    #[tokio::test]
    async fn wakes_open_connections_and_stops_late_ones() {
        let d = Arc::new(Drain::default());
        let s = d.register();
        let waiter = tokio::spawn(poll_fn(move |cx| {
            if s.poll_stop(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        d.close_all();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(d.open(), 0, "a dropped signal unregisters");
        let late = d.register();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(late.poll_stop(&mut cx));
    }
}
