//! DeltaManager replication between real nodes on loopback.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal::testing::Change;
use caracal::testing::State;
use caracal::testing::{encode_mesh, MeshMessage, NodeInfo};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn base(full: &str) -> String {
    full.split('.').next().unwrap().to_string()
}

/// n1..n`n`, formed.
async fn cluster(n: usize, domain: &str, extra: &str) -> (TestBackend, Vec<Node>) {
    let routes: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    start_cluster(&routes, domain, extra, |_, c| c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_changes_are_on_every_member_when_the_response_arrives() {
    let (_b, nodes) = cluster(3, "sync", "").await;
    let n1 = &nodes[0];
    let r = http(
        n1.http,
        reflect(
            "/",
            None,
            &[("x-session-set", r#"{"cart":[1],"user":"al"}"#)],
        ),
    )
    .await;
    let id = set_cookie_id(&r).unwrap();
    let b = base(&id);
    let cookie = format!("JSESSIONID={id}");
    for n in &nodes[1..] {
        let s = session_info(n.admin, &b)
            .await
            .expect("replica after create");
        assert_eq!(s["attributes"], json!({"cart": [1], "user": "al"}));
        assert_eq!(s["owner"], "n1");
        assert_eq!(s["version"], 1);
        assert_eq!(
            s["epoch"],
            session_info(n1.admin, &b).await.unwrap()["epoch"]
        );
    }
    // Delta: set + remove + timeout, visible at once.
    http(
        n1.http,
        reflect(
            "/",
            Some(&cookie),
            &[
                ("x-session-set", r#"{"cart":[1,2]}"#),
                ("x-session-remove", "user"),
                ("x-session-max-inactive", "600"),
            ],
        ),
    )
    .await;
    for n in &nodes[1..] {
        let s = session_info(n.admin, &b).await.unwrap();
        assert_eq!(s["attributes"], json!({"cart": [1, 2]}));
        assert_eq!(s["version"], 2);
        assert_eq!(s["max_inactive_ms"], 600_000);
    }
    // Renew: old id gone everywhere, new id everywhere, data kept.
    let r = http(
        n1.http,
        reflect("/", Some(&cookie), &[("x-session-renew", "true")]),
    )
    .await;
    let id2 = set_cookie_id(&r).unwrap();
    for n in &nodes {
        assert!(
            session_info(n.admin, &b).await.is_none(),
            "old id alive on a node"
        );
        let s = session_info(n.admin, &base(&id2))
            .await
            .expect("renewed id on every node");
        assert_eq!(s["attributes"], json!({"cart": [1, 2]}));
    }
    // Invalidate: gone everywhere.
    http(
        n1.http,
        reflect(
            "/",
            Some(&format!("JSESSIONID={id2}")),
            &[("x-session-invalidate", "true")],
        ),
    )
    .await;
    for n in &nodes {
        assert!(session_info(n.admin, &base(&id2)).await.is_none());
        assert_eq!(n.status().await["sessions"]["total"], 0);
    }
    let m = http(n1.admin, get("/metrics")).await.text();
    assert!(m.contains("caracal_replication_acks_total"), "{m}");
    assert!(
        m.contains("caracal_replication_unreplicated_writes_total 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_converges() {
    let (_b, nodes) = cluster(2, "async", "send_options = 8").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = http(
            nodes[0].http,
            reflect("/", None, &[("x-session-set", &format!(r#"{{"i":{i}}}"#))]),
        )
        .await;
        ids.push(base(&set_cookie_id(&r).unwrap()));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for (i, b) in ids.iter().enumerate() {
        loop {
            if let Some(s) = session_info(nodes[1].admin, b).await {
                assert_eq!(s["attributes"], json!({ "i": i }));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "async replication did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A raw mesh client of the test's own: replays old changes at a node.
async fn send_raw_changes(mesh: std::net::SocketAddr, changes: Vec<Change>) -> Vec<u128> {
    let stream = tokio::net::TcpStream::connect(mesh).await.unwrap();
    let codec = caracal::testing::mesh_codec(1 << 20);
    let mut f = tokio_util::codec::Framed::new(stream, codec);
    let me = NodeInfo {
        node_id: 99,
        jvm_route: "zombie".into(),
        mesh_addr: "127.0.0.1:9".parse().unwrap(),
        http_addr: "127.0.0.1:9".parse().unwrap(),
        state: State::Ready,
        alive_ms: 1,
    };
    let hello = MeshMessage::Hello {
        domain: "late".into(),
        from: me,
    };
    f.send(Bytes::from(encode_mesh(&hello))).await.unwrap();
    let msg = MeshMessage::Replicate {
        seq: 1,
        changes: changes.into_iter().map(std::sync::Arc::new).collect(),
    };
    f.send(Bytes::from(encode_mesh(&msg))).await.unwrap();
    let frame = f.next().await.unwrap().unwrap();
    match caracal::testing::decode_mesh(&frame).unwrap() {
        MeshMessage::Ack {
            seq: 1, need_full, ..
        } => need_full,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_removes_everywhere_and_a_late_delta_cannot_resurrect() {
    let (_b, nodes) = cluster(2, "late", "").await;
    let r = http(
        nodes[0].http,
        reflect("/", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let id = set_cookie_id(&r).unwrap();
    let b = base(&id);
    let key = u128::from_str_radix(&b, 16).unwrap();
    http(
        nodes[0].http,
        reflect(
            "/",
            Some(&format!("JSESSIONID={id}")),
            &[("x-session-invalidate", "true")],
        ),
    )
    .await;
    assert!(session_info(nodes[1].admin, &b).await.is_none());
    // Late and replayed changes from before the invalidation.
    let mesh: std::net::SocketAddr = nodes[1].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let late = vec![
        Change::Delta {
            key,
            epoch: 1,
            version: 2,
            set: Some(r#"{"b":2}"#.into()),
            remove: vec![],
            max_inactive_ms: None,
        },
        Change::Touch {
            key,
            epoch: 1,
            version: 1,
        },
        Change::Full(caracal::testing::FullSession {
            key,
            owner: "n1".into(),
            epoch: 1,
            version: 1,
            attrs: r#"{"a":1}"#.into(),
            max_inactive_ms: 60_000,
            idle_ms: 0,
        }),
    ];
    let need_full = send_raw_changes(mesh, late).await;
    assert!(
        need_full.is_empty(),
        "a tombstoned session asked for a full copy: {need_full:?}"
    );
    assert!(
        session_info(nodes[1].admin, &b).await.is_none(),
        "resurrected"
    );
}

async fn fill(addr: std::net::SocketAddr, n: usize, tasks: usize) -> usize {
    let per = n / tasks;
    let mut handles = Vec::new();
    for t in 0..tasks {
        handles.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(addr).await;
            let mut made = 0;
            for i in 0..per {
                let set = format!(r#"{{"t":{t},"i":{i}}}"#);
                let r = c.send(reflect("/", None, &[("x-session-set", &set)])).await;
                assert_eq!(r.status, StatusCode::OK);
                made += usize::from(set_cookie_id(&r).is_some());
            }
            made
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_10k_sessions_before_it_is_ready() {
    let b = TestBackend::start("b").await;
    let port = mcast_port();
    let conf = |r: &str| cluster_node(r, &b.url(), port, "transfer", "");
    let n1 = Node::start(&conf("n1")).await;
    assert_eq!(fill(n1.http, 10_000, 8).await, 10_000);
    assert_eq!(n1.status().await["sessions"]["total"], 10_000);
    let n3 = Node::start(&conf("n3")).await;
    // Ready means the transfer finished: the sessions were there before /ready said 200.
    let s = n3.status().await;
    assert_eq!(s["sessions"]["total"], 10_000, "{}", s["sessions"]);
    assert_eq!(s["sessions"]["replica"], 10_000);
    let log = n3.log_text();
    let transfer = log
        .find("state transfer complete")
        .expect("no transfer logged");
    let ready = log.find("node ready").unwrap();
    assert!(transfer < ready, "ready before the transfer completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_together_both_complete_the_transfer() {
    let b = TestBackend::start("b").await;
    let port = mcast_port();
    let conf = |r: &str| cluster_node(r, &b.url(), port, "together", "");
    let n1 = Node::start(&conf("n1")).await;
    assert_eq!(fill(n1.http, 500, 4).await, 500);
    let joiners = Node::start_all(&[conf("n2"), conf("n3")]).await;
    for j in &joiners {
        assert_eq!(j.status().await["sessions"]["total"], 500);
        assert!(j.log_text().contains("state transfer complete"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_under_sync_load_costs_at_most_ack_timeout() {
    let (_b, mut nodes) = cluster(3, "killsync", "ack_timeout = \"400ms\"").await;
    let addr = nodes[0].http;
    let mut n3 = nodes.pop().unwrap();
    let load = tokio::spawn(async move {
        let mut c = KeepAlive::connect(addr).await;
        let r = c
            .send(reflect("/", None, &[("x-session-set", r#"{"n":0}"#)]))
            .await;
        let cookie = format!("JSESSIONID={}", set_cookie_id(&r).unwrap());
        let mut worst = Duration::ZERO;
        let mut count = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(4) && count < 20_000 {
            let t = Instant::now();
            let r = c
                .send(reflect(
                    "/",
                    Some(&cookie),
                    &[("x-session-set", &format!(r#"{{"n":{count}}}"#))],
                ))
                .await;
            assert_eq!(r.status, StatusCode::OK);
            worst = worst.max(t.elapsed());
            count += 1;
        }
        (worst, count)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    n3.kill();
    let res = load.await;
    if res.is_err() {
        eprintln!("n1 log:\n{}", nodes[0].log_text());
    }
    let (worst, count) = res.unwrap();
    assert!(count > 50, "only {count} writes");
    assert!(
        worst < Duration::from_millis(400 + 600),
        "a response took {worst:?}"
    );
    nodes[0]
        .wait_status(Duration::from_secs(3), "n3 dropped", |s| {
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["jvm_route"] != "n3")
        })
        .await;
    // n2 still has every change.
    assert_eq!(nodes[1].status().await["sessions"]["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mesh_frames_close_that_connection_only() {
    let (_b, nodes) = cluster(2, "frames", "").await;
    let mesh: std::net::SocketAddr = nodes[0].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Oversized (length prefix past max_frame_bytes), garbage payload, wrong version,
    // truncated frame then EOF.
    let shapes: Vec<Vec<u8>> = vec![
        vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
        [
            &[0, 0, 0, 5][..],
            &[caracal::testing::MESH_VERSION, 0, 0xff, 0xff, 0xff],
        ]
        .concat(),
        [&[0, 0, 0, 3][..], &[9, 9, 9]].concat(),
        [&[0, 0, 0, 100][..], &[1, 2, 3]].concat(),
    ];
    for s in shapes {
        let mut c = tokio::net::TcpStream::connect(mesh).await.unwrap();
        c.write_all(&s).await.unwrap();
        if s.len() < 104 && s[3] == 100 {
            c.shutdown().await.unwrap();
        }
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut c, &mut buf),
        )
        .await
        .expect("connection left open")
        .unwrap_or(0);
        assert_eq!(n, 0, "got an answer to a bad frame");
    }
    let m = http(nodes[0].admin, get("/metrics")).await.text();
    for reason in ["oversized", "malformed", "version"] {
        assert!(
            m.contains(&format!(
                "caracal_mesh_frames_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {m}"
        );
    }
    // Replication between the members still works.
    let r = http(
        nodes[0].http,
        reflect("/", None, &[("x-session-set", r#"{"ok":1}"#)]),
    )
    .await;
    let b = base(&set_cookie_id(&r).unwrap());
    assert!(session_info(nodes[1].admin, &b).await.is_some());
    assert_eq!(
        nodes[0].status().await["members"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_shutdown_unless_expire_sessions_on_shutdown() {
    let b = TestBackend::start("b").await;
    let port = mcast_port();
    let keep = cluster_node("k1", &b.url(), port, "shutdown", "");
    let end = cluster_node(
        "e1",
        &b.url(),
        port,
        "shutdown",
        "expire_sessions_on_shutdown = true",
    );
    let n2 = cluster_node("k2", &b.url(), port, "shutdown", "");
    let mut nodes = Node::start_all(&[keep, end, n2]).await;
    for n in &nodes {
        n.wait_status(Duration::from_secs(3), "formed", |s| {
            s["members"].as_array().unwrap().len() == 2
        })
        .await;
    }
    let mk = |addr| async move {
        let r = http(addr, reflect("/", None, &[("x-session-set", "{}")])).await;
        base(&set_cookie_id(&r).unwrap())
    };
    let kept = mk(nodes[0].http).await;
    let ended = mk(nodes[1].http).await;
    let survivor = nodes.pop().unwrap();
    // e1 first: k1, leaving after it, hands `kept` to the survivor (a session handed to e1
    // would be e1's, and end with it).
    for mut n in nodes.into_iter().rev() {
        n.signal("TERM");
        tokio::task::spawn_blocking(move || {
            assert!(n.wait_exit(Duration::from_secs(10)).success())
        })
        .await
        .unwrap();
    }
    // REFERENCE 4.8: sessions stay alive on the other members by default...
    assert!(session_info(survivor.admin, &kept).await.is_some());
    // ...and end with their owner when it asks for that.
    assert!(session_info(survivor.admin, &ended).await.is_none());
}

/// A member dropped while alive (paused past drop_time) misses changes; when it is heard
/// again, the owner resyncs it without waiting for the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_from_a_pause_is_resynced() {
    // Two nodes: writing while the other is away needs the explicit trade-off (REFERENCE 4.9).
    let extra = "ack_timeout = \"300ms\"\npartition_handling = \"available\"";
    let (_b, nodes) = cluster(2, "resync", extra).await;
    let r = http(
        nodes[0].http,
        reflect("/", None, &[("x-session-set", r#"{"v":1}"#)]),
    )
    .await;
    let id = set_cookie_id(&r).unwrap();
    let b = base(&id);
    nodes[1].signal("STOP");
    nodes[0]
        .wait_status(Duration::from_secs(5), "n2 dropped", |s| {
            s["members"].as_array().unwrap().is_empty()
        })
        .await;
    // Changed while n2 is out of the cluster.
    http(
        nodes[0].http,
        reflect(
            "/",
            Some(&format!("JSESSIONID={id}")),
            &[("x-session-set", r#"{"v":2}"#)],
        ),
    )
    .await;
    nodes[1].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = session_info(nodes[1].admin, &b).await.unwrap();
        if s["attributes"]["v"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not resynced: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nodes[0].wait_log("resynced", Duration::from_secs(2)).await);
}

/// With `[cluster] key`, mesh frames carry an HMAC tag: the members replicate as usual,
/// and a frame without the tag, or with a tag of another key, is dropped with its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_the_mesh_refuses_frames_it_cannot_authenticate() {
    use caracal::testing::seal_mesh;
    use caracal::testing::ClusterKey as Key;
    use caracal::testing::FullSession;
    let (_b, nodes) = cluster(2, "keyed", "key = \"mesh-secret-0123456789\"").await;
    let r = http(
        nodes[0].http,
        reflect("/", None, &[("x-session-set", r#"{"a":1}"#)]),
    )
    .await;
    let b = base(&set_cookie_id(&r).unwrap());
    assert!(
        session_info(nodes[1].admin, &b).await.is_some(),
        "keyed replication failed"
    );

    let mesh: std::net::SocketAddr = nodes[1].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let forged_key = u128::MAX - 5;
    let forged = MeshMessage::Replicate {
        seq: 1,
        changes: vec![std::sync::Arc::new(Change::Full(FullSession {
            key: forged_key,
            owner: "n1".into(),
            epoch: 9,
            version: 9,
            attrs: r#"{"admin":true}"#.into(),
            max_inactive_ms: 60_000,
            idle_ms: 0,
        }))],
    };
    let wrong = Key::new(b"not-the-cluster-secret");
    for frame in [encode_mesh(&forged), seal_mesh(&forged, Some(&wrong))] {
        let stream = tokio::net::TcpStream::connect(mesh).await.unwrap();
        let mut f = tokio_util::codec::Framed::new(stream, caracal::testing::mesh_codec(1 << 20));
        f.send(Bytes::from(frame)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(3), f.next())
            .await
            .expect("left open");
        assert!(
            answer.is_none() || answer.unwrap().is_err(),
            "a forged frame was answered"
        );
    }
    let forged_base = format!("{forged_key:032X}");
    assert!(
        session_info(nodes[1].admin, &forged_base).await.is_none(),
        "forged session applied"
    );
    let m = http(nodes[1].admin, get("/metrics")).await.text();
    for reason in ["missing_tag", "bad_tag"] {
        assert!(
            m.contains(&format!(
                "caracal_mesh_frames_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {m}"
        );
    }
}

/// A ready member that never answers the state request (heartbeats from the test itself,
/// announcing a mesh port that answers pings, so it is admitted, and nothing else): the
/// joiner gives up after
/// `state_transfer_timeout`, then starts anyway, or exits non-zero with
/// `require_state_transfer = true` (REFERENCE 4.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_transfer_timeout_starts_anyway_or_exits_when_required() {
    use caracal::testing::{encode_heartbeat, Heartbeat};
    let port = mcast_port();
    use caracal::testing::{decode_mesh, encode_mesh, MeshMessage};
    use futures_util::{SinkExt, StreamExt};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let ghost_info = NodeInfo {
        node_id: 4242,
        jvm_route: "ghost".into(),
        mesh_addr: silent_addr,
        http_addr: silent_addr,
        state: State::Ready,
        alive_ms: 1_000_000,
    };
    let info = ghost_info.clone();
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            let info = info.clone();
            tokio::spawn(async move {
                let mut f =
                    tokio_util::codec::Framed::new(s, caracal::testing::mesh_codec(1 << 20));
                while let Some(Ok(frame)) = f.next().await {
                    // Pings are answered (admission, verification); a state request is
                    // not: the connection stays open and silent.
                    if let Ok(MeshMessage::Ping { .. }) = decode_mesh(&frame) {
                        let pong = MeshMessage::Pong { from: info.clone() };
                        let _ = f.send(bytes::Bytes::from(encode_mesh(&pong))).await;
                    }
                }
            });
        }
    });
    let group = std::net::Ipv4Addr::new(228, 0, 0, 4);
    let sock =
        caracal::testing::multicast_socket(group, port, std::net::Ipv4Addr::LOCALHOST, 0).unwrap();
    let ghost = tokio::spawn(async move {
        for seq in 1..=600u64 {
            let hb = Heartbeat {
                domain: "ghost".into(),
                info: ghost_info.clone(),
                seq,
                sent_unix_ms: 0,
            };
            let _ = sock
                .send_to(&encode_heartbeat(&hb, None), (group, port))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let b = TestBackend::start("b").await;
    let conf = |route: &str, required: bool| {
        cluster_node(
            route,
            &b.url(),
            port,
            "ghost",
            &format!("state_transfer_timeout = \"1s\"\nrequire_state_transfer = {required}"),
        )
    };
    let required = conf("r1", true);
    let (code, err) =
        tokio::task::spawn_blocking(move || Node::run_to_exit(&required, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("state transfer timed out") && err.contains("require_state_transfer"),
        "{err}"
    );

    let t = Instant::now();
    let n = Node::start(&conf("r2", false)).await;
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "did not wait for the transfer"
    );
    assert!(n.log_text().contains("starting anyway"), "{}", n.log_text());
    assert_eq!(n.status().await["node"]["state"], "ready");
    ghost.abort();
    accept.abort();
}
