//! The store's invariants: LRU spilling, puts that cannot fit, leases that outlive a
//! delete, accounts that stay right under concurrent use, objects settled once.

use std::path::Path;

use prism_protocol::ErrorKind;
use prometheus::{IntCounter, IntGauge};

use super::*;

fn metrics() -> StoreMetrics {
    StoreMetrics {
        objects: IntGauge::new("o", "o").unwrap(),
        memory_bytes: IntGauge::new("m", "m").unwrap(),
        spilled_bytes: IntGauge::new("s", "s").unwrap(),
        spills: IntCounter::new("sp", "sp").unwrap(),
        restores: IntCounter::new("r", "r").unwrap(),
        put_failures: IntCounter::new("f", "f").unwrap(),
    }
}

fn store(capacity: usize, dir: &Path) -> Arc<Store> {
    Arc::new(Store::new(capacity, dir.to_owned(), Duration::from_secs(60), metrics()))
}

fn meta(n: usize) -> Meta {
    Meta {
        datatype: DType::U8,
        shape: vec![n],
    }
}

const CLIENT: Owner = Owner::Client {
    ttl: Duration::from_secs(60),
};

#[test]
fn refs_are_32_hex_digits_and_round_trip() {
    let r = ObjectRef::random();
    let s = r.to_string();
    assert_eq!(s.len(), 32);
    assert_eq!(s.parse::<ObjectRef>().unwrap(), r);
    assert!("xyz".parse::<ObjectRef>().is_err());
    assert!("0123456789abcdef0123456789abcdeg".parse::<ObjectRef>().is_err());
    assert_ne!(ObjectRef::random(), ObjectRef::random());
}

#[test]
fn spills_the_least_recently_used_object_not_in_use_and_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(250, dir.path());
    let a = s.put(meta(100), &[1; 100], CLIENT).unwrap();
    let b = s.put(meta(100), &[2; 100], CLIENT).unwrap();
    let held = s.lease(a).unwrap().unwrap(); // `a` is older, but in use
    let c = s.put(meta(100), &[3; 100], CLIENT).unwrap();
    assert_eq!(s.info(b).unwrap().state, ObjectState::Spilled);
    assert_eq!(s.info(a).unwrap().state, ObjectState::Ready);
    assert_eq!(s.usage(), (3, 200, 100));
    drop(held);
    // A lease reads the mapping; restoring brings `b` back, spilling the least
    // recently used of a and c.
    let mapped = s.lease(b).unwrap().unwrap();
    assert!(mapped.is_spilled());
    assert_eq!(mapped.bytes(), &[2; 100][..]);
    let lb = s.restore(mapped);
    assert!(!lb.is_spilled());
    assert_eq!(lb.bytes(), &[2; 100][..]);
    assert_eq!(s.info(b).unwrap().state, ObjectState::Ready);
    assert_eq!(s.usage(), (3, 200, 100));
    for (r, v) in [(a, 1), (c, 3)] {
        assert_eq!(s.lease(r).unwrap().unwrap().bytes(), &[v; 100][..]);
    }
    drop(lb);
    // Restoring an object deleted meanwhile changes nothing.
    let spilled = [a, c]
        .into_iter()
        .find(|r| s.info(*r).unwrap().state == ObjectState::Spilled)
        .unwrap();
    let l = s.lease(spilled).unwrap().unwrap();
    assert!(s.delete(spilled));
    let l = s.restore(l);
    assert!(l.is_spilled());
    assert_eq!(s.usage(), (2, 200, 0));
}

#[test]
fn a_put_that_cannot_fit_fails_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(150, dir.path());
    let a = s.put(meta(100), &[7; 100], CLIENT).unwrap();
    let _held = s.lease(a).unwrap().unwrap();
    let err = s.put(meta(100), &[8; 100], CLIENT).unwrap_err();
    assert!(err.to_string().contains("not in use"), "{err}");
    assert!(matches!(
        s.put(meta(200), &[0; 200], CLIENT),
        Err(StoreError::Full { .. })
    ));
    assert_eq!(s.usage(), (1, 100, 0));
    assert_eq!(s.lease(a).unwrap().unwrap().bytes(), &[7; 100][..]);
}

#[test]
fn spill_failure_leaves_the_object_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"file").unwrap();
    let s = store(150, &blocker);
    let a = s.put(meta(100), &[5; 100], CLIENT).unwrap();
    let err = s.put(meta(100), &[6; 100], CLIENT).unwrap_err();
    assert!(err.to_string().contains("spilling to"), "{err}");
    assert_eq!(s.info(a).unwrap().state, ObjectState::Ready);
    assert_eq!(s.usage(), (1, 100, 0));
}

#[test]
fn a_lease_outlives_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    let a = s.put(meta(3), &[1, 2, 3], CLIENT).unwrap();
    let l = s.lease(a).unwrap().unwrap();
    assert!(s.delete(a));
    assert!(!s.delete(a));
    assert!(matches!(s.lease(a), Err(StoreError::NotFound(_))));
    assert_eq!(l.bytes(), &[1, 2, 3]);
    assert_eq!(s.usage(), (0, 0, 0));
}

