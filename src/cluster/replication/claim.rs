//! Takeover by a majority (REFERENCE 4.4.3, 4.9), Redis Cluster's failover vote applied per
//! session, with the newest copy of the voters taken over (a Paxos "prepare"):
//!
//! - the claimant (the deterministic successor, holding a lease) mints an epoch above
//!   anything it holds or promised, and asks every member for a promise;
//! - a member grants only if it does not hear the old owner (silent for longer than the
//!   lease, or its process found gone) and the epoch is above all it holds or promised;
//!   granting fences the old owner's changes there and answers the member's copy;
//! - with a majority of grants (itself included), the claimant installs the newest copy of
//!   the majority at its epoch and replicates it whole. A sync write was acked only once a
//!   majority held it, and any two majorities share a node, so that copy has every acked
//!   write; the old owner's later writes are fenced by the promises.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{Replicator, Wait};
use crate::cluster::error::ClaimError;
use crate::cluster::messages::{MeshMessage, Vote};
use crate::lifecycle::State;
use crate::session::{FullSession, Key, Promise, Ver, PROMISE_TTL};

/// Votes are small; a member's copies of a batch of claimed sessions are not.
const VOTE_MAX_FRAME: usize = 16 * 1024 * 1024;

/// The claimant's tally for one session.
#[derive(Default)]
struct Tally {
    granted: usize,
    alive: bool,
    top: u64,
    best: Option<FullSession>,
    removed: Option<Ver>,
}

impl Replicator {
    /// Claims the sessions `keys` of the gone owner `owner`; installs and replicates the
    /// ones a majority granted (waits in `waits`). `Ok(n)`: n installed (a session removed
    /// meanwhile is not); the error of the first key that failed otherwise.
    pub(crate) async fn claim(
        &self,
        owner: &str,
        keys: &[Key],
        waits: Option<&mut Vec<Wait>>,
    ) -> Result<usize, ClaimError> {
        let started = Instant::now();
        if !self.lease.holds(started) {
            return Err(ClaimError::NoLease);
        }
        // One claim per session at a time on this node: concurrent requests for it wait
        // for the first claim instead of superseding it with a higher epoch of their own.
        let mut sorted: Vec<Key> = keys.to_vec();
        sorted.sort_unstable_by_key(|k| k.0);
        sorted.dedup();
        let mut guards = Vec::with_capacity(sorted.len());
        for k in &sorted {
            let lock = self.claiming.entry(k.0).or_default().clone();
            guards.push((k.0, lock.lock_owned().await));
        }
        let me = self.store.route();
        let pending: Vec<Key> = sorted
            .into_iter()
            .filter(|k| self.store.owner_of(*k).is_none_or(|o| *o != *me))
            .collect();
        let already = keys.len().min(guards.len()) - pending.len();
        let result = self.claim_locked(owner, &pending, waits, started).await;
        drop(guards);
        self.claiming
            .retain(|_, l| std::sync::Arc::strong_count(l) > 1 || l.try_lock().is_err());
        result.map(|n| n + already)
    }

