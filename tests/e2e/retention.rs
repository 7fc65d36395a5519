//! Depot retention on the real binary (`modules/retained`: the newest 100 records per
//! partition, and those of the last minute): trimmed records are gone from reads with a clear
//! error, their effects stay, unprocessed work and dead letters are kept, offsets are never
//! reused (even with every record trimmed), and `kill -9` during trimming loses nothing else.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, Host};

const KEEP: u64 = 100;

/// `(start, end)` of each partition of `events`.
fn bounds(host: &Host) -> Vec<(u64, u64)> {
    let info = host.get("/v1/modules/retained/depots/events").json();
    info["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["end"].as_u64().unwrap()))
        .collect()
}

/// The stored records of partition `p` from its start, checking their offsets are dense.
fn stored(host: &Host, p: usize, start: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = start;
    loop {
        let r = host.get(&format!(
            "/v1/modules/retained/depots/events/partitions/{p}?from={from}&limit=1000"
        ));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let page = r.json();
        let batch = page["records"].as_array().unwrap().clone();
        if batch.is_empty() {
            return out;
        }
        for rec in &batch {
            assert_eq!(
                rec["offset"],
                json!(start + out.len() as u64),
                "dense from the start"
            );
            out.push(rec["record"].clone());
        }
        from = page["next"].as_u64().unwrap();
    }
}

fn total_count(host: &Host) -> u64 {
    let r = host.post_json(
        "/v1/modules/retained/pstates/counts/select",
        &json!({"path": ["map-vals"], "partition": "all"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .flat_map(|p| p["values"].as_array().unwrap().clone())
                .map(|n| n.as_u64().unwrap())
                .sum()
        })
        .unwrap_or_else(|| {
            v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .sum()
        })
}

#[test]
fn retention_trims_old_records_but_keeps_dead_letters_effects_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--manual-clock-ms", "1700000000000"],
    );
    host.deploy_ok("retained", "retained", "?partitions=2");
    let d = host.get("/v1/modules/retained").json();
    assert_eq!(
        d["depots"][0]["retention"],
        json!({"max_records": KEEP, "max_age_ms": 60_000})
    );
    // A poison record early on: its dead letter pins its partition's log from its offset.
    let r = host.post_json(
        "/v1/modules/retained/depots/events/append?ack=append",
        &json!({"key": "k0", "fail": true}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (poisoned, poison_offset) = (
        r.json()["partition"].as_u64().unwrap() as usize,
        r.json()["offset"].as_u64().unwrap(),
    );
    let records: Vec<Value> = (0..1000)
        .map(|i| json!({"key": format!("k{}", i % 37)}))
        .collect();
    for chunk in records.chunks(250) {
        host.append_all("retained", "events", "", chunk);
    }
    // Every processed record is counted, and stays counted after it is trimmed.
    assert_eq!(total_count(&host), 1000);
    // Trims run about once a second: wait until the partition without the poison record
    // keeps exactly its newest records.
    let b = eventually("the trim to the newest records", || {
        let b = bounds(&host);
        b.iter()
            .enumerate()
            .all(|(p, (s, e))| p == poisoned || *s + KEEP == *e)
            .then_some(b)
    });
    let ends: u64 = b.iter().map(|(_, e)| e).sum();
    assert_eq!(ends, 1001, "ends count every record ever appended");
    for (p, (start, end)) in b.iter().enumerate() {
        if p == poisoned {
            assert_eq!(*start, poison_offset, "the dead letter's record is kept");
        } else {
            assert_eq!(*start, end - KEEP, "partition {p} keeps its newest {KEEP}");
        }
        assert_eq!(stored(&host, p, *start).len() as u64, end - start);
        if *start > 0 {
            let r = host.get(&format!(
                "/v1/modules/retained/depots/events/partitions/{p}?from=0"
            ));
            assert_eq!((r.status, r.error_code().as_str()), (410, "offset-trimmed"));
        }
    }
    let letters = host
        .get("/v1/modules/retained/topologies/count/dead-letters")
        .json();
    assert_eq!(
        letters["dead_letters"].as_array().unwrap().len(),
        1,
        "{letters}"
    );
    assert_eq!(total_count(&host), 1000);

    // Two minutes later the age bound trims every processed record; the ends stay, and a new
    // record gets the next offset, never a reused one.
    let r = host.post_json("/v1/clock", &json!({"advance_ms": 120_000}));
    assert_eq!(r.status, 200);
    let b = eventually("everything old trimmed", || {
        let b = bounds(&host);
        b.iter()
            .enumerate()
            .all(|(p, (s, e))| p == poisoned || s == e)
            .then_some(b)
    });
    let other = 1 - poisoned;
    let key = (0..)
        .map(|i| format!("n{i}"))
        .find(|k| {
            let r = host.append("retained", "events", &json!({"key": k}));
            r.json()["partition"].as_u64() == Some(other as u64)
        })
        .unwrap();
    let _ = key;
    let after = bounds(&host);
    assert_eq!(
        after[other].1,
        b[other].1 + 1,
        "the new record took the next offset"
    );
    assert_eq!(stored(&host, other, b[other].1).len(), 1);
}

#[test]
fn kill_9_during_trimming_loses_no_kept_record_and_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("retained", "retained", "?partitions=2");
    let next = AtomicU64::new(0);
    let mut acked: Vec<(u64, u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let (restarted, kept) = host.load_then_kill9_and_restart(
            4,
            Duration::from_millis(1_500 + 400 * round),
            &next,
            |host, _, id| {
                let body: String = (0..20)
                    .map(|j| {
                        json!({"key": format!("k{}", (id * 20 + j) % 41), "id": id * 20 + j})
                            .to_string()
                            + "\n"
                    })
                    .collect();
                let r = host.try_request(
                    "POST",
                    "/v1/modules/retained/depots/events/append?ack=append",
                    "application/x-ndjson",
                    body.as_bytes(),
                )?;
                match r.status {
                    200 => Some(Some(
                        r.json()["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .enumerate()
                            // A line the crash cut short answers an error: not acked.
                            .filter_map(|(j, res)| {
                                Some((
                                    res["partition"].as_u64()?,
                                    res["offset"].as_u64()?,
                                    id * 20 + j as u64,
                                ))
                            })
                            .collect::<Vec<_>>(),
                    )),
                    503 => Some(None),
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            },
        );
        host = restarted;
        acked.extend(kept.into_iter().flatten());
        // Once caught up, every record ever appended (the ends) was counted exactly once,
        // trimmed or not.
        let ends = eventually("the counts to catch up", || {
            let ends: u64 = bounds(&host).iter().map(|(_, e)| e).sum();
            (total_count(&host) == ends).then_some(ends)
        });
        assert!(ends >= acked.len() as u64);
        // Trimming converges (no dead letters, everything processed): the newest records.
        let b = eventually("the trims to converge", || {
            let b = bounds(&host);
            b.iter().all(|(s, e)| *s + KEEP >= *e).then_some(b)
        });
        // Every acked record at or past its partition's start is stored at its offset; the
        // ones below were trimmed, never shifted.
        let logs: Vec<Vec<Value>> = (0..2).map(|p| stored(&host, p, b[p].0)).collect();
        let mut checked = BTreeMap::new();
        for (p, o, id) in &acked {
            let (start, end) = b[*p as usize];
            assert!(
                *o < end,
                "acked offset {o} of partition {p} is below the end {end}"
            );
            if *o >= start {
                assert_eq!(logs[*p as usize][(o - start) as usize]["id"], json!(id));
                *checked.entry(p).or_insert(0) += 1;
            }
        }
        assert!(
            b.iter().any(|(s, _)| *s > 0),
            "round {round}: something was trimmed: {b:?}"
        );
    }
}

#[test]
fn a_deployment_sets_its_own_retention_kept_across_updates_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let wasm = crate::harness::module_wasm("retained");
    // The module keeps 100 per partition; this deployment keeps 10.
    let r = host.deploy("retained", &wasm, "?partitions=2&retain.events=records:10");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let d = r.json();
    assert_eq!(
        d["depots"][0]["retention"],
        json!({"max_records": 10, "max_age_ms": null})
    );
    assert_eq!(d["depots"][0]["retention_set_by"], "deployment");
    let records: Vec<Value> = (0..300).map(|i| json!({"key": format!("k{i}")})).collect();
    host.append_all("retained", "events", "?ack=full", &records);
    let kept = |host: &Host, n: u64| {
        eventually(&format!("{n} kept per partition"), || {
            let b = bounds(host);
            b.iter().all(|(s, e)| e - s == n).then_some(b)
        })
    };
    kept(&host, 10);
    assert_eq!(total_count(&host), 300);
    // The same build again keeps the setting; a bad one is refused, naming it.
    assert_eq!(host.deploy("retained", &wasm, "").status, 200);
    let bad = host.deploy("retained", &wasm, "?retain.events=forever");
    assert_eq!(
        (bad.status, bad.error_code()),
        (400, "invalid-parameter".into())
    );
    let bad = host.deploy("retained", &wasm, "?retain.nope=none");
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    // It survives kill -9 (the manifest holds it).
    let host = host.kill9_and_restart();
    host.append_all("retained", "events", "?ack=full", &records);
    kept(&host, 10);
    let d = host.get("/v1/modules/retained").json();
    assert_eq!(d["depots"][0]["retention_set_by"], "deployment");
    // `module` drops it: back to the module's 100.
    let r = host.deploy("retained", &wasm, "?retain.events=module");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["depots"][0]["retention"]["max_records"], 100);
    assert_eq!(r.json()["depots"][0].get("retention_set_by"), None);
    host.append_all("retained", "events", "?ack=full", &records);
    kept(&host, 100);
    assert_eq!(total_count(&host), 900);
}
