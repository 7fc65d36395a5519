//! Model tests of the whole subscription pipeline over a real store: random transforms
//! (the PState model test's generator) committed through the partition's commit path, random
//! subscribed paths, and at checkpoints every subscriber's value — its first value with every
//! event applied, in JSON as a client does — must equal a fresh select. Also: a position seen
//! twice (a store that lost commits) resets every feed. Seeds are fixed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;

use super::{FeedSpec, Next, SubscriptionLimits, Subscriptions};
use crate::client::sse::{SseEvent, Watched};
use crate::partition::seams::{Commit, PartitionStore};
use crate::pstate::tests::{rand_transform, select_path, Rng, BUCKETS, PEOPLE};
use crate::pstate::{key, select_committed, Catalog, Navigator, PStateStore, Schema, Session};
use crate::value::to_json;

fn catalog() -> Arc<Catalog> {
    let mut c = Catalog::default();
    c.schemas
        .insert("people".into(), Schema::parse(PEOPLE).unwrap());
    c.schemas
        .insert("buckets".into(), Schema::parse(BUCKETS).unwrap());
    Arc::new(c)
}

fn parse_frame(frame: &[u8]) -> SseEvent {
    let text = std::str::from_utf8(frame).unwrap();
    let (mut id, mut event, mut data) = (None, String::new(), J::Null);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).unwrap();
        }
    }
    SseEvent { id, event, data }
}

fn spec(pstate: &str, path: &[Navigator]) -> FeedSpec {
    let top_key = match path.first() {
        Some(Navigator::Key(k) | Navigator::Must(k)) => Some(key::encode(k).unwrap()),
        _ => None,
    };
    FeedSpec {
        module: "m".into(),
        pstate: pstate.into(),
        path: path.to_vec(),
        path_key: format!("{path:?}"),
        top_key,
        partition: 0,
        values_max: 10_000,
        bytes_max: 8 << 20,
    }
}

/// Reads events until `w` equals `expected`; panics after 10 s.
fn catch_up(
    rt: &tokio::runtime::Runtime,
    sub: &mut super::Subscription,
    w: &mut Watched,
    expected: &[J],
    ctx: &str,
) {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while w.values != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{ctx}: never caught up: have {:?}, select {expected:?}",
                w.values
            );
            match sub.next(Duration::from_millis(100)).await {
                None => {}
                Some(Next::Event(e)) => {
                    let e = parse_frame(&e.frame);
                    w.apply(&e).unwrap_or_else(|m| {
                        panic!("{ctx}: {e:?} does not apply to {:?}: {m}", w.values)
                    });
                }
                Some(Next::End(e)) => panic!("{ctx}: ended: {:?}", parse_frame(&e.frame)),
            }
        }
    });
}

/// Increments `buckets[bucket][field]` and commits it, as the partition does, at `position`.
fn increment_and_commit(
    store: &PStateStore,
    session: &mut Session,
    bucket: i64,
    field: &str,
    position: u64,
) {
    let p = vec![
        Navigator::Key(crate::value::Value::Integer(bucket.into())),
        Navigator::Key(crate::value::Value::Text(field.into())),
    ];
    session
        .transform("buckets", &p, &crate::pstate::TransformOp::Increment(1))
        .unwrap();
    session.end_record(true);
    let c = Commit {
        writes: session.take_writes(),
        position,
        ..Commit::default()
    };
    store.commit(&c, false).unwrap();
}

#[test]
fn subscribers_follow_random_histories_exactly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for seed in 1..=12u64 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
        let catalog = catalog();
        store.changes().started(0, Arc::clone(&catalog));
        let subs = Subscriptions::new(SubscriptionLimits::default());
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut session = Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 1, 10_000);
        // Random paths; those a select refuses on the empty state are left out.
        let mut watching = Vec::new();
        while watching.len() < 10 {
            let pstate = *r.pick(&["people", "buckets"]);
            let mut path = Vec::new();
            select_path(&mut r, catalog.schema(pstate).unwrap(), &mut path, 0);
            if select_committed(&store, &catalog, pstate, &path, 10_000).is_err() {
                continue;
            }
            let permit = subs.admit("m").unwrap();
            let sub = subs.subscribe(&store, spec(pstate, &path), None, permit);
            watching.push((pstate, path, sub, Watched::default()));
        }
        let mut position = 0;
        for step in 0..600 {
            let (pstate, path, op) = rand_transform(&mut r);
            let ok = session.transform(pstate, &path, &op).is_ok();
            session.end_record(ok);
            if r.chance(30) {
                position += 1;
                let commit = Commit {
                    writes: session.take_writes(),
                    position,
                    ..Commit::default()
                };
                store.commit(&commit, r.chance(20)).unwrap();
            }
            if step % 50 == 49 || step == 599 {
                for (i, (pstate, path, sub, w)) in watching.iter_mut().enumerate() {
                    let ctx = format!("seed {seed} step {step} subscriber {i} {pstate} {path:?}");
                    let Ok(now) = select_committed(&store, &catalog, pstate, path, 10_000) else {
                        continue; // the feed ends with an error event; not compared
                    };
                    let expected: Vec<J> = now.iter().map(to_json).collect();
                    catch_up(&rt, sub, w, &expected, &ctx);
                }
            }
        }
    }
}

