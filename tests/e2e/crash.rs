//! Crash safety: `kill -9` the real host under concurrent load and check that nothing acked is
//! lost, offsets stay dense, and PState effects match the log exactly.
//!
//! How "replayed" is told from "lost": every record carries a unique `id`. After the restart the
//! test reads every depot partition back completely. *Lost* = an acked (partition, offset) whose
//! record is missing or has another id. *Duplicated* = an id stored twice. Effects: `counts[w]`
//! must equal the number of stored records with word `w` — a record whose processing was
//! replayed after the crash and applied twice would make it larger, one never processed smaller.
//! (Stored-but-unacked records are allowed: the host may have crashed before answering.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{module_wasm, Host};

const CLIENTS: usize = 8;
const WORDS: u64 = 40;
const KILL_POINTS: usize = 3;

struct Acked {
    partition: u64,
    offset: u64,
    id: u64,
}

fn load_until_killed(host: &Host, kill_after: Duration, next_id: &AtomicU64) -> Vec<Acked> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let stop = &stop;
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let ack = if (c as u64 + n).is_multiple_of(2) {
                            "append"
                        } else {
                            "full"
                        };
                        n += 1;
                        let body =
                            json!({"word": format!("w{}", id % WORDS), "id": id}).to_string();
                        let path = format!("/v1/modules/wordcount/depots/words/append?ack={ack}");
                        match host.try_request("POST", &path, "application/json", body.as_bytes()) {
                            Some(r) if r.status == 200 => {
                                let j = r.json();
                                acked.push(Acked {
                                    partition: j["partition"].as_u64().unwrap(),
                                    offset: j["offset"].as_u64().unwrap(),
                                    id,
                                });
                            }
                            Some(r) if r.status == 503 => {
                                std::thread::sleep(Duration::from_millis(5))
                            }
                            Some(r) => panic!(
                                "unexpected {}: {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            ),
                            None => break, // killed
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        let status = std::process::Command::new("kill")
            .args(["-9", &host.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    })
}

#[test]
fn kill_9_under_load_loses_no_acked_record_and_applies_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    assert_eq!(
        host.deploy("wordcount", &module_wasm("wordcount"), "?partitions=4")
            .status,
        201
    );
    let mut all_acked: Vec<Acked> = Vec::new();
    let next_id = AtomicU64::new(0);
    for round in 0..KILL_POINTS {
        let kill_after = Duration::from_millis(300 + 250 * round as u64);
        let acked = load_until_killed(&host, kill_after, &next_id);
        assert!(!acked.is_empty(), "round {round}: the load acked nothing");
        all_acked.extend(acked);
        host = host.kill9_and_restart();

        // Wait until the restarted host caught up (replay of the unprocessed log tail).
        let deadline = Instant::now() + Duration::from_secs(30);
        let (log, counts) = loop {
            let log = host.read_depot("wordcount", "words");
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            for r in log.iter().flatten() {
                *expected
                    .entry(r["word"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            let counts: BTreeMap<String, u64> = expected
                .keys()
                .map(|w| {
                    let v = host.select("wordcount", "counts", json!([{"key": w}]));
                    (w.clone(), v.first().and_then(|v| v.as_u64()).unwrap_or(0))
                })
                .collect();
            if counts == expected || Instant::now() > deadline {
                assert_eq!(
                    counts, expected,
                    "round {round}: counts must equal the stored records exactly"
                );
                break (log, counts);
            }
            std::thread::sleep(Duration::from_millis(50));
        };

        let mut by_position: HashMap<(u64, u64), u64> = HashMap::new();
        let mut ids = HashSet::new();
        for (p, records) in log.iter().enumerate() {
            for (o, r) in records.iter().enumerate() {
                let id = r["id"].as_u64().unwrap();
                assert!(ids.insert(id), "round {round}: id {id} stored twice");
                by_position.insert((p as u64, o as u64), id);
            }
        }
        let lost: Vec<_> = all_acked
            .iter()
            .filter(|a| by_position.get(&(a.partition, a.offset)) != Some(&a.id))
            .map(|a| (a.partition, a.offset, a.id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acked records lost: {lost:?}"
        );
        let stored: u64 = counts.values().sum();
        assert!(stored >= all_acked.len() as u64);
    }
}
