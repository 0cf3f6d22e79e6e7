//! caracal: a reverse-proxy load balancer whose nodes own a replicated session store.
//!
//! Floors, bottom up (docs/ARCHITECTURE.md keeps the table; `tests/floors.rs` checks that a
//! module imports only from floors below its own):
//! 1. leaves: `lifecycle` (node and member state), `logging` (the live log level), `metrics`, `tls`, `wire` (frame and tag
//!    codecs), `tasks` (task ownership), `net` (accepting), `memory` (freed memory back to
//!    the OS);
//! 2. `session`: the domain: ids, cookies, attributes, the store, changes and the apply rule;
//! 3. `cluster`: membership, the mesh, replication of session changes; `persist`: the
//!    session files on this node's disk;
//! 4. `proxy`: the request path, with the sticky layer over session and cluster;
//! 5. `config`: the conf file, building the types the layers below define;
//! 6. `admin`: the admin endpoints;
//! 7. `node` (wires one node together), `demo`;
//! 8. `cli`: the command line.
//!
//! Every module is private. The crate's public surface is [`main`] (the binary's whole
//! body), [`set_memory_release`] (the binary's allocator hook) and [`testing`], what this crate's own tests and benches reach inside it.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod admin;
mod cli;
mod cluster;
mod config;
mod demo;
mod lifecycle;
mod logging;
mod memory;
mod metrics;
mod net;
mod node;
mod persist;
mod proxy;
mod session;
mod tasks;
mod tls;
mod wire;

pub use cli::main;
pub use memory::set_release as set_memory_release;

/// What this crate's own tests (`tests/`) and benches (`bench/`) reach inside it: wire
/// codecs to play a forged or foreign member, the session store and header code the
/// micro-benchmarks time, and `node::run` for the in-process lifecycle test. Not an API for
/// other programs: these names follow the code they come from.
pub mod testing {
    pub use crate::cluster::{
        decode_mesh, encode_heartbeat, encode_mesh, multicast_socket, open_mesh, seal_mesh,
        successor, Heartbeat, MeshMessage, NodeInfo, MESH_VERSION,
    };
    pub use crate::config::{load_str, Config};
    pub use crate::lifecycle::State;
    pub use crate::metrics::{quantile, Metrics};
    pub use crate::node::{run, Listeners};
    pub use crate::proxy::{ticking, Added, ClientInfo, Hygiene};
    pub use crate::session::{
        canonical_attrs, epoch_tag, next_epoch, parse_id, Change, CookieConfig, Directives,
        FullSession, Key, Outcome, SecureMode, SessionLimits, SessionStore,
    };
    pub use crate::tls::{mesh_tls, MeshTls, MESH_NAME};
    pub use crate::wire::{codec as mesh_codec, ClusterKey};
}
