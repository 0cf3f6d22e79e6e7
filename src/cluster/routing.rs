//! Who serves a session (REFERENCE 4.4): stickiness by ownership, forwarding to the owner, and
//! the deterministic successor after the owner is gone.
//!
//! A node holding a copy decides by the copy's ownership record; a node without one by the
//! cookie's route suffix. The successor of a dead owner is the live ready member with the
//! highest rendezvous score for the base id, so every node that sees the same members picks
//! the same one and two nodes never both take a session over.

use super::messages::NodeInfo;
use crate::lifecycle::State;
use crate::session::{hash64, Key};

/// Rendezvous (highest random weight) score of `route` for `base`: the stable hash of
/// `base`, a separator, `route`.
pub(super) fn score(base: &str, route: &str) -> u64 {
    hash64(
        base.bytes()
            .chain(std::iter::once(0u8))
            .chain(route.bytes()),
    )
}

/// The route among `routes` with the highest score for `base` (ties by route name).
pub fn successor<'a>(base: &str, routes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    routes
        .into_iter()
        .max_by(|a, b| score(base, a).cmp(&score(base, b)).then_with(|| a.cmp(b)))
}

/// BackupManager: the route among `routes` that holds the copy of session `key` (the
/// successor for its base id).
pub(super) fn backup<'a>(key: u128, routes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    successor(&Key(key).base(), routes)
}

/// The ready member among `members` that succeeds this node for session `base`: where a
/// draining node sends the session's requests (every member's routing picks the same one
/// once it heard `draining`).
pub(super) fn ready_successor(base: &str, members: &[NodeInfo]) -> Option<NodeInfo> {
    let ready = members.iter().filter(|m| m.state == State::Ready);
    let s = successor(base, ready.map(|m| m.jvm_route.as_str()))?;
    members.iter().find(|m| m.jvm_route == s).cloned()
}

/// What to do with a request for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// This node owns it (or takes it over): serve here.
    Local,
    /// This node is the successor of a gone owner: take over, then serve here.
    TakeOver,
    /// Another live member serves it.
    Forward(NodeInfo),
    /// Nobody has it: no session.
    NoSession,
}

/// Decides who serves session `base` given:
/// - `me`: this node's route, and whether this node is ready;
/// - `copy_owner`: the owner recorded in this node's copy, if it holds one;
/// - `cookie_route`: the client's route suffix;
/// - `members`: the other members as this node sees them.
pub(super) fn decide(
    base: &str,
    me: &str,
    copy_owner: Option<&str>,
    cookie_route: Option<&str>,
    members: &[NodeInfo],
) -> Decision {
    let ready = |m: &&NodeInfo| m.state == State::Ready;
    let member = |route: &str| members.iter().find(|m| m.jvm_route == route);
    match copy_owner {
        Some(owner) if owner == me => Decision::Local,
        Some(owner) => match member(owner).filter(ready) {
            Some(m) => Decision::Forward(m.clone()),
            None => {
                // Owner dead, unknown, draining or leaving: failover.
                let live = members.iter().filter(ready).map(|m| m.jvm_route.as_str());
                match successor(base, live.chain(std::iter::once(me))) {
                    Some(s) if s == me => Decision::TakeOver,
                    Some(s) => member(s)
                        .map(|m| Decision::Forward(m.clone()))
                        .unwrap_or(Decision::NoSession),
                    None => Decision::NoSession,
                }
            }
        },
        None => match cookie_route {
            // We would hold a copy of any session we own: this one does not exist here.
            Some(r) if r == me => Decision::NoSession,
            // A live owner may hold what we do not (BackupManager, or not replicated yet).
            Some(r) => match member(r).filter(ready) {
                Some(m) => Decision::Forward(m.clone()),
                // Owner gone: its successor holds the copy if anyone does (the backup).
                None => {
                    let live = members.iter().filter(ready).map(|m| m.jvm_route.as_str());
                    match successor(base, live.chain(std::iter::once(me))) {
                        Some(s) if s != me => member(s)
                            .map(|m| Decision::Forward(m.clone()))
                            .unwrap_or(Decision::NoSession),
                        // No other ready member: an owner still draining serves (or hands
                        // on) its own sessions; this node has nothing of it.
                        _ => match member(r).filter(|m| m.state == State::Draining) {
                            Some(m) => Decision::Forward(m.clone()),
                            None => Decision::NoSession,
                        },
                    }
                }
            },
            None => Decision::NoSession,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(route: &str, state: State) -> NodeInfo {
        NodeInfo {
            node_id: route.len() as u64,
            jvm_route: route.into(),
            mesh_addr: "127.0.0.1:1".parse().unwrap(),
            http_addr: "127.0.0.1:2".parse().unwrap(),
            state,
            alive_ms: 0,
        }
    }

    #[test]
    fn successor_is_deterministic_and_spreads() {
        let routes = ["n1", "n2", "n3"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let base = format!("{i:032X}");
            let s = successor(&base, routes).unwrap();
            // Any order of the same members picks the same successor.
            assert_eq!(successor(&base, ["n3", "n1", "n2"]), Some(s));
            counts[routes.iter().position(|r| *r == s).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn rules() {
        let b = "0123456789ABCDEF0123456789ABCDEF";
        let n2 = m("n2", State::Ready);
        let members = vec![n2.clone(), m("n3", State::Ready)];
        assert_eq!(
            decide(b, "n1", Some("n1"), Some("n2"), &members),
            Decision::Local
        );
        assert_eq!(
            decide(b, "n1", Some("n2"), Some("n1"), &members),
            Decision::Forward(n2.clone())
        );
        assert_eq!(
            decide(b, "n1", None, Some("n2"), &members),
            Decision::Forward(n2.clone())
        );
        assert_eq!(
            decide(b, "n1", None, Some("n1"), &members),
            Decision::NoSession
        );
        // Owner gone, no copy here: the successor (the backup) is asked, unless it is us.
        match decide(b, "n1", None, Some("gone"), &members) {
            Decision::NoSession => assert_eq!(successor(b, ["n1", "n2", "n3"]), Some("n1")),
            Decision::Forward(to) => {
                assert_eq!(
                    Some(to.jvm_route.as_str()),
                    successor(b, ["n1", "n2", "n3"])
                )
            }
            other => panic!("{other:?}"),
        }
        // Dead owner: exactly the successor takes over, the others forward to it.
        let succ = successor(b, ["n1", "n2", "n3"]).unwrap();
        let at = |me: &str| {
            let others: Vec<NodeInfo> = ["n1", "n2", "n3"]
                .iter()
                .filter(|r| **r != me)
                .map(|r| m(r, State::Ready))
                .collect();
            decide(b, me, Some("dead"), Some("dead"), &others)
        };
        let mut takers = 0;
        for me in ["n1", "n2", "n3"] {
            match at(me) {
                Decision::TakeOver => {
                    assert_eq!(me, succ);
                    takers += 1;
                }
                Decision::Forward(to) => assert_eq!(to.jvm_route, succ),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(takers, 1);
        // A draining owner counts as gone.
        let draining = vec![m("n2", State::Draining)];
        assert!(matches!(
            decide(b, "n1", Some("n2"), None, &draining),
            Decision::TakeOver
        ));
    }
}
