//! How heartbeats travel: multicast UDP (`kind = "multicast"`) or mesh pings to a fixed list
//! (`kind = "static"`).
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
pub struct Multicast {
    socket: UdpSocket,
    target: SocketAddr,
    seq: AtomicU64,
}

impl Multicast {
    pub fn new(socket: UdpSocket, target: SocketAddr) -> Self {
        Self {
            socket,
            target,
            seq: AtomicU64::new(0),
        }
    }

    /// One heartbeat with the current state, now.
    pub async fn send(&self, m: &Membership) {
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

    pub async fn run(self: Arc<Self>, m: Arc<Membership>, shutdown: CancellationToken) {
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
pub async fn run_static(members: Vec<String>, m: Arc<Membership>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(m.cfg.frequency);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ping_all(&members, &m).await;
    }
}

/// One round of pings (also used to announce a state change such as `leaving`).
pub async fn ping_all(members: &[String], m: &Arc<Membership>) {
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
