//! Ownership decided by a majority (REFERENCE 4.9), on loopback: a node cut off in a
//! minority answers 503 and never a stale 200; two-node clusters need the explicit
//! `partition_handling = "available"` to fail over; a copy claiming an ownership its sender
//! cannot have won is dropped and counted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// A formed cluster whose every node holds its lease.
async fn cluster(routes: &[&str], domain: &str, extra: &str) -> (TestBackend, Vec<Node>) {
    let (b, nodes) = start_cluster(routes, domain, extra, |_, c| c).await;
    for n in &nodes {
        n.wait_status(Duration::from_secs(5), "a lease", |s| {
            s["quorum"]["lease"] == true
        })
        .await;
    }
    (b, nodes)
}

/// n2 and n3 stop: n1 is a minority of one. Within its lease it stops serving the session
/// (503 naming the reason) and never answers 200 again until a majority is back; then it
/// serves on, with no write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_in_a_minority_answers_503_never_a_stale_200() {
    let (_b, nodes) = cluster(&["n1", "n2", "n3"], "minority", "").await;
    let s = nodes[0].status().await;
    assert_eq!(s["quorum"]["cluster_size"], 3);
    assert_eq!(s["quorum"]["majority"], 2);
    let r = http(nodes[0].http, get("/count")).await;
    let id = set_cookie_id(&r).unwrap();
    let r = http(nodes[0].http, count(Some(&id))).await;
    assert_eq!(r.json()["n"], 2);

    nodes[1].signal("STOP");
    nodes[2].signal("STOP");
    let stopped = Instant::now();
    // The lease (default: halfway between frequency 200ms and drop_time 1s) runs out.
    let first_503 = loop {
        let r = http(nodes[0].http, count(Some(&id))).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.text().contains("majority"), "{}", r.text());
            break stopped.elapsed();
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(
            stopped.elapsed() < Duration::from_millis(1500),
            "still answering 200 {:?} after the majority stopped",
            stopped.elapsed()
        );
    };
    for _ in 0..10 {
        let r = http(nodes[0].http, count(Some(&id))).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = nodes[0].status().await;
    assert_eq!(s["quorum"]["lease"], false, "{s}");

    nodes[1].signal("CONT");
    nodes[2].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = http(nodes[0].http, count(Some(&id))).await;
        if r.status == StatusCode::OK || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The acked writes were n = 1, 2 and any 200 before the first 503; the session goes
    // on from what a majority held.
    assert!(r.json()["n"].as_u64().unwrap() >= 3, "{}", r.text());
    eprintln!("first 503 after {first_503:?}");
}

/// Two nodes have no majority once one is gone: by default the survivor answers 503 for
/// the dead node's sessions; with `partition_handling = "available"` it takes them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fail_over_only_with_partition_handling_available() {
    for handling in ["quorum", "available"] {
        let extra = format!("partition_handling = \"{handling}\"");
        let (_b, mut nodes) = cluster(&["n1", "n2"], handling, &extra).await;
        let r = http(nodes[0].http, get("/count")).await;
        let id = set_cookie_id(&r).unwrap();
        nodes[0].kill();
        let r = http(nodes[1].http, count(Some(&id))).await;
        if handling == "quorum" {
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
            assert!(r.text().contains("majority"), "{}", r.text());
        } else {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["n"], 2, "{}", r.text());
            assert_eq!(r.json()["node"], "n2");
        }
    }
}

/// A whole copy that claims a newer ownership, sent by a member that is not the owner it
/// names, never replaces the session; it is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_claiming_an_ownership_its_sender_cannot_have_won_is_dropped() {
    let (_b, nodes) = cluster(&["n1", "n2", "n3"], "forged", "").await;
    let r = http(nodes[0].http, get("/count")).await;
    let id = set_cookie_id(&r).unwrap();
    let base = id.split('.').next().unwrap().to_string();
    let before = session_info(nodes[1].admin, &base).await.unwrap();
    let mesh: std::net::SocketAddr = nodes[1].status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let forged = caracal::testing::Change::Full(caracal::testing::FullSession {
        key: u128::from_str_radix(&base, 16).unwrap(),
        owner: "n3".into(),
        epoch: before["epoch"].as_u64().unwrap() + (99 << 16),
        version: 1,
        attrs: r#"{"n":1000}"#.into(),
        max_inactive_ms: 60_000,
        idle_ms: 0,
    });
    // Sent as n1 would, naming n3 as the owner.
    raw_replicate(mesh, "forged", "n1", forged).await;
    let after = session_info(nodes[1].admin, &base).await.unwrap();
    assert_eq!(after["owner"], "n1", "{after}");
    assert_eq!(after["attributes"]["n"], 1, "{after}");
    assert_eq!(after["epoch"], before["epoch"]);
    let m = http(nodes[1].admin, get("/metrics")).await.text();
    assert!(
        m.contains("caracal_replication_not_owner_total 1"),
        "not counted: {}",
        m.lines()
            .filter(|l| l.contains("not_owner"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
