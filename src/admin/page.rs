//! `GET /`: the cluster page, server-rendered HTML from the `/status` JSON, with no external
//! assets (inline CSS, a few lines of inline script for the backend and node buttons). `?refresh=N`
//! reloads it every N seconds (1..=3600). Every value from the cluster is escaped.

use std::fmt::Write;

use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::{Admin, Resp};

/// The columns of a peer's queue (the page and `caracal status` show the same).
pub(crate) const PEER_FIELDS: [&str; 4] = ["route", "depth", "bytes", "overflowed"];

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f2f2f2}.ok{color:#070}.bad{color:#b00;font-weight:bold}.warn{color:#a60}";

const SCRIPT: &str = "function tok(){let t=sessionStorage.getItem('caracal-token');\
if(!t){t=prompt('admin token');if(t)sessionStorage.setItem('caracal-token',t)}return t}\
function act(b,what,body){post('/backends/'+b+'/'+what,body)}\
function post(p,body){fetch(p,{method:'POST',\
headers:{'Authorization':'Bearer '+tok(),'Content-Type':'application/json'},\
body:JSON.stringify(body)}).then(r=>r.text().then(t=>{if(!r.ok){sessionStorage.removeItem('caracal-token');alert(t)}else location.reload()}))}";

fn esc(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table(out: &mut String, id: &str, head: &[&str], rows: Vec<Vec<String>>) {
    let _ = write!(out, "<table id=\"{id}\"><tr>");
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn class(good: bool) -> &'static str {
    if good {
        "ok"
    } else {
        "bad"
    }
}

impl Admin {
    pub(super) fn page(&self, query: Option<&str>) -> Resp {
        let s = self.status();
        let refresh = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("refresh=")))
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| (1..=3600).contains(v));
        let n = &s["node"];
        let mut out = String::with_capacity(8192);
        out.push_str("<!DOCTYPE html><html><head><meta charset=\"utf-8\">");
        if let Some(r) = refresh {
            let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{r}\">");
        }
        let _ = write!(
            out,
            "<title>caracal {}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
            esc(&n["jvm_route"])
        );
        let _ = write!(
            out,
            "<h1>caracal node <span id=\"route\">{}</span></h1>",
            esc(&n["jvm_route"])
        );
        let state = esc(&n["state"]);
        let repl = &s["replication"];
        table(
            &mut out,
            "node",
            &[
                "state",
                "uptime",
                "manager",
                "send options",
                "mesh",
                "version",
            ],
            vec![vec![
                format!("<span class=\"{}\">{state}</span>", class(state == "ready")),
                format!("{} s", n["uptime_ms"].as_u64().unwrap_or(0) / 1000),
                esc(&n["manager"]),
                esc(&repl["send_options"]),
                esc(&n["mesh_addr"]),
                esc(&n["version"]),
            ]],
        );

        if self.token.is_some() {
            // The node itself (REFERENCE 4.8): drain hands its sessions to their successors.
            out.push_str(
                "<p><button onclick=\"post('/node/state',{state:'drain'})\">drain this node</button> \
                 <button onclick=\"post('/node/state',{state:'ready'})\">ready</button></p>",
            );
        }
        out.push_str("<h2>Members</h2>");
        let members = s["members"].as_array().cloned().unwrap_or_default();
        let rows = members
            .iter()
            .map(|m| {
                let suspect = m["suspect"].as_bool().unwrap_or(false);
                vec![
                    format!("<span class=\"member\">{}</span>", esc(&m["jvm_route"])),
                    esc(&m["http_addr"]),
                    esc(&m["mesh_addr"]),
                    esc(&m["state"]),
                    format!("{} ms", esc(&m["last_heard_ms"])),
                    format!(
                        "<span class=\"{}\">{}</span>",
                        class(!suspect),
                        if suspect { "suspect" } else { "no" }
                    ),
                ]
            })
            .collect();
        table(
            &mut out,
            "members",
            &["route", "http", "mesh", "state", "last heard", "suspect"],
            rows,
        );
        if let Some(q) = s["quorum"].as_object() {
            let _ = write!(
                out,
                "<p>cluster size {}, majority {}, lease <span class=\"{}\">{}</span></p>",
                esc(&q["cluster_size"]),
                esc(&q["majority"]),
                class(q["lease"].as_bool().unwrap_or(false)),
                esc(&q["lease"])
            );
        }

        out.push_str("<h2>Sessions</h2>");
        let ss = &s["sessions"];
        table(
            &mut out,
            "sessions",
            &["total", "owned", "replica", "swapped to disk"],
            vec![vec![
                esc(&ss["total"]),
                esc(&ss["owned"]),
                esc(&ss["replica"]),
                esc(&ss["swapped"]),
            ]],
        );
        if let Some(p) = s["persistence"].as_object() {
            let failing = p["failing"].as_bool().unwrap_or(false);
            let _ = write!(
                out,
                "<p>on disk: mode {}, <span class=\"{}\">{}</span>, {} records, {} unflushed, {} write failures{}</p>",
                esc(&p["mode"]),
                class(!failing),
                if failing { "persistence failing" } else { "persistence ok" },
                esc(&p["records"]),
                esc(&p["unflushed_records"]),
                esc(&p["write_failures"]),
                match p["last_error"].as_str() {
                    Some(e) => format!(" (last error: {})", esc(&Value::String(e.to_string()))),
                    None => String::new(),
                }
            );
        }

        out.push_str("<h2>Backends</h2>");
        let buttons = self.token.is_some();
        let rows = s["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| {
                let i = esc(&b["index"]);
                let healthy = b["healthy"].as_bool().unwrap_or(false);
                let mut r = vec![
                    esc(&b["url"]),
                    format!(
                        "<span class=\"{}\">{}</span>",
                        class(healthy),
                        if healthy { "up" } else { "down" }
                    ),
                    esc(&b["mode"]),
                    esc(&b["weight"]),
                    esc(&b["in_flight"]),
                    esc(&b["responses"]),
                    format!(
                        "{} / {} / {}",
                        esc(&b["errors"]),
                        esc(&b["connect_errors"]),
                        esc(&b["timeouts"])
                    ),
                ];
                if buttons {
                    r.push(
                        ["ready", "drain", "maint"]
                            .iter()
                            .map(|m| {
                                format!(
                                    "<button onclick=\"act({i},'state',{{state:'{m}'}})\">{m}</button>"
                                )
                            })
                            .collect(),
                    );
                }
                r
            })
            .collect();
        let mut head = vec![
            "url",
            "health",
            "mode",
            "weight",
            "in flight",
            "responses",
            "errors / connect / timeouts",
        ];
        if buttons {
            head.push("set");
        }
        table(&mut out, "backends", &head, rows);

        if repl.is_object() {
            out.push_str("<h2>Replication</h2>");
            let metrics = self.proxy.metrics.encode();
            let lag = |q| {
                crate::metrics::quantile(&metrics, "caracal_replication_lag_seconds", q)
                    .map_or("-".to_string(), |v| format!("&le; {:.1} ms", v * 1e3))
            };
            table(
                &mut out,
                "replication",
                &[
                    "acks",
                    "ack timeouts",
                    "unreplicated writes",
                    "fenced",
                    "gaps",
                    "state transfers",
                    "lag p50",
                    "lag p99",
                ],
                vec![vec![
                    esc(&repl["acks"]),
                    esc(&repl["ack_timeouts"]),
                    esc(&repl["unreplicated_writes"]),
                    esc(&repl["fenced"]),
                    esc(&repl["gaps"]),
                    esc(&repl["state_transfers"]),
                    lag(0.5),
                    lag(0.99),
                ]],
            );
            let rows = super::rows(&repl["peers"], &PEER_FIELDS, esc);
            table(
                &mut out,
                "queues",
                &["peer", "queue depth", "queue bytes", "overflowed"],
                rows,
            );
        }

        if let Some(events) = s["events"].as_array() {
            out.push_str("<h2>Last failovers and takeovers</h2>");
            let rows = events
                .iter()
                .take(20)
                .map(|e| {
                    vec![
                        esc(&e["at_ms"]),
                        esc(&e["kind"]),
                        esc(&e["route"]),
                        esc(&e["detail"]),
                    ]
                })
                .collect();
            table(
                &mut out,
                "events",
                &["at (unix ms)", "what", "route", "detail"],
                rows,
            );
        }
        out.push_str("</body></html>");
        let mut r = Response::new(Full::new(bytes::Bytes::from(out)));
        *r.status_mut() = StatusCode::OK;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    }
}
