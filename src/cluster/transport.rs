//! How heartbeats travel: multicast UDP (`kind = "multicast"`), or mesh pings to a fixed list
//! (`kind = "static"`) or to the addresses a DNS name resolves to (`kind = "dns"`).
//!
//! Multicast stays on the configured interface: the socket joins the group on `bind`, sends
//! with `IP_MULTICAST_IF = bind` and TTL `ttl`, and loops back so nodes on one host hear each
//! other. With the default `bind = 127.0.0.1` nothing leaves the machine.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::membership::Membership;
use super::messages::{decode_heartbeat, encode_heartbeat, Heartbeat};

/// The multicast socket, bound to the group port and joined on `bind`.
pub fn multicast_socket(
    group: Ipv4Addr,
    port: u16,
    bind: Ipv4Addr,
    ttl: u32,
) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Binding to the group address (not 0.0.0.0) receives only this group's datagrams.
    s.bind(&SocketAddrV4::new(group, port).into())?;
    s.join_multicast_v4(&group, &bind)?;
    s.set_multicast_if_v4(&bind)?;
    s.set_multicast_ttl_v4(ttl)?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Sends heartbeats (multicast) and receives them.
/// Heartbeats are tagged with the link's key (`Membership::link`).
pub(super) struct Multicast {
    socket: UdpSocket,
    target: SocketAddr,
    seq: AtomicU64,
}

impl Multicast {
    pub(super) fn new(socket: UdpSocket, target: SocketAddr) -> Self {
        Self {
            socket,
            target,
            seq: AtomicU64::new(0),
        }
    }

    /// One heartbeat with the current state, now.
    pub(super) async fn send(&self, m: &Membership) {
        let hb = Heartbeat {
            domain: m.cfg.domain.clone(),
            info: m.link.me(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            sent_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let pkt = encode_heartbeat(&hb, m.link.key());
        match self.socket.send_to(&pkt, self.target).await {
            Ok(_) => {
                m.metrics.heartbeats_sent.inc();
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat send failed"),
        }
    }

    pub(super) async fn run(self: Arc<Self>, m: Arc<Membership>, shutdown: CancellationToken) {
        let sender = {
            let (this, m, shutdown) = (self.clone(), m.clone(), shutdown.clone());
            async move {
                let mut tick = tokio::time::interval(m.cfg.frequency);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => this.send(&m).await,
                    }
                }
            }
        };
        let receiver = async {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.socket.recv_from(&mut buf) => match r {
                        Ok((n, _)) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "heartbeat receive failed");
                            continue;
                        }
                    },
                };
                let key = m.link.key();
                let res = decode_heartbeat(&buf[..n], key)
                    .and_then(|hb| m.on_heartbeat(hb, key.is_some()));
                match res {
                    Ok(()) => {
                        m.metrics.heartbeats_received.inc();
                    }
                    Err(r) => {
                        m.metrics.rejected(r.label()).inc();
                        tracing::debug!(reason = %r, "heartbeat rejected");
                    }
                }
            }
        };
        tokio::join!(sender, receiver);
    }
}

/// Static membership: pings every configured member each `frequency`; a pong is that
/// member's heartbeat.
pub(super) async fn run_static(
    members: Vec<String>,
    m: Arc<Membership>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(m.cfg.frequency);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ping_all(&members, &m).await;
    }
}

/// Pings every current member at its announced mesh address, and waits for the answers
/// (at most `verify_timeout` each): a ping carries this node's state, so once this returns
/// every reachable member knows it (`draining` must be known before this node forwards
/// its sessions' requests to their successors, or a member that did not hear it yet would
/// forward them back).
/// Returns how many did not answer.
pub(super) async fn ping_members(m: &Arc<Membership>) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for info in m.infos() {
        let m = m.clone();
        tasks.spawn(async move {
            match m.link.ping(info.mesh_addr).await {
                Ok(pong) if pong.node_id == info.node_id => {
                    m.observe(pong);
                    true
                }
                _ => false,
            }
        });
    }
    let mut missed = 0;
    while let Some(answered) = tasks.join_next().await {
        missed += usize::from(!answered.unwrap_or(false));
    }
    missed
}

