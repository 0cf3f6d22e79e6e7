//! caracal: a reverse-proxy load balancer whose nodes own a replicated session store.
//!
//! Floors, bottom up (docs/ARCHITECTURE.md keeps the table; `tests/floors.rs` checks that a
//! module imports only from floors below its own):
//! 1. leaves: `lifecycle` (node and member state), `logging` (the live log level), `metrics`, `tls`, `wire` (frame and tag
//!    codecs), `tasks` (task ownership), `net` (accepting);
//! 2. [`session`]: the domain: ids, cookies, attributes, the store, changes and the apply rule;
//! 3. [`cluster`]: membership, the mesh, replication of session changes;
//! 4. [`proxy`]: the request path, with the sticky layer over session and cluster;
//! 5. [`config`]: the conf file, building the types the layers below define;
//! 6. `admin`: the admin endpoints;
//! 7. [`node`] (wires one node together), `demo`;
//! 8. `cli`: the command line.
//!
//! Modules are private inside; what the binary, the tests and the benches use is re-exported.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod cli;
pub mod cluster;
pub mod config;
mod demo;
mod lifecycle;
mod logging;
pub mod metrics;
mod net;
pub mod node;
pub mod proxy;
pub mod session;
mod tasks;
mod tls;
mod wire;

pub use cli::main;
pub use lifecycle::State;
pub use tls::{mesh_tls, MeshTls, MESH_NAME};
pub use wire::{codec as mesh_codec, Key as ClusterKey};
