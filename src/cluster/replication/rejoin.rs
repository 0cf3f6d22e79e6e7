//! Catching up after a lapsed lease (REFERENCE 4.9, "Rejoin"): a node that was paused, cut off
//! or dropped sends every member a digest of what it holds, (session, epoch, version), in
//! chunks; each answers what it knows that is newer: whole copies (a takeover, the
//! majority's writes), removals, and promises of claims under way. Applied by the apply
//! rule to the sessions still held, so the node learns, for every session it holds, whether
//! it still owns it, under both managers. It needs answers from a majority: any takeover
//! was granted by a majority, and two majorities share a member.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::Replicator;
use crate::cluster::config::Manager;
use crate::cluster::messages::MeshMessage;
use crate::session::{Change, Fresher};

/// Entries per digest frame (24 bytes each on the wire at most).
const CHUNK: usize = 4096;
const FRESHER_MAX_FRAME: usize = 64 * 1024 * 1024;

impl Replicator {
    /// Sends the digest to every member and applies the answers. `true` once a majority
    /// (this node included) answered all of it.
    pub(crate) async fn catch_up(&self) -> bool {
        let digest = self.store.digest();
        let members = self.membership.live();
        let limit = self.ack_timeout.max(Duration::from_secs(2));
        let started = Instant::now();
        let results = join_all(members.iter().map(|m| async {
            let mut answers = Vec::new();
            for chunk in digest.chunks(CHUNK).chain(digest.is_empty().then_some(&[][..])) {
                let msg = MeshMessage::Digest {
                    domain: self.link.domain.clone(),
                    from: self.link.me(),
                    entries: chunk.to_vec(),
                };
                match self
                    .link
                    .call(m.mesh_addr, &msg, FRESHER_MAX_FRAME, limit)
                    .await
                {
                    Ok(MeshMessage::Fresher(f)) => answers.push(f),
                    Ok(other) => {
                        tracing::warn!(member = %m.jvm_route, what = other.name(), "catch-up: unexpected answer");
                        return None;
                    }
                    Err(e) => {
                        tracing::debug!(member = %m.jvm_route, error = %e, "catch-up: no answer");
                        return None;
                    }
                }
            }
            Some(answers)
        }))
        .await;
        let mut answered = 1;
        let mut changed = 0;
        let now = Instant::now();
        for answers in results.into_iter().flatten() {
            answered += 1;
            for f in answers {
                changed += self.store.catch_up(f, now);
            }
        }
        let ok = answered >= self.lease.quorum();
        if ok && self.manager == Manager::Backup {
            changed += self.drop_misplaced();
        }
        if ok {
            self.metrics.catch_ups.inc();
            self.metrics.caught_up_sessions.inc_by(changed as u64);
        }
        tracing::info!(
            sessions = digest.len(), changed, answered, ok, took = ?started.elapsed(),
            "compared copies with the members (catch-up or audit)"
        );
        ok
    }

    /// Looks one session up at every member (a digest of one entry that any copy or
    /// removal is newer than): the owner its newest copy names, unless a removal is newer.
    /// Nothing is kept here (this node is not one of its copies).
    pub(crate) async fn locate(&self, key: u128) -> Option<String> {
        let members = self.membership.live();
        let limit = self.ack_timeout;
        let answers = join_all(members.iter().map(|m| async {
            let msg = MeshMessage::Digest {
                domain: self.link.domain.clone(),
                from: self.link.me(),
                entries: vec![(key, 0, 0)],
            };
            match self
                .link
                .call(m.mesh_addr, &msg, FRESHER_MAX_FRAME, limit)
                .await
            {
                Ok(MeshMessage::Fresher(f)) => Some(f),
                _ => None,
            }
        }))
        .await;
        let mut newest: Option<((u64, u64), Option<String>)> = None;
        for f in answers.into_iter().flatten() {
            for c in f.changes {
                let (at, owner) = match c {
                    Change::Full(f) => ((f.epoch, f.version), Some(f.owner)),
                    Change::Remove { epoch, version, .. } => ((epoch, version), None),
                    _ => continue,
                };
                if newest.as_ref().is_none_or(|(n, _)| at > *n) {
                    newest = Some((at, owner));
                }
            }
        }
        newest.and_then(|(_, owner)| owner)
    }

    /// A member's answer to a digest chunk.
    pub(crate) fn fresher(&self, entries: &[(u128, u64, u64)]) -> Fresher {
        self.store.fresher(entries, Instant::now())
    }
}
