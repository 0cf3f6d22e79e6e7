//! Sticky routing across nodes and failover.

mod common;

use std::time::Duration;

use caracal::testing::successor;
use common::*;
use http::StatusCode;
use serde_json::Value;

async fn owners(nodes: &[&Node], base: &str) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for n in nodes {
        let s = session_info(n.admin, base)
            .await
            .expect("session on every live node");
        v.push((
            s["owner"].as_str().unwrap().to_string(),
            s["epoch"].as_u64().unwrap(),
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_of_node1_arriving_at_node2_is_served_by_node1() {
    let (_b, nodes) = three("sticky", "").await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    assert!(id.ends_with(".n1"));
    for n in &nodes[1..] {
        let r = http(n.http, count(Some(&id))).await;
        assert_eq!(r.status, StatusCode::OK);
        let j = r.json();
        assert_eq!(j["node"], "n1", "served by {}", j["node"]);
        assert!(
            r.header("set-cookie").is_none(),
            "cookie changed while the owner lives"
        );
    }
    let r = http(nodes[0].http, count(Some(&id))).await;
    assert_eq!(r.json()["n"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_owner_hands_the_session_to_the_deterministic_successor() {
    let (_b, mut nodes) = three("failover", "").await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    let base = id.split('.').next().unwrap().to_string();
    for _ in 0..2 {
        http(nodes[1].http, count(Some(&id))).await;
    }
    let succ = successor(&base, ["n2", "n3"]).unwrap().to_string();
    let epoch0 = owners(&[&nodes[1]], &base).await[0].1;
    let mut n1 = nodes.remove(0);
    n1.kill();

    // Right away, with no wait for drop_time: the client retries on the next node.
    let r = http(nodes[0].http, count(Some(&id))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert_eq!(j["n"], 4, "counter did not continue: {j}");
    assert_eq!(j["node"], succ.as_str());
    assert_eq!(j["original"], id.as_str(), "X-Session-Original-Id");
    let new_id = set_cookie_id(&r).expect("cookie rewritten (JvmRouteBinder)");
    assert_eq!(new_id, format!("{base}.{succ}"));
    // The same cookie at the other node reaches the same owner.
    let r = http(nodes[1].http, count(Some(&id))).await;
    assert_eq!(r.json()["node"], succ.as_str());
    assert_eq!(r.json()["n"], 5);
    let seen = owners(&[&nodes[0], &nodes[1]], &base).await;
    assert!(
        seen.iter()
            .all(|(o, e)| *o == succ && *e > epoch0 && *e == seen[0].1),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_after_a_kill_make_one_owner_and_lose_nothing() {
    let (_b, mut nodes) = three("parallel", "").await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    let base = id.split('.').next().unwrap().to_string();
    let epoch0 = owners(&[&nodes[1]], &base).await[0].1;
    let mut n1 = nodes.remove(0);
    n1.kill();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = nodes[i % 2].http;
        let cookie = format!("JSESSIONID={id}");
        tasks.push(tokio::spawn(async move {
            let set = format!("{{\"k{i}\":{i}}}");
            http(
                addr,
                reflect("/", Some(&cookie), &[("x-session-set", &set)]),
            )
            .await
        }));
    }
    let mut served_by = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        served_by.insert(
            r.json()["headers"]["x-session-node"][0]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        served_by.len(),
        1,
        "more than one owner served: {served_by:?}"
    );
    let seen = owners(&[&nodes[0], &nodes[1]], &base).await;
    assert_eq!(seen[0], seen[1], "nodes disagree on the owner");
    let raised = caracal::testing::next_epoch(epoch0, caracal::testing::epoch_tag(&seen[0].0));
    assert_eq!(seen[0].1, raised, "epoch raised once");
    let info = session_info(nodes[0].admin, &base).await.unwrap();
    let attrs = info["attributes"].as_object().unwrap();
    for i in 0..20 {
        assert!(attrs.contains_key(&format!("k{i}")), "lost k{i}: {attrs:?}");
    }
    assert_eq!(attrs["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_forwards_its_old_cookies_to_the_new_owner() {
    let (_b, mut nodes) = three("restart", "").await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    let base = id.split('.').next().unwrap().to_string();
    let mut n1 = nodes.remove(0);
    n1.kill();
    let r = http(nodes[0].http, count(Some(&id))).await;
    let succ = r.json()["node"].as_str().unwrap().to_string();
    assert_ne!(succ, "n1");
    // n1 comes back with the same route and receives the cluster's sessions.
    let n1b = Node::start(&n1.conf_text()).await;
    let copy = session_info(n1b.admin, &base).await.expect("transferred");
    assert_eq!(copy["owner"], succ.as_str());
    // The old cookie, at the restarted node: forwarded to the owner, never served stale.
    let r = http(n1b.http, count(Some(&id))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["node"], succ.as_str());
    assert_eq!(r.json()["n"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_binder_the_cookie_stays_and_the_successor_serves() {
    let (_b, mut nodes) = start_cluster(&["n1", "n2", "n3"], "nobinder", "", |_, c| {
        c + "[jvm_route_binder]\nenabled = false\n"
    })
    .await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    let mut n1 = nodes.remove(0);
    n1.kill();
    let r = http(nodes[0].http, count(Some(&id))).await;
    assert_eq!(r.json()["n"], 2);
    assert!(r.header("set-cookie").is_none());
    assert_eq!(r.json()["original"], Value::Null);
}

/// A paused-then-resumed owner (SIGSTOP) is taken over; its writes after SIGCONT carry the
/// old epoch and are rejected by the members that saw the takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_zombie_owner_cannot_overwrite_the_new_owner() {
    let (_b, nodes) = three("zombie", "").await;
    let r = http(nodes[0].http, count(None)).await;
    let id = set_cookie_id(&r).unwrap();
    let base = id.split('.').next().unwrap().to_string();
    let epoch0 = owners(&[&nodes[1]], &base).await[0].1;
    nodes[0].signal("STOP");
    // The next request on n2 verifies n1 (no answer: stopped) and fails over.
    let r = http(nodes[1].http, count(Some(&id))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let succ = r.json()["node"].as_str().unwrap().to_string();
    assert_ne!(succ, "n1");
    nodes[0].signal("CONT");
    let live = if succ == "n2" { &nodes[1] } else { &nodes[2] };
    // After SIGCONT the old owner either still believes it owns the session (its write
    // then carries epoch 1 and is fenced) or has already received the takeover (if it was
    // queued to its socket while it was stopped) and forwards to the new owner.
    let r = http(nodes[0].http, count(Some(&id))).await;
    let info = session_info(live.admin, &base).await.unwrap();
    assert_eq!(info["owner"], succ.as_str());
    assert!(info["epoch"].as_u64().unwrap() > epoch0, "{info}");
    if r.status == StatusCode::OK {
        // Heard of the takeover: forwarded to the new owner, which counted the visit.
        assert_eq!(r.json()["node"], succ.as_str(), "{}", r.text());
        assert_eq!(info["attributes"]["n"], 3);
    } else {
        // Its lease lapsed in the pause (or, served from its stale copy, the members
        // fenced its write): 503, never a 200 for a write that did not count.
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(
            r.text().contains("moved") || r.text().contains("majority"),
            "{}",
            r.text()
        );
        if r.text().contains("moved") {
            assert_eq!(info["attributes"]["n"], 2, "zombie write applied: {info}");
        } else {
            // "No majority" is an outcome the client cannot know (like a timeout): the
            // new owner may have counted the visit, but never from the stale copy.
            assert!(
                [2, 3].contains(&info["attributes"]["n"].as_u64().unwrap()),
                "{info}"
            );
        }
    }
    // Deterministically: a change of the old epoch sent straight to the new owner.
    let before = fenced_total(&nodes[1..]).await;
    let key = u128::from_str_radix(&base, 16).unwrap();
    let mesh: std::net::SocketAddr = live.status().await["node"]["mesh_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let stale = caracal::testing::Change::Delta {
        key,
        epoch: 1,
        version: 99,
        set: Some(r#"{"n":1000}"#.into()),
        remove: vec![],
        max_inactive_ms: None,
    };
    raw_replicate(mesh, "zombie", "n1", stale).await;
    let info = session_info(live.admin, &base).await.unwrap();
    assert_ne!(info["attributes"]["n"], 1000, "stale-epoch change applied");
    assert_eq!(fenced_total(&nodes[1..]).await, before + 1);
}

/// The zombie (cause 1): requests that waited in the stopped owner's socket while
/// the cluster took their sessions over and acked writes are served when the owner resumes.
/// Each is either forwarded to the new owner (the old one heard of the takeover first) or,
/// served from the stale copy, fenced by the members that saw the takeover: 503, never a
/// 200 for a write that did not count, and the acked writes stay. Three sessions, so the
/// race between the resumed owner's first requests and its resync is run three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_waited_in_a_stopped_owner_are_fenced_not_acked() {
    let (_b, nodes) = three("zombie-queued", "").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(set_cookie_id(&http(nodes[0].http, count(None)).await).unwrap());
    }
    nodes[0].signal("STOP");
    // Queued on the stopped owner's socket: served only after SIGCONT.
    let addr = nodes[0].http;
    let waiting: Vec<_> = ids
        .iter()
        .map(|id| {
            let id = id.clone();
            tokio::spawn(async move { try_http(addr, count(Some(&id))).await })
        })
        .collect();
    // Meanwhile the cluster fails over and acks two writes per session (n = 2, 3).
    let mut succ = Vec::new();
    for id in &ids {
        let r = http(nodes[1].http, count(Some(id))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["n"], 2);
        succ.push(r.json()["node"].as_str().unwrap().to_string());
        let r = http(nodes[1].http, count(Some(id))).await;
        assert_eq!(r.json()["n"], 3, "{}", r.text());
    }
    nodes[0].signal("CONT");
    for (i, w) in waiting.into_iter().enumerate() {
        let zombie = w.await.unwrap().unwrap();
        let base = ids[i].split('.').next().unwrap().to_string();
        let acked = if zombie.status == StatusCode::OK {
            assert_eq!(
                zombie.json()["node"],
                succ[i].as_str(),
                "the resumed owner acked a write from its stale copy: {}",
                zombie.text()
            );
            assert_eq!(zombie.json()["n"], 4, "{}", zombie.text());
            4
        } else {
            assert_eq!(
                zombie.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                zombie.text()
            );
            assert!(
                zombie.text().contains("moved") || zombie.text().contains("majority"),
                "{}",
                zombie.text()
            );
            3
        };
        // The acked writes stand on every node, and the old owner knows the new owner.
        for n in &nodes {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let info = session_info(n.admin, &base).await.unwrap();
                if info["owner"] == succ[i].as_str() && info["attributes"]["n"] == acked {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "a copy never converged to n = {acked} owned by {}: {info}",
                    succ[i]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The next request at the old owner goes to the new one, which counts on, once the
        // old owner caught up with the majority (until then it answers 503, REFERENCE 4.9).
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let r = loop {
            let r = http(nodes[0].http, count(Some(&ids[i]))).await;
            if r.status != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
                break r;
            }
            assert!(r.text().contains("majority"), "{}", r.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if r.status != StatusCode::OK {
            eprintln!("{}", nodes[0].log_text());
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["n"], acked + 1, "{}", r.text());
        assert_eq!(r.json()["node"], succ[i].as_str(), "{}", r.text());
    }
}

async fn fenced_total(nodes: &[Node]) -> u64 {
    let mut fenced = 0u64;
    for n in nodes {
        let m = http(n.admin, get("/metrics")).await.text();
        fenced += m
            .lines()
            .find_map(|l| l.strip_prefix("caracal_replication_fenced_total "))
            .map_or(0, |v| v.trim().parse().unwrap());
    }
    fenced
}
