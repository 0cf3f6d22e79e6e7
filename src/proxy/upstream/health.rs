//! Active health checks (`[backends.health]`), as HAProxy's `check inter rise fall`: every
//! `interval` a `GET path` on a new connection; 2xx/3xx within `timeout` is a success.
//! `fall` failures in a row take a backend down, `rise` successes bring it back.

use std::sync::Arc;

use http::{header, Request};

use super::{client, pool, Backend, UpBody, Upstream, DOWN_UNTIL_CHECKED};
use crate::tasks::Tasks;

/// Runs the checks (and the idle-connection reaper) until the upstream's tasks stop.
pub(super) async fn run(upstream: Arc<Upstream>) {
    // The node's shutdown, or a reload that replaced this upstream (a child token).
    let shutdown = upstream.retired.clone();
    let cfg = upstream.config().health.clone();
    let idle_timeout = upstream.config().idle_timeout;
    let mut checks = tokio::task::JoinSet::new();
    for b in upstream.backends.clone() {
        let cfg = cfg.clone();
        let connect_timeout = upstream.config().connect_timeout;
        let shutdown = shutdown.clone();
        let tasks = upstream.tasks.clone();
        checks.spawn(async move {
            let mut tick = tokio::time::interval(cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut ok_streak, mut fail_streak) = (0u32, 0u32);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                b.reap_idle(idle_timeout);
                // `maint`: no checks (HAProxy's maintenance mode); back to `ready`, the
                // checks go on from the health it had.
                if !cfg.enabled || b.mode() == super::Mode::Maint {
                    continue;
                }
                let result = tokio::time::timeout(
                    cfg.timeout,
                    probe(&b, &cfg.path, connect_timeout, &tasks),
                )
                .await;
                let ok = matches!(result, Ok(Ok(())));
                if ok {
                    ok_streak += 1;
                    fail_streak = 0;
                } else {
                    fail_streak += 1;
                    ok_streak = 0;
                }
                let now_up = b.down_until.load(std::sync::atomic::Ordering::Relaxed) == 0;
                if !now_up && ok && ok_streak >= cfg.rise {
                    if b.set_health(true, 0) {
                        tracing::info!(backend = %b.url, "backend up (health check)");
                    }
                } else if now_up && !ok && fail_streak >= cfg.fall {
                    let reason = match result {
                        Err(_) => "timed out".to_string(),
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => String::new(),
                    };
                    if b.set_health(false, DOWN_UNTIL_CHECKED) {
                        tracing::warn!(backend = %b.url, %reason, "backend down (health check)");
                    }
                } else if !now_up && !ok {
                    // A passive failure may have taken it down: keep the rise count honest.
                    ok_streak = 0;
                }
            }
        });
    }
    while checks.join_next().await.is_some() {}
}

async fn probe(
    b: &Backend,
    path: &str,
    connect_timeout: std::time::Duration,
    tasks: &Tasks,
) -> Result<(), String> {
    let mut conn = pool::connect(&b.authority, connect_timeout, client::DEFAULT_MAX_HEAD)
        .await
        .map_err(|e| e.to_string())?;
    let req = Request::get(path)
        .header(header::HOST, &b.authority)
        .header(header::USER_AGENT, "caracal-health")
        .header(header::CONNECTION, "close")
        .body(())
        .map_err(|e| e.to_string())?;
    let head = conn
        .send(&req.into_parts().0, &[], b"", &mut UpBody::Empty, tasks)
        .await
        .map_err(|e| e.reason)?;
    let s = head.parts.status;
    if s.is_success() || s.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {s}"))
    }
}