    async fn claim_locked(
        &self,
        owner: &str,
        keys: &[Key],
        waits: Option<&mut Vec<Wait>>,
        started: Instant,
    ) -> Result<usize, ClaimError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut claims: Vec<(Key, u64)> = keys
            .iter()
            .map(|k| (*k, self.store.claim_epoch(*k)))
            .collect();
        let mut result = Err(ClaimError::Lost);
        let mut waits = waits;
        // A refusal that names a higher epoch is retried once above it.
        for _round in 0..2 {
            let tallies = self.ballot(owner, &claims, started).await;
            let quorum = self.lease.quorum();
            let mut retry = Vec::new();
            let mut installed = 0;
            let mut first_err = None;
            for ((key, at), t) in claims.iter().zip(tallies) {
                if t.granted >= quorum && started.elapsed() < PROMISE_TTL / 2 {
                    let now = Instant::now();
                    let rep = self;
                    let w = &mut waits;
                    let got =
                        self.store
                            .install_claim(*key, *at, t.best, t.removed, now, &mut |c| {
                                rep.enqueue(c, w.as_deref_mut());
                            });
                    installed += usize::from(got.is_some());
                    continue;
                }
                self.store.withdraw(*key, *at);
                if t.top >= *at && !t.alive {
                    retry.push((
                        *key,
                        crate::session::next_epoch(t.top, self.store.epoch_tag()),
                    ));
                    continue;
                }
                first_err.get_or_insert(ClaimError::NoMajority {
                    owner: owner.to_string(),
                    granted: t.granted,
                    needed: quorum,
                });
            }
            self.metrics.claims.inc_by(installed as u64);
            if installed > 0 {
                self.membership.log.push(
                    "takeover",
                    owner,
                    format!("{installed} session(s) taken over by a majority's vote"),
                );
            }
            result = match first_err {
                Some(e) if retry.is_empty() => {
                    self.metrics.claims_refused.inc();
                    Err(e)
                }
                _ => Ok(installed),
            };
            if retry.is_empty() {
                return result;
            }
            claims = retry;
        }
        result
    }

    /// Asks this node and every member for promises; one tally per claim.
    async fn ballot(&self, owner: &str, claims: &[(Key, u64)], started: Instant) -> Vec<Tally> {
        let now = Instant::now();
        let mut tallies: Vec<Tally> = claims
            .iter()
            .map(|(key, at)| {
                let mut t = Tally::default();
                match self.store.promise(*key, *at, now) {
                    Promise::Granted { removed, .. } => {
                        // Our own copy is the claimant's starting point already.
                        t.granted = 1;
                        t.removed = removed;
                    }
                    Promise::Refused { top } => t.top = top,
                }
                t
            })
            .collect();
        let msg = MeshMessage::Claim {
            domain: self.link.domain.clone(),
            from: self.link.me(),
            owner: owner.to_string(),
            claims: claims.iter().map(|(k, e)| (k.0, *e)).collect(),
        };
        // A voter may verify the owner first (up to verify_timeout).
        let limit = (self.link.verify_timeout * 2)
            .min(PROMISE_TTL / 2)
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let mut voters = self.membership.live();
        // A draining owner is alive and votes with its own copy, the freshest: a handover
        // (or a takeover while it drains) then keeps even its async writes.
        voters.retain(|i| i.jvm_route != owner || i.state == State::Draining);
        let answers = join_all(
            voters
                .iter()
                .map(|v| self.link.call(v.mesh_addr, &msg, VOTE_MAX_FRAME, limit)),
        )
        .await;
        for (voter, answer) in voters.iter().zip(answers) {
            let votes = match answer {
                Ok(MeshMessage::Votes { votes }) if votes.len() == claims.len() => votes,
                Ok(_) => {
                    tracing::warn!(voter = %voter.jvm_route, "claim: malformed answer");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(voter = %voter.jvm_route, error = %e, "claim: no answer");
                    continue;
                }
            };
            for (t, v) in tallies.iter_mut().zip(votes) {
                match v {
                    Vote::Granted { copy, removed } => {
                        t.granted += 1;
                        if let Some(r) = removed.map(|(e, v)| Ver::new(e, v)) {
                            t.removed = t.removed.max(Some(r));
                        }
                        if let Some(c) = copy {
                            let newer = t
                                .best
                                .as_ref()
                                .is_none_or(|b| (c.epoch, c.version) > (b.epoch, b.version));
                            if newer {
                                t.best = Some(c);
                            }
                        }
                    }
                    Vote::Refused { top } => t.top = t.top.max(top),
                    Vote::OwnerAlive => t.alive = true,
                }
            }
        }
        tallies
    }

    /// A member's side of a claim: grants each promise it can unless it still hears the
    /// owner (verified now if it is a ready member here).
    pub(crate) async fn vote(&self, owner: &str, claims: &[(u128, u64)]) -> Vec<Vote> {
        if self.owner_alive(owner).await {
            self.metrics.votes_refused.inc();
            return vec![Vote::OwnerAlive; claims.len()];
        }
        let now = Instant::now();
        claims
            .iter()
            .map(|(key, at)| match self.store.promise(Key(*key), *at, now) {
                Promise::Granted { copy, removed } => Vote::Granted {
                    copy,
                    removed: removed.map(|r| (r.epoch, r.version)),
                },
                Promise::Refused { top } => Vote::Refused { top },
            })
            .collect()
    }

    /// Whether the owner may still hold its lease as far as this node knows. Its lease
    /// needs a majority's answers to its pings, and each answer is this node hearing it: a
    /// member silent here for longer than the lease holds none through this node. Heard
    /// more recently, it is probed: only a process found gone (refused, or another process
    /// on its address: a kill -9) lets this node grant at once.
    async fn owner_alive(&self, owner: &str) -> bool {
        if owner == self.store.route() {
            return self.link.me().state == State::Ready;
        }
        let Some(m) = self.membership.by_route(owner) else {
            return false;
        };
        if m.info.state != State::Ready || m.last_heard.elapsed() > self.lease.duration {
            return false;
        }
        match self.membership.probe(&m.info).await {
            Ok(State::Ready) => true,
            Ok(_) => false,
            Err(e) if e.is_gone() => {
                self.membership
                    .remove(m.info.node_id, &format!("a claim found it gone: {e}"));
                false
            }
            // Unreachable but heard within the lease: it may still be serving.
            Err(_) => true,
        }
    }
}