#[tokio::test]
async fn get_and_wait_block_until_settled() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    let p1 = s.create_pending(CLIENT).unwrap();
    let p2 = s.create_pending(CLIENT).unwrap();
    let r = s.put(meta(1), &[9], CLIENT).unwrap();
    let err = s.get(p1, Some(Duration::from_millis(20))).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }));
    let (ready, not_ready) = s.wait(&[p1, p2, r], 1, Some(Duration::from_millis(10))).await.unwrap();
    assert_eq!((ready, not_ready), (vec![r], vec![p1, p2]));

    let s2 = Arc::clone(&s);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.fulfil(p2, meta(2), &[4, 5]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.fail(
            p1,
            Failure {
                kind: ErrorKind::InjectedFault,
                message: "boom".into(),
                attempts: 2,
            },
        );
    });
    let (ready, not_ready) = s.wait(&[p1, p2, r], 3, None).await.unwrap();
    assert_eq!(ready, vec![r, p2, p1]);
    assert!(not_ready.is_empty());
    assert_eq!(s.get(p2, None).await.unwrap().bytes(), &[4, 5]);
    let err = s.get(p1, None).await.unwrap_err().to_string();
    assert!(err.contains("InjectedFault: boom (after 2 attempts)"), "{err}");
}

#[tokio::test]
async fn client_objects_expire_unless_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    let short = Owner::Client {
        ttl: Duration::from_millis(1),
    };
    let a = s.put(meta(1), &[1], short).unwrap();
    let b = s.put(meta(1), &[2], short).unwrap();
    let server = s.put(meta(1), &[3], Owner::Server).unwrap();
    let held = s.lease(b).unwrap().unwrap();
    let later = Instant::now() + Duration::from_secs(1);
    assert_eq!(s.expire(later), 1);
    assert!(s.info(a).is_err());
    assert!(s.info(b).is_ok() && s.info(server).is_ok());
    drop(held);
    assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 1);
    assert!(s.info(server).is_ok());

    // A pending object does not expire while its work runs, however often it is
    // looked at; its time-to-live starts when it settles.
    let pending = s.create_pending(short).unwrap();
    s.info(pending).unwrap();
    assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 0);
    s.fulfil(pending, meta(1), &[4]).unwrap();
    assert_eq!(s.expire(Instant::now() + Duration::from_secs(1)), 1);
}

/// Four threads put, read, restore and delete at once on a store that must spill;
/// afterwards the byte counts match the objects and every object reads back intact.
#[test]
fn concurrent_puts_reads_and_deletes_keep_the_accounts_right() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(4096, dir.path());
    let stored = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let s = Arc::clone(&s);
            let stored = Arc::clone(&stored);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..200u32 {
                    let v = t.wrapping_mul(64).wrapping_add(i as u8);
                    let size = 100 + (i as usize * 37) % 900;
                    if let Ok(r) = s.put(meta(size), &vec![v; size], CLIENT) {
                        stored.fetch_add(1, Ordering::Relaxed);
                        mine.push((r, v, size));
                    }
                    if i % 3 == 0 && !mine.is_empty() {
                        let (r, v, size) = mine[(i as usize * 7) % mine.len()];
                        let l = s.restore(s.lease(r).unwrap().unwrap());
                        assert_eq!(l.bytes(), &vec![v; size][..]);
                    }
                    if i % 4 == 0 && mine.len() > 3 {
                        let (r, ..) = mine.remove(0);
                        assert!(s.delete(r));
                    }
                }
                mine
            })
        })
        .collect();
    let kept: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let (mut memory, mut spilled) = (0, 0);
    for (r, v, size) in &kept {
        let l = s.lease(*r).unwrap().unwrap();
        assert_eq!(l.bytes(), &vec![*v; *size][..]);
        if l.is_spilled() {
            spilled += size;
        } else {
            memory += size;
        }
    }
    assert_eq!(s.usage(), (kept.len(), memory, spilled));
    assert!(memory <= 4096);
    // A put fails only while every object in memory is leased: rare here.
    assert!(
        stored.load(Ordering::Relaxed) >= 700,
        "{} of 800 puts stored",
        stored.load(Ordering::Relaxed)
    );
    assert!(spilled > 0, "the store had to spill");
}

#[test]
fn a_settled_object_is_never_settled_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    let p = s.create_pending(CLIENT).unwrap();
    s.fulfil(p, meta(2), &[1, 2]).unwrap();
    s.fail(
        p,
        Failure {
            kind: ErrorKind::Lost,
            message: "late".into(),
            attempts: 0,
        },
    );
    s.fulfil(p, meta(3), &[7, 7, 7]).unwrap();
    assert_eq!(s.lease(p).unwrap().unwrap().bytes(), &[1, 2]);
    assert_eq!(s.usage(), (1, 2, 0));
    let clone = s.lease(p).unwrap().unwrap().clone();
    assert_eq!(clone.bytes(), &[1, 2]);
}

