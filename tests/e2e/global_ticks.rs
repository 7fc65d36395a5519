//! Global PStates and tick depots on the real binary (`modules/analytics`), with `kill -9`:
//! a module-wide counter fed by hops from every partition stays exact, and each partition
//! runs a tick once per due time — never twice, across crashes and a clock that restarts
//! earlier — with the ticks missed while nothing ticked carried by one tick.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, Host};

/// An hour boundary (2023-11-14T21:00:00Z), where the manual clock starts.
const T0: u64 = 1_699_995_600_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

fn clock_args() -> Vec<String> {
    vec!["--manual-clock-ms".into(), T0.to_string()]
}

fn start(dir: &std::path::Path) -> Host {
    let args = clock_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Host::start(&dir.join("data"), &args)
}

fn advance(host: &Host, ms: u64) -> u64 {
    let r = host.post_json("/v1/clock", &json!({ "advance_ms": ms }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["time_ms"].as_u64().unwrap()
}

/// Every `(key, value)` pair of a map-valued PState on every partition, merged.
fn entries(host: &Host, pstate: &str, partitions: u32) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let r = host.post_json(
            &format!("/v1/modules/analytics/pstates/{pstate}/select"),
            &json!({"path": [{"all": null}], "partition": p}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for pair in r.json()["values"].as_array().unwrap() {
            out.insert(pair[0].to_string(), pair[1].clone());
        }
    }
    out
}

#[test]
fn a_global_counter_fed_from_every_partition_is_exact_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = start(dir.path());
    host.deploy_ok("analytics", "analytics", "?partitions=4");
    let next_id = AtomicU64::new(0);
    let mut acked: Vec<(u64, u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let (restarted, kept) = host.load_then_kill9_and_restart(
            4,
            Duration::from_millis(400 + 200 * round),
            &next_id,
            |host, c, id| {
                let ack = if (c + id) % 2 == 0 { "append" } else { "full" };
                // 13 pages over every partition; times over two days.
                let body = json!({"page": format!("p{}", id % 13), "at": T0 + (id % 7) * 5 * HOUR, "id": id});
                let path = format!("/v1/modules/analytics/depots/views/append?ack={ack}");
                let r = host.try_request("POST", &path, "application/json", body.to_string().as_bytes())?;
                match r.status {
                    200 => {
                        let j = r.json();
                        Some(Some((j["partition"].as_u64().unwrap(), j["offset"].as_u64().unwrap(), id)))
                    }
                    503 => Some(None),
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            },
        );
        host = restarted;
        assert!(!kept.is_empty(), "round {round}: nothing was acked");
        acked.extend(kept);

        // Recompute the daily counts from the depot, and wait until the global PState
        // (on partition 0, fed by hops from all four) equals them.
        let (expected, daily) = eventually("the daily counter to catch up", || {
            let log = host.read_depot("analytics", "views");
            let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
            for r in log.iter().flatten() {
                *expected
                    .entry(r["at"].as_u64().unwrap() / DAY * DAY)
                    .or_default() += 1;
            }
            let daily: BTreeMap<u64, u64> = expected
                .keys()
                .map(|day| {
                    let v = host.select("analytics", "daily", json!([{"key": day}]));
                    (*day, v.first().and_then(Value::as_u64).unwrap_or(0))
                })
                .collect();
            (daily == expected).then_some((expected, daily))
        });
        assert_eq!(daily, expected);
        assert!(expected.len() >= 2, "the views span two days");

        // Every acked view is in the log at its place, and stored once.
        let log = host.read_depot("analytics", "views");
        for (p, o, id) in &acked {
            assert_eq!(
                log[*p as usize][*o as usize]["id"],
                json!(id),
                "acked view {id}"
            );
        }
        let mut ids: Vec<u64> = log
            .iter()
            .flatten()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        let stored = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), stored, "no view is stored twice");
        // The global PState lives on partition 0 only.
        assert_eq!(entries(&host, "daily", 4).len(), expected.len());
        for p in 1..4 {
            let r = host.post_json(
                "/v1/modules/analytics/pstates/daily/select",
                &json!({"path": [{"all": null}], "partition": p}),
            );
            assert_eq!(
                r.json()["values"],
                json!([]),
                "partition {p} holds no global entry"
            );
        }
    }
}

