//! caracal: a reverse-proxy load balancer whose nodes own a replicated session store.
//!
//! Layout (see `docs/ARCHITECTURE.md`):
//! - [`config`]: the conf file, two-stage (raw serde -> validated [`config::Config`]).
//! - [`proxy`]: the request path: [`proxy::frontend`] (listeners, TLS, limits),
//!   [`proxy::headers`] (hygiene), [`proxy::upstream`] (pool, balancer, health).
//! - [`session`]: ids, cookies, the store, the backend header protocol, the static filter.
//! - [`admin`]: `/live`, `/ready`, `/status`, `/metrics`.
//! - [`metrics`]: the Prometheus registry shared by all parts.
//! - [`node`]: wires the parts together and runs them until shutdown.
//! - [`demo`]: the demo app (`caracal demo-backend`) and `caracal demo`.
//! - [`cli`]: the `caracal` command line.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod session;
pub mod tls;
