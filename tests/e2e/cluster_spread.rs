//! A module placed per partition (`placement=partitions`) on a cluster, end to end: three
//! real `nats-server`s, three real hosts; its partitions owned by different hosts, appends
//! with hops between hosts, `full` acks over event trees that cross hosts, reads of
//! partitions on other hosts (selects, depot reads, a query over every partition); a host
//! owning partitions killed, restarted, then paused past the owner timeout and resumed as
//! a zombie — checked afterwards against a recomputation from what was acked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::json;

use super::modules::{append_until_acked, check, counts, three_hosts, Acked, LogsOnPanic};
use super::signal;
use crate::harness::{eventually, module_wasm, Host};
use crate::nats::NatsCluster;

/// Each partition's owner as `host` sees it (`GET /v1/cluster`), if every partition has one.
fn partition_owners(host: &Host, module: &str) -> Option<BTreeMap<u64, String>> {
    let view = host.get("/v1/cluster").json();
    let m = view["modules"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == module)?
        .clone();
    assert_eq!(m["placement"], "partitions", "{m}");
    let owners: BTreeMap<u64, String> = m["partition_owners"]
        .as_array()?
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (owners.len() == m["partitions"].as_u64()? as usize).then_some(owners)
}

/// The owners of `wc`'s partitions every host in `hosts` agrees on, once they do (and none
/// is `not`).
fn agreed_owners(hosts: &[&Host], not: &str) -> BTreeMap<u64, String> {
    agreed_owners_of(hosts, "wc", not)
}

/// [`agreed_owners`] of `module`.
fn agreed_owners_of(hosts: &[&Host], module: &str, not: &str) -> BTreeMap<u64, String> {
    eventually("every host sees one owner per partition", || {
        let views: Vec<_> = hosts
            .iter()
            .map(|h| partition_owners(h, module))
            .collect::<Option<_>>()?;
        let first: &BTreeMap<u64, String> = &views[0];
        (views.iter().all(|v| v == first) && first.values().all(|o| o != not))
            .then(|| first.clone())
    })
}

/// Appends a sentence (`full`: its words are counted on their own partitions, over hops)
/// and a word (`append`) through every host in `hosts`.
fn round(hosts: &[&Host], acked: &mut Acked, n: &mut u64, tag: &str) {
    for h in hosts {
        let s = json!({"text": format!("alpha beta {tag}{n}")});
        let (a, _) = append_until_acked(h, "wc", "sentences", "full", &s, &format!("s{n}"));
        acked.take("sentences", &s, &a);
        let w = json!({"word": format!("{tag}w{n}")});
        let (a, _) = append_until_acked(h, "wc", "words", "append", &w, &format!("w{n}"));
        acked.take("words", &w, &a);
        *n += 1;
    }
}

/// Every host serves the same data: each acked record at its offset and none else, and
/// counts equal to the recomputation (through selects of partitions on other hosts).
fn check_everywhere(hosts: &[&Host], acked: &Acked) {
    for h in hosts {
        eventually("counts through every host", || {
            (counts(h, "wc") == acked.counts()).then_some(())
        });
        check(h, acked);
    }
}