/// One round of pings (also used to announce a state change such as `leaving`).
pub(super) async fn ping_all(members: &[String], m: &Arc<Membership>) {
    let mut tasks = tokio::task::JoinSet::new();
    for addr in members {
        let (addr, m) = (addr.clone(), m.clone());
        tasks.spawn(async move {
            let resolved = match tokio::net::lookup_host(&addr).await {
                Ok(mut a) => a.next(),
                Err(_) => None,
            };
            let Some(sa) = resolved else { return };
            if sa == m.link.mesh_addr() {
                return;
            }
            if let Ok(info) = m.link.ping(sa).await {
                m.metrics.heartbeats_received.inc();
                m.observe(info);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// DNS membership (CloudMembershipService's DNS provider, REFERENCE 4.1): `name` is resolved
/// every `refresh` with the system resolver (`getaddrinfo` through tokio's `lookup_host`:
/// /etc/resolv.conf, its search list and /etc/hosts, as every other program in the pod or
/// namespace sees them; no resolver crate to keep in step with the system's). Every
/// `frequency` the candidates and the current members are pinged; a pong is a heartbeat.
///
/// - A candidate is only an address: it becomes a member from its pong, which
///   [`Link::ping`](super::link::Link::ping) authenticates (the key's tag; with TLS the
///   cluster CA and the route its certificate names). An address that answers without
///   valid credentials is counted (`caracal_heartbeats_rejected_total{reason="not_admitted"}`)
///   and never added.
/// - This node is recognised by its advertised mesh address, and by its own node id if a
///   pong comes back from itself under another address.
/// - An empty, NXDOMAIN or failed answer keeps the last candidates, and members are pinged
///   where they announced themselves whatever DNS says: a removed record evicts no one. A
///   dead member is dropped by the failure detector's verification, as in every mode.
pub(super) async fn run_dns(
    name: String,
    port: u16,
    refresh: std::time::Duration,
    m: Arc<Membership>,
    shutdown: CancellationToken,
) {
    let mut candidates: Vec<SocketAddr> = Vec::new();
    let mut refused = std::collections::HashSet::new();
    let mut resolved_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(m.cfg.frequency);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if resolved_at.is_none_or(|t| t.elapsed() >= refresh) {
            resolved_at = Some(tokio::time::Instant::now());
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            let answer = tokio::time::timeout(refresh.max(m.cfg.frequency), lookup).await;
            match answer {
                Ok(Ok(addrs)) => {
                    let mut found: Vec<SocketAddr> = addrs.collect();
                    found.sort();
                    found.dedup();
                    if found.is_empty() {
                        m.metrics.dns("empty").inc();
                        tracing::debug!(%name, "dns membership: empty answer, candidates kept");
                    } else {
                        m.metrics.dns("ok").inc();
                        if found != candidates {
                            tracing::info!(%name, candidates = ?found, "dns membership: candidates");
                        }
                        candidates = found;
                    }
                }
                Ok(Err(e)) => {
                    m.metrics.dns("error").inc();
                    tracing::debug!(%name, error = %e, "dns membership: lookup failed, candidates kept");
                }
                Err(_) => {
                    m.metrics.dns("timeout").inc();
                    tracing::debug!(%name, "dns membership: lookup timed out, candidates kept");
                }
            }
        }
        let me = m.link.mesh_addr();
        let mut targets: Vec<SocketAddr> =
            candidates.iter().copied().filter(|a| *a != me).collect();
        for i in m.infos() {
            if !targets.contains(&i.mesh_addr) {
                targets.push(i.mesh_addr);
            }
        }
        for (addr, why) in ping_targets(&targets, &m).await {
            // Once per address: a stranger named by DNS stays named until the record goes.
            if refused.insert(addr) {
                tracing::warn!(%addr, error = %why, "dns candidate failed the mesh handshake: not admitted");
            }
        }
    }
}

/// Pings each address once, concurrently; a pong from another process is that member's
/// heartbeat (or admits a candidate). The addresses that failed authentication, counted.
async fn ping_targets(targets: &[SocketAddr], m: &Arc<Membership>) -> Vec<(SocketAddr, String)> {
    let mut tasks = tokio::task::JoinSet::new();
    for sa in targets {
        let (sa, m) = (*sa, m.clone());
        tasks.spawn(async move {
            match m.link.ping(sa).await {
                Ok(info) if info.node_id == m.link.node_id() => None,
                Ok(info) => {
                    m.metrics.heartbeats_received.inc();
                    m.observe(info);
                    None
                }
                Err(e) if e.is_auth() => {
                    m.metrics.rejected("not_admitted").inc();
                    Some((sa, e.to_string()))
                }
                Err(e) => {
                    tracing::debug!(addr = %sa, error = %e, "dns candidate did not answer");
                    None
                }
            }
        });
    }
    let mut refused = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(x)) = r {
            refused.push(x);
        }
    }
    refused
}
