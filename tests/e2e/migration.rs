//! PState migrations: an update changes `profiles` from `map<string, string>` to a map of
//! maps with a `migrate` (modules `profiles` → `profiles-next`); reads see the new shape at
//! once, writes keep coming, the background rewrite runs through `kill -9`, and every value is
//! migrated exactly once (a second `migrate` of a value fails: it takes a string).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::harness::{eventually, module_wasm, Host};

const ENTRIES: usize = 100_000;
const PARTITIONS: u32 = 4;

fn split(name: &str) -> Value {
    let (first, last) = name.split_once(' ').unwrap();
    json!({"first": first, "last": last, "v": "2"})
}

fn migration(host: &Host) -> Value {
    let m = host.get("/v1/modules/profiles").json();
    m["migrations"][0].clone()
}

fn lag(host: &Host) -> f64 {
    host.metric_sum("sluice_topology_lag_records")
}

/// Every `(key, value)` of `profiles`, all partitions.
fn all_profiles(host: &Host) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let r = host.post_json(
            "/v1/modules/profiles/pstates/profiles/select",
            &json!({"path": [{"all": null}], "partition": p}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for pair in r.json()["values"].as_array().unwrap() {
            out.insert(pair[0].as_str().unwrap().to_string(), pair[1].clone());
        }
    }
    out
}

/// Overwrites old keys and adds new ones (the new version's writes), and reads random old
/// keys checking the new shape, until `stop`; answers the read latencies.
fn load(host: &Host, stop: &AtomicBool, written: &AtomicUsize) -> Vec<Duration> {
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                let i = written.fetch_add(1, Ordering::AcqRel);
                let (key, name) = if i.is_multiple_of(2) {
                    (
                        format!("k{}", (i * 7919) % ENTRIES),
                        format!("Over{i} Name{i}"),
                    )
                } else {
                    (format!("n{i}"), format!("New{i} Name{i}"))
                };
                let r = host.post_json(
                    "/v1/modules/profiles/depots/names/append",
                    &json!({"key": key, "name": name}),
                );
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
        });
        let reader = s.spawn(|| {
            let mut latencies = Vec::new();
            let mut i = 1usize;
            while !stop.load(Ordering::Acquire) {
                i = (i * 48271) % 2_147_483_647;
                let key = format!("k{}", i % ENTRIES);
                let started = Instant::now();
                let v = host.select("profiles", "profiles", json!([{"key": key}]));
                latencies.push(started.elapsed());
                assert_eq!(v.len(), 1, "{key}: {v:?}");
                assert_eq!(v[0]["v"], "2", "{key} read in the old shape: {v:?}");
                let first = v[0]["first"].as_str().unwrap();
                assert!(
                    first.starts_with("First") || first.starts_with("Over"),
                    "{v:?}"
                );
            }
            latencies
        });
        reader.join().unwrap()
    })
}

fn p99(mut l: Vec<Duration>) -> Duration {
    l.sort();
    l.get(l.len() * 99 / 100).copied().unwrap_or_default()
}

#[test]
fn a_migration_rewrites_100k_entries_under_load_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--select-values-max", "400000"]);
    host.deploy_ok("profiles", "profiles", &format!("?partitions={PARTITIONS}"));
    host.drive_ndjson(
        "/v1/modules/profiles/depots/names/append",
        ENTRIES,
        1000,
        2,
        &|i| json!({"key": format!("k{i}"), "name": format!("First{i} Last{i}")}).to_string(),
    );
    eventually("the 100k profiles stored", || {
        (lag(&host) == 0.0).then_some(())
    });
    assert_eq!(
        host.select("profiles", "profiles", json!([{"key": "k7"}])),
        vec![json!("First7 Last7")]
    );
    let r = host.deploy("profiles", &module_wasm("profiles_next"), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Read at once in the new shape, whether rewritten yet or not.
    assert_eq!(
        host.select("profiles", "profiles", json!([{"key": "k7"}])),
        vec![split("First7 Last7")]
    );
    let started = Instant::now();
    let (stop, written) = (AtomicBool::new(false), AtomicUsize::new(0));
    let first_latencies = std::thread::scope(|s| {
        let h = s.spawn(|| load(&host, &stop, &written));
        let at_kill = eventually("a tenth of the migration", || {
            let m = migration(&host);
            (m["rewritten"].as_u64().unwrap() >= (ENTRIES / 10) as u64).then_some(m)
        });
        stop.store(true, Ordering::Release);
        let l = h.join().unwrap();
        assert_eq!(at_kill["entries"], ENTRIES as u64);
        assert_eq!(at_kill["from"], "map<string, string>");
        assert_eq!(at_kill["to"], "map<string, map<string, string>>");
        l
    });
    let killed_at = migration(&host);
    assert_eq!(
        killed_at["state"], "running",
        "finished before the kill: {killed_at}"
    );
    let host = host.kill9_and_restart();
    // A version without the migration cannot replace this one while it runs (it only may
    // once done: checked below). The state read after the answer tells which case it met.
    let r = host.deploy("profiles", &module_wasm("profiles_final"), "");
    if migration(&host)["state"] == "running" {
        assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("still migrating"), "{message}");
    }
    stop.store(false, Ordering::Release);
    let second_latencies = std::thread::scope(|s| {
        let h = s.spawn(|| load(&host, &stop, &written));
        let done = eventually("the migration done", || {
            let m = migration(&host);
            (m["state"] != "running").then_some(m)
        });
        stop.store(true, Ordering::Release);
        let l = h.join().unwrap();
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["partitions_done"], PARTITIONS);
        assert_eq!(done["errors"], json!([]));
        l
    });
    let took = started.elapsed();
    eventually("the writes processed", || (lag(&host) == 0.0).then_some(()));

    // Every value: its last name written, in the new shape; nothing else.
    let n = written.load(Ordering::Acquire);
    let mut expected: BTreeMap<String, Value> = (0..ENTRIES)
        .map(|i| (format!("k{i}"), split(&format!("First{i} Last{i}"))))
        .collect();
    for i in 0..n {
        let (key, name) = if i.is_multiple_of(2) {
            (
                format!("k{}", (i * 7919) % ENTRIES),
                format!("Over{i} Name{i}"),
            )
        } else {
            (format!("n{i}"), format!("New{i} Name{i}"))
        };
        expected.insert(key, split(&name));
    }
    // (The load stopped before the kill: every write was acked.)
    let all = all_profiles(&host);
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, v)| all.get(*k) != Some(*v))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} values differ, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    assert_eq!(all.len(), expected.len());
    let m = migration(&host);
    eprintln!(
        "migration of {ENTRIES} entries on {PARTITIONS} partitions: {:.1} s with {n} writes alongside, \
         {} rewritten in the background; select p99 {:?} before the kill, {:?} after ({} and {} reads)",
        took.as_secs_f64(),
        m["rewritten"],
        p99(first_latencies.clone()),
        p99(second_latencies.clone()),
        first_latencies.len(),
        second_latencies.len(),
    );
    let metrics = host.metric_sum("sluice_pstate_migrated_entries_total");
    assert!(metrics > 0.0);
    // Done: the migration may go, and nothing changes for readers.
    let r = host.deploy("profiles", &module_wasm("profiles_final"), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().get("migrations"), None);
    assert_eq!(
        host.select("profiles", "profiles", json!([{"key": "k3"}])),
        vec![expected["k3"].clone()]
    );
    // Back to the old shape has no migration: refused, as any narrowing.
    let r = host.deploy("profiles", &module_wasm("profiles"), "");
    assert_eq!(
        (r.status, r.error_code()),
        (409, "incompatible-update".into())
    );
}