#[test]
fn a_position_seen_twice_resets_every_feed() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
    let catalog = catalog();
    store.changes().started(0, Arc::clone(&catalog));
    let subs = Subscriptions::new(SubscriptionLimits::default());
    let path = vec![Navigator::Key(crate::value::Value::Integer(5.into()))];
    let mut sub = subs.subscribe(
        &store,
        spec("buckets", &path),
        None,
        subs.admit("m").unwrap(),
    );
    let mut session = Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 1, 10_000);
    let put = |session: &mut Session, position: u64, field: &str| {
        increment_and_commit(&store, session, 5, field, position)
    };
    let mut events = Vec::new();
    let take = |sub: &mut super::Subscription, n: usize, events: &mut Vec<SseEvent>| {
        rt.block_on(async {
            while events.len() < n {
                match sub.next(Duration::from_secs(5)).await {
                    Some(Next::Event(e)) => events.push(parse_frame(&e.frame)),
                    other => panic!(
                        "no event {} after {:?}: {}",
                        events.len() + 1,
                        events,
                        other.is_none()
                    ),
                }
            }
        })
    };
    take(&mut sub, 1, &mut events);
    put(&mut session, 1, "a");
    put(&mut session, 2, "b");
    take(&mut sub, 3, &mut events);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["value", "diff", "diff"]);
    let inc = events[2].id.clone().unwrap();
    assert!(inc.ends_with("-2"));
    // The store restarted at position 1 (commit 2 was lost): everyone starts over.
    store.changes().started(1, Arc::clone(&catalog));
    take(&mut sub, 4, &mut events);
    assert_eq!(events[3].event, "reset");
    assert_ne!(
        events[3].id.as_deref().unwrap().split('-').next(),
        inc.split('-').next()
    );
    // The next commit diffs from the reset's value, under the new incarnation.
    put(&mut session, 3, "c");
    take(&mut sub, 5, &mut events);
    assert_eq!(events[4].event, "diff");
    assert_eq!(
        events[4].id.as_deref().unwrap().split('-').next(),
        events[3].id.as_deref().unwrap().split('-').next()
    );
    // A replay that commits a position already published (it names another state now) resets too.
    put(&mut session, 3, "d");
    take(&mut sub, 6, &mut events);
    assert_eq!(events[5].event, "reset");
    assert_eq!(
        events[5].data["values"],
        serde_json::json!([{"a": 1, "b": 1, "c": 1, "d": 1}])
    );
}

#[test]
fn a_feed_that_falls_behind_coalesces_and_stays_exact() {
    use super::feed::{Snap, Subscriber, PENDING_MAX};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
    let catalog = catalog();
    store.changes().started(0, Arc::clone(&catalog));
    let key = crate::value::Value::Integer(1.into());
    let path = vec![Navigator::Key(key.clone())];
    // No evaluator thread: the test runs the feed itself, after 100 commits piled up.
    let (scheduler, _queued) = std::sync::mpsc::channel();
    let feed = super::Feed::new(spec("buckets", &path), &store, scheduler, Duration::ZERO);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1_000);
    let end = Arc::new(std::sync::OnceLock::new());
    assert!(feed.join(Subscriber { tx, end }, None).is_ok());
    feed.run();
    let mut session = Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 1, 10_000);
    for position in 1..=100u64 {
        increment_and_commit(
            &store,
            &mut session,
            1,
            &format!("f{}", position % 7),
            position,
        );
        feed.offer(Arc::new(Snap {
            incarnation: store.changes().incarnation(),
            position,
            txn: store.begin_read().unwrap(),
        }));
    }
    feed.run();
    let mut w = Watched::default();
    let mut events = 0;
    while let Ok(e) = rx.try_recv() {
        w.apply(&parse_frame(&e.frame)).unwrap();
        events += 1;
    }
    // The value, then one diff per snapshot kept: the oldest were dropped, none missed.
    assert_eq!(events, 1 + PENDING_MAX);
    assert_eq!(
        w.last_id.as_deref().unwrap().rsplit('-').next(),
        Some("100")
    );
    let now = select_committed(&store, &catalog, "buckets", &path, 10_000).unwrap();
    assert_eq!(w.values, now.iter().map(to_json).collect::<Vec<_>>());
}
