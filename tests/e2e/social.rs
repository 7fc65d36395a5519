//! The `social` module end to end: fanout to exactly the followers at the time of posting,
//! unfollows, ordered, paged and trimmed timelines, exact counts, friends-of-friends across
//! partitions, and a 20,000-follower fanout delivered completely while the author's partition
//! keeps answering other posts.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{module_wasm, Host};

/// `TIMELINE_ENTRIES_MAX` of `modules/social`.
const TIMELINE_ENTRIES_MAX: usize = 800;
/// `FANOUT_CHUNK_FOLLOWERS` of `modules/social`.
const FANOUT_CHUNK_FOLLOWERS: usize = 2_000;

fn social_host(partitions: u32) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let r = host.deploy(
        "social",
        &module_wasm("social"),
        &format!("?partitions={partitions}"),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    (dir, host)
}

fn append(host: &Host, depot: &str, record: Value) -> Value {
    let r = host.append("social", depot, &record);
    assert_eq!(
        r.status,
        200,
        "{record}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Appends NDJSON lines with `ack=full`; returns each line's result, none an error.
fn append_batch(host: &Host, depot: &str, lines: &[Value]) -> Vec<Value> {
    host.append_all("social", depot, "?ack=full", lines)
}

fn follow(host: &Host, follower: &str, followee: &str) {
    append(
        host,
        "follows",
        json!({"follower": follower, "followee": followee}),
    );
}

fn unfollow(host: &Host, follower: &str, followee: &str) {
    append(
        host,
        "follows",
        json!({"follower": follower, "followee": followee, "op": "unfollow"}),
    );
}

/// Posts with `ack=full`; returns the number of timelines the post is delivered to.
fn post(host: &Host, author: &str, id: &str, time: i64) -> u64 {
    let a = append(
        host,
        "posts",
        json!({"author": author, "id": id, "text": format!("{author} says {id}"), "time": time}),
    );
    a["results"]["posts"].as_u64().expect("recipients")
}

fn query(host: &Host, name: &str, args: Value) -> Value {
    let r = host.post_json(&format!("/v1/modules/social/queries/{name}"), &args);
    assert_eq!(
        r.status,
        200,
        "{name} {args}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["result"].clone()
}

/// The ids of the posts on `account`'s timeline page, in the order answered.
fn timeline_ids(host: &Host, account: &str, limit: usize) -> Vec<String> {
    ids(&query(
        host,
        "timeline",
        json!({"account": account, "limit": limit}),
    ))
}

fn ids(page: &Value) -> Vec<String> {
    page["posts"]
        .as_array()
        .expect("posts")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn counts(host: &Host, account: &str) -> (u64, u64, u64) {
    let p = query(host, "profile", json!({"account": account}));
    (
        p["followers"].as_u64().unwrap(),
        p["following"].as_u64().unwrap(),
        p["posts"].as_u64().unwrap(),
    )
}

#[test]
fn a_post_reaches_exactly_the_followers_at_the_time_of_posting() {
    let (_dir, host) = social_host(8);
    let fans: Vec<String> = (0..12).map(|i| format!("fan{i}")).collect();
    for f in &fans {
        follow(&host, f, "bob");
    }
    follow(&host, "gone", "bob");
    unfollow(&host, "gone", "bob");
    follow(&host, "bob", "bob"); // following yourself is ignored
    follow(&host, "fan0", "bob"); // a second follow changes nothing
    assert_eq!(counts(&host, "bob"), (12, 0, 0));

    assert_eq!(post(&host, "bob", "p1", 100), 12);
    follow(&host, "late", "bob");
    for f in &fans {
        assert_eq!(timeline_ids(&host, f, 10), ["p1"], "{f}");
    }
    assert!(
        timeline_ids(&host, "late", 10).is_empty(),
        "followed after p1"
    );
    assert!(
        timeline_ids(&host, "gone", 10).is_empty(),
        "unfollowed before p1"
    );
    assert!(
        timeline_ids(&host, "bob", 10).is_empty(),
        "no self-delivery"
    );

    // Unfollow stops delivery; what was delivered stays.
    unfollow(&host, "fan0", "bob");
    assert_eq!(post(&host, "bob", "p2", 200), 12);
    assert_eq!(timeline_ids(&host, "fan0", 10), ["p1"]);
    assert_eq!(timeline_ids(&host, "fan1", 10), ["p2", "p1"]);
    assert_eq!(timeline_ids(&host, "late", 10), ["p2"]);

    // The same (time, id) again is stored and delivered once.
    assert_eq!(post(&host, "bob", "p2", 200), 0);
    assert_eq!(timeline_ids(&host, "fan1", 10), ["p2", "p1"]);

    assert_eq!(counts(&host, "bob"), (12, 0, 2));
    assert_eq!(counts(&host, "fan0"), (0, 0, 0));
    assert_eq!(counts(&host, "fan1"), (0, 1, 0));
    assert_eq!(counts(&host, "gone"), (0, 0, 0));
    let followers = host.select("social", "followers", json!([{"key": "bob"}, "map-keys"]));
    let mut want: Vec<&str> = fans[1..].iter().map(String::as_str).collect();
    want.push("late");
    want.sort();
    assert_eq!(followers, want.iter().map(|f| json!(f)).collect::<Vec<_>>());

    append(
        &host,
        "profiles",
        json!({"account": "bob", "name": "Bob", "bio": "posts things"}),
    );
    append(
        &host,
        "profiles",
        json!({"account": "bob", "bio": "posts less"}),
    );
    assert_eq!(
        query(&host, "profile", json!({"account": "bob"})),
        json!({"account": "bob", "name": "Bob", "bio": "posts less",
               "followers": 12, "following": 0, "posts": 2})
    );
}

#[test]
fn timelines_are_newest_first_paged_and_trimmed() {
    let (_dir, host) = social_host(4);
    follow(&host, "reader", "ann");
    follow(&host, "reader", "ben");
    // More than the timeline holds, from two authors, times out of arrival order.
    let n = TIMELINE_ENTRIES_MAX + 5;
    let time = |i: usize| ((i * 7919) % n) as i64 * 10;
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            let author = if i % 3 == 0 { "ben" } else { "ann" };
            json!({"author": author, "id": format!("q{i}"), "text": "x", "time": time(i)})
        })
        .collect();
    let results = append_batch(&host, "posts", &lines);
    assert!(results.iter().all(|r| r["results"]["posts"] == 1));

    let mut newest: Vec<(i64, usize)> = (0..n).map(|i| (time(i), i)).collect();
    newest.sort_by(|a, b| b.cmp(a));
    let want: Vec<String> = newest[..TIMELINE_ENTRIES_MAX]
        .iter()
        .map(|(_, i)| format!("q{i}"))
        .collect();

    let size = host.select(
        "social",
        "home-timelines",
        json!([{"key": "reader"}, "count"]),
    );
    assert_eq!(size, [json!(TIMELINE_ENTRIES_MAX)], "trimmed to N");
    let page = query(
        &host,
        "timeline",
        json!({"account": "reader", "limit": 10_000}),
    );
    assert_eq!(ids(&page), want, "the newest N, newest first");
    let times: Vec<i64> = page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]));

    // Paging with `next` walks the same entries; `before` a time starts strictly before it.
    let mut paged = Vec::new();
    let mut before = Value::Null;
    loop {
        let page = query(
            &host,
            "timeline",
            json!({"account": "reader", "limit": 300, "before": before}),
        );
        paged.extend(ids(&page));
        before = page["next"].clone();
        if before.is_null() {
            break;
        }
    }
    assert_eq!(paged, want);
    let page = query(
        &host,
        "timeline",
        json!({"account": "reader", "limit": 3, "before": time(5)}),
    );
    let older: Vec<String> = newest
        .iter()
        .filter(|(t, _)| *t < time(5))
        .take(3)
        .map(|(_, i)| format!("q{i}"))
        .collect();
    assert_eq!(ids(&page), older);

    let ann_posts = (0..n).filter(|i| i % 3 != 0).count() as u64;
    assert_eq!(counts(&host, "ann"), (1, 0, ann_posts));
    assert_eq!(counts(&host, "ben"), (1, 0, n as u64 - ann_posts));
    assert_eq!(counts(&host, "reader"), (0, 2, 0));
}

