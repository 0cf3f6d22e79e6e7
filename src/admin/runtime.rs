//! The runtime API (HAProxy's `set server ... state / weight` as JSON over HTTP):
//! - `POST /backends/<b>/state` `{"state": "drain" | "maint" | "ready"}`;
//! - `POST /backends/<b>/weight` `{"weight": 0..=256}`;
//! - `POST /node/state` `{"state": "drain" | "ready"}`: this node drains (REFERENCE 4.8: it
//!   announces `draining`, hands its sessions to their successors and forwards what
//!   reaches it; it keeps running) or is ready again. The drain answers once the sessions
//!   are handed over (at most `[node] drain_timeout`), with what it did.
//!
//! where `<b>` is the backend's index in `/status` or its `host:port`. The answer is the
//! backend as `/status` shows it; the effect shows in `/status` and in `/metrics`
//! (`caracal_backend_mode`, `caracal_backend_weight`). A bad request is a 400 naming what is
//! wrong.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::{json_response, text, Admin, Resp};
use crate::lifecycle::State;
use crate::proxy::Mode;

impl Admin {
    pub(super) async fn node_state(&self, body: &Bytes) -> Resp {
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("400 not JSON: {e}\n")),
        };
        match v["state"].as_str() {
            Some("drain") => {
                let report = if self.cluster.is_some() {
                    self.proxy.drain(self.drain_timeout).await
                } else {
                    self.state.set_state(State::Draining);
                    crate::proxy::DrainReport {
                        state: "draining",
                        ..Default::default()
                    }
                };
                json_response(StatusCode::OK, &report)
            }
            Some("ready") => {
                match self.state.state() {
                    State::Draining => {}
                    State::Ready => {}
                    s => {
                        return text(
                            StatusCode::CONFLICT,
                            &format!("409 this node is {}: it cannot be made ready\n", s.as_str()),
                        )
                    }
                }
                if self.cluster.is_some() {
                    self.proxy.resume().await;
                } else {
                    self.state.set_state(State::Ready);
                }
                json_response(
                    StatusCode::OK,
                    &json!({"state": self.state.state().as_str()}),
                )
            }
            _ => text(
                StatusCode::BAD_REQUEST,
                "400 \"state\" must be \"drain\" or \"ready\"\n",
            ),
        }
    }

    pub(super) fn post(&self, path: &str, body: &Bytes) -> Resp {
        let Some(rest) = path.strip_prefix("/backends/") else {
            return text(StatusCode::NOT_FOUND, "404 no such admin endpoint\n");
        };
        let Some((name, what)) = rest.rsplit_once('/') else {
            return text(StatusCode::NOT_FOUND, "404 no such admin endpoint\n");
        };
        let up = self.proxy.upstream();
        let Some(b) = up.find(name) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("404 no backend {name:?} (an index from /status, or host:port)\n"),
            );
        };
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("400 not JSON: {e}\n")),
        };
        match what {
            "state" => {
                let Some(mode) = v["state"].as_str().and_then(Mode::parse) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "400 \"state\" must be \"ready\", \"drain\" or \"maint\"\n",
                    );
                };
                up.set_mode(b, mode);
            }
            "weight" => {
                let Some(w) = v["weight"].as_u64().filter(|w| *w <= 256) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "400 \"weight\" must be an integer from 0 to 256\n",
                    );
                };
                up.set_weight(b, w as u32);
            }
            _ => return text(StatusCode::NOT_FOUND, "404 no such admin endpoint\n"),
        }
        json_response(
            StatusCode::OK,
            &json!({
                "url": b.url,
                "address": b.authority,
                "mode": b.mode().as_str(),
                "weight": b.weight(),
                "in_flight": b.in_flight(),
            }),
        )
    }
}
