//! The replica's apply rule (REFERENCE 4.6), as one pure function.
//!
//! Every change carries the (epoch, version) of the session after the change. A replica:
//! - rejects anything from a lower epoch than it holds (a paused-then-resumed "zombie" owner
//!   cannot overwrite the new owner): [`Verdict::Fenced`];
//! - ignores anything not newer than what it holds, and anything about a session it holds a
//!   tombstone for at the same or a newer point (no resurrection): [`Verdict::Stale`];
//! - applies a delta only on top of the version it extends (v = held + 1, same epoch);
//!   otherwise asks the owner for a full copy: [`Verdict::Gap`];
//! - applies full copies that are newer, and removals from the current or a newer epoch.

/// (epoch, version), ordered epoch first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ver {
    pub epoch: u64,
    pub version: u64,
}

impl Ver {
    pub fn new(epoch: u64, version: u64) -> Self {
        Self { epoch, version }
    }
}

/// What kind of change arrived, with the point it brings the session to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A whole session (create, full copy, takeover, state transfer).
    Full(Ver),
    /// Changed attributes on top of `version - 1`.
    Delta(Ver),
    /// Access without change, at the version the owner holds.
    Touch(Ver),
    /// Invalidated or expired on the owner.
    Remove(Ver),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Apply,
    Stale,
    Gap,
    Fenced,
}

