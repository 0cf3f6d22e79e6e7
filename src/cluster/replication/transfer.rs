//! State transfer (REFERENCE 4.7), both ways: a joiner streams every session from the oldest
//! ready member; a member serves its sessions to a joiner in chunks.

use std::time::Instant;

use crate::cluster::link::MeshStream;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::Replicator;
use crate::cluster::config::Manager;
use crate::cluster::error::MeshError;
use crate::cluster::messages::MeshMessage;
use crate::lifecycle::State;
use crate::session::{Change, FullSession, Remote};
use crate::wire::codec;

impl Replicator {
    /// Sends this node's sessions to a joiner, in chunks: only the key list is taken up
    /// front; each session is copied when its chunk is built.
    pub(crate) async fn serve_state(
        &self,
        framed: &mut Framed<MeshStream, LengthDelimitedCodec>,
    ) -> std::io::Result<u64> {
        let keys = self.store.keys();
        // Leave room for the frame's own overhead.
        let budget = self.link.max_frame / 2;
        let mut chunk: Vec<FullSession> = Vec::new();
        let mut bytes = 0usize;
        let mut count = 0u64;
        for key in keys {
            let Some(s) = self.store.full_copy(key, Instant::now()) else {
                continue; // removed since the key list was taken
            };
            bytes += s.attrs.len() + 64;
            chunk.push(s);
            count += 1;
            if chunk.len() >= 512 || bytes >= budget {
                let msg = MeshMessage::StateChunk {
                    sessions: std::mem::take(&mut chunk),
                };
                framed.send(self.link.seal(&msg)).await?;
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            let msg = MeshMessage::StateChunk { sessions: chunk };
            framed.send(self.link.seal(&msg)).await?;
        }
        framed
            .send(self.link.seal(&MeshMessage::StateDone { count }))
            .await?;
        Ok(count)
    }

    /// A starting node: streams every session from the oldest ready member. Live changes
    /// arriving meanwhile are applied by version, so order does not matter. `Ok(None)`: no
    /// ready member to ask (a new cluster).
    pub(crate) async fn state_transfer(&self) -> Result<Option<(String, u64)>, MeshError> {
        if self.manager == Manager::Backup {
            // A joiner holds only the copies it backs up; owners send exactly those when
            // they see it join (rebalance), so there is nothing to pull.
            tracing::info!("backup manager: copies arrive from their owners (rebalance)");
            return Ok(None);
        }
        let source = self
            .membership
            .members()
            .into_iter()
            .filter(|m| m.info.state == State::Ready && !m.suspect)
            .max_by_key(|m| m.info.alive_ms);
        let Some(src) = source else {
            return Ok(None);
        };
        let started = Instant::now();
        let addr = src.info.mesh_addr;
        let stream = self.link.connect(addr, Some(&src.info.jvm_route)).await?;
        let mut framed = Framed::new(stream, codec(self.link.max_frame));
        let req = MeshMessage::StateRequest {
            domain: self.link.domain.clone(),
            from: self.link.me(),
        };
        framed
            .send(self.link.hello())
            .await
            .map_err(|source| MeshError::Send { addr, source })?;
        framed
            .send(self.link.seal(&req))
            .await
            .map_err(|source| MeshError::Send { addr, source })?;
        let mut applied = 0u64;
        loop {
            let frame = match framed.next().await {
                Some(Ok(f)) => f,
                Some(Err(source)) => return Err(MeshError::Read { addr, source }),
                None => return Err(MeshError::Closed { addr }),
            };
            let msg = self
                .link
                .open(&frame)
                .map_err(|source| MeshError::Frame { addr, source })?;
            match msg {
                MeshMessage::StateChunk { sessions } => {
                    let now = Instant::now();
                    for s in sessions {
                        if self.store.apply_remote(&Change::Full(s), now) == Remote::Applied {
                            applied += 1;
                        }
                    }
                }
                MeshMessage::StateDone { count } => {
                    self.metrics.state_transfers.inc();
                    self.metrics
                        .state_transfer_seconds
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(from = %src.info.jvm_route, sent = count, applied, took = ?started.elapsed(), "state transfer complete");
                    return Ok(Some((src.info.jvm_route, count)));
                }
                other => {
                    return Err(MeshError::Unexpected {
                        addr,
                        what: other.name(),
                    })
                }
            }
        }
    }
}
