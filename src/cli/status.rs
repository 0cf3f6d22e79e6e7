//! `caracal status [--admin URL]`: the cluster as a terminal table, from a node's
//! `/status` (members, sessions, backends, replication queues).

use std::fmt::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Fetches `GET <admin>/status` (plain HTTP, host:port or `http://host:port`).
pub(super) async fn fetch(admin: &str) -> anyhow::Result<Value> {
    let addr = admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr}: no connection within 5 s"))?
    .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get("/status")
        .header(http::header::HOST, addr.as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = tx.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    if !status.is_success() {
        anyhow::bail!("{addr}/status answered {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "  {}", s.join("  ").trim_end());
    };
    line(out, head.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}

/// The text `caracal status` prints.
pub(super) fn render(s: &Value) -> String {
    let mut out = String::new();
    let n = &s["node"];
    let q = &s["quorum"];
    let _ = writeln!(
        out,
        "node {}  {}  up {} s  manager {}  send {}  lease {}",
        cell(&n["jvm_route"]),
        cell(&n["state"]),
        n["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        cell(&n["manager"]),
        cell(&s["replication"]["send_options"]),
        match q["lease"].as_bool() {
            Some(true) => format!(
                "held (size {}, majority {})",
                cell(&q["cluster_size"]),
                cell(&q["majority"])
            ),
            Some(false) => "NOT held".into(),
            None => "-".into(),
        }
    );
    let members: Vec<Vec<String>> = s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    vec![
                        cell(&m["jvm_route"]),
                        cell(&m["state"]),
                        cell(&m["http_addr"]),
                        cell(&m["mesh_addr"]),
                        format!("{} ms", cell(&m["last_heard_ms"])),
                        if m["suspect"].as_bool().unwrap_or(false) {
                            "suspect".into()
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(out, "\nmembers ({})", members.len());
    table(
        &mut out,
        &["route", "state", "http", "mesh", "last heard", "suspect"],
        &members,
    );
    let ss = &s["sessions"];
    let _ = writeln!(
        out,
        "\nsessions  total {}  owned {}  replica {}",
        cell(&ss["total"]),
        cell(&ss["owned"]),
        cell(&ss["replica"])
    );
    let backends: Vec<Vec<String>> = s["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| {
                    vec![
                        cell(&b["index"]),
                        cell(&b["url"]),
                        if b["healthy"].as_bool().unwrap_or(false) {
                            "up".into()
                        } else {
                            "DOWN".into()
                        },
                        cell(&b["mode"]),
                        cell(&b["weight"]),
                        cell(&b["in_flight"]),
                        cell(&b["responses"]),
                        cell(&b["errors"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(out, "\nbackends ({})", backends.len());
    table(
        &mut out,
        &[
            "#",
            "url",
            "health",
            "mode",
            "weight",
            "in flight",
            "responses",
            "errors",
        ],
        &backends,
    );
    if s["replication"]["peers"].is_array() {
        let rows = crate::admin::rows(&s["replication"]["peers"], &crate::admin::PEER_FIELDS, cell);
        let r = &s["replication"];
        let _ = writeln!(
            out,
            "\nreplication  acks {}  ack timeouts {}  unreplicated writes {}  fenced {}",
            cell(&r["acks"]),
            cell(&r["ack_timeouts"]),
            cell(&r["unreplicated_writes"]),
            cell(&r["fenced"])
        );
        table(&mut out, &["peer", "queue", "bytes", "overflowed"], &rows);
    }
    out
}
