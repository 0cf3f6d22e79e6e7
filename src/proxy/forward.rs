//! Forwarding (REFERENCE 4.4): a request whose session another member owns goes to that
//! member's HTTP address with the hop marker; a member that cannot be reached or dies
//! mid-request is verified at once and the request planned again, so a client never waits
//! for `drop_time`.

use http::{HeaderValue, Response, Version};

use super::body::{ProxyBody, UpBody};
use super::error::ProxyError;
use super::headers::{Added, ClientInfo};
use super::hop::{self, HOP};
use super::sticky::Plan;
use super::upstream::{self, Failure, SendError};
use super::{Proxy, ToBackend};
use crate::cluster::NodeInfo;
use crate::session::Unsafe;

impl Proxy {
    /// A request whose session another member owns: forwarded there (or, for a gone
    /// owner, taken over here by a majority's vote first). A refused forward
    /// verifies the member at once and plans again, so a client retrying after a crash
    /// does not wait for drop_time; a plan that ends here goes to this node's backends.
    /// `Routed::Local`: the plan ended at this node (the owner died and this node took
    /// over, or nobody has the session): the caller sends it to this node's backends.
    pub(super) async fn to_owner(&self, f: ToOwner) -> Result<Routed, ProxyError> {
        let ToOwner {
            mut parts,
            mut added,
            mut body,
            hops,
            tls,
            plan,
        } = f;
        let mut plan = plan;
        let mut attempts = 0;
        let mut claimed = false;
        let session = loop {
            match plan {
                Plan::Static => break None,
                Plan::Local(rs) => break Some(rs),
                Plan::Refuse(why) => return Err(ProxyError::unsafe_now(why)),
                Plan::Locate(key) => {
                    let owner = self.sessions.locate(key).await;
                    parts.extensions.insert(super::sticky::Located(owner));
                }
                Plan::Claim { key, owner } => {
                    if claimed {
                        return Err(ProxyError::unsafe_now(Unsafe::NotServable));
                    }
                    claimed = true;
                    self.sessions.claim(key, &owner).await?;
                }
                Plan::Forward(to) => {
                    let hop = hops.unwrap_or(0) + 1;
                    if hop > MAX_HOPS {
                        return Err(ProxyError::Unroutable(format!(
                            "session forwarded {MAX_HOPS} times without reaching its owner"
                        )));
                    }
                    // A bodyless idempotent request can be planned again if its owner
                    // turns out dead after the request reached it.
                    let replayable = upstream::is_idempotent(&parts.method)
                        && http_body::Body::is_end_stream(&body);
                    let outcome = self
                        .forward(&mut parts, &added, &mut body, &to, hop, tls)
                        .await;
                    parts.headers.remove(HOP);
                    match outcome {
                        Ok(resp) => return Ok(Routed::Served(resp)),
                        Err(Forward::Failed(e)) => return Err(e),
                        Err(Forward::OwnerDied(e)) => {
                            attempts += 1;
                            if !replayable || attempts > MAX_HOPS {
                                return Err(e);
                            }
                        }
                        Err(Forward::Unsent(why)) => {
                            attempts += 1;
                            if attempts > MAX_HOPS {
                                return Err(ProxyError::Unroutable(format!(
                                    "the session's owner {} cannot be reached: {why}",
                                    to.jvm_route
                                )));
                            }
                            // Dead: removed now, and the next plan fails over. Alive
                            // (e.g. a stale keep-alive connection): try again.
                            if let Some(c) = self.sessions.cluster() {
                                c.verify(to.node_id).await;
                            }
                        }
                    }
                }
            }
            plan = self.sessions.on_request(&mut parts, &mut added, tls);
        };
        let out = upstream::Encoded::new(&parts, &added, None, &body);
        Ok(Routed::Local(ToBackend {
            out,
            body,
            session,
            client_upgrade: None,
        }))
    }

    /// The hop count of a request forwarded by a member and whether its client came over
    /// TLS, if the marker is genuine: it names a member whose announced HTTP address has
    /// the peer's IP and, with a `[cluster] key`, it is signed for this request.
    pub(super) fn hop_from_member<B>(
        &self,
        marker: Option<HeaderValue>,
        client: &ClientInfo,
        req: &http::Request<B>,
    ) -> Option<(u8, bool)> {
        let marker = marker?;
        let c = self.sessions.cluster()?;
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let hop = hop::decode(&marker, c.key(), req.method(), target)?;
        // With mesh TLS a marker counts only on a channel from the member it names; a
        // client listener then trusts no member by its IP.
        let genuine = if c.forwards_over_mesh() {
            client.member.as_deref() == Some(hop.route)
        } else {
            c.is_member_at(hop.route, client.peer.ip().to_canonical())
        };
        genuine.then_some((hop.hops, hop.tls))
    }

