//! Floods before authentication stay bounded (REFERENCE 4.10): a thousand half-open mesh
//! connections and eighty thousand spoofed heartbeats from random ids leave the node's
//! memory and `/metrics` within a stated bound, create no member, and the node serves and
//! replicates meanwhile and after.
//!
//! The bound: +20 MiB of resident memory over the node's own after warm-up; `/metrics`
//! under 64 KiB (it is ~12 KiB for a two-node cluster).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use caracal::testing::State;
use caracal::testing::{encode_heartbeat, Heartbeat, NodeInfo};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const RSS_BOUND_KB: u64 = 20 * 1024;
const METRICS_BOUND: usize = 64 * 1024;

async fn mesh_of(node: &Node) -> SocketAddr {
    node.status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A session made at `a` is on `b` (replication works).
async fn replicates(a: &Node, b: &Node, what: &str) {
    let r = http(
        a.http,
        reflect(
            "/",
            None,
            &[("x-session-set", &format!("{{\"w\":\"{what}\"}}"))],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let id = set_cookie_id(&r).expect("a session");
    let base = id.split('.').next().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = session_info(b.admin, &base).await {
            assert_eq!(s["attributes"]["w"], what);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node serves, its `/metrics` stays small, its memory within the bound of `base_kb`.
async fn still_bounded(node: &Node, base_kb: u64, when: &str) -> u64 {
    let r = http(node.http, get("/")).await;
    assert_eq!(r.status, 200, "{when}: {}", r.text());
    let m = http(node.admin, get("/metrics")).await.text();
    assert!(
        m.len() < METRICS_BOUND,
        "{when}: /metrics is {} bytes",
        m.len()
    );
    let rss = rss_kb(node.pid());
    assert!(
        rss < base_kb + RSS_BOUND_KB,
        "{when}: RSS {rss} KiB, from {base_kb} KiB"
    );
    eprintln!(
        "{when}: RSS {rss} KiB (+{} KiB), /metrics {} bytes",
        rss.saturating_sub(base_kb),
        m.len()
    );
    rss
}

/// A connection from `127.0.0.<src>` that announces a 4000-byte first frame and sends a
/// quarter of it: half-open, holding whatever the node buffers for it.
async fn half_open(mesh: SocketAddr, src: u8) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, src), 0)))
        .ok()?;
    let mut c = s.connect(mesh).await.ok()?;
    c.write_all(&4000u32.to_be_bytes()).await.ok()?;
    c.write_all(&[0x5a; 1000]).await.ok()?;
    Some(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_mesh_connections_stay_bounded() {
    // The last section of a node's conf is [cluster.receiver].
    let (_b, nodes) = keyed_cluster(
        &["n1", "n2"],
        "flood-conns",
        "a-flood-test-cluster-key-0123",
        None,
        |_, c| c + "handshake_timeout = \"2s\"\n",
    )
    .await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    replicates(n1, n2, "before").await;
    let base = rss_kb(n1.pid());
    let mesh = mesh_of(n1).await;

    // 1000 connections from 32 addresses, 32 each at most (the per-source cap): the total
    // cap (256) is what holds.
    let mut held = Vec::new();
    for i in 0..1000u32 {
        let src = 2 + (i % 32) as u8;
        if let Some(c) = half_open(mesh, src).await {
            held.push(c);
        }
    }
    still_bounded(n1, base, "1000 half-open connections").await;
    let m = http(n1.admin, get("/metrics")).await.text();
    let over = mesh_rejected(&m, "over_limit");
    assert!(
        over >= 1000 - 256 - 16,
        "the total cap did not hold: {over} closed over the limit"
    );

    // Past the handshake timeout every one is closed and counted; the members replicate
    // again (their connections were refused meanwhile, and are opened again).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = http(n1.admin, get("/metrics")).await.text();
        if mesh_rejected(&m, "handshake_timeout") >= 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not timed out: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    replicates(n1, n2, "after").await;
    replicates(n2, n1, "back").await;
    still_bounded(n1, base, "after the flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_heartbeats_from_random_ids_make_no_member() {
    // No key (loopback): the case where heartbeats prove nothing.
    let (_b, nodes) = start_cluster(&["n1", "n2"], "flood-hb", "", |_, c| c).await;
    let port = mcast_port_of(&nodes[0]);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    replicates(n1, n2, "before").await;
    let base = rss_kb(n1.pid());
    let n2_route = "n2";

    let group = Ipv4Addr::new(228, 0, 0, 4);
    let sock = caracal::testing::multicast_socket(group, port, Ipv4Addr::LOCALHOST, 0).unwrap();
    // A port nobody listens on: the admission ping of a spoofed id is refused at once.
    let nowhere = closed_port();
    let mut sent = 0u64;
    for batch in 0..800u64 {
        for j in 0..100u64 {
            let id = fastrand::u64(..);
            // Random routes, and now and then a `leaving` for the real n2 (another id).
            let (route, state) = if j == 0 {
                (n2_route.to_string(), State::Leaving)
            } else {
                (format!("r{id:x}"), State::Ready)
            };
            let hb = Heartbeat {
                domain: "flood-hb".into(),
                info: NodeInfo {
                    node_id: id,
                    jvm_route: route,
                    mesh_addr: nowhere,
                    http_addr: nowhere,
                    state,
                    alive_ms: 1,
                },
                seq: 1,
                sent_unix_ms: 0,
            };
            if sock
                .send_to(&encode_heartbeat(&hb, None), (group, port))
                .await
                .is_ok()
            {
                sent += 1;
            }
        }
        // ~10 000 a second: what the node can read, so most are really looked at.
        tokio::time::sleep(Duration::from_millis(10)).await;
        if batch == 400 {
            still_bounded(n1, base, "40k spoofed heartbeats").await;
        }
    }
    assert!(sent >= 79_000, "only {sent} sent");
    still_bounded(n1, base, "80k spoofed heartbeats").await;
    let s = n1.status().await;
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["jvm_route"], n2_route);
    let m = http(n1.admin, get("/metrics")).await.text();
    let refused: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("caracal_heartbeats_rejected_total{reason=\"not_admitted\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1000, "admission refusals counted: {refused}");
    replicates(n1, n2, "after").await;
}
