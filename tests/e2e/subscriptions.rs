//! Subscriptions (`GET .../pstates/{p}/subscribe`, Server-Sent Events) against the real
//! binary: first value, diffs that always add up to a fresh select (under concurrent appends,
//! across a module update, for stream and microbatch writers), resuming with `Last-Event-ID`
//! (without a gap within a run; a `reset` after `kill -9` or a restart), bounds (limits, slow
//! subscribers dropped without slowing the writer), keep-alives, auth by query parameter,
//! precise errors, and the end of a deleted module's streams.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::client::sse::{EventStream, SseEvent, Watched};

use crate::harness::{module_wasm, Host};

/// A host on a fresh data directory (kept as long as the first value lives).
fn host_with(args: &[&str]) -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), args);
    (dir, host)
}

/// A host with `wordcount` deployed as `wc` on 2 partitions.
fn wc_host(args: &[&str]) -> (tempfile::TempDir, Host) {
    let (dir, host) = host_with(args);
    host.deploy_ok("wc", "wordcount", "?partitions=2");
    (dir, host)
}

fn next(s: &mut EventStream) -> SseEvent {
    s.next_event()
        .expect("reading the stream")
        .expect("the stream ended early")
}

/// The commit position an event id names (`<incarnation>-<position>`).
fn position(e: &SseEvent) -> u64 {
    let id = e.id.as_deref().expect("an id");
    id.rsplit_once('-')
        .expect("incarnation-position")
        .1
        .parse()
        .expect("a position")
}

fn incarnation(e: &SseEvent) -> String {
    e.id.as_deref()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .0
        .to_string()
}

/// Reads events into `w` until its values equal `expected()` (a fresh select), checking that
/// every diff applies and positions only grow; panics after 20 s.
fn until_equal(s: &mut EventStream, w: &mut Watched, expected: impl Fn() -> Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_pos = w
        .last_id
        .as_ref()
        .map(|id| id.rsplit_once('-').unwrap().1.parse::<u64>().unwrap());
    loop {
        if w.values == expected() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up: have {:?}, select {:?}",
            w.values,
            expected()
        );
        let e = next(s);
        assert!(!e.is_final(), "the stream ended: {e:?}");
        let p = position(&e);
        if let (Some(l), "diff") = (last_pos, e.event.as_str()) {
            assert!(p > l, "positions go back: {l} then {p}");
        }
        last_pos = Some(p);
        w.apply(&e)
            .unwrap_or_else(|m| panic!("{e:?} does not apply to {:?}: {m}", w.values));
    }
}