    /// Sends the request to the member that owns its session; the member's response is the
    /// client's. `Unsent`: nothing reached the member. A member that does not answer is
    /// verified after half of `verify_timeout`: if it is dead (a stopped process still accepts
    /// connections), the forward is abandoned (`OwnerDied`). The caller removes the hop
    /// marker this adds.
    async fn forward(
        &self,
        parts: &mut http::request::Parts,
        added: &Added,
        body: &mut UpBody,
        to: &NodeInfo,
        hop: u8,
        tls: bool,
    ) -> Result<Response<ProxyBody>, Forward> {
        let key = self.sessions.cluster().and_then(|c| c.key());
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let marker = hop::Hop {
            hops: hop,
            route: self.sessions.store.route(),
            tls,
        };
        if let Some(v) = hop::encode(marker, key, &parts.method, target) {
            parts.headers.insert(HOP, v);
        }
        let send = async {
            match self.sessions.cluster() {
                Some(c) if c.forwards_over_mesh() => {
                    self.members.send(c, to, parts, added, body).await.map(|r| {
                        let (head, body) = r.into_parts();
                        (head, ProxyBody::Member(body))
                    })
                }
                _ => self
                    .upstream()
                    .send_to_peer(to.http_addr, parts, added, body)
                    .await
                    .map(|x| (x.head, ProxyBody::Upstream(x.body))),
            }
        };
        let watch = async {
            let Some(c) = self.sessions.cluster() else {
                return std::future::pending().await;
            };
            // Half the verify timeout, then a ping (at most the other half and a bit): a
            // stopped owner is found within about verify_timeout, inside a client's own
            // timeout, so the forward fails over instead of the client giving up.
            tokio::time::sleep(c.verify_timeout() / 2).await;
            if c.verify(to.node_id).await {
                // Alive, only slow: let the forward run to its own timeout.
                std::future::pending::<()>().await;
            }
        };
        let sent = tokio::select! {
            r = send => r,
            _ = watch => {
                return Err(Forward::OwnerDied(ProxyError::Unroutable(format!(
                    "the session's owner {} stopped answering and failed verification",
                    to.jvm_route
                ))));
            }
        };
        match sent {
            // The owner stripped its backend's directives; any here are dropped.
            Ok((mut head, body)) => {
                head.version = Version::HTTP_11;
                self.hygiene.response(&mut head.headers, false);
                Ok(Response::from_parts(head, body))
            }
            Err(why) if why.fault == upstream::Fault::Client => {
                Err(Forward::Failed(ProxyError::ClientBody(why.reason)))
            }
            Err(why) if why.fault == upstream::Fault::Response => Err(Forward::Failed(
                ProxyError::Refused(Failure::new(format!("member {}", to.jvm_route), why.reason)),
            )),
            Err(why) if why.unsent => Err(Forward::Unsent(why)),
            Err(why) => {
                // Sent, then the connection broke (a killed owner's pooled connection):
                // if the member is dead, this is a failover, not a backend error.
                let dead = match self.sessions.cluster() {
                    Some(c) => !c.verify(to.node_id).await,
                    None => false,
                };
                let e = ProxyError::BackendFailed(Failure::new(
                    format!("member {}", to.jvm_route),
                    format!("forward: {why}"),
                ));
                Err(if dead {
                    Forward::OwnerDied(e)
                } else {
                    Forward::Failed(e)
                })
            }
        }
    }
}

/// Where a forwarded request ended.
pub(super) enum Routed {
    /// The member answered.
    Served(Response<ProxyBody>),
    /// Planned again, it is this node's after all.
    Local(ToBackend),
}

/// A request for the member that owns its session, kept whole: it may be planned again.
pub(super) struct ToOwner {
    pub(super) parts: http::request::Parts,
    pub(super) added: Added,
    pub(super) body: UpBody,
    pub(super) hops: Option<u8>,
    pub(super) tls: bool,
    /// A forward to the owner, or a takeover to run first.
    pub(super) plan: Plan,
}

/// A request is forwarded at most twice.
const MAX_HOPS: u8 = 2;

enum Forward {
    /// Nothing reached the member: the request can go again.
    Unsent(SendError),
    /// The member took the request and then failed verification.
    OwnerDied(ProxyError),
    Failed(ProxyError),
}
