//! BackupManager: after every membership change, "owner + exactly one backup" again for
//! the sessions this node holds (REFERENCE 4.5 backup).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Replicator;
use crate::cluster::config::{Manager, PartitionHandling};
use crate::cluster::membership::Membership;
use crate::cluster::routing::backup;
use crate::session::{Change, Key};

impl Replicator {
    /// BackupManager: after every membership change, restores "owner + exactly one backup"
    /// for the sessions this node holds (REFERENCE 4.5 backup):
    /// - owned sessions whose backup moved: a full copy to the new backup, acked, then the
    ///   old backup (if alive) drops its copy;
    /// - copies of a dead owner's sessions (an owner this node saw leave): the successor
    ///   takes over (higher epoch) and sends its own backup a copy; a holder that is not
    ///   the successor hands its copy on.
    pub(crate) async fn rebalance(self: Arc<Self>) {
        let shutdown = self.tasks.token().clone();
        if self.manager != Manager::Backup {
            return;
        }
        let mut events = self.membership.subscribe();
        // Where copies go: a draining member is no backup any more (its copies move before
        // it leaves), but its own sessions are its until it hands them over.
        let routes = |m: &Membership| -> Vec<String> {
            m.placeable().into_iter().map(|i| i.jvm_route).collect()
        };
        let mut old = routes(&self.membership);
        // A node without a lease does not move copies (it may own nothing any more): the
        // change waits until it caught up and holds one again.
        let mut recheck = tokio::time::interval(self.membership.cfg.frequency);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => {
                    if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = recheck.tick() => {}
            }
            // Let the peer tasks for new members exist before copies are queued for them.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while events.try_recv().is_ok() {}
            let new = routes(&self.membership);
            if new != old && self.lease.holds(std::time::Instant::now()) {
                let started = Instant::now();
                let moved = self.rebalance_once(&old, &new).await;
                self.metrics.rebalanced.inc_by(moved as u64);
                if moved > 0 {
                    tracing::info!(sessions = moved, took = ?started.elapsed(), "backups rebalanced");
                }
                old = new;
            }
        }
    }

    async fn rebalance_once(&self, old: &[String], new: &[String]) -> usize {
        let me = self.store.route().to_string();
        // A draining owner is out of `new` but alive: it hands its sessions over itself.
        let alive: Vec<String> = self
            .membership
            .live()
            .into_iter()
            .map(|i| i.jvm_route)
            .collect();
        let mut moved = 0;
        let mut drops: Vec<(String, Change)> = Vec::new();
        let mut waits = Vec::new();
        let mut to_claim: HashMap<String, Vec<Key>> = HashMap::new();
        let now = Instant::now();
        for (key, owner, ver) in self.store.placements() {
            if *owner == *me {
                let ob = backup(key, old.iter().map(String::as_str));
                let nb = backup(key, new.iter().map(String::as_str));
                if ob == nb {
                    continue;
                }
                if let (Some(nb), Some(full)) = (nb, self.store.full_copy(key, now)) {
                    self.enqueue_to(Change::Full(full), Some(nb), Some(&mut waits));
                    moved += 1;
                }
                if let Some(ob) = ob.filter(|ob| new.iter().any(|r| r == ob)) {
                    let drop = Change::Drop {
                        key,
                        epoch: ver.epoch,
                        version: ver.version,
                    };
                    drops.push((ob.to_string(), drop));
                }
            } else if old.iter().any(|r| **r == *owner)
                && !new.iter().any(|r| **r == *owner)
                && !alive.iter().any(|r| **r == *owner)
            {
                // A copy of a dead owner's session: one this node saw leave. An owner it
                // has not seen yet (a joiner gets copies from owners before it hears all
                // their heartbeats) is not dead: taking those over split a live owner's
                // sessions (tests/backup.rs caught it, a few runs in a hundred).
                let with_me = new
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once(me.as_str()));
                match backup(key, with_me) {
                    Some(s) if s == me && self.lease.handling == PartitionHandling::Quorum => {
                        to_claim
                            .entry(owner.to_string())
                            .or_default()
                            .push(Key(key));
                    }
                    Some(s) if s == me => {
                        let rep = self;
                        let taken = self.store.take_over(Key(key), now, &mut |c| {
                            rep.enqueue(c, Some(&mut waits));
                        });
                        if taken.is_some() {
                            moved += 1;
                            tracing::debug!(session = %Key(key).base(), dead_owner = %owner, "took over a backed-up session");
                        }
                    }
                    Some(s) => {
                        if let Some(full) = self.store.full_copy(key, now) {
                            self.enqueue_to(Change::Full(full), Some(s), Some(&mut waits));
                            moved += 1;
                        }
                    }
                    None => {}
                }
            }
            // Bounded rate: let requests run between batches.
            if waits.len() >= 256 {
                let _ = self.settle(std::mem::take(&mut waits)).await;
            }
        }
        // A dead owner's sessions, by a majority's vote (REFERENCE 4.9); one that finds no
        // majority now is claimed when a request asks for it.
        for (owner, keys) in to_claim {
            for batch in keys.chunks(256) {
                match self.claim(&owner, batch, Some(&mut waits)).await {
                    Ok(n) => moved += n,
                    Err(e) => {
                        tracing::info!(dead_owner = %owner, error = %e, "backed-up sessions not taken over yet")
                    }
                }
                let _ = self.settle(std::mem::take(&mut waits)).await;
            }
        }
        let _ = self.settle(waits).await;
        // Old copies go only after the new ones were acked.
        for (route, drop) in drops {
            self.enqueue_to(drop, Some(&route), None);
        }
        moved
    }
}

impl Replicator {
    /// BackupManager, after a catch-up: forgets the copies this node holds that are neither
    /// its own nor the ones it backs up for a live owner. A node that was away was replaced
    /// as backup meanwhile; the catch-up refreshed its copy, and nothing would keep that
    /// third copy current (chaos: a copy still behind after convergence).
    pub(super) fn drop_misplaced(&self) -> usize {
        let me = self.store.route().to_string();
        let live: Vec<String> = self
            .membership
            .live()
            .into_iter()
            .map(|i| i.jvm_route)
            .collect();
        let placeable: Vec<String> = self
            .membership
            .placeable()
            .into_iter()
            .map(|i| i.jvm_route)
            .collect();
        let mut dropped = 0;
        for (key, owner, ver) in self.store.placements() {
            if *owner == *me || !live.iter().any(|r| **r == *owner) {
                continue;
            }
            let holders = placeable
                .iter()
                .map(String::as_str)
                .filter(|r| *r != &*owner)
                .chain(std::iter::once(me.as_str()));
            if backup(key, holders) == Some(me.as_str()) {
                continue;
            }
            let forget = Change::Drop {
                key,
                epoch: ver.epoch,
                version: ver.version,
            };
            if self.store.apply_remote(&forget, Instant::now()) == crate::session::Remote::Applied {
                dropped += 1;
            }
        }
        dropped
    }
}
