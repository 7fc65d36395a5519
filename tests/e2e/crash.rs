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
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Host;

const CLIENTS: u64 = 8;
const WORDS: u64 = 40;
const KILL_POINTS: usize = 3;

struct Acked {
    partition: u64,
    offset: u64,
    id: u64,
}

#[test]
fn kill_9_under_load_loses_no_acked_record_and_applies_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=4");
    let mut all_acked: Vec<Acked> = Vec::new();
    let next_id = AtomicU64::new(0);
    for round in 0..KILL_POINTS {
        let kill_after = Duration::from_millis(300 + 250 * round as u64);
        let (restarted, acked) =
            host.load_then_kill9_and_restart(CLIENTS, kill_after, &next_id, |host, c, id| {
                let ack = if (c + id).is_multiple_of(2) {
                    "append"
                } else {
                    "full"
                };
                let body = json!({"word": format!("w{}", id % WORDS), "id": id}).to_string();
                let path = format!("/v1/modules/wordcount/depots/words/append?ack={ack}");
                let r = host.try_request("POST", &path, "application/json", body.as_bytes())?;
                match r.status {
                    200 => {
                        let j = r.json();
                        Some(Some(Acked {
                            partition: j["partition"].as_u64().unwrap(),
                            offset: j["offset"].as_u64().unwrap(),
                            id,
                        }))
                    }
                    503 => {
                        std::thread::sleep(Duration::from_millis(5));
                        Some(None)
                    }
                    other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            });
        host = restarted;
        assert!(!acked.is_empty(), "round {round}: the load acked nothing");
        all_acked.extend(acked);

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
