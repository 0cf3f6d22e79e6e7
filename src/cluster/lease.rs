//! The owner's lease and the cluster's majority (REFERENCE 4.9).
//!
//! A node holds a lease while a majority of the cluster (itself included) answered its
//! mesh pings recently: the lease runs `lease` from the moment the oldest ping of that
//! majority was *sent*, so a pause anywhere (this node, the network) only shortens it.
//! A member that answered a ping heard this node at that moment, and it votes for a
//! takeover of this node's sessions only after hearing nothing for longer than the lease
//! (or after finding the process gone), so by the time any other node owns a session of
//! this one, this node has stopped serving it.
//!
//! A lease that lapsed is taken again only after the node caught up with the members
//! (the digest exchange of `replication::rejoin`): a paused or cut-off node learns what was
//! taken over or removed while it was away before it answers from its copies.
//!
//! The cluster size is `expected_members`, else the static member list plus this node,
//! else every route heard this run that did not announce `leaving`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::PartitionHandling;
use super::membership::Membership;
use crate::tasks::Tasks;

pub(super) struct Lease {
    pub handling: PartitionHandling,
    pub duration: Duration,
    /// `expected_members`, or the static list plus one; 0 = the routes heard.
    fixed_size: usize,
    membership: Arc<Membership>,
    /// Instants as nanoseconds since `base`, for an atomic `until`.
    base: Instant,
    until_ns: AtomicU64,
    /// A lease was held once: a lapse after that needs a catch-up first.
    had: AtomicBool,
    must_catch_up: AtomicBool,
    catching_up: AtomicBool,
    /// Send time of the latest answered ping, per member.
    pongs: Mutex<HashMap<u64, Instant>>,
    in_flight: Mutex<HashSet<u64>>,
}

impl Lease {
    pub(super) fn new(
        handling: PartitionHandling,
        duration: Duration,
        fixed_size: usize,
        membership: Arc<Membership>,
    ) -> Self {
        Self {
            handling,
            duration,
            fixed_size,
            membership,
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
            had: AtomicBool::new(false),
            must_catch_up: AtomicBool::new(false),
            catching_up: AtomicBool::new(false),
            pongs: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// The first lease too needs a catch-up (the node started with copies from disk).
    pub(super) fn catch_up_first(&self) {
        self.must_catch_up.store(true, Ordering::Release);
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Whether this node may serve sessions as their owner at `now` (a real clock read:
    /// after a pause, the coarse clock would still say "valid").
    #[inline]
    pub(super) fn holds(&self, now: Instant) -> bool {
        self.handling == PartitionHandling::Available
            || self.ns(now) < self.until_ns.load(Ordering::Acquire)
    }

    /// Nodes in the cluster, this one included.
    pub(super) fn size(&self) -> usize {
        if self.fixed_size > 0 {
            self.fixed_size
        } else {
            self.membership.routes_heard() + 1
        }
    }

    /// Nodes that make a majority.
    pub(super) fn quorum(&self) -> usize {
        match self.handling {
            PartitionHandling::Quorum => self.size() / 2 + 1,
            PartitionHandling::Available => 1,
        }
    }

    /// The lease the answered pings give now, if a majority answered.
    fn earned(&self, now: Instant) -> Option<Instant> {
        let need = self.quorum().saturating_sub(1);
        let live: HashSet<u64> = self
            .membership
            .live()
            .into_iter()
            .map(|i| i.node_id)
            .collect();
        let sent: Vec<Instant> = {
            let mut p = self.pongs.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|id, _| live.contains(id));
            p.values().copied().collect()
        };
        lease_from(sent, need, now, self.duration)
    }

    /// Pings every member each `frequency` and renews the lease from the answers; after a
    /// lapse, `catch_up` must succeed before the lease is held again. Until `tasks` stop.
    pub(super) async fn keep<F, Fut>(self: Arc<Self>, tasks: Tasks, catch_up: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        if self.handling == PartitionHandling::Available {
            return;
        }
        let catch_up = Arc::new(catch_up);
        let every = self.membership.cfg.frequency;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tasks.token().cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if self.had.load(Ordering::Relaxed)
                && !self.holds(now)
                && !self.must_catch_up.swap(true, Ordering::AcqRel)
            {
                tracing::warn!(
                    "lease lapsed: no majority heard recently; serving no sessions until caught up"
                );
            }
            self.ping_all(&tasks);
            let Some(until) = self.earned(now).filter(|u| *u > now) else {
                continue;
            };
            if self.must_catch_up.load(Ordering::Acquire) {
                if !self.catching_up.swap(true, Ordering::AcqRel) {
                    let (lease, f) = (self.clone(), catch_up.clone());
                    tasks.spawn_until_stopped(async move {
                        if f().await {
                            // Held again from the answers so far (each ping round also
                            // renews it); published before the flag clears, so the next
                            // tick does not see a lapse again.
                            if let Some(u) = lease.earned(Instant::now()) {
                                lease.until_ns.fetch_max(lease.ns(u), Ordering::AcqRel);
                            }
                            lease.must_catch_up.store(false, Ordering::Release);
                            tracing::info!("caught up with the majority: lease held again");
                        }
                        lease.catching_up.store(false, Ordering::Release);
                    });
                }
                continue;
            }
            self.until_ns.fetch_max(self.ns(until), Ordering::AcqRel);
            self.had.store(true, Ordering::Relaxed);
        }
    }

    fn ping_all(self: &Arc<Self>, tasks: &Tasks) {
        for info in self.membership.live() {
            if !self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(info.node_id)
            {
                continue; // the previous ping is still waiting
            }
            let lease = self.clone();
            tasks.spawn_until_stopped(async move {
                let sent = Instant::now();
                let answered = lease
                    .membership
                    .link
                    .ping(info.mesh_addr)
                    .await
                    .is_ok_and(|pong| pong.node_id == info.node_id);
                if answered {
                    lease
                        .pongs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(info.node_id, sent);
                }
                lease
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&info.node_id);
            });
        }
    }

    /// Waits until the lease is held, at most `limit` (a node about to become ready).
    pub(super) async fn wait(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let now = Instant::now();
            if self.holds(now) {
                return true;
            }
            if now >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The lease `need` other members' answers give: `duration` from the send time of the
/// `need`-th most recent one (this node alone: from `now`); `None` if fewer answered.
fn lease_from(
    mut sent: Vec<Instant>,
    need: usize,
    now: Instant,
    duration: Duration,
) -> Option<Instant> {
    if need == 0 {
        return Some(now + duration);
    }
    sent.sort_unstable_by(|a, b| b.cmp(a));
    sent.get(need - 1).map(|t| *t + duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_oldest_answer_a_majority_needs() {
        let t0 = Instant::now();
        let d = Duration::from_millis(600);
        let ms = |n| t0 + Duration::from_millis(n);
        // Alone (a cluster of one): always from now.
        assert_eq!(lease_from(vec![], 0, ms(5), d), Some(ms(5) + d));
        // Three nodes: one other answer is enough, the freshest counts.
        assert_eq!(
            lease_from(vec![ms(10), ms(300)], 1, ms(400), d),
            Some(ms(300) + d)
        );
        // Five nodes: two others; the second freshest bounds it (a stale one cannot
        // stretch it).
        assert_eq!(
            lease_from(vec![ms(10), ms(300), ms(200)], 2, ms(400), d),
            Some(ms(200) + d)
        );
        // Too few answers: no lease at all.
        assert_eq!(lease_from(vec![ms(300)], 2, ms(400), d), None);
    }
}