/// The ticks stored on each partition of `minute-ticks`.
fn ticks(host: &Host) -> Vec<Vec<Value>> {
    host.read_depot("analytics", "minute-ticks")
}

#[test]
fn ticks_run_once_per_due_time_and_roll_minutes_into_hours_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    host.deploy_ok("analytics", "analytics", "?partitions=2");
    // The first tick is appended at once on each partition: at the clock's time.
    let first = json!({"time": T0, "since": null, "ticks": 1});
    eventually("the first ticks", || {
        (ticks(&host) == vec![vec![first.clone()], vec![first.clone()]]).then_some(())
    });

    // Views in the first hour, on pages of both partitions.
    let mut views: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..40u64 {
        let page = format!("page{}", i % 5);
        let r = host.append(
            "analytics",
            "views",
            &json!({"page": page, "at": T0 + (i % 60) * MINUTE}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        *views.entry(page).or_default() += 1;
    }
    assert!(entries(&host, "hours", 2).is_empty());
    assert_eq!(entries(&host, "minutes", 2).len(), 5);

    // An hour later one tick per partition rolls the hour up; the 59 ticks in between were
    // never due on their own (the clock jumped): this one carries them.
    assert_eq!(advance(&host, HOUR), T0 + HOUR);
    let second = json!({"time": T0 + HOUR, "since": T0, "ticks": 60});
    eventually("the hourly roll-up", || {
        let t = ticks(&host);
        (t == vec![vec![first.clone(), second.clone()]; 2]
            && entries(&host, "minutes", 2).is_empty())
        .then_some(())
    });
    let hours = entries(&host, "hours", 2);
    let expected: BTreeMap<String, Value> = views
        .iter()
        .map(|(page, n)| (json!(page).to_string(), json!({"$map": [[T0, n]]})))
        .collect();
    assert_eq!(hours, expected);

    // kill -9; the host starts again with its clock back at T0: nothing is due again, so
    // no tick is appended twice and the roll-up is not repeated.
    let host = host.kill9_and_restart();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&host), vec![vec![first.clone(), second.clone()]; 2]);
    assert_eq!(entries(&host, "hours", 2), expected);

    // Three hours after T0, the next tick covers the 120 minutes since the last.
    assert_eq!(advance(&host, 3 * HOUR), T0 + 3 * HOUR);
    let third = json!({"time": T0 + 3 * HOUR, "since": T0 + HOUR, "ticks": 120});
    eventually("the third ticks", || {
        (ticks(&host) == vec![vec![first.clone(), second.clone(), third.clone()]; 2]).then_some(())
    });
    assert_eq!(entries(&host, "hours", 2), expected);

    // Clients cannot append ticks; describe shows the tick depot and the global PState.
    let r = host.append("analytics", "minute-ticks", &json!({"time": 5}));
    assert_eq!((r.status, r.error_code().as_str()), (409, "tick-depot"));
    let d = host.get("/v1/modules/analytics").json();
    let depot = d["depots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "minute-ticks")
        .cloned()
        .unwrap();
    assert_eq!(depot["tick_interval_ms"], json!(MINUTE));
    let daily = d["pstates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "daily")
        .cloned()
        .unwrap();
    assert_eq!(
        (daily["global"].clone(), daily["partition"].clone()),
        (json!(true), json!(0))
    );
}

#[test]
fn a_host_on_the_system_clock_refuses_to_move_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let r = host.post_json("/v1/clock", &json!({"advance_ms": 1}));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "no-manual-clock")
    );
}