#[test]
#[ignore = "needs nats-server: make test-cluster"]
fn a_module_placed_per_partition_spreads_over_hosts_and_fails_over_without_loss() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(dir.path().to_path_buf());
    let urls = cluster.urls();
    let mut hosts = three_hosts(dir.path(), &urls);

    let bad = hosts["h2"].deploy("wc", &module_wasm("wordcount"), "?placement=anywhere");
    assert_eq!(bad.status, 400, "{}", bad.error_message());
    let r = hosts["h1"].deploy("wc", &module_wasm("wordcount"), "?placement=partitions");
    assert_eq!(r.status, 201, "{}", r.error_message());
    assert_eq!(r.json()["partitions"], 4);
    let changed = hosts["h3"].deploy("wc", &module_wasm("wordcount"), "?placement=module");
    assert_eq!(changed.status, 409, "{}", changed.error_message());
    let owners = agreed_owners(&all(&hosts), "");
    let spread: BTreeSet<&String> = owners.values().collect();
    assert!(spread.len() >= 2, "every partition on one host: {owners:?}");

    // Appends through every host: a sentence's words hop to their partitions, on other
    // hosts too, and its `full` ack waits for them there.
    let mut acked = Acked::default();
    let mut n = 0;
    for i in 0..12 {
        // With no fault, every `full` ack is answered at once: an event tree whose hops
        // went to other hosts is counted off there and answered here, never left unknown.
        let h = all(&hosts)[i % 3];
        let s = json!({"text": format!("alpha beta a{n} b{n} c{n}")});
        let a = append_once(h, "sentences", &s, &format!("s{n}"));
        acked.take("sentences", &s, &a);
        n += 1;
    }
    let first_word = n;
    for _ in 0..3 {
        round(&all(&hosts), &mut acked, &mut n, "a");
    }
    // `full` means counted: right after the ack, through any host.
    let s = json!({"text": "gamma gamma delta"});
    let (a, _) = append_until_acked(&hosts["h2"], "wc", "sentences", "full", &s, "gamma");
    acked.take("sentences", &s, &a);
    for h in hosts.values() {
        let c = counts(h, "wc");
        assert_eq!(
            (c.get("gamma"), c.get("delta")),
            (Some(&2), Some(&1)),
            "{c:?}"
        );
    }
    check_everywhere(&all(&hosts), &acked);
    // A query reads every partition, on every host.
    for h in hosts.values() {
        let top = h.post_json("/v1/modules/wc/queries/top-words", &json!({"n": 2}));
        assert_eq!(top.status, 200, "{}", String::from_utf8_lossy(&top.body));
        let c = acked.counts();
        assert_eq!(
            top.json()["result"][0]["count"],
            c["alpha"],
            "{}",
            top.json()
        );
    }
    // A retry with the key of an acked append, through another host, answers the original.
    let w0 = json!({"word": format!("aw{first_word}")});
    let key = format!("w{first_word}");
    for h in hosts.values() {
        let (replayed, _) = append_until_acked(h, "wc", "words", "append", &w0, &key);
        assert_eq!(replayed["replayed"], true, "{replayed}");
    }

    // kill -9 of the host owning partition 0: its partitions move to the others, the other
    // partitions stay where they were, nothing acked is lost.
    let victim = owners[&0].clone();
    let killed = hosts.remove(&victim).unwrap().stop_by_kill9();
    let killed_at = Instant::now();
    round(&all(&hosts), &mut acked, &mut n, "b");
    println!(
        "spread failover: a host owning partitions killed → appends on every partition acked again after {} ms",
        killed_at.elapsed().as_millis()
    );
    let after = agreed_owners(&all(&hosts), &victim);
    for (p, o) in &owners {
        if *o != victim {
            assert_eq!(&after[p], o, "partition {p} moved though its host lives");
        }
    }
    round(&all(&hosts), &mut acked, &mut n, "c");
    check_everywhere(&all(&hosts), &acked);

    // The killed host comes back: it claims nothing back, and serves everything through the
    // partitions' owners.
    let back = Host::restart(killed);
    hosts.insert(victim.clone(), back);
    let now = agreed_owners(&all(&hosts), &victim);
    assert_eq!(now, after);
    round(&all(&hosts), &mut acked, &mut n, "d");
    check_everywhere(&all(&hosts), &acked);

    // A zombie: a host owning partitions paused past the owner timeout; the others claim
    // them; resumed, it gives them up (its writes would be refused) and serves through the
    // new owners.
    let paused = now.values().next().unwrap().clone();
    signal(&hosts[&paused], "-STOP");
    let others: Vec<&Host> = hosts
        .iter()
        .filter(|(id, _)| **id != paused)
        .map(|(_, h)| h)
        .collect();
    let claimed = agreed_owners(&others, &paused);
    round(&others, &mut acked, &mut n, "e");
    signal(&hosts[&paused], "-CONT");
    let last = agreed_owners(&all(&hosts), &paused);
    assert_eq!(last, claimed);
    round(&all(&hosts), &mut acked, &mut n, "f");
    check_everywhere(&all(&hosts), &acked);

    // Dead letters of a partition on another host: listed, replayed and discarded through
    // every host (a sentence with no text fails its handler there).
    let (via, k) = {
        let owners = agreed_owners(&all(&hosts), "");
        let (id, h) = hosts.iter().next().unwrap();
        let k = *owners.iter().find(|(_, o)| *o != id).unwrap().0;
        (h, k)
    };
    // A keyed record of a random depot goes where its key hashes: pick a key for partition k.
    let key = (0..)
        .map(|i| format!("bad{i}"))
        .find(|key| u64::from(sluice::partition::partition_of(key.as_bytes(), 4)) == k)
        .unwrap();
    let r = sluice::client::Client::new(&via.addr)
        .unwrap()
        .request_with_headers(
            "POST",
            "/v1/modules/wc/depots/sentences/append?ack=full",
            "application/json",
            br#"{"no": "text"}"#,
            &[("Idempotency-Key", &key)],
        )
        .expect("an answer");
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "topology-failed");
    assert_eq!(r.json()["error"]["partition"], k);
    let offset = r.json()["error"]["offset"].as_u64().expect("offset");
    let listed = |h: &Host| {
        let r = h.get("/v1/modules/wc/topologies/sentences/dead-letters");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["dead_letters"].as_array().unwrap().clone()
    };
    for h in hosts.values() {
        let dl = listed(h);
        assert_eq!(dl.len(), 1, "{dl:?}");
        assert_eq!(
            (&dl[0]["partition"], &dl[0]["offset"], &dl[0]["record"]),
            (&json!(k), &json!(offset), &json!({"no": "text"})),
            "{dl:?}"
        );
    }
    let r = via.request(
        "POST",
        "/v1/modules/wc/topologies/sentences/dead-letters/replay",
        "application/json",
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"replayed": 0, "still_failing": 1}));
    let r = via.request(
        "DELETE",
        &format!("/v1/modules/wc/topologies/sentences/dead-letters?partition={k}&depot=sentences&offset={offset}"),
        "application/json",
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["discarded"]["offset"], offset, "{}", r.json());
    for h in hosts.values() {
        assert!(listed(h).is_empty());
    }

    // Deleted through any host: gone everywhere.
    let r = hosts[&paused].request("DELETE", "/v1/modules/wc", "application/json", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for h in hosts.values() {
        eventually("the module gone", || {
            (h.get("/v1/modules/wc").status == 404).then_some(())
        });
    }
}

