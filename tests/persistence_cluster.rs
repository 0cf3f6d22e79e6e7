//! Sessions that outlive the whole cluster (REFERENCE 4.11), sized for CI: three nodes
//! stopped at once while clients write, then started again (`common::whole`); `cargo bench
//! --bench persistence` runs the full table.

mod common;

use std::time::Duration;

use common::whole::*;
use common::*;
use http::StatusCode;

/// How long the clients write before the stop.
const LOAD: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_whole_cluster_restart_loses_nothing_delta() {
    let (acked, lost) = restart_under_load("delta", "async", false, LOAD).await;
    assert!(acked > 20, "only {acked} writes");
    assert!(lost.is_empty(), "lost {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_whole_cluster_restart_loses_nothing_backup() {
    let (acked, lost) = restart_under_load("backup", "async", false, LOAD).await;
    assert!(acked > 20, "only {acked} writes");
    assert!(lost.is_empty(), "lost {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_kill_loses_no_acked_write_in_fsync_mode_delta() {
    let (acked, lost) = restart_under_load("delta", "fsync", true, LOAD).await;
    assert!(acked > 20, "only {acked} writes");
    assert!(lost.is_empty(), "lost {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_kill_loses_no_acked_write_in_fsync_mode_backup() {
    let (acked, lost) = restart_under_load("backup", "fsync", true, LOAD).await;
    assert!(acked > 20, "only {acked} writes");
    assert!(lost.is_empty(), "lost {lost:?}");
}

/// A session invalidated just before every node is killed stays invalidated after the
/// restart, on every node; one written alongside it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_session_stays_invalidated_after_a_whole_cluster_kill() {
    let _one = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let (_b, mut nodes) =
        persistent_cluster(dir.path(), "restart-invalidated", "delta", "fsync").await;
    let confs: Vec<String> = nodes.iter().map(Node::conf_text).collect();
    let gone = set_cookie_id(&http(nodes[0].http, log(1, None)).await).unwrap();
    let kept = set_cookie_id(&http(nodes[1].http, log(1, None)).await).unwrap();
    let r = http(
        nodes[2].http,
        reflect(
            "/",
            Some(&format!("JSESSIONID={gone}")),
            &[("x-session-invalidate", "true")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for n in &mut nodes {
        n.kill();
    }
    drop(nodes);
    let nodes = Node::start_all(&confs).await;
    wait_formed(&nodes, Duration::from_secs(5)).await;
    leased(&nodes).await;
    let base = |id: &str| id.split('.').next().unwrap().to_string();
    for n in &nodes {
        assert!(
            session_info(n.admin, &base(&gone)).await.is_none(),
            "the invalidated session came back"
        );
        assert!(session_info(n.admin, &base(&kept)).await.is_some());
    }
    let r = http(nodes[0].http, log(2, Some(&gone))).await;
    assert!(set_cookie_id(&r).is_some_and(|id| base(&id) != base(&gone)));
    assert!(seen_writes(&r.body).is_empty());
}
