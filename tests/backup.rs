//! BackupManager: each session on its owner and exactly one backup.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// How many of `nodes` hold each session.
async fn copies(nodes: &[&Node], bases: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for b in bases {
        let mut holders = Vec::new();
        for n in nodes {
            if let Some(s) = session_info(n.admin, b).await {
                holders.push(
                    n.status().await["node"]["jvm_route"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
                let _ = s;
            }
        }
        out.push((holders.len(), holders));
    }
    out
}

/// `phase` names the step in the failure message.
async fn wait_two_copies(
    phase: &str,
    nodes: &[&Node],
    bases: &[String],
    within: Duration,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let c = copies(nodes, bases).await;
        if c.iter().all(|(n, _)| *n == 2) {
            return c.into_iter().map(|(_, h)| h).collect();
        }
        let bad: Vec<_> = c.iter().filter(|(n, _)| *n != 2).take(3).collect();
        let total = c.iter().filter(|(n, _)| *n != 2).count();
        assert!(
            Instant::now() < deadline,
            "{phase}: {total} sessions not on exactly two nodes, e.g. {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_through_owner_death_backup_death_and_a_join() {
    let (_b, mut nodes) = start_cluster(
        &["n1", "n2", "n3", "n4"],
        "backup",
        "manager = \"backup\"",
        |_, c| c,
    )
    .await;
    // 200 sessions, created round robin over the nodes.
    let mut ids = Vec::new();
    for i in 0..200 {
        let r = http(nodes[i % 4].http, get("/count")).await;
        ids.push(set_cookie_id(&r).unwrap());
    }
    let bases: Vec<String> = ids
        .iter()
        .map(|i| i.split('.').next().unwrap().to_string())
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_two_copies("created", &all, &bases, Duration::from_secs(10)).await;
    let total: u64 = {
        let mut t = 0;
        for n in &nodes {
            t += n.status().await["sessions"]["total"].as_u64().unwrap();
        }
        t
    };
    assert_eq!(total, 400, "copies beyond owner + backup");

    // The owner of a quarter of the sessions dies: they continue through any node...
    let mut n1 = nodes.remove(0);
    n1.kill();
    for (i, id) in ids.iter().enumerate() {
        let r = http(nodes[i % 3].http, count(Some(id))).await;
        assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.text());
        assert_eq!(r.json()["n"], 2, "{id} lost its counter: {}", r.text());
    }
    // ...and are on exactly two live nodes again.
    let live: Vec<&Node> = nodes.iter().collect();
    wait_two_copies(
        "after the owner's death",
        &live,
        &bases,
        Duration::from_secs(10),
    )
    .await;

    // A fifth node joins: still two copies each, some of them now on it.
    let n5 = nodes[0]
        .conf_text()
        .replace("jvm_route = \"n2\"", "jvm_route = \"n5\"");
    nodes.push(Node::start(&n5).await);
    let live: Vec<&Node> = nodes.iter().collect();
    let holders = wait_two_copies("after a join", &live, &bases, Duration::from_secs(10)).await;
    let on_n5 = holders
        .iter()
        .filter(|h| h.iter().any(|r| r == "n5"))
        .count();
    assert!(on_n5 > 0, "no session moved to the joiner");

    // A backup dies (n2 backs up some sessions and owns others): same again.
    let mut n2 = nodes.remove(0);
    n2.kill();
    let live: Vec<&Node> = nodes.iter().collect();
    wait_two_copies(
        "after a backup's death",
        &live,
        &bases,
        Duration::from_secs(10),
    )
    .await;
    for (i, id) in ids.iter().enumerate().take(50) {
        let r = http(nodes[i % 3].http, count(Some(id))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["n"], 3);
    }

    // Owner and backup of one session die together: a fresh session, never a 5xx.
    let holders = copies(&live, &bases[..1]).await.remove(0).1;
    let (doomed, survivors): (Vec<Node>, Vec<Node>) = nodes.into_iter().partition(|n| {
        holders
            .iter()
            .any(|h| n.log_text().contains(&format!("jvm_route={h}")))
    });
    assert_eq!(doomed.len(), 2, "{holders:?}");
    for mut d in doomed {
        d.kill();
    }
    let r = http(survivors[0].http, count(Some(&ids[0]))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["n"], 1, "expected a fresh session");
    assert!(set_cookie_id(&r).is_some());
}