#[test]
fn who_to_follow_ranks_friends_of_friends_across_partitions() {
    let (_dir, host) = social_host(8);
    let edges = [
        ("ann", "b"),
        ("ann", "c"),
        ("ann", "d"),
        ("b", "x"),
        ("b", "y"),
        ("c", "x"),
        ("c", "y"),
        ("c", "z"),
        ("d", "x"),
        ("d", "ann"), // me: never suggested
        ("d", "c"),   // already followed: never suggested
        ("x", "w"),   // three hops away: not a friend of a friend
    ];
    let lines: Vec<Value> = edges
        .iter()
        .map(|(a, b)| json!({"follower": a, "followee": b}))
        .collect();
    append_batch(&host, "follows", &lines);
    assert_eq!(
        query(&host, "who-to-follow", json!({"account": "ann"})),
        json!([{"account": "x", "followed_by": 3},
               {"account": "y", "followed_by": 2},
               {"account": "z", "followed_by": 1}])
    );
    assert_eq!(
        query(
            &host,
            "who-to-follow",
            json!({"account": "ann", "limit": 2})
        ),
        json!([{"account": "x", "followed_by": 3}, {"account": "y", "followed_by": 2}])
    );
    unfollow(&host, "c", "z");
    follow(&host, "ann", "y");
    assert_eq!(
        query(&host, "who-to-follow", json!({"account": "ann"})),
        json!([{"account": "x", "followed_by": 3}])
    );
    assert_eq!(
        query(&host, "who-to-follow", json!({"account": "nobody"})),
        json!([])
    );
}

