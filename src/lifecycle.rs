//! Lifecycle (floor 1): one state enum for this node and for the members it hears of
//! (REFERENCE 4.1, 4.8), and [`NodeState`], this node's own announced state.
//!
//! [`State`] travels in heartbeats and pongs (postcard encodes a variant by its index: the
//! order below is the wire format's), drives `/ready` and `/status`, and routing counts a
//! member as an owner only while it is `Ready`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A node's lifecycle, as it announces it and as `/ready` and `/status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Ready = 1,
    /// Announced by a member that stops taking new sessions; routing treats it as gone.
    Draining = 2,
    Leaving = 3,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Starting,
        State::Ready,
        State::Draining,
        State::Leaving,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Leaving => "leaving",
        }
    }
}

/// This node: its route, its client addresses, its uptime and its current [`State`].
pub(crate) struct NodeState {
    pub jvm_route: String,
    pub http_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    started: Instant,
    state: AtomicU8,
}

impl NodeState {
    /// A node that is `starting`.
    pub(crate) fn new(
        jvm_route: String,
        http_addrs: Vec<SocketAddr>,
        https_addrs: Vec<SocketAddr>,
    ) -> Self {
        Self {
            jvm_route,
            http_addrs,
            https_addrs,
            started: Instant::now(),
            state: AtomicU8::new(State::Starting as u8),
        }
    }

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Draining,
            _ => State::Leaving,
        }
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_is_the_discriminant() {
        for s in State::ALL {
            let bytes = postcard::to_stdvec(&s).unwrap();
            assert_eq!(bytes, [s as u8], "{s:?}");
        }
    }
}
