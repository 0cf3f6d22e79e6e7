//! Graceful leave (REFERENCE 4.8): a draining owner hands its sessions to their successors.
//!
//! The owner sends each successor a `HandOver` with the keys it should own; the successor
//! takes them over exactly as after a failover, by a majority's vote ([`Replicator::claim`]:
//! the draining owner votes too, with its own copy, the freshest), and answers once the
//! new ownership is acked by the copies (sync mode). So a handover can lose nothing a
//! failover would keep, and the owner lets go only of what a successor confirmed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;

use super::{Replicator, SendMode};
use crate::cluster::messages::{MeshMessage, NodeInfo};
use crate::cluster::routing;
use crate::lifecycle::State;
use crate::session::Key;

/// Keys per `HandOver`: a claim's votes carry the voters' copies, so batches stay small.
const BATCH: usize = 128;

/// Copies in a batch's votes may be large (up to `max_session_bytes` each).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What one round of handing over did.
#[derive(Debug, Default, Clone)]
pub(crate) struct HandOverRound {
    /// Sessions the successors confirmed they took over.
    pub taken: u64,
    /// Why some were not (one line per failed batch).
    pub refused: Vec<String>,
}

impl Replicator {
    /// The successor's side of a `HandOver` from `owner`.
    pub(crate) async fn take_handover(&self, owner: &str, keys: &[u128]) -> MeshMessage {
        let keys: Vec<Key> = keys.iter().map(|k| Key(*k)).collect();
        let mut waits = Vec::new();
        let sync = self.mode == SendMode::Sync;
        let claimed = self
            .claim(owner, &keys, sync.then_some(&mut waits))
            .await
            .map_err(|e| e.to_string());
        // What was installed must be held by the copies before the owner lets go.
        let settled = self.settle(waits).await.map_err(|e| e.to_string());
        match (claimed, settled) {
            (Ok(n), Ok(())) => {
                tracing::info!(
                    from = owner,
                    sessions = n,
                    "sessions handed over to this node"
                );
                MeshMessage::HandedOver {
                    taken: n as u64,
                    refused: None,
                }
            }
            (Err(why), _) | (Ok(_), Err(why)) => MeshMessage::HandedOver {
                taken: 0,
                refused: Some(why),
            },
        }
    }

    /// Hands `keys` (sessions this node owns) to their successors: the ready member with
    /// the highest rendezvous score for each base id, the one every node's routing picks
    /// while this node drains. Batches to one successor go one after another; successors
    /// in parallel.
    pub(crate) async fn hand_over(&self, keys: &[Key]) -> HandOverRound {
        let ready: Vec<NodeInfo> = self
            .membership
            .infos()
            .into_iter()
            .filter(|i| i.state == State::Ready)
            .collect();
        let mut out = HandOverRound::default();
        if ready.is_empty() {
            out.refused
                .push("no ready member to hand the sessions to".into());
            return out;
        }
        let mut by_successor: HashMap<&str, Vec<u128>> = HashMap::new();
        for k in keys {
            let base = k.base();
            if let Some(s) = routing::successor(&base, ready.iter().map(|i| i.jvm_route.as_str())) {
                by_successor.entry(s).or_default().push(k.0);
            }
        }
        // A claim may verify the owner first, then waits for the acks.
        let limit = self.link.verify_timeout * 2 + self.ack_timeout + Duration::from_secs(1);
        let sends = by_successor.into_iter().map(|(route, keys)| {
            let to = ready.iter().find(|i| i.jvm_route == route).cloned();
            async move {
                let mut round = HandOverRound::default();
                let Some(to) = to else { return round };
                for chunk in keys.chunks(BATCH) {
                    let msg = MeshMessage::HandOver {
                        keys: chunk.to_vec(),
                    };
                    match self.link.call(to.mesh_addr, &msg, MAX_FRAME, limit).await {
                        Ok(MeshMessage::HandedOver { taken, refused }) => {
                            round.taken += taken;
                            match refused {
                                Some(why) => round.refused.push(format!("{}: {why}", to.jvm_route)),
                                // Every key of the batch is the successor's now (or was
                                // removed meanwhile): this node lets go.
                                None => {
                                    for k in chunk {
                                        self.store.release(Key(*k), &to.jvm_route);
                                    }
                                }
                            }
                        }
                        Ok(other) => round.refused.push(format!(
                            "{}: answered {} to a hand over",
                            to.jvm_route,
                            other.name()
                        )),
                        Err(e) => round.refused.push(format!("{}: {e}", to.jvm_route)),
                    }
                }
                round
            }
        });
        for r in join_all(sends).await {
            out.taken += r.taken;
            out.refused.extend(r.refused);
        }
        self.metrics.handed_over.inc_by(out.taken);
        out
    }
}
