//! Unit tests of idle sessions swapped out: every keyed call finds them as if they were in
//! memory, walks count them, expiry removes them, and concurrent requests never see a
//! session missing while passes move it.

use std::sync::Mutex;

use super::tests_support::*;
use super::*;
use crate::session::swap::{Slot, SwapSpace};

/// The swap space in memory (the file is `persist::swap`, tested there and end to end).
#[derive(Default)]
struct Mem {
    slots: Mutex<Vec<Option<Vec<u8>>>>,
}

impl SwapSpace for Mem {
    fn put(&self, bytes: &[u8]) -> std::io::Result<Slot> {
        let mut s = self.slots.lock().unwrap();
        s.push(Some(bytes.to_vec()));
        Ok(Slot {
            at: s.len() as u64 - 1,
            len: bytes.len() as u32,
        })
    }
    fn get(&self, slot: Slot) -> std::io::Result<Vec<u8>> {
        self.slots.lock().unwrap()[slot.at as usize]
            .clone()
            .ok_or_else(|| std::io::Error::other("freed"))
    }
    fn free(&self, slot: Slot) {
        self.slots.lock().unwrap()[slot.at as usize] = None;
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn wants_move(&self) -> bool {
        false
    }
    fn begin_move(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn is_old(&self, _: Slot) -> bool {
        false
    }
    fn end_move(&self) {}
}

fn swapping(after: Duration) -> (SessionStore, Arc<Mem>) {
    let s = store(65536, 0);
    let mem = Arc::new(Mem::default());
    s.set_swap(mem.clone(), after);
    (s, mem)
}

#[test]
fn a_swapped_session_comes_back_with_its_id_owner_and_data() {
    let (s, _) = swapping(Duration::from_secs(60));
    let t0 = Instant::now();
    let b = base_of(
        &s.apply(None, &set(json!({"cart": [1, 2]})), t0, &mut |_| {})
            .unwrap(),
    );
    let other = base_of(
        &s.apply(None, &set(json!({"x": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    let later = t0 + Duration::from_secs(500);
    s.access(key(&other), t0 + Duration::from_secs(470), &mut |_| {});
    assert_eq!(s.swap_idle(later), 1, "only the idle one leaves");
    assert_eq!((s.len(), s.swapped(), s.owned()), (2, 1, 2));
    assert_eq!(s.map.resident().len(), 1);
    let mut keys = s.owned_keys();
    keys.sort();
    let mut want = vec![key(&b).0, key(&other).0];
    want.sort();
    assert_eq!(keys, want, "walks see swapped sessions");
    assert!(s.full_copy(key(&b).0, later).is_some());
    assert_eq!(s.swapped(), 1, "a copy for a peer does not bring it in");
    let mut touched = Vec::new();
    let found = s.access(key(&b), later, &mut |c| touched.push(c)).unwrap();
    assert_eq!(found.rendered, r#"{"cart":[1,2]}"#);
    assert_eq!(&*found.owner, "n1");
    assert_eq!(s.swapped(), 0);
    assert!(
        matches!(touched.as_slice(), [Change::Touch { version: 1, .. }]),
        "the owner tells replicas of the first access after the swap: {touched:?}"
    );
    let much_later = later + Duration::from_secs(61);
    assert_eq!(s.swap_idle(much_later), 2);
    // The admin view brings it in without an access: it stays a while, then may leave.
    assert!(s.get(&b).is_some());
    assert_eq!(s.swap_idle(Instant::now()), 0, "in memory for a grace");
    assert_eq!(s.swap_idle(much_later + Duration::from_secs(2)), 1);
    assert_eq!(
        s.apply(
            Some(key(&b)),
            &set(json!({"y": 2})),
            much_later,
            &mut |_| {}
        )
        .unwrap(),
        Outcome::Changed
    );
    let back = s.get(&b).unwrap();
    assert_eq!((back.version, back.owner.as_ref()), (2, "n1"));
    assert_eq!(
        Value::Object(back.attributes()),
        json!({"cart": [1, 2], "y": 2})
    );
}

#[test]
fn a_swapped_session_expires_like_one_in_memory() {
    let (s, mem) = swapping(Duration::from_secs(1));
    let t0 = Instant::now();
    let d = Directives {
        max_inactive: Some(Duration::from_secs(10)),
        ..set(json!({"a": 1}))
    };
    let b = base_of(&s.apply(None, &d, t0, &mut |_| {}).unwrap());
    assert_eq!(s.swap_idle(t0 + Duration::from_secs(5)), 1);
    let mut removed = Vec::new();
    assert_eq!(
        s.sweep(t0 + Duration::from_secs(9), &mut |c| removed.push(c)),
        0
    );
    assert_eq!(
        s.sweep(t0 + Duration::from_secs(12), &mut |c| removed.push(c)),
        1
    );
    assert!(matches!(
        removed.as_slice(),
        [Change::Remove { version: 1, .. }]
    ));
    assert_eq!((s.len(), s.swapped()), (0, 0));
    assert!(s.get(&b).is_none());
    assert!(
        mem.slots.lock().unwrap().iter().all(Option::is_none),
        "its slot is freed"
    );
}

#[test]
fn a_replicated_change_and_a_removal_reach_a_swapped_copy() {
    let (s, _) = swapping(Duration::from_secs(1));
    let t0 = Instant::now();
    let full = FullSession {
        key: 7,
        owner: "n2".into(),
        epoch: 1,
        version: 1,
        attrs: r#"{"a":1}"#.into(),
        max_inactive_ms: 60_000,
        idle_ms: 0,
    };
    assert_eq!(s.apply_remote(&Change::Full(full), t0), Remote::Applied);
    assert_eq!(s.swap_idle(t0 + Duration::from_secs(2)), 1);
    assert_eq!(
        s.placements()[0].1.as_ref(),
        "n2",
        "the index keeps the owner"
    );
    assert_eq!(s.digest(), vec![(7, 1, 1)]);
    let delta = Change::Delta {
        key: 7,
        epoch: 1,
        version: 2,
        set: Some(r#"{"b":2}"#.into()),
        remove: vec![],
        max_inactive_ms: None,
    };
    assert_eq!(
        s.apply_remote(&delta, t0 + Duration::from_secs(3)),
        Remote::Applied
    );
    assert_eq!(s.full_copy(7, t0).unwrap().attrs, r#"{"a":1,"b":2}"#);
    assert_eq!(
        s.swap_idle(t0 + Duration::from_millis(3500)),
        0,
        "just written"
    );
    assert_eq!(s.swap_idle(Instant::now() + Duration::from_secs(9)), 1);
    let rm = Change::Remove {
        key: 7,
        epoch: 1,
        version: 3,
    };
    assert_eq!(
        s.apply_remote(&rm, t0 + Duration::from_secs(10)),
        Remote::Applied
    );
    assert_eq!((s.len(), s.swapped()), (0, 0));
    let again = Change::Full(FullSession {
        key: 7,
        owner: "n2".into(),
        epoch: 1,
        version: 2,
        attrs: "{}".into(),
        max_inactive_ms: 60_000,
        idle_ms: 0,
    });
    assert_eq!(
        s.apply_remote(&again, t0),
        Remote::Stale,
        "a removal stays removed"
    );
}

#[test]
fn a_lost_swap_record_is_counted_and_the_session_is_absent_not_wrong() {
    let (s, mem) = swapping(Duration::from_secs(1));
    let t0 = Instant::now();
    let b = base_of(
        &s.apply(None, &set(json!({"a": 1})), t0, &mut |_| {})
            .unwrap(),
    );
    assert_eq!(s.swap_idle(t0 + Duration::from_secs(2)), 1);
    mem.slots.lock().unwrap()[0] = Some(b"not a record".to_vec());
    assert!(s
        .access(key(&b), t0 + Duration::from_secs(3), &mut |_| {})
        .is_none());
    assert_eq!(
        (s.map.lost.get(), s.len(), s.counters.active.get()),
        (1, 0, 0)
    );
}

#[test]
fn requests_never_miss_a_session_while_passes_swap_it() {
    let (s, _) = swapping(Duration::ZERO);
    let s = Arc::new(s);
    // Made in the past: the first swap of each needs no grace.
    let t0 = Instant::now() - Duration::from_secs(10);
    let bases: Vec<String> = (0..64)
        .map(|i| {
            base_of(
                &s.apply(None, &set(json!({"i": i})), t0, &mut |_| {})
                    .unwrap(),
            )
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += s.swap_idle(Instant::now());
            }
            n
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (s, bases) = (s.clone(), bases.clone());
            std::thread::spawn(move || {
                // Bounded: long enough for each session to leave and come back twice.
                let until = Instant::now() + Duration::from_millis(2500);
                let mut round = 0;
                while Instant::now() < until {
                    round += 1;
                    let b = &bases[(round * 7 + r) % bases.len()];
                    let k = key(b);
                    let now = Instant::now();
                    if round % 3 == 0 {
                        let d = set(json!({ "r": round }));
                        assert!(s.apply(Some(k), &d, now, &mut |_| {}).is_ok());
                    } else {
                        assert!(s.access(k, now, &mut |_| {}).is_some(), "{b} missing");
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved = swapper.join().unwrap();
    assert!(
        moved > 128,
        "passes moved sessions while requests ran ({moved})"
    );
    assert_eq!(s.len(), 64, "no session lost or duplicated");
    assert_eq!(s.map.resident().len() + s.swapped(), 64);
}

#[test]
fn a_swapped_entry_is_48_bytes_with_its_key() {
    assert_eq!(std::mem::size_of::<(Key, swap::Swapped)>(), 48);
}

#[test]
fn a_slot_packs_into_one_word_or_stays_in_memory() {
    let at = |file: bool, off: u64| if file { (1 << 63) | off } else { off };
    for (file, off, len) in [
        (false, 0, 0),
        (true, (1 << 40) - 1, (1 << 23) - 1),
        (true, 12345, 200),
    ] {
        let slot = Slot {
            at: at(file, off),
            len,
        };
        assert_eq!(swap::unpack(swap::pack(slot).unwrap()), slot);
    }
    assert_eq!(
        swap::pack(Slot {
            at: 1 << 40,
            len: 1
        }),
        None,
        "past 1 TiB"
    );
    assert_eq!(
        swap::pack(Slot {
            at: 0,
            len: 1 << 23
        }),
        None,
        "past 8 MiB"
    );
}

/// A replica copy swapped out, as a BackupManager or a takeover meets it: a voter's promise
/// answers its copy (brought in, then fenced), a Drop forgets it and frees its slot, and
/// the session limit counts it.
#[test]
fn claims_drops_and_limits_see_a_swapped_copy() {
    let s = store(65536, 2);
    let mem = Arc::new(Mem::default());
    s.set_swap(mem.clone(), Duration::from_secs(1));
    let t0 = Instant::now() - Duration::from_secs(30);
    for key in [7u128, 8] {
        let full = FullSession {
            key,
            owner: "n2".into(),
            epoch: 5,
            version: 3,
            attrs: r#"{"a":1}"#.into(),
            max_inactive_ms: 600_000,
            idle_ms: 0,
        };
        assert_eq!(s.apply_remote(&Change::Full(full), t0), Remote::Applied);
    }
    let now = Instant::now();
    // Made long ago: no grace left, both leave.
    assert_eq!(s.swap_idle(now + Duration::from_secs(2)), 2);
    assert!(
        matches!(
            s.apply(None, &set(json!({"x": 1})), now, &mut |_| {}),
            Err(SessionError::Limit(2))
        ),
        "swapped sessions count toward max_active_sessions"
    );
    match s.promise(Key(7), 9, now) {
        Promise::Granted { copy: Some(c), .. } => {
            assert_eq!((c.epoch, c.version, c.attrs.as_str()), (5, 3, r#"{"a":1}"#));
        }
        other => panic!("{other:?}"),
    }
    let stale = Change::Delta {
        key: 7,
        epoch: 5,
        version: 4,
        set: Some(r#"{"b":2}"#.into()),
        remove: vec![],
        max_inactive_ms: None,
    };
    assert_eq!(
        s.apply_remote(&stale, now),
        Remote::Fenced,
        "the promise fences epoch 5"
    );
    let drop8 = Change::Drop {
        key: 8,
        epoch: 5,
        version: 3,
    };
    assert_eq!(s.apply_remote(&drop8, now), Remote::Applied);
    assert_eq!((s.len(), s.swapped()), (1, 0));
    assert!(
        mem.slots.lock().unwrap().iter().all(Option::is_none),
        "both slots freed"
    );
}
