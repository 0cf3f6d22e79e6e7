//! Unit tests of the store: local changes, expiry, limits, replica bytes.

use super::tests_support::*;
use super::*;

#[test]
fn create_change_renew_invalidate() {
    let s = store(65536, 0);
    let t0 = Instant::now();
    let created = s
        .apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
        .unwrap();
    let b = base_of(&created);
    assert!(matches!(&created, Outcome::Created(f) if f.ends_with(".n1")));
    assert_eq!(s.get(&b).unwrap().version, 1);
    assert_eq!(
        s.apply(Key::from_base(&b), &set(json!({"b": 2})), t0, &mut |_| {})
            .unwrap(),
        Outcome::Changed
    );
    let sess = s.get(&b).unwrap();
    assert_eq!(sess.version, 2);
    assert_eq!(Value::Object(sess.attributes()), json!({"a": 1, "b": 2}));
    let renew = Directives {
        renew: true,
        ..Default::default()
    };
    let r = s
        .apply(Key::from_base(&b), &renew, t0, &mut |_| {})
        .unwrap();
    let nb = base_of(&r);
    assert_ne!(nb, b);
    assert!(s.get(&b).is_none());
    assert_eq!(
        Value::Object(s.get(&nb).unwrap().attributes()),
        json!({"a": 1, "b": 2})
    );
    let inv = Directives {
        invalidate: true,
        set: Some("{}".into()),
        ..Default::default()
    };
    assert_eq!(
        s.apply(Key::from_base(&nb), &inv, t0, &mut |_| {}).unwrap(),
        Outcome::Invalidated
    );
    assert!(s.is_empty());
}

