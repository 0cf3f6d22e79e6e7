//! The mesh receiver is bounded before authentication (REFERENCE 4.10): a connection that
//! says nothing, announces a large first frame, begins with anything but `Hello`/`Ping`, or
//! is one too many from its source is closed and counted; an authenticated one that goes
//! idle is closed too; and the members still replicate (a replication connection the
//! receiver closed for idleness is opened again without a failure).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal::testing::{encode_mesh, MeshMessage};
use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from 127.0.0.2: the members' own connections come from 127.0.0.1, so the
/// per-source cap is this test's alone.
async fn connect_from_2(mesh: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    s.connect(mesh).await.unwrap()
}

/// How long until the node closes `c` (reads EOF or an error), at most `limit`.
async fn closed_after(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), c.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_is_bounded_before_authentication() {
    // Appended to each node's last section, [cluster.receiver].
    let limits = "handshake_timeout = \"400ms\"\nidle_timeout = \"1s\"\n\
                  max_connections_per_source = 3\n";
    let (_b, nodes) = start_cluster(&["n1", "n2"], "limits", "", |_, c| c + limits).await;
    let mesh: SocketAddr = nodes[0].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Silent: closed at the handshake timeout, not before.
    let mut c = connect_from_2(mesh).await;
    let t = closed_after(&mut c, Duration::from_secs(3))
        .await
        .expect("a silent connection was left open");
    assert!(t >= Duration::from_millis(300), "closed too early: {t:?}");

    // A first frame announced at 1 MiB (under max_frame_bytes): refused on its header.
    let mut c = connect_from_2(mesh).await;
    c.write_all(&[0, 0x10, 0, 0]).await.unwrap();
    c.write_all(&[0u8; 512]).await.unwrap();
    assert!(closed_after(&mut c, Duration::from_secs(3)).await.is_some());

    // A well-formed frame, but not one that opens a connection.
    let mut c = connect_from_2(mesh).await;
    let claim = MeshMessage::StateRequest {
        domain: "limits".into(),
        from: stranger("stranger"),
    };
    let mut f = tokio_util::codec::Framed::new(c, caracal::testing::mesh_codec(1 << 20));
    f.send(Bytes::from(encode_mesh(&claim))).await.unwrap();
    c = f.into_inner();
    assert!(closed_after(&mut c, Duration::from_secs(3)).await.is_some());

    // Three silent connections take this source's places; a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from_2(mesh).await);
    }
    let mut extra = connect_from_2(mesh).await;
    let t = closed_after(&mut extra, Duration::from_secs(3))
        .await
        .expect("a connection past the per-source cap was left open");
    assert!(t < Duration::from_millis(300), "not refused at once: {t:?}");
    // They time out and give their places back.
    for c in &mut held {
        assert!(closed_after(c, Duration::from_secs(3)).await.is_some());
    }
    let mut again = connect_from_2(mesh).await;
    let t = closed_after(&mut again, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        t >= Duration::from_millis(300),
        "places not given back: {t:?}"
    );

    // A ping opens a connection; silent after it, the connection is closed as idle.
    let ping = MeshMessage::Ping {
        domain: "limits".into(),
        from: stranger("stranger"),
    };
    let mut f = tokio_util::codec::Framed::new(
        connect_from_2(mesh).await,
        caracal::testing::mesh_codec(1 << 20),
    );
    f.send(Bytes::from(encode_mesh(&ping))).await.unwrap();
    let mut c = f.into_inner();
    let t = closed_after(&mut c, Duration::from_secs(5))
        .await
        .expect("an idle connection was left open");
    assert!(
        t >= Duration::from_millis(800),
        "idle close too early: {t:?}"
    );

    let m = http(nodes[0].admin, get("/metrics")).await.text();
    for (reason, at_least) in [
        ("handshake_timeout", 4),
        ("oversized", 1),
        ("unauthenticated", 1),
        ("over_limit", 1),
        ("idle", 1),
    ] {
        let n = mesh_rejected(&m, reason);
        assert!(n >= at_least, "{reason}: {n} < {at_least}\n{m}");
    }

    // The members' replication connections went idle past 1 s too: writes still reach
    // the other member in sync mode, with no unreplicated write.
    for _ in 0..3 {
        let r = http(
            nodes[0].http,
            reflect("/", None, &[("x-session-set", r#"{"after":"idle"}"#)]),
        )
        .await;
        let id = set_cookie_id(&r).expect("a session");
        let base = id.split('.').next().unwrap().to_string();
        assert!(session_info(nodes[1].admin, &base).await.is_some());
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let m = http(nodes[0].admin, get("/metrics")).await.text();
    assert!(
        m.contains("caracal_replication_unreplicated_writes_total 0"),
        "{m}"
    );
}

fn metric(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A member that stalls (SIGSTOP) but stays a member: its queue stops at
/// `max_queue_changes`, the changes past it are counted, and once it runs again and the
/// queue drains it gets every session, the dropped ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_members_queue_is_capped_then_resynced() {
    // A stalled member stays a member: drop_time far beyond the test.
    let (_b, nodes) = start_cluster(
        &["n1", "n2"],
        "queue-cap",
        "send_options = \"async\"\npartition_handling = \"available\"\nmax_queue_changes = 20",
        |_, c| c.replace("drop_time = \"1s\"", "drop_time = \"30s\""),
    )
    .await;
    nodes[1].signal("STOP");
    let mut bases = Vec::new();
    for i in 0..60 {
        let r = http(
            nodes[0].http,
            reflect("/", None, &[("x-session-set", &format!(r#"{{"i":{i}}}"#))]),
        )
        .await;
        let id = set_cookie_id(&r).expect("a session");
        bases.push(id.split('.').next().unwrap().to_string());
    }
    let m = http(nodes[0].admin, get("/metrics")).await.text();
    let depth = metric(&m, "caracal_replication_queue_depth{peer=\"n2\"} ");
    let over = metric(
        &m,
        "caracal_replication_queue_overflows_total{peer=\"n2\"} ",
    );
    assert!(depth <= 20, "queue past its cap: {depth}\n{m}");
    assert!(over >= 30, "overflows not counted: {over}\n{m}");
    assert_eq!(
        nodes[0].status().await["members"].as_array().unwrap().len(),
        1,
        "n2 is still a member (only stalled)"
    );
    nodes[1].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in &bases {
        while session_info(nodes[1].admin, base).await.is_none() {
            assert!(Instant::now() < deadline, "session {base} never reached n2");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(nodes[0].wait_log("resyncing", Duration::from_secs(2)).await);
}
