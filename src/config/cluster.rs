//! `[cluster]`: membership, the mesh receiver, the manager and its send options.

use std::net::IpAddr;

use super::raw::RawCluster;
use std::path::Path;

use super::source::{key, key_idx, parse_addr, resolve, Source};
use super::ConfigError;
use crate::cluster::MeshTlsConfig;
use crate::cluster::{
    ClusterConfig, Manager, MembershipConfig, MembershipKind, PartitionHandling, ReceiverConfig,
    SendMode,
};
use crate::tls::TlsError;

/// `[cluster]`, `[cluster.membership]`, `[cluster.receiver]`.
pub(super) fn validate(c: &RawCluster, src: &Source) -> Result<ClusterConfig, ConfigError> {
    let m = &c.membership;
    let ip = |k: &str, s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| src.error(&key(k), format!("invalid IP address {s:?}")))
    };
    let kind = match m.kind.as_str() {
        "multicast" => {
            let group = match ip("cluster.membership.address", &m.address)? {
                IpAddr::V4(g) if g.is_multicast() => g,
                _ => {
                    return Err(src.error(
                        &key("cluster.membership.address"),
                        format!(
                            "{:?} is not an IPv4 multicast address (224.0.0.0/4)",
                            m.address
                        ),
                    ))
                }
            };
            let IpAddr::V4(bind) = ip("cluster.membership.bind", &m.bind)? else {
                return Err(src.error(&key("cluster.membership.bind"), "must be an IPv4 address"));
            };
            if m.ttl > 255 {
                return Err(src.error(&key("cluster.membership.ttl"), "must be 0..255"));
            }
            let port = m.port.unwrap_or(45564);
            if port == 0 {
                return Err(src.error(&key("cluster.membership.port"), "must not be 0"));
            }
            MembershipKind::Multicast {
                group,
                port,
                bind,
                ttl: m.ttl,
            }
        }
        "static" => {
            if c.enabled && m.members.is_empty() {
                return Err(src.error(
                    &key("cluster.membership.members"),
                    "static membership needs the other members' mesh addresses",
                ));
            }
            for (i, a) in m.members.iter().enumerate() {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(src.error(
                        &key_idx("cluster.membership.members", i),
                        format!("expected host:port, got {a:?}"),
                    ));
                }
            }
            MembershipKind::Static {
                members: m.members.clone(),
            }
        }
        "dns" => {
            let name = m.name.trim();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if c.enabled && !valid {
                return Err(src.error(
                    &key("cluster.membership.name"),
                    format!(
                        "dns membership needs a DNS name (e.g. a headless Service), got {:?}",
                        m.name
                    ),
                ));
            }
            if m.refresh.0 < std::time::Duration::from_millis(100) {
                return Err(src.error(&key("cluster.membership.refresh"), "at least 100ms"));
            }
            let port = m.port.unwrap_or(c.receiver.port);
            if port == 0 && c.enabled {
                return Err(src.error(
                    &key("cluster.membership.port"),
                    "the peers' mesh port: set it (cluster.receiver.port is 0 here)",
                ));
            }
            MembershipKind::Dns {
                name: name.to_string(),
                port,
                refresh: m.refresh.0,
            }
        }
        other => {
            return Err(src.error(
                &key("cluster.membership.kind"),
                format!("unknown kind {other:?}: use multicast, static or dns"),
            ))
        }
    };
    if m.domain.is_empty() || m.domain.len() > 64 {
        return Err(src.error(&key("cluster.membership.domain"), "1 to 64 characters"));
    }
    if m.frequency.0.is_zero() {
        return Err(src.error(
            &key("cluster.membership.frequency"),
            "must be greater than 0",
        ));
    }
    if m.drop_time.0 <= m.frequency.0 {
        return Err(src.error(
            &key("cluster.membership.drop_time"),
            "must be longer than cluster.membership.frequency",
        ));
    }
    if m.verify_timeout.0.is_zero() {
        return Err(src.error(
            &key("cluster.membership.verify_timeout"),
            "must be greater than 0",
        ));
    }
    let key_bytes = match &c.key {
        Some(k) if k.len() < 16 => {
            return Err(src.error(
                &key("cluster.key"),
                "use a secret of at least 16 characters",
            ))
        }
        Some(k) => Some(k.as_bytes().to_vec()),
        None => None,
    };
    let advertise_http = match &c.advertise_http {
        Some(a) => Some(parse_addr(src, &key("cluster.advertise_http"), a)?),
        None => None,
    };
    let manager = match c.manager.as_str() {
        "delta" => Manager::Delta,
        "backup" => Manager::Backup,
        other => {
            return Err(src.error(
                &key("cluster.manager"),
                format!("unknown manager {other:?}: use delta or backup"),
            ))
        }
    };
    // Tomcat's channelSendOptions: 8 = asynchronous; 4 = use ack, 2 = synchronized ack
    // (6 = both, 10 = 8|2). caracal's sync really waits for "applied" acks.
    let send_mode = match &c.send_options {
        toml::Value::String(s) if s == "sync" => SendMode::Sync,
        toml::Value::String(s) if s == "async" => SendMode::Async,
        toml::Value::Integer(8) => SendMode::Async,
        toml::Value::Integer(2 | 4 | 6 | 10) => SendMode::Sync,
        other => {
            return Err(src.error(
                &key("cluster.send_options"),
                format!("unknown value {other}: use \"sync\", \"async\" or a Tomcat number (8 = async; 4, 6, 10 = sync)"),
            ))
        }
    };
    if c.ack_timeout.0.is_zero() {
        return Err(src.error(&key("cluster.ack_timeout"), "must be greater than 0"));
    }
    let partition_handling = match c.partition_handling.as_str() {
        "quorum" => PartitionHandling::Quorum,
        "available" => PartitionHandling::Available,
        other => {
            return Err(src.error(
                &key("cluster.partition_handling"),
                format!("unknown value {other:?}: use \"quorum\" or \"available\""),
            ))
        }
    };
    // Default: halfway between frequency and drop_time (both checked above).
    let lease = c
        .lease
        .as_ref()
        .map_or((m.frequency.0 + m.drop_time.0) / 2, |l| l.0);
    if lease <= m.frequency.0 || lease >= m.drop_time.0 {
        return Err(src.error(
            &key("cluster.lease"),
            "must be longer than cluster.membership.frequency and shorter than drop_time",
        ));
    }
    let r = &c.receiver;
    let address = ip("cluster.receiver.address", &r.address)?;
    let tls = mesh_tls(c, src)?;
    if tls.is_some() && c.key.is_none() {
        // Heartbeats are UDP, outside TLS: they need the key's tag.
        return Err(src.error(
            &key("cluster.tls"),
            "mutual TLS on the mesh needs cluster.key too (for the heartbeats, which are UDP)",
        ));
    }
    // Fail closed (REFERENCE 4.10): reachable beyond this machine only with a key for the
    // heartbeats and mutual TLS for the mesh, or when the operator says so.
    if c.enabled && !c.insecure {
        let open = match &kind {
            MembershipKind::Multicast { bind, .. } if c.key.is_none() && !bind.is_loopback() => {
                Some(("cluster.membership.bind", "cluster.key"))
            }
            _ => None,
        };
        let mesh = (!address.is_loopback() && (c.key.is_none() || tls.is_none()))
            .then_some(("cluster.receiver.address", "cluster.key and [cluster.tls]"));
        if let Some((k, needs)) = open.or(mesh) {
            return Err(src.error(
                &key(k),
                format!(
                    "not a loopback address: a cluster reachable from the network needs \
                     {needs} (`caracal certs` writes the certificates; or \
                     cluster.insecure = true to run it unauthenticated)"
                ),
            ));
        }
    }
    for (k, v) in [
        ("cluster.receiver.max_connections", r.max_connections),
        (
            "cluster.receiver.max_connections_per_source",
            r.max_connections_per_source,
        ),
        ("cluster.max_queue_changes", c.max_queue_changes),
        ("cluster.max_queue_bytes", c.max_queue_bytes),
    ] {
        if v == 0 {
            return Err(src.error(&key(k), "must be greater than 0"));
        }
    }
    for (k, v) in [
        ("cluster.receiver.handshake_timeout", r.handshake_timeout.0),
        ("cluster.receiver.idle_timeout", r.idle_timeout.0),
    ] {
        if v.is_zero() {
            return Err(src.error(&key(k), "must be greater than 0"));
        }
    }
    if r.max_frame_bytes < 1024 {
        return Err(src.error(
            &key("cluster.receiver.max_frame_bytes"),
            "must be at least 1024",
        ));
    }
    Ok(ClusterConfig {
        enabled: c.enabled,
        manager,
        send_mode,
        ack_timeout: c.ack_timeout.0,
        state_transfer_timeout: c.state_transfer_timeout.0,
        require_state_transfer: c.require_state_transfer,
        expire_sessions_on_shutdown: c.expire_sessions_on_shutdown,
        key: key_bytes,
        advertise_http,
        membership: MembershipConfig {
            kind,
            domain: m.domain.clone(),
            frequency: m.frequency.0,
            drop_time: m.drop_time.0,
            verify_timeout: m.verify_timeout.0,
        },
        receiver: ReceiverConfig {
            address,
            port: r.port,
            auto_bind: r.auto_bind.max(1),
            max_frame_bytes: r.max_frame_bytes,
            max_connections: r.max_connections,
            max_connections_per_source: r.max_connections_per_source,
            handshake_timeout: r.handshake_timeout.0,
            idle_timeout: r.idle_timeout.0,
        },
        partition_handling,
        expected_members: c.expected_members,
        lease,
        max_queue_changes: c.max_queue_changes,
        max_queue_bytes: c.max_queue_bytes,
        tls,
    })
}

/// `[cluster.tls]`, loaded now so a bad file is a config error naming its key.
fn mesh_tls(c: &RawCluster, src: &Source) -> Result<Option<MeshTlsConfig>, ConfigError> {
    let Some(t) = &c.tls else { return Ok(None) };
    let base = src.file.parent().unwrap_or(Path::new("."));
    let (cert, keyp, ca) = (
        resolve(base, &t.cert),
        resolve(base, &t.key),
        resolve(base, &t.ca),
    );
    let tls = crate::tls::mesh_tls(&cert, &keyp, &ca).map_err(|e| {
        let k = match &e {
            TlsError::Cert(p, _) if *p == ca => "cluster.tls.ca",
            TlsError::Cert(..) | TlsError::Rustls(..) => "cluster.tls.cert",
            TlsError::Key(..) => "cluster.tls.key",
        };
        src.error(&key(k), e.to_string())
    })?;
    Ok(Some(MeshTlsConfig {
        tls,
        bind_routes: t.bind_routes,
    }))
}
