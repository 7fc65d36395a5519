//! Stream topologies with hops: event trees, `full` acks across partitions, and exactly-once
//! effects across `kill -9` (outbox + per-source watermarks).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Host;

const TEXTS: &[&str] = &[
    "the cat and the hat",
    "a cat is not a hat",
    "The quick brown fox",
    "and the fox ran",
    "hat hat hat",
];

fn local_counts(texts: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for t in texts {
        for w in t.split_whitespace() {
            *m.entry(w.to_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

fn counts(host: &Host, words: impl Iterator<Item = String>) -> BTreeMap<String, u64> {
    words
        .map(|w| {
            let v = host.select("wordcount", "counts", json!([{"key": w}]));
            (w, v.first().and_then(|v| v.as_u64()).unwrap_or(0))
        })
        .collect()
}

#[test]
fn sentences_hop_to_each_words_partition_and_full_ack_waits_for_every_hop() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=4");
    let d = host.get("/v1/modules/wordcount").json();
    assert_eq!(d["topologies"][1]["hop_handlers"], json!(["count-word"]));

    let mut texts = Vec::new();
    for (i, t) in TEXTS.iter().enumerate() {
        let r = host.append("wordcount", "sentences", &json!({ "text": t }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["partition"], i as u64 % 4, "random = round robin");
        texts.push(t.to_string());
        // Read-your-writes: the full ack came after every hop of the sentence committed.
        let expected = local_counts(&texts);
        assert_eq!(counts(&host, expected.keys().cloned()), expected);
    }
    let batch: String = TEXTS
        .iter()
        .map(|t| json!({ "text": t }).to_string() + "\n")
        .collect();
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/sentences/append",
        "application/x-ndjson",
        batch.as_bytes(),
    );
    assert_eq!(r.status, 200);
    texts.extend(TEXTS.iter().map(|t| t.to_string()));
    let expected = local_counts(&texts);
    assert_eq!(counts(&host, expected.keys().cloned()), expected);
    assert_eq!(expected["hat"], 10);
}

#[test]
fn kill_9_during_hops_applies_every_stored_sentence_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=4");
    let next = AtomicU64::new(0);
    for round in 0..3u64 {
        let kill_after = Duration::from_millis(300 + 200 * round);
        (host, _) = host.load_then_kill9_and_restart(6, kill_after, &next, |host, c, n| {
            let ack = if (n + c).is_multiple_of(2) {
                "full"
            } else {
                "append"
            };
            let text = format!("{} w{}", TEXTS[n as usize % TEXTS.len()], n % 7);
            let body = json!({ "text": text }).to_string();
            let path = format!("/v1/modules/wordcount/depots/sentences/append?ack={ack}");
            host.try_request("POST", &path, "application/json", body.as_bytes())
                .map(|_| None::<()>)
        });

        // Every stored sentence, read back from the depot.
        let texts: Vec<String> = host
            .read_depot("wordcount", "sentences")
            .into_iter()
            .flatten()
            .map(|r| r["text"].as_str().unwrap().to_string())
            .collect();
        assert!(!texts.is_empty());
        let expected = local_counts(&texts);
        // Hops re-sent from outboxes after the restart land asynchronously: wait for them.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = counts(&host, expected.keys().cloned());
            if got == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: counts must equal the stored sentences exactly (no lost, no doubled hop)\n got {got:?}\nwant {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Issue 13: a partition's queue holds at most `--hop-queue-max` hops; senders hold the rest
/// (durable in their outbox) and offer them as the queue drains — every hop still applied
/// exactly once, every `full` ack answered after its whole fanout.
#[test]
fn hops_wait_for_a_full_queue_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--hop-queue-max", "2"]);
    host.deploy_ok("wc", "wordcount", "?partitions=4");
    let words = ["ant", "bee", "cat", "dog", "elk", "fox", "gnu", "hen"];
    let lines: Vec<_> = (0..60)
        .map(|i| {
            let text: Vec<&str> = (0..8).map(|j| words[(i + j) % 8]).collect();
            serde_json::json!({"text": text.join(" ")})
        })
        .collect();
    let results = host.append_all("wc", "sentences", "", &lines);
    assert_eq!(results.len(), 60);
    for w in words {
        assert_eq!(
            host.select("wc", "counts", serde_json::json!([{"key": w}])),
            vec![serde_json::json!(60)],
            "{w}: 60 sentences hold it once each"
        );
    }
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    let held: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_hops_held_total{module=\"wc\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0.0);
    assert!(held > 0.0, "no hop waited for a full queue:\n{metrics}");
}