/// Starts `sluice watch wc counts [{"key": KEY}] --events N --json` against `server` and
/// waits until it counts among `host`'s subscribers.
fn start_watch(host: &Host, server: &str, key: &str, events: u32) -> std::process::Child {
    let path = json!([{ "key": key }]).to_string();
    let events = events.to_string();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "watch", "wc", "counts", &path, "--events", &events, "--json",
        ])
        .args(["--server", server])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8(host.get("/metrics").body)
        .unwrap()
        .contains("sluice_subscribers{module=\"wc\"} 1")
    {
        assert!(Instant::now() < deadline, "sluice watch never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The JSON events a finished `sluice watch --json` printed; fails after 30 s.
fn watch_output(mut child: std::process::Child) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "sluice watch did not finish: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wc_append(host: &Host, word: &str) {
    let r = host.request(
        "POST",
        "/v1/modules/wc/depots/words/append?ack=full",
        "application/json",
        json!({ "word": word }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn diffs_under_concurrent_appends_add_up_to_a_fresh_select() {
    let (_dir, host) = wc_host(&[]);
    // A counter, a whole partition's map, and a sorted range of keys on the other partition.
    let mut counter = host.subscribe("wc", "counts", json!([{"key": "w1"}]), "", None);
    let mut whole = host.subscribe("wc", "counts", json!([]), "&partition=0", None);
    let mut range = host.subscribe(
        "wc",
        "counts",
        json!([{"sorted-range": {"start": "w1", "limit": 4}}, "map-keys"]),
        "&partition=1",
        None,
    );
    let mut watched: Vec<Watched> = vec![Watched::default(); 3];
    for (s, w) in [&mut counter, &mut whole, &mut range]
        .into_iter()
        .zip(watched.iter_mut())
    {
        let first = next(s);
        assert_eq!(first.event, "value");
        w.apply(&first).unwrap();
    }
    assert_eq!(watched[0].values, Vec::<Value>::new(), "no w1 yet");
    std::thread::scope(|sc| {
        for c in 0..4u64 {
            let host = &host;
            sc.spawn(move || {
                for i in 0..60u64 {
                    wc_append(host, &format!("w{}", (c * 7 + i * 13) % 10));
                }
            });
        }
        // Read while the appends run: each counter event is one increment of a committed count.
        let mut seen = 0;
        while seen < 5 {
            let e = next(&mut counter);
            watched[0].apply(&e).unwrap();
            if e.event == "diff" {
                let ch = &e.data["changes"];
                assert!(ch[0]["op"] == "increment" || ch[0]["op"] == "push", "{ch}");
            }
            seen += 1;
        }
    });
    let select = |path: Value, partition: Option<u32>| {
        let mut body = json!({ "path": path });
        if let Some(p) = partition {
            body["partition"] = p.into();
        }
        let r = host.post_json("/v1/modules/wc/pstates/counts/select", &body);
        r.json()["values"].as_array().unwrap().clone()
    };
    until_equal(&mut counter, &mut watched[0], || {
        select(json!([{"key": "w1"}]), None)
    });
    until_equal(&mut whole, &mut watched[1], || select(json!([]), Some(0)));
    until_equal(&mut range, &mut watched[2], || {
        select(
            json!([{"sorted-range": {"start": "w1", "limit": 4}}, "map-keys"]),
            Some(1),
        )
    });
    // 240 words over 10: the counter saw w1's exact count; the whole map holds partition 0's.
    let total: i64 = (0..10)
        .map(|w| {
            select(json!([{"key": format!("w{w}")}]), None)
                .first()
                .and_then(Value::as_i64)
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(total, 240);
    assert!(watched[0].values[0].as_i64().unwrap() > 0);
}

#[test]
fn a_reconnect_resumes_from_last_event_id_without_a_gap() {
    let (_dir, host) = wc_host(&[]);
    let apple =
        |last: Option<&str>| host.subscribe("wc", "counts", json!([{"key": "apple"}]), "", last);
    wc_append(&host, "apple");
    let mut w = Watched::default();
    let mut s = apple(None);
    let first = next(&mut s);
    assert_eq!(
        (first.event.as_str(), &first.data["values"]),
        ("value", &json!([1]))
    );
    w.apply(&first).unwrap();
    drop(s);
    for _ in 0..5 {
        wc_append(&host, "apple");
    }
    // The missed commits come as diffs, not as a reset.
    let mut s = apple(w.last_id.as_deref());
    let mut diffs = 0;
    while w.values != vec![json!(6)] {
        let e = next(&mut s);
        assert_eq!(e.event, "diff", "{e:?}");
        w.apply(&e).unwrap();
        diffs += 1;
    }
    assert_eq!(diffs, 5, "one diff per commit");
    // Resuming at the newest id sends nothing until the next change.
    drop(s);
    let mut s = apple(w.last_id.as_deref());
    wc_append(&host, "apple");
    let e = next(&mut s);
    assert_eq!(
        (e.event.as_str(), &e.data["changes"][0]["by"]),
        ("diff", &json!(1))
    );
    // An id this run never gave (or whose changes are gone) gets a reset with the value.
    let inc = incarnation(&e);
    let mut s = host.subscribe(
        "wc",
        "counts",
        json!([{"key": "apple"}]),
        "",
        Some("0badcafe-1"),
    );
    let e = next(&mut s);
    assert_eq!(e.event, "reset");
    assert_eq!(e.data["values"], json!([7]));
    assert!(e.data["reason"].as_str().unwrap().contains("0badcafe-1"));
    assert_eq!(incarnation(&e), inc);
}

#[test]
fn after_kill_9_a_resume_gets_a_reset_with_the_restored_state() {
    let (_dir, host) = wc_host(&[]);
    let mut s = host.subscribe("wc", "counts", json!([{"key": "pear"}]), "", None);
    let mut w = Watched::default();
    w.apply(&next(&mut s)).unwrap();
    for _ in 0..20 {
        let r = host.request(
            "POST",
            "/v1/modules/wc/depots/words/append?ack=append",
            "application/json",
            br#"{"word":"pear"}"#,
        );
        assert_eq!(r.status, 200);
    }
    // Some of these commits were not durable yet (the flush interval is 500 ms).
    while w.values != vec![json!(20)] {
        let e = next(&mut s);
        w.apply(&e).unwrap();
    }
    let before = w.last_id.clone().unwrap();
    let host = host.kill9_and_restart();
    assert!(
        s.next_event().map_or(true, |e| e.is_none()),
        "the stream ends with the process"
    );
    let mut s = host.subscribe("wc", "counts", json!([{"key": "pear"}]), "", Some(&before));
    let e = next(&mut s);
    assert_eq!(
        e.event, "reset",
        "an id from before the crash is not resumed: {e:?}"
    );
    assert_ne!(e.id.as_deref(), Some(before.as_str()));
    // Every acked record's effect is back (the depot log replayed).
    assert_eq!(e.data["values"], json!([20]));
    assert_eq!(
        host.select("wc", "counts", json!([{"key": "pear"}])),
        vec![json!(20)]
    );
    w.apply(&e).unwrap();
    wc_append(&host, "pear");
    let e = next(&mut s);
    w.apply(&e).unwrap();
    assert_eq!(w.values, vec![json!(21)]);
}

#[test]
fn a_clean_stop_ends_streams_with_closing_and_the_resume_resets() {
    let (_dir, host) = wc_host(&[]);
    wc_append(&host, "fig");
    let mut s = host.subscribe("wc", "counts", json!([{"key": "fig"}]), "", None);
    let first = next(&mut s);
    let stopped = host.stop();
    let last = next(&mut s);
    assert_eq!(
        (last.event.as_str(), &last.data["code"]),
        ("closing", &json!("host-stopping"))
    );
    assert!(s.next_event().unwrap().is_none());
    let host = Host::restart(stopped);
    let mut s = host.subscribe(
        "wc",
        "counts",
        json!([{"key": "fig"}]),
        "",
        first.id.as_deref(),
    );
    let e = next(&mut s);
    assert_eq!(
        (e.event.as_str(), &e.data["values"]),
        ("reset", &json!([1]))
    );
}

#[test]
fn a_subscription_survives_a_module_update() {
    let (_dir, host) = host_with(&[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=2");
    let append = |w: &str| {
        let r = host.append("wordcount", "words", &json!({ "word": w }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    append("kiwi");
    let mut s = host.subscribe("wordcount", "counts", json!([{"key": "kiwi"}]), "", None);
    let mut w = Watched::default();
    w.apply(&next(&mut s)).unwrap();
    let r = host.deploy("wordcount", &module_wasm("wordcount_next"), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(host.get("/v1/modules/wordcount").json()["version"], 2);
    append("kiwi");
    let e = next(&mut s);
    assert_eq!(
        e.event, "diff",
        "the same stream goes on after the update: {e:?}"
    );
    w.apply(&e).unwrap();
    assert_eq!(
        w.values,
        host.select("wordcount", "counts", json!([{"key": "kiwi"}]))
    );
}

#[test]
fn microbatch_commits_reach_subscribers() {
    let (_dir, host) = host_with(&[]);
    host.deploy_ok("bank", "bank", "?partitions=2");
    let path = json!([{"key": "alice"}, {"key": "balance"}]);
    let mut s = host.subscribe("bank", "accounts", path.clone(), "", None);
    let mut w = Watched::default();
    w.apply(&next(&mut s)).unwrap();
    assert!(w.values.is_empty());
    for amount in [100, 20] {
        let r = host.append(
            "bank",
            "deposits",
            &json!({"account": "alice", "amount": amount}),
        );
        assert_eq!(r.status, 200);
    }
    until_equal(&mut s, &mut w, || {
        host.select("bank", "accounts", path.clone())
    });
    assert_eq!(w.values, vec![json!(120)]);
}

#[test]
fn bad_subscriptions_get_precise_errors() {
    let (_dir, host) = wc_host(&[]);
    let url = |path: &Value, extra: &str| Host::subscribe_url("wc", "counts", path, extra);
    let cases = [
        (
            "/v1/modules/wc/pstates/counts/subscribe".to_string(),
            400,
            "invalid-request",
        ),
        (
            "/v1/modules/wc/pstates/counts/subscribe?path=%5B".into(),
            400,
            "invalid-json",
        ),
        (url(&json!([{"bogus": 1}]), ""), 400, "unknown-navigator"),
        (url(&json!(["all"]), ""), 400, "partition-required"),
        (
            url(&json!(["all"]), "&partition=9"),
            400,
            "partition-out-of-range",
        ),
        (url(&json!([{"key": 5}]), ""), 400, "schema-mismatch"),
        (
            Host::subscribe_url("wc", "nope", &json!([]), "&partition=0"),
            404,
            "unknown-pstate",
        ),
        (
            Host::subscribe_url("nope", "counts", &json!([]), "&partition=0"),
            404,
            "unknown-module",
        ),
    ];
    for (u, status, code) in cases {
        let r = host.try_subscribe(&u, None).err().expect("an error answer");
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{u}");
    }
    let ok = url(&json!([{"key": "a"}]), "");
    let r = host.request("POST", &ok, "application/json", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = host.request_with_accept(&ok, "application/json");
    assert_eq!((r.status, r.error_code().as_str()), (406, "not-acceptable"));
    // HEAD answers the stream's headers without subscribing.
    let r = host.request("HEAD", &ok, "application/json", b"");
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/event-stream"))
    );
}

#[test]
fn limits_apply_and_a_slow_subscriber_is_dropped_without_slowing_the_writer() {
    let (_dir, host) = host_with(&[
        "--subscribers-per-module-max",
        "2",
        "--subscriber-buffer-events",
        "4",
    ]);
    host.deploy_ok("kv", "kv", "?partitions=2");
    let path = json!([{"key": "big"}]);
    // A subscriber that never reads: the stream backs up into its buffer.
    let url = Host::subscribe_url("kv", "kv", &path, "");
    let slow = std::net::TcpStream::connect(&host.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        &slow,
        "GET {url} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    // Its answer's head only (it is admitted before the others): from here on it reads nothing.
    let mut slow = std::io::BufReader::new(slow);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        std::io::BufRead::read_line(&mut slow, &mut line).unwrap();
        assert!(!line.is_empty(), "the slow subscriber's answer ended");
    }
    let mut fast = host.subscribe("kv", "kv", path.clone(), "", None);
    // The limit per module is 2.
    let r = host.try_subscribe(&url, None).err().expect("refused");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "too-many-subscribers")
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("sluice_subscribers{module=\"kv\"} 2"),
        "{metrics}"
    );
    // 200 puts of 64 KiB: far more than the slow one's socket and buffer hold. Every put is
    // answered (the writer never waits for a subscriber).
    let big = "x".repeat(64 << 10);
    let mut w = Watched::default();
    for field in 0..200 {
        let r = host.append(
            "kv",
            "puts",
            &json!({"key": "big", "field": field % 8, "value": format!("{field}{big}")}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if field % 20 == 0 {
            // The fast subscriber keeps up.
            while w.values.is_empty() || !w.values[0].to_string().contains(&format!("\"{field}xxx"))
            {
                let e = next(&mut fast);
                assert!(!e.is_final(), "{:?}", e.event);
                w.apply(&e).unwrap();
            }
        }
    }
    // The slow one, read at last, ends with a `dropped` event.
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("event: dropped"),
        "{}",
        &text[text.len().saturating_sub(500)..]
    );
    assert!(text.contains("subscriber-too-slow"));
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("sluice_subscription_drops_total{reason=\"too-slow\"} 1"),
        "{metrics}"
    );
    // Its place is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match host.try_subscribe(&url, None) {
            Ok(_) => break,
            Err(r) => {
                assert_eq!(r.status, 503);
                assert!(
                    Instant::now() < deadline,
                    "the dropped subscriber's place stayed taken"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn keepalives_and_a_token_in_the_query() {
    let (_dir, host) = host_with(&[
        "--token",
        "admin=admin-token-1",
        "--token",
        "read=reader-token-1",
        "--subscription-keepalive-ms",
        "100",
    ]);
    let mut c = sluice::client::Client::new(&format!("http://{}", host.addr))
        .unwrap()
        .with_token(Some("admin-token-1".into()));
    let r = c
        .request(
            "PUT",
            "/v1/modules/wc?partitions=2",
            "application/wasm",
            &module_wasm("wordcount"),
        )
        .unwrap();
    assert_eq!(r.status, 201);
    let url = Host::subscribe_url("wc", "counts", &json!([{"key": "a"}]), "");
    let r = host.try_subscribe(&url, None).err().expect("no token");
    assert_eq!(r.status, 401);
    let r = host
        .try_subscribe(&format!("{url}&access_token=wrong-token"), None)
        .err()
        .expect("bad token");
    assert_eq!(r.status, 401);
    let mut s = host
        .try_subscribe(&format!("{url}&access_token=reader-token-1"), None)
        .unwrap_or_else(|r| panic!("{}", r.status));
    assert_eq!(next(&mut s).event, "value");
    // Quiet: only keep-alive comments arrive; the next event still comes through.
    std::thread::sleep(Duration::from_millis(600));
    let r = c
        .request(
            "POST",
            "/v1/modules/wc/depots/words/append?ack=full",
            "application/json",
            br#"{"word":"a"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let e = next(&mut s);
    assert_eq!(e.event, "diff");
    assert!(s.keepalives >= 3, "keep-alives: {}", s.keepalives);
    // The token never shows in the log.
    let log = std::fs::read_to_string(host.data_dir.with_extension("log")).unwrap();
    assert!(!log.contains("reader-token-1"));
}

#[test]
fn deleting_a_module_ends_its_subscriptions() {
    let (_dir, host) = wc_host(&[]);
    let mut s = host.subscribe("wc", "counts", json!(["all"]), "&partition=1", None);
    assert_eq!(next(&mut s).event, "value");
    let r = host.request("DELETE", "/v1/modules/wc", "application/json", b"");
    assert_eq!(r.status, 200);
    let e = next(&mut s);
    assert_eq!(
        (e.event.as_str(), &e.data["code"]),
        ("error", &json!("module-deleted"))
    );
    assert!(s.next_event().unwrap().is_none());
}

#[test]
fn a_home_timeline_is_live() {
    let (_dir, host) = host_with(&[]);
    host.deploy_ok("social", "social", "?partitions=4");
    for followee in ["bob", "carol"] {
        let r = host.append(
            "social",
            "follows",
            &json!({"follower": "alice", "followee": followee}),
        );
        assert_eq!(r.status, 200);
    }
    let newest =
        json!([{"key": "alice"}, {"sorted-range": {"reverse": true, "limit": 3}}, "map-vals"]);
    let mut s = host.subscribe("social", "home-timelines", newest.clone(), "", None);
    let mut w = Watched::default();
    w.apply(&next(&mut s)).unwrap();
    assert!(w.values.is_empty());
    for (i, author) in ["bob", "carol", "bob", "carol", "bob"].iter().enumerate() {
        let post = json!({"author": author, "id": format!("p{i}"), "text": format!("hello {i}"), "time": 100 + i});
        let r = host.append("social", "posts", &post);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // Delivered: the post is at the head of the live timeline, as one small diff.
        let e = next(&mut s);
        assert_eq!(e.event, "diff");
        assert!(
            e.data["changes"].as_array().unwrap().len() <= 2,
            "{}",
            e.data
        );
        w.apply(&e).unwrap();
        assert_eq!(w.values[0]["id"], format!("p{i}"));
        assert_eq!(
            w.values,
            host.select("social", "home-timelines", newest.clone())
        );
    }
    assert_eq!(w.values.len(), 3);
}

#[test]
fn sluice_watch_prints_the_value_then_each_diff() {
    let (_dir, host) = wc_host(&[]);
    wc_append(&host, "plum");
    let child = start_watch(&host, &format!("http://{}", host.addr), "plum", 3);
    wc_append(&host, "plum");
    wc_append(&host, "plum");
    let lines = watch_output(child);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        (lines[0]["event"].as_str(), &lines[0]["data"]["values"]),
        (Some("value"), &json!([1]))
    );
    for l in &lines[1..] {
        assert_eq!(l["event"], "diff");
        assert_eq!(
            l["data"]["changes"][0],
            json!({"op": "increment", "path": [0], "by": 1})
        );
    }
}

#[test]
fn a_value_past_the_answer_limit_is_refused_or_ends_the_stream() {
    let (_dir, host) = host_with(&["--answer-bytes-max", "8000"]);
    host.deploy_ok("kv", "kv", "?partitions=2");
    let put = |key: &str, field: i64, len: usize| {
        let r = host.append(
            "kv",
            "puts",
            &json!({"key": key, "field": field, "value": "v".repeat(len)}),
        );
        assert_eq!(r.status, 200);
    };
    put("huge", 1, 9000);
    let url = Host::subscribe_url("kv", "kv", &json!([{"key": "huge"}]), "");
    let r = host.try_subscribe(&url, None).err().expect("refused");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "result-too-large")
    );
    put("grows", 1, 100);
    let mut s = host.subscribe("kv", "kv", json!([{"key": "grows"}]), "", None);
    assert_eq!(next(&mut s).event, "value");
    put("grows", 2, 100);
    assert_eq!(next(&mut s).event, "diff");
    put("grows", 3, 20_000);
    let e = next(&mut s);
    assert_eq!(
        (e.event.as_str(), &e.data["code"]),
        ("error", &json!("result-too-large"))
    );
}

#[test]
fn subscriptions_do_not_take_the_connection_share_of_their_address() {
    let (_dir, host) = wc_host(&["--connections-per-address-max", "3"]);
    // Ten streams from one address whose share is 3 connections…
    let mut streams: Vec<EventStream> = (0..10)
        .map(|i| {
            host.subscribe(
                "wc",
                "counts",
                json!([{ "key": format!("k{i}") }]),
                "",
                None,
            )
        })
        .collect();
    for s in &mut streams {
        assert_eq!(next(s).event, "value");
    }
    // …and ordinary requests still get in, and every stream still gets its changes.
    for i in 0..10 {
        wc_append(&host, &format!("k{i}"));
    }
    for s in &mut streams {
        let e = next(s);
        assert_eq!(
            (e.event.as_str(), &e.data["changes"][0]["values"]),
            ("diff", &json!([1]))
        );
    }
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("sluice_subscribers{module=\"wc\"} 10"),
        "{metrics}"
    );
}

#[test]
fn sluice_watch_reconnects_across_a_restart() {
    let listen = Host::free_address();
    let (_dir, host) = wc_host(&["--listen", &listen]);
    wc_append(&host, "lime");
    let child = start_watch(&host, &format!("http://{listen}"), "lime", 2);
    let host = Host::restart(host.stop());
    wc_append(&host, "lime");
    let events = watch_output(child);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // The value, the host's `closing`, then (reconnected with Last-Event-ID) a reset with
    // the value as it is after the restart — or already with the new append in it.
    assert_eq!(kinds[..2], ["value", "closing"], "{events:?}");
    assert_eq!(kinds[2], "reset", "{events:?}");
    let after = events[2]["data"]["values"][0].as_i64().unwrap();
    assert!(after == 1 || after == 2, "{events:?}");
}

#[test]
fn the_host_wide_subscriber_limit_applies() {
    let (_dir, host) = host_with(&["--subscribers-max", "2"]);
    host.deploy_ok("wc", "wordcount", "?partitions=2");
    host.deploy_ok("kv", "kv", "?partitions=2");
    let _a = host.subscribe("wc", "counts", json!([{"key": "a"}]), "", None);
    let _b = host.subscribe("kv", "kv", json!([{"key": "b"}]), "", None);
    let url = Host::subscribe_url("kv", "kv", &json!([{"key": "c"}]), "");
    let r = host.try_subscribe(&url, None).err().expect("refused");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "too-many-subscribers")
    );
    assert!(
        r.error_message().contains("subscribers_max"),
        "{}",
        r.error_message()
    );
}

#[test]
fn browsers_on_an_allowed_origin_may_subscribe_and_call() {
    let (_dir, host) = wc_host(&["--cors-origin", "http://app.example"]);
    let url = Host::subscribe_url("wc", "counts", &json!([{"key": "a"}]), "");
    let ask = |method: &str, path: &str, origin: &str| {
        sluice::client::Client::new(&host.addr)
            .unwrap()
            .request_with_headers(
                method,
                path,
                "application/json",
                b"",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                ],
            )
            .unwrap()
    };
    // The stream's headers (HEAD) for an allowed origin carry the permission…
    let r = ask("HEAD", &url, "http://app.example");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    // …and a preflight for a select is answered; another origin gets neither.
    let r = ask(
        "OPTIONS",
        "/v1/modules/wc/pstates/counts/select",
        "http://app.example",
    );
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("last-event-id"));
    let r = ask("HEAD", &url, "http://evil.example");
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, None)
    );
    let r = ask(
        "OPTIONS",
        "/v1/modules/wc/pstates/counts/select",
        "http://evil.example",
    );
    assert_eq!(r.status, 405);
}