#[test]
fn expiry_uses_the_monotonic_clock() {
    let s = store(65536, 0);
    let t0 = Instant::now();
    let b = base_of(
        &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    assert!(s
        .access(key(&b), t0 + Duration::from_secs(1799), &mut |_| {})
        .is_some());
    // Access renewed the idle clock.
    assert!(s
        .access(key(&b), t0 + Duration::from_secs(1799 + 1800), &mut |_| {})
        .is_some());
    assert!(s
        .access(key(&b), t0 + Duration::from_secs(1799 + 3601), &mut |_| {})
        .is_none());
    assert!(s.is_empty());
    let b = base_of(
        &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    let short = Directives {
        max_inactive: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    s.apply(Key::from_base(&b), &short, t0, &mut |_| {})
        .unwrap();
    assert_eq!(s.sweep(t0 + Duration::from_secs(4), &mut |_| {}), 0);
    assert_eq!(s.sweep(t0 + Duration::from_secs(6), &mut |_| {}), 1);
}

#[test]
fn limits_are_errors_and_leave_the_session_unchanged() {
    let s = store(20, 1);
    let t0 = Instant::now();
    let b = base_of(
        &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    let err = s
        .apply(
            Key::from_base(&b),
            &set(json!({"big": "xxxxxxxxxxxxxxxxxxxx"})),
            t0,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::Directive(DirectiveError::TooLarge { .. })
    ));
    assert_eq!(
        Value::Object(s.get(&b).unwrap().attributes()),
        json!({"a": 1})
    );
    assert_eq!(s.get(&b).unwrap().version, 1);
    let err = s
        .apply(None, &set(json!({"a": 2})), t0, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, SessionError::Limit(1)));
}

#[test]
fn a_replica_holds_the_owners_bytes_and_refuses_a_malformed_delta() {
    let owner = store(65536, 0);
    let replica = SessionStore::new(
        "n2",
        SessionLimits {
            default_max_inactive: Duration::from_secs(1800),
            max_session_bytes: 65536,
            max_active_sessions: 0,
        },
        &Metrics::new(),
    );
    let t0 = Instant::now();
    let mut changes = Vec::new();
    let b = base_of(
        &owner
            .apply(None, &set(json!({"z": 1, "a": [1.5]})), t0, &mut |c| {
                changes.push(c)
            })
            .unwrap(),
    );
    for d in [
        set(json!({"m": {"x": "é"}, "z": 2})),
        Directives {
            remove: vec!["a".into()],
            ..set(json!({"b": null}))
        },
    ] {
        owner
            .apply(Key::from_base(&b), &d, t0, &mut |c| changes.push(c))
            .unwrap();
    }
    for c in &changes {
        assert_eq!(replica.apply_remote(c, t0), Remote::Applied, "{c:?}");
    }
    let (o, r) = (owner.get(&b).unwrap(), replica.get(&b).unwrap());
    assert_eq!(o.rendered, r.rendered);
    assert_eq!(
        o.rendered.to_str().unwrap(),
        r#"{"b":null,"m":{"x":"\u00e9"},"z":2}"#
    );
    // A delta whose text is not a JSON object: a gap, the copy unchanged.
    for bad in ["{bad", r#"{"a":tru}"#, "[1]", r#"{"a":1"#] {
        let c = Change::Delta {
            key: key(&b).0,
            epoch: r.epoch,
            version: r.version + 1,
            set: Some(bad.into()),
            remove: vec![],
            max_inactive_ms: None,
        };
        assert_eq!(replica.apply_remote(&c, t0), Remote::Gap, "{bad}");
        assert_eq!(replica.get(&b).unwrap().rendered, o.rendered);
    }
}

#[test]
fn a_write_planned_at_another_epoch_is_refused_and_changes_nothing() {
    let s = store(65536, 0);
    let t0 = Instant::now();
    let b = base_of(
        &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    let stale = Some(Planned {
        key: key(&b),
        epoch: Some(7),
    });
    let mut emitted = 0;
    let err = s
        .apply_planned(stale, &set(json!({"a": 2})), t0, &mut |_| emitted += 1)
        .unwrap_err();
    assert!(matches!(err, SessionError::Moved), "{err:?}");
    let inv = Directives {
        invalidate: true,
        ..Default::default()
    };
    let err = s
        .apply_planned(stale, &inv, t0, &mut |_| emitted += 1)
        .unwrap_err();
    assert!(matches!(err, SessionError::Moved), "{err:?}");
    assert_eq!(emitted, 0, "nothing replicated");
    let sess = s.get(&b).unwrap();
    assert_eq!(sess.version, 1);
    assert_eq!(Value::Object(sess.attributes()), json!({"a": 1}));
    // At the epoch it holds, the same write lands.
    let ours = Some(Planned {
        key: key(&b),
        epoch: Some(sess.epoch),
    });
    assert_eq!(
        s.apply_planned(ours, &set(json!({"a": 2})), t0, &mut |_| {})
            .unwrap(),
        Outcome::Changed
    );
}

/// The owner ("n1") created a session {"n": 1}; a voter ("v") and a claimant ("c") hold
/// copies of it.
fn owner_voter_claimant() -> (SessionStore, SessionStore, SessionStore, String, Instant) {
    let owner = store(65536, 0);
    let t0 = Instant::now();
    let mut changes = Vec::new();
    let b = base_of(
        &owner
            .apply(None, &set(json!({"n": 1})), t0, &mut |c| changes.push(c))
            .unwrap(),
    );
    let voter = SessionStore::new("v", limits(65536, 0), &Metrics::new());
    let claimant = SessionStore::new("c", limits(65536, 0), &Metrics::new());
    for c in &changes {
        assert_eq!(voter.apply_remote(c, t0), Remote::Applied);
        assert_eq!(claimant.apply_remote(c, t0), Remote::Applied);
    }
    (owner, voter, claimant, b, t0)
}

#[test]
fn a_promise_fences_the_old_owner_and_the_claim_takes_the_newest_copy() {
    let (owner, voter, claimant, b, t0) = owner_voter_claimant();
    let k = key(&b);
    // The owner writes n=2; only the voter gets it (the claimant was cut off).
    let mut late = Vec::new();
    owner
        .apply(Some(k), &set(json!({"n": 2})), t0, &mut |c| late.push(c))
        .unwrap();
    assert_eq!(voter.apply_remote(&late[0], t0), Remote::Applied);

    let at = claimant.claim_epoch(k);
    assert!(at > owner.get(&b).unwrap().epoch);
    assert!(matches!(
        claimant.promise(k, at, t0),
        Promise::Granted { .. }
    ));
    let Promise::Granted { copy, removed } = voter.promise(k, at, t0) else {
        panic!("voter refused");
    };
    assert_eq!(removed, None);
    // The same epoch again (another claimant that minted it) is refused.
    assert_eq!(voter.promise(k, at, t0), Promise::Refused { top: at });
    // The old owner's next change is fenced at the voter from now on.
    let mut zombie = Vec::new();
    owner
        .apply(Some(k), &set(json!({"n": 3})), t0, &mut |c| zombie.push(c))
        .unwrap();
    assert_eq!(voter.apply_remote(&zombie[0], t0), Remote::Fenced);

    let mut out = Vec::new();
    let got = claimant.install_claim(k, at, copy, None, t0, &mut |c| out.push(c));
    assert!(got.is_some());
    let mine = claimant.get(&b).unwrap();
    assert_eq!(&*mine.owner, "c");
    assert_eq!(mine.epoch, at);
    assert_eq!(
        Value::Object(mine.attributes()),
        json!({"n": 2}),
        "the acked write the claimant missed is in the copy it took over"
    );
    // Its whole copy replaces the voter's, and the digest tells the old owner.
    assert_eq!(voter.apply_remote(&out[0], t0), Remote::Applied);
    let f = claimant.fresher(&owner.digest(), t0);
    assert_eq!(f.changes.len(), 1);
    assert_eq!(owner.catch_up(f, t0), 1);
    assert_eq!(
        &*owner.get(&b).unwrap().owner,
        "c",
        "no stale owner after the catch-up"
    );
}

#[test]
fn a_session_removed_at_a_voter_is_not_brought_back_by_a_claim() {
    let (owner, voter, claimant, b, t0) = owner_voter_claimant();
    let k = key(&b);
    let inv = Directives {
        invalidate: true,
        ..Default::default()
    };
    let mut gone = Vec::new();
    owner
        .apply(Some(k), &inv, t0, &mut |c| gone.push(c))
        .unwrap();
    assert_eq!(voter.apply_remote(&gone[0], t0), Remote::Applied);
    let at = claimant.claim_epoch(k);
    claimant.promise(k, at, t0);
    let Promise::Granted { copy, removed } = voter.promise(k, at, t0) else {
        panic!("refused");
    };
    assert!(copy.is_none() && removed.is_some());
    assert!(claimant
        .install_claim(k, at, copy, removed, t0, &mut |_| {})
        .is_none());
    assert!(claimant.get(&b).is_none(), "the removal is final");
}