/// A query reads a partition on another host from one snapshot for its whole run: `kv`'s
/// `counts` reads one key's field count 300 times through a host that does not own the
/// key's partition while the owner takes new fields for that key; every read of one query
/// answers the same count, and the counts move between queries (the writes were
/// concurrent). A query after the writes sees them all.
#[test]
#[ignore = "needs nats-server: make test-cluster"]
fn a_query_reads_each_partition_on_another_host_from_one_snapshot() {
    let Some(cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(dir.path().to_path_buf());
    let hosts = three_hosts(dir.path(), &cluster.urls());
    let r = hosts["h2"].deploy("kv", &module_wasm("kv"), "?placement=partitions");
    assert_eq!(r.status, 201, "{}", r.error_message());
    let owners = agreed_owners_of(&all(&hosts), "kv", "");
    let via = &hosts["h1"];
    // A key whose partition another host owns.
    let (key, owner) = (0..)
        .find_map(|i| {
            let key = format!("k{i}");
            let put = json!({"key": key, "field": 0, "value": "v"});
            let (a, _) = append_until_acked(via, "kv", "puts", "full", &put, &key);
            let owner = &owners[&a["partition"].as_u64().expect("partition")];
            (owner != "h1").then(|| (key, owner.clone()))
        })
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (addr, key, stop) = (hosts[&owner].addr.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut client = sluice::client::Client::new(&addr).unwrap();
            let mut field = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && field < 100_000 {
                let put = json!({"key": key, "field": field, "value": "v"});
                let r = client
                    .request(
                        "POST",
                        "/v1/modules/kv/depots/puts/append?ack=append",
                        "application/json",
                        put.to_string().as_bytes(),
                    )
                    .expect("an answer");
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                field += 1;
            }
            field - 1
        })
    };
    let query = json!({"keys": vec![key.clone(); 300]});
    let run = |h: &Host| -> Vec<u64> {
        let r = h.post_json("/v1/modules/kv/queries/counts", &query);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_value(r.json()["result"].clone()).unwrap()
    };
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        // Mostly through a host without the partition; now and then through its owner.
        let h = if i % 5 == 4 { &hosts[&owner] } else { via };
        let counts = run(h);
        assert_eq!(counts.len(), 300);
        assert!(
            counts.iter().all(|c| *c == counts[0]),
            "one query read two states of partition of `{key}` through {}: {:?}",
            h.addr,
            counts.iter().collect::<BTreeSet<_>>()
        );
        seen.insert(counts[0]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(
        seen.len() >= 3,
        "the counts hardly moved between queries (so nothing was written during them): {seen:?}"
    );
    eventually("a new query sees every write", || {
        run(via).iter().all(|c| *c == written + 1).then_some(())
    });
}

/// One `full` append, answered 200 at the first try.
fn append_once(
    host: &Host,
    depot: &str,
    record: &serde_json::Value,
    key: &str,
) -> serde_json::Value {
    let r = sluice::client::Client::new(&host.addr)
        .unwrap()
        .request_with_headers(
            "POST",
            &format!("/v1/modules/wc/depots/{depot}/append?ack=full"),
            "application/json",
            record.to_string().as_bytes(),
            &[("Idempotency-Key", key)],
        )
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json();
    assert_ne!(a["replayed"], true, "{a}");
    a
}

fn all(hosts: &BTreeMap<String, Host>) -> Vec<&Host> {
    hosts.values().collect()
}
