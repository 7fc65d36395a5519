//! Exactly-once hops under `kill -9` (issue 12): two hop-emitting depots whose hops chain on,
//! at the default flush interval, and the social fanout.
//!
//! `hopchain` (see `modules/hopchain`): after every restart, `hits[k]` and `chained[k#]` must
//! equal the number of stored records with key `k` in both depots — a hop applied twice makes
//! a counter larger, a hop lost smaller. The checks run after every one of the kill points.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::Host;

const KILL_POINTS: usize = 20;
const CLIENTS: u64 = 8;
const KEYS: u64 = 24;

/// Every stored record's key, over both depots.
fn stored_keys(host: &Host) -> BTreeMap<String, u64> {
    let mut n = BTreeMap::new();
    for depot in ["left", "right"] {
        for r in host.read_depot("hopchain", depot).iter().flatten() {
            *n.entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    n
}

fn counter(host: &Host, pstate: &str, key: &str) -> u64 {
    host.select("hopchain", pstate, json!([{"key": key}]))
        .first()
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Waits until the counters equal the stored records (the restarted host replays and
/// re-sends), then asserts they do.
fn assert_exact(host: &Host, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = stored_keys(host);
        let got: BTreeMap<String, (u64, u64)> = want
            .keys()
            .map(|k| {
                let chained = counter(host, "chained", &format!("{k}#"));
                (k.clone(), (counter(host, "hits", k), chained))
            })
            .collect();
        let exact = want.iter().all(|(k, n)| got[k] == (*n, *n));
        if exact {
            return;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, n)| got[*k] != (**n, **n))
                .map(|(k, n)| format!("{k}: stored {n}, (hits, chained) {:?}", got[k]))
                .collect();
            panic!("round {round}: hop effects differ from the stored records: {wrong:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_with_two_hop_depots_and_a_chain_applies_every_hop_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("hopchain", "hopchain", "?partitions=4");
    let next_id = AtomicU64::new(0);
    let mut acked = 0usize;
    for round in 0..KILL_POINTS {
        let kill_after = Duration::from_millis(150 + 37 * (round as u64 % 8));
        let (restarted, ok) =
            host.load_then_kill9_and_restart(CLIENTS, kill_after, &next_id, |host, c, id| {
                let ack = ["none", "append", "full"][((c + id) % 3) as usize];
                let depot = if id % 2 == 0 { "left" } else { "right" };
                let body = json!({"id": id, "key": format!("k{}", id % KEYS)}).to_string();
                let path = format!("/v1/modules/hopchain/depots/{depot}/append?ack={ack}");
                let r = host.try_request("POST", &path, "application/json", body.as_bytes())?;
                match r.status {
                    200 | 202 => Some(Some(())),
                    503 => {
                        std::thread::sleep(Duration::from_millis(5));
                        Some(None)
                    }
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            });
        host = restarted;
        acked += ok.len();
        assert_exact(&host, round);
    }
    assert!(acked > 100, "the load was answered only {acked} times");
}

/// Social under `kill -9`: follows loaded first, then posts under kills. Every stored follow
/// is on both sides; every stored post is on exactly its author's followers' timelines.
#[test]
fn kill_9_during_social_fanout_delivers_every_stored_post_to_exactly_the_followers() {
    const ACCOUNTS: u64 = 60;
    const FOLLOWS_EACH: u64 = 6;
    const POST_KILLS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("social", "social", "?partitions=4");
    let account = |i: u64| format!("u{i}");
    let mut follows = Vec::new();
    for i in 0..ACCOUNTS {
        for j in 1..=FOLLOWS_EACH {
            follows.push(
                json!({"follower": account(i), "followee": account((i * 7 + j * 13) % ACCOUNTS)}),
            );
        }
    }
    host.append_all("social", "follows", "?ack=full", &follows);
    let next_id = AtomicU64::new(0);
    for round in 0..POST_KILLS {
        let kill_after = Duration::from_millis(200 + 60 * round as u64);
        let (restarted, _) =
            host.load_then_kill9_and_restart(4, kill_after, &next_id, |host, c, id| {
                let ack = ["append", "full"][((c + id) % 2) as usize];
                let body = json!({"author": account(id % ACCOUNTS), "id": format!("p{id}"),
                                  "text": "hi", "time": 1_000 + id})
                .to_string();
                let path = format!("/v1/modules/social/depots/posts/append?ack={ack}");
                let r = host.try_request("POST", &path, "application/json", body.as_bytes())?;
                match r.status {
                    200 => Some(Some(())),
                    503 => Some(None),
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            });
        host = restarted;
    }
    // Followers of each account, as stored (follows were all acked before any kill).
    let mut followers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in host.read_depot("social", "follows").iter().flatten() {
        let (a, b) = (
            f["follower"].as_str().unwrap(),
            f["followee"].as_str().unwrap(),
        );
        if a != b {
            followers.entry(b.into()).or_default().insert(a.into());
        }
    }
    for (followee, fs) in &followers {
        let stored: BTreeSet<String> = host
            .select(
                "social",
                "followers",
                json!([{"key": followee}, "map-keys"]),
            )
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(&stored, fs, "followers of {followee}");
        for f in fs {
            let following = host.select("social", "following", json!([{"key": f}, "all"]));
            assert!(
                following.contains(&json!(followee)),
                "{f} follows {followee}"
            );
        }
    }
    let posts: Vec<Value> = host
        .read_depot("social", "posts")
        .into_iter()
        .flatten()
        .collect();
    assert!(!posts.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut wrong = Vec::new();
        for i in 0..ACCOUNTS {
            let who = account(i);
            let timeline: BTreeSet<String> = host
                .select(
                    "social",
                    "home-timelines",
                    json!([{"key": who}, "map-vals"]),
                )
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect();
            let want: BTreeSet<String> = posts
                .iter()
                .filter(|p| {
                    followers
                        .get(p["author"].as_str().unwrap())
                        .is_some_and(|fs| fs.contains(&who))
                })
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect();
            if timeline != want {
                wrong.push((who, want.len(), timeline.len()));
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timelines differ from the followers of each stored post (account, want, got): {wrong:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
