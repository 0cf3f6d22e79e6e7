//! One replication peer: an ordered queue of changes and one TCP connection to the
//! member's mesh address.
//!
//! Whatever is queued goes out in batches (one `Replicate` frame each: natural batching in
//! async mode, and in sync mode under concurrent load). A batch stays "in flight" until the
//! peer acks it as applied; if the connection drops, every unacked batch is sent again, in
//! order, on the next connection (applying is idempotent by version). Reconnects back off
//! from 50 ms to 2 s, and every failure asks the membership to verify the member.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::metrics::PeerMetrics;
use super::{Acked, Load, Outgoing, Replicator};
use crate::cluster::messages::{encode_change, MeshMessage, NodeInfo};
use crate::session::Change;
use crate::wire::codec;

const MAX_BATCH: usize = 512;

pub(super) async fn run(
    rep: Arc<Replicator>,
    info: NodeInfo,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    load: Arc<Load>,
    metrics: PeerMetrics,
    cancel: CancellationToken,
) {
    let route = info.jvm_route.clone();
    let mut retry: VecDeque<Outgoing> = VecDeque::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = tokio::time::timeout(
            rep.link.verify_timeout,
            rep.link.connect(info.mesh_addr, Some(&route)),
        );
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            r = connect => match r {
                Ok(Ok(s)) => s,
                other => {
                    if let Ok(Err(e @ crate::cluster::MeshError::Tls { .. })) = &other {
                        tracing::warn!(peer = %route, error = %e, "replication connection refused");
                    }
                    rep.membership.suspect(info.node_id);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(50);
        let mut framed = Framed::new(stream, codec(rep.link.max_frame));
        if framed.send(rep.link.hello()).await.is_err() {
            continue;
        }
        let (mut sink, mut stream) = framed.split();
        let mut inflight: BTreeMap<u64, Vec<Outgoing>> = BTreeMap::new();
        let mut seq = 0u64;
        let lost = loop {
            // Resend what an earlier connection left unacked, before anything new.
            let batch = if !retry.is_empty() {
                let n = retry.len().min(MAX_BATCH);
                retry.drain(..n).collect::<Vec<_>>()
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    frame = stream.next() => {
                        match frame {
                            Some(Ok(f)) => {
                                on_ack(&rep, &metrics, &f, &mut inflight, &mut retry, &load);
                                resync_after_overflow(&rep, &info, &load);
                                continue;
                            }
                            // Closed with nothing in flight: the member's `idle_timeout`,
                            // or the member died. Verified either way (a dead one is
                            // dropped at once, which ownership decisions need; a live one
                            // is kept), and a new connection when there is something to
                            // send (an idle close is no reason to reconnect at once).
                            None if inflight.is_empty() => {
                                rep.membership.suspect(info.node_id);
                                tokio::select! {
                                    _ = cancel.cancelled() => return,
                                    next = rx.recv() => match next {
                                        Some(o) => retry.push_back(o),
                                        None => return,
                                    },
                                }
                                break false;
                            }
                            _ => break true,
                        }
                    }
                    first = rx.recv() => {
                        let Some(first) = first else { return };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(o) => batch.push(o),
                                Err(_) => break,
                            }
                        }
                        batch
                    }
                }
            };
            seq += 1;
            let frame = rep
                .link
                .seal_replicate(seq, batch.iter().map(|o| &o.change[..]));
            for o in &batch {
                metrics.sent(o.kind).inc();
            }
            metrics.bytes_sent.inc_by(frame.len() as u64);
            inflight.insert(seq, batch);
            if sink.send(frame).await.is_err() {
                break true;
            }
        };
        if lost {
            tracing::debug!(peer = %route, unacked = inflight.len(), "replication connection lost");
            rep.membership.suspect(info.node_id);
            // Unacked batches first, in order, then what was already waiting.
            let mut again: VecDeque<Outgoing> = inflight.into_values().flatten().collect();
            again.extend(retry.drain(..));
            retry = again;
        }
    }
}

fn on_ack(
    rep: &Replicator,
    metrics: &PeerMetrics,
    frame: &[u8],
    inflight: &mut BTreeMap<u64, Vec<Outgoing>>,
    retry: &mut VecDeque<Outgoing>,
    load: &Load,
) {
    let Ok(MeshMessage::Ack {
        seq,
        need_full,
        fenced,
    }) = rep.link.open(frame)
    else {
        rep.membership.metrics.mesh_rejected("unexpected").inc();
        return;
    };
    let Some(batch) = inflight.remove(&seq) else {
        return;
    };
    rep.metrics.acks.inc();
    // The peer's copies of the sessions whose change it fenced: this node learns their new
    // owner (the apply rule takes the higher epoch), and those writes did not count.
    let now = Instant::now();
    let mut fenced_keys = Vec::with_capacity(fenced.len());
    for copy in fenced {
        fenced_keys.push(copy.key);
        rep.store.refresh(copy, now);
    }
    let n = batch.len();
    let mut bytes = 0i64;
    for o in batch {
        bytes += o.change.len() as i64;
        rep.metrics.lag.observe(o.enqueued.elapsed().as_secs_f64());
        if let Some(tx) = o.ack {
            let _ = tx.send(if fenced_keys.contains(&o.key) {
                Acked::Fenced
            } else {
                Acked::Applied
            });
        }
    }
    let n = n as i64;
    let left = load.depth.fetch_sub(n, Ordering::Relaxed).wrapping_sub(n);
    metrics.depth.set(left.max(0));
    let b = load
        .bytes
        .fetch_sub(bytes, Ordering::Relaxed)
        .wrapping_sub(bytes);
    metrics.bytes.set(b.max(0));
    // The peer could not apply these: it gets full copies, next in its queue.
    for key in need_full {
        if let Some(full) = rep.store.full_copy(key, now) {
            let full = Change::Full(full);
            let change = encode_change(&full);
            load.depth.fetch_add(1, Ordering::Relaxed);
            load.bytes.fetch_add(change.len() as i64, Ordering::Relaxed);
            retry.push_back(Outgoing {
                key,
                change,
                kind: full.kind_index(),
                ack: None,
                enqueued: now,
            });
        }
    }
}

/// Changes were dropped at the queue's cap: once it is down to half, the member gets a full
/// copy of what it should hold (the resync of a member back from a pause), so nothing
/// dropped stays missing there.
fn resync_after_overflow(rep: &Replicator, info: &NodeInfo, load: &Load) {
    let (max_changes, max_bytes) = rep.max_queue;
    if load.overflowed.load(Ordering::Acquire)
        && load.depth.load(Ordering::Relaxed) <= (max_changes / 2) as i64
        && load.bytes.load(Ordering::Relaxed) <= (max_bytes / 2) as i64
        && load.overflowed.swap(false, Ordering::AcqRel)
    {
        tracing::info!(peer = %info.jvm_route, "replication queue drained after an overflow: resyncing");
        if !rep.resync(info) {
            // No lease here: the overflow stays marked, and the resync runs at a later
            // drain, once this node holds the lease again.
            load.overflowed.store(true, Ordering::Release);
        }
    }
}