/// Decides what a replica holding `held` (live) and `tomb` (removed at) does with `change`.
pub(super) fn verdict(held: Option<Ver>, tomb: Option<Ver>, change: Kind) -> Verdict {
    let at = match change {
        Kind::Full(v) | Kind::Delta(v) | Kind::Touch(v) | Kind::Remove(v) => v,
    };
    if let Some(t) = tomb {
        if at.epoch < t.epoch {
            return Verdict::Fenced;
        }
        // Removal is final for the (epoch, version) it happened at and anything older;
        // only a later epoch (a takeover that saw a newer state) may bring it back.
        if at <= t || at.epoch == t.epoch {
            return Verdict::Stale;
        }
    }
    let Some(h) = held else {
        return match change {
            Kind::Full(_) | Kind::Remove(_) => Verdict::Apply,
            Kind::Delta(_) | Kind::Touch(_) => Verdict::Gap,
        };
    };
    if at.epoch < h.epoch {
        return Verdict::Fenced;
    }
    match change {
        Kind::Full(_) => {
            if at > h {
                Verdict::Apply
            } else {
                Verdict::Stale
            }
        }
        Kind::Remove(_) => Verdict::Apply,
        Kind::Delta(_) => {
            if at.epoch > h.epoch {
                Verdict::Gap
            } else if at.version <= h.version {
                Verdict::Stale
            } else if at.version == h.version + 1 {
                Verdict::Apply
            } else {
                Verdict::Gap
            }
        }
        Kind::Touch(_) => {
            if at == h {
                Verdict::Apply
            } else if at > h {
                Verdict::Gap
            } else {
                Verdict::Stale
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(e: u64, n: u64) -> Ver {
        Ver::new(e, n)
    }

    #[test]
    fn table() {
        use Kind::*;
        use Verdict::*;
        assert_eq!(verdict(None, None, Full(v(1, 1))), Apply);
        assert_eq!(verdict(None, None, Delta(v(1, 2))), Gap);
        assert_eq!(verdict(Some(v(1, 1)), None, Delta(v(1, 2))), Apply);
        assert_eq!(verdict(Some(v(1, 2)), None, Delta(v(1, 2))), Stale);
        assert_eq!(verdict(Some(v(1, 1)), None, Delta(v(1, 3))), Gap);
        assert_eq!(verdict(Some(v(2, 5)), None, Delta(v(1, 6))), Fenced);
        assert_eq!(verdict(Some(v(2, 5)), None, Full(v(1, 9))), Fenced);
        assert_eq!(verdict(Some(v(1, 5)), None, Full(v(2, 5))), Apply);
        assert_eq!(verdict(Some(v(1, 5)), None, Delta(v(2, 6))), Gap);
        assert_eq!(verdict(None, Some(v(1, 4)), Full(v(1, 3))), Stale);
        assert_eq!(verdict(None, Some(v(1, 4)), Delta(v(1, 5))), Stale);
        assert_eq!(verdict(None, Some(v(1, 4)), Full(v(2, 4))), Apply);
        assert_eq!(verdict(None, Some(v(2, 1)), Full(v(1, 9))), Fenced);
        assert_eq!(verdict(Some(v(1, 3)), None, Touch(v(1, 3))), Apply);
        assert_eq!(verdict(Some(v(1, 3)), None, Remove(v(1, 3))), Apply);
    }

    /// The owner's side of the model: a session's history as a list of states, and the
    /// messages it sent.
    #[derive(Debug, Clone)]
    enum Op {
        Set(u8),
        Touch,
        Remove,
        Takeover,
    }

    #[derive(Debug, Clone, PartialEq)]
    struct State {
        at: Ver,
        value: u64,
        removed: bool,
    }

    #[derive(Debug, Clone)]
    struct Msg {
        kind: Kind,
        /// The owner's state right after the change (what a full copy would carry).
        state: State,
    }

    fn owner_run(ops: &[Op]) -> (Vec<Msg>, State) {
        let mut s = State {
            at: v(1, 1),
            value: 0,
            removed: false,
        };
        let mut msgs = vec![Msg {
            kind: Kind::Full(s.at),
            state: s.clone(),
        }];
        for op in ops {
            if s.removed {
                break;
            }
            match op {
                Op::Set(x) => {
                    s.at.version += 1;
                    s.value = s.value.wrapping_mul(31).wrapping_add(u64::from(*x) + 1);
                    msgs.push(Msg {
                        kind: Kind::Delta(s.at),
                        state: s.clone(),
                    });
                }
                Op::Touch => msgs.push(Msg {
                    kind: Kind::Touch(s.at),
                    state: s.clone(),
                }),
                Op::Remove => {
                    s.removed = true;
                    msgs.push(Msg {
                        kind: Kind::Remove(s.at),
                        state: s.clone(),
                    });
                }
                Op::Takeover => {
                    s.at.epoch += 1;
                    s.at.version += 1;
                    msgs.push(Msg {
                        kind: Kind::Full(s.at),
                        state: s.clone(),
                    });
                }
            }
        }
        (msgs, s)
    }

    /// The replica: applies by the rule; on a gap it gets the owner's *current* full state
    /// (as a real replica asks the owner). Returns every state it went through.
    struct Replica {
        held: Option<State>,
        tomb: Option<Ver>,
        history: Vec<(Ver, bool)>,
    }

    impl Replica {
        fn deliver(&mut self, m: &Msg, owner_now: &State) {
            let held = self.held.as_ref().map(|s| s.at);
            match verdict(held, self.tomb, m.kind) {
                Verdict::Apply => match m.kind {
                    Kind::Remove(at) => {
                        self.held = None;
                        self.tomb = Some(self.tomb.map_or(at, |t| t.max(at)));
                        self.history.push((at, true));
                    }
                    Kind::Touch(_) => {}
                    _ => {
                        self.held = Some(m.state.clone());
                        self.history.push((m.state.at, false));
                    }
                },
                Verdict::Gap => {
                    let full = Msg {
                        kind: if owner_now.removed {
                            Kind::Remove(owner_now.at)
                        } else {
                            Kind::Full(owner_now.at)
                        },
                        state: owner_now.clone(),
                    };
                    self.deliver(&full, owner_now);
                }
                Verdict::Stale | Verdict::Fenced => {}
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u8>().prop_map(Op::Set),
            2 => Just(Op::Touch),
            1 => Just(Op::Takeover),
            1 => Just(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Reordered, duplicated and dropped deliveries: the replica never rolls back, never
        /// holds a state the owner never had, never resurrects, and once the owner's last
        /// message arrives (again) it equals the owner.
        #[test]
        fn replica_converges_and_never_rolls_back(
            ops in prop::collection::vec(op(), 0..40),
            order in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4), 0..120),
        ) {
            let (msgs, fin) = owner_run(&ops);
            let mut r = Replica { held: None, tomb: None, history: Vec::new() };
            // The owner state "now" for gap fetches: deliveries happen after all ops.
            for (idx, mode) in &order {
                let m = &msgs[idx.index(msgs.len())];
                if *mode == 0 {
                    continue; // dropped
                }
                for _ in 0..*mode {
                    r.deliver(m, &fin); // mode 2, 3: duplicates
                }
            }
            r.deliver(&msgs[msgs.len() - 1], &fin);

            // Monotonic: the (epoch, version) a replica moves through only grows, and after
            // a removal nothing of that epoch comes back.
            for w in r.history.windows(2) {
                prop_assert!(w[0].0 <= w[1].0, "rolled back: {:?}", r.history);
                if w[0].1 {
                    prop_assert!(w[1].0.epoch > w[0].0.epoch, "resurrected: {:?}", r.history);
                }
            }
            // Every state it held was the owner's state at that version.
            let owner_states: Vec<&State> = msgs.iter().map(|m| &m.state).collect();
            if let Some(h) = &r.held {
                prop_assert!(owner_states.contains(&h), "state never seen on owner: {:?}", h);
            }
            // Converged.
            if fin.removed {
                prop_assert!(r.held.is_none());
            } else {
                prop_assert_eq!(r.held.as_ref(), Some(&fin));
            }
        }
    }
}