/// The partition `account` lives on (from the answer of a profile append).
fn partition_of(host: &Host, account: &str) -> u64 {
    append(host, "profiles", json!({"account": account}))["partition"]
        .as_u64()
        .unwrap()
}

/// Every `[account, timeline]` entry of `home-timelines`, over all partitions.
fn all_timelines(host: &Host, partitions: u64) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut after = Value::Null;
        loop {
            let r = host.post_json(
                "/v1/modules/social/pstates/home-timelines/select",
                &json!({"path": ["all"], "partition": p, "limit": 5000, "after": after}),
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let body = r.json();
            for entry in body["values"].as_array().unwrap() {
                let account = entry[0].as_str().unwrap().to_string();
                let posts = entry[1]["$map"]
                    .as_array()
                    .expect("a map with list keys")
                    .iter()
                    .map(|kv| kv[1]["id"].as_str().unwrap().to_string())
                    .collect();
                out.push((account, posts));
            }
            after = body["next"].clone();
            if after.is_null() {
                break;
            }
        }
    }
    out
}

#[test]
fn a_20000_follower_fanout_is_delivered_completely_and_the_partition_keeps_answering() {
    const FOLLOWERS: usize = 20_000;
    const PARTITIONS: u64 = 8;
    let (_dir, host) = social_host(PARTITIONS as u32);
    let star_partition = partition_of(&host, "star");
    let neighbour = (0..)
        .map(|i| format!("neighbour{i}"))
        .find(|n| partition_of(&host, n) == star_partition)
        .unwrap();
    follow(&host, "reader", &neighbour);

    let fans: Vec<String> = (0..FOLLOWERS).map(|i| format!("f{i:05}")).collect();
    for chunk in fans.chunks(5_000) {
        let lines: Vec<Value> = chunk
            .iter()
            .map(|f| json!({"follower": f, "followee": "star"}))
            .collect();
        append_batch(&host, "follows", &lines);
    }
    assert_eq!(counts(&host, "star").0, FOLLOWERS as u64);

    // While the fanout runs (FOLLOWERS / FANOUT_CHUNK_FOLLOWERS chunks, each continued by a hop
    // to the star's partition), the neighbour on the same partition keeps posting with full
    // acks, and late accounts follow the star: they must not receive the post.
    let done = AtomicBool::new(false);
    let (recipients, neighbour_posts, late) = std::thread::scope(|s| {
        let big = s.spawn(|| {
            let r = post(&host, "star", "big", 1_000);
            done.store(true, Ordering::SeqCst);
            r
        });
        let neighbour_thread = s.spawn(|| {
            let mut answered_before_big = 0;
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                assert_eq!(post(&host, &neighbour, &format!("n{i}"), i), 1);
                if !done.load(Ordering::SeqCst) {
                    answered_before_big += 1;
                }
                i += 1;
            }
            (answered_before_big, i)
        });
        let late_thread = s.spawn(|| {
            let mut late = Vec::new();
            while !done.load(Ordering::SeqCst) && late.len() < 50 {
                let name = format!("zz-late{}", late.len());
                follow(&host, &name, "star");
                late.push(name);
                std::thread::sleep(Duration::from_millis(5));
            }
            late
        });
        (
            big.join().unwrap(),
            neighbour_thread.join().unwrap(),
            late_thread.join().unwrap(),
        )
    });
    assert_eq!(recipients, FOLLOWERS as u64);
    let (answered_before_big, neighbour_total) = neighbour_posts;
    assert!(
        answered_before_big > 0,
        "posts on the fanning-out partition were answered during the fanout"
    );
    eprintln!(
        "{answered_before_big} neighbour posts answered during the {FOLLOWERS}-follower fanout \
         ({} chunks); {} late follows",
        FOLLOWERS / FANOUT_CHUNK_FOLLOWERS,
        late.len()
    );

    let timelines = all_timelines(&host, PARTITIONS);
    let mut got = BTreeSet::new();
    for (account, posts) in &timelines {
        if account == "reader" {
            assert_eq!(posts.len() as i64, neighbour_total.min(800));
            continue;
        }
        assert_eq!(posts, &["big"], "{account}");
        got.insert(account.clone());
    }
    let want: BTreeSet<String> = fans.iter().cloned().collect();
    assert_eq!(got.len(), FOLLOWERS);
    assert!(got == want, "exactly the followers at the time of posting");
    assert_eq!(
        counts(&host, "star"),
        ((FOLLOWERS + late.len()) as u64, 0, 1)
    );
}
