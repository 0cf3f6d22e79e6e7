//! The runtime API (HAProxy's `set server ... state / weight` as JSON over HTTP):
//! - `POST /backends/<b>/state` `{"state": "drain" | "maint" | "ready"}`;
//! - `POST /backends/<b>/weight` `{"weight": 0..=256}`;
//!
//! where `<b>` is the backend's index in `/status` or its `host:port`. The answer is the
//! backend as `/status` shows it; the effect shows in `/status` and in `/metrics`
//! (`caracal_backend_mode`, `caracal_backend_weight`). A bad request is a 400 naming what is
//! wrong.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::{json_response, text, Admin, Resp};
use crate::proxy::Mode;

impl Admin {
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