#[test]
fn a_put_whose_caller_stopped_waiting_is_deleted_by_whichever_side_comes_second() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    // The caller gives up first: the put, finishing, learns it and deletes.
    let cell = Mutex::new(Handoff::Waiting);
    assert_eq!(Handoff::abandon(&cell), None);
    let r = s.put(meta(4), &[1; 4], CLIENT).unwrap();
    assert!(!Handoff::stored(&cell, r), "nobody waits for it");
    // The put finishes first: the caller, giving up, finds the ref and deletes.
    let cell = Mutex::new(Handoff::Waiting);
    assert!(Handoff::stored(&cell, r));
    assert_eq!(Handoff::abandon(&cell), Some(r));
    // The caller took its ref: nothing is deleted.
    let cell = Mutex::new(Handoff::Waiting);
    assert!(Handoff::stored(&cell, r));
    Handoff::take(&cell);
    assert_eq!(Handoff::abandon(&cell), None);
    assert_eq!(*cell.lock().unwrap(), Handoff::Taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_from_async_code_hands_over_its_ref() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(1000, dir.path());
    let r = s.put_async(meta(3), vec![1u8, 2, 3], CLIENT).await.unwrap();
    assert_eq!(s.lease(r).unwrap().unwrap().bytes(), &[1, 2, 3]);
    let y = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2]), vec![1.0f32, -2.0]).unwrap();
    let r = s.put_array(y, DType::I16, CLIENT).await.unwrap();
    assert_eq!(s.lease(r).unwrap().unwrap().bytes(), &[1, 0, 0xfe, 0xff]);
    assert_eq!(s.usage().0, 2);
}

#[test]
fn spilling_stops_at_max_spill_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::new(250, dir.path().to_owned(), Duration::from_secs(60), metrics());
    s.limits.max_spill_bytes = 150;
    let s = Arc::new(s);
    let a = s.put(meta(100), &[1; 100], CLIENT).unwrap();
    let _b = s.put(meta(100), &[2; 100], CLIENT).unwrap();
    // One spill (100 bytes) fits the cap; a second one would not.
    let _c = s.put(meta(100), &[3; 100], CLIENT).unwrap();
    assert_eq!(s.info(a).unwrap().state, ObjectState::Spilled);
    assert_eq!(s.usage(), (3, 200, 100));
    let e = s.put(meta(100), &[4; 100], CLIENT).unwrap_err();
    assert!(matches!(e, StoreError::Full { .. }), "{e}");
    assert!(
        e.to_string().contains("max_spill_bytes (150 bytes, 100 spilled)"),
        "{e}"
    );
    assert_eq!(s.usage(), (3, 200, 100), "nothing changed");
    // Deleting the spilled object gives its share back.
    assert!(s.delete(a));
    s.put(meta(100), &[5; 100], CLIENT).unwrap();
    assert_eq!(s.usage(), (3, 200, 100));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "one spill file on disk"
    );
}

#[test]
fn the_store_holds_at_most_max_objects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::new(1 << 20, dir.path().to_owned(), Duration::from_secs(60), metrics());
    s.limits.max_objects = 2;
    let s = Arc::new(s);
    let a = s.put(meta(1), &[1], CLIENT).unwrap();
    let _p = s.create_pending(CLIENT).unwrap();
    let e = s.put(meta(1), &[2], CLIENT).unwrap_err();
    assert!(matches!(e, StoreError::TooMany { limit: 2 }), "{e}");
    assert!(e.to_string().contains("object_store.max_objects"), "{e}");
    assert!(matches!(s.create_pending(CLIENT), Err(StoreError::TooMany { .. })));
    assert!(s.delete(a));
    s.put(meta(1), &[3], CLIENT).unwrap();
}

#[test]
fn the_store_is_dropped_once_its_last_user_goes() {
    // Puts, commits, fulfils and restores hold the store only while they run: dropping
    // the server's handle drops the store (and so ends its expiry task).
    let dir = tempfile::tempdir().unwrap();
    let s = store(150, dir.path());
    let a = s.put(meta(100), &[1; 100], CLIENT).unwrap();
    let _b = s.put(meta(100), &[2; 100], CLIENT).unwrap(); // spills `a`
    let r = s.reserve(10).unwrap();
    let buf = s.allocate(10).unwrap();
    s.commit(r, meta(10), buf, CLIENT);
    let p = s.create_pending(CLIENT).unwrap();
    s.fulfil(p, meta(1), &[7]).unwrap();
    let restored = s.restore(s.lease(a).unwrap().unwrap());
    drop(restored);
    drop(s.reserve(5).unwrap()); // a reservation given back
    let weak = Arc::downgrade(&s);
    assert_eq!(Arc::strong_count(&s), 1, "nothing else holds the store");
    drop(s);
    assert!(weak.upgrade().is_none(), "the store was dropped");
}
