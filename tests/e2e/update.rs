//! Module updates: a new build takes over a deployed module's data; incompatible builds are
//! refused with nothing changed; appends during the swap wait instead of failing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{module_wasm, Conn, Host};

fn counts(host: &Host) -> BTreeMap<String, i64> {
    let r = host.post_json(
        "/v1/modules/wordcount/pstates/counts/select",
        &json!({"path": ["all"], "partition": "all"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_i64().unwrap()))
        .collect()
}

#[test]
fn incompatible_updates_are_refused_with_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=8");
    for w in ["a", "b", "a"] {
        assert_eq!(
            host.append("wordcount", "words", &json!({ "word": w }))
                .status,
            200
        );
    }
    let before = counts(&host);
    assert_eq!(before, BTreeMap::from([("a".into(), 2), ("b".into(), 1)]));

    let refusals = [
        (
            module_wasm("wordcount_bad_schema"),
            "",
            "PState `counts`: the schema change `map<string, int>` -> `map<string, string>` cannot read existing data",
        ),
        (module_wasm("kv"), "", "depot `words` is removed"),
        (
            module_wasm("wordcount_next"),
            "?partitions=4",
            "the partition count cannot change (8 -> 4)",
        ),
    ];
    for (wasm, query, expected) in refusals {
        let r = host.deploy("wordcount", &wasm, query);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (409, "incompatible-update"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(expected), "{message}");
    }
    // Nothing changed: same version, same declarations, same data, still processing.
    let d = host.get("/v1/modules/wordcount").json();
    assert_eq!(d["version"], 1);
    assert_eq!(d["pstates"].as_array().unwrap().len(), 1);
    assert_eq!(counts(&host), before);
    let r = host.append("wordcount", "words", &json!({"word": "a"}));
    assert_eq!(r.json()["results"]["wordcount"], 3);
    let files: Vec<String> = std::fs::read_dir(dir.path().join("data/modules/wordcount"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    assert_eq!(files, vec!["module.wasm".to_string()]);
}

#[test]
fn update_under_load_loses_and_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=8");
    let stop = AtomicBool::new(false);
    const CLIENTS: u64 = 4;
    let (acked, update) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, addr) = (&stop, host.addr.clone());
                s.spawn(move || {
                    let mut conn = Conn::open(&addr);
                    let mut acked = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        let word = format!("w{}", (n * CLIENTS + c) % 37);
                        let r = conn.request(
                            "POST",
                            "/v1/modules/wordcount/depots/words/append",
                            "application/json",
                            json!({ "word": word }).to_string().as_bytes(),
                        );
                        assert_eq!(
                            r.status,
                            200,
                            "an append during the update failed: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                        let j = r.json();
                        acked.push((
                            j["partition"].as_u64().unwrap(),
                            j["offset"].as_u64().unwrap(),
                        ));
                        n += 1;
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let update = host.deploy("wordcount", &module_wasm("wordcount_next"), "");
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Release);
        let acked: Vec<(u64, u64)> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (acked, update)
    });
    assert_eq!(
        update.status,
        200,
        "{}",
        String::from_utf8_lossy(&update.body)
    );
    let d = update.json();
    assert_eq!(d["version"], 2);
    assert_eq!(d["queries"], json!(["total"]));
    assert!(acked.len() > 50, "the load ran: {} appends", acked.len());

    // Every acked append is stored once, and counted once (by one version or the other).
    let mut unique = acked.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), acked.len(), "no offset acked twice");
    assert_eq!(host.depot_records("wordcount", "words"), acked.len() as u64);
    let total: i64 = counts(&host).values().sum();
    assert_eq!(total, acked.len() as i64);
    let r = host.post_json("/v1/modules/wordcount/queries/total", &json!({}));
    assert_eq!(r.json()["result"], acked.len() as i64);

    // The new topology started from the beginning of the depot: words appended before the
    // update have their length too (its ack is `full` for the new version's records only, so
    // wait for the backfill).
    let words: Vec<String> = counts(&host).into_keys().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = host.post_json(
            "/v1/modules/wordcount/pstates/lengths/select",
            &json!({"path": ["map-keys"], "partition": "all"}),
        );
        let got: Vec<String> = r.json()["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        if sorted == words {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backfill incomplete: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        host.select("wordcount", "lengths", json!([{"key": "w10"}])),
        vec![json!(3)]
    );

    // The new version survives a restart; the old component file is gone.
    let acked_total = acked.len() as i64;
    let host = host.terminate_and_restart();
    assert_eq!(host.get("/v1/modules/wordcount").json()["version"], 2);
    let r = host.post_json("/v1/modules/wordcount/queries/total", &json!({}));
    assert_eq!(r.json()["result"], Value::from(acked_total));
    let files: Vec<String> = std::fs::read_dir(dir.path().join("data/modules/wordcount"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    assert_eq!(files, vec!["module-v2.wasm".to_string()]);

    // DELETE removes the module and its data: a new deploy starts empty, at version 1.
    let r = host.request("DELETE", "/v1/modules/wordcount", "application/json", b"");
    assert_eq!(r.status, 200);
    assert!(!dir.path().join("data/modules/wordcount").exists());
    assert_eq!(host.get("/v1/modules/wordcount").status, 404);
    host.deploy_ok("wordcount", "wordcount", "");
    assert_eq!(host.get("/v1/modules/wordcount").json()["version"], 1);
    assert!(counts(&host).is_empty());
}

/// A microbatch module updated while deposits and transfers stream in with `ack=full`: every
/// append is answered 200 (the `full` acks of batches in flight are drained, not dropped),
/// and afterwards money is conserved exactly and every transfer is applied once.
#[test]
fn microbatch_module_update_under_load_conserves_money() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("bank", "bank", "?partitions=4");
    const ACCOUNTS: u64 = 20;
    let deposits: Vec<Value> = (0..ACCOUNTS)
        .map(|a| json!({"account": format!("a{a}"), "amount": 500}))
        .collect();
    host.append_all("bank", "deposits", "", &deposits);
    let stop = AtomicBool::new(false);
    let (sent, update) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3u64)
            .map(|c| {
                let (stop, addr) = (&stop, host.addr.clone());
                s.spawn(move || {
                    let mut conn = Conn::open(&addr);
                    let mut n = 0u64;
                    let mut deposited = 0i64;
                    while !stop.load(Ordering::Acquire) {
                        let id = c * 1_000_000 + n;
                        let (depot, body) = if n.is_multiple_of(3) {
                            deposited += 7;
                            ("deposits", json!({"account": format!("a{}", id % ACCOUNTS), "amount": 7}))
                        } else {
                            ("transfers", json!({"id": format!("t{id}"), "from": format!("a{}", id % ACCOUNTS),
                                                 "to": format!("a{}", (id * 7 + 3) % ACCOUNTS), "amount": 1 + id % 9}))
                        };
                        let r = conn.request(
                            "POST",
                            &format!("/v1/modules/bank/depots/{depot}/append"),
                            "application/json",
                            body.to_string().as_bytes(),
                        );
                        assert_eq!(r.status, 200, "during the update: {}", String::from_utf8_lossy(&r.body));
                        n += 1;
                    }
                    (n, deposited)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600));
        let update = host.deploy("bank", &module_wasm("bank_next"), "");
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::Release);
        let sent: Vec<(u64, i64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (sent, update)
    });
    assert_eq!(
        update.status,
        200,
        "{}",
        String::from_utf8_lossy(&update.body)
    );
    assert_eq!(update.json()["version"], 2);
    let appended: u64 = sent.iter().map(|(n, _)| n).sum();
    assert!(appended > 30, "the load ran: {appended} appends");
    let deposited = 500 * ACCOUNTS as i64 + sent.iter().map(|(_, d)| d).sum::<i64>();
    let r = host.post_json("/v1/modules/bank/queries/total-balance", &json!({}));
    assert_eq!(r.json()["result"], deposited);
    // Each transfer appears once in its payer's history (debited or refused) and, if
    // debited, once in its payee's history.
    let histories: Vec<Value> = host
        .post_json(
            "/v1/modules/bank/pstates/accounts/select",
            &json!({"path": ["map-vals", {"key": "history"}, "all"], "partition": "all"}),
        )
        .json()["values"]
        .as_array()
        .unwrap()
        .clone();
    let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
    for e in &histories {
        if let Some(id) = e["id"].as_str() {
            *seen
                .entry((id.to_string(), e["kind"].as_str().unwrap().to_string()))
                .or_default() += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "a transfer applied twice");
    let transfers = host.depot_records("bank", "transfers");
    let settled = seen
        .keys()
        .filter(|(_, kind)| kind == "debit" || kind == "refused")
        .count() as u64;
    assert_eq!(
        settled, transfers,
        "every stored transfer was applied exactly once"
    );
    // The new build's query answers.
    let r = host.post_json("/v1/modules/bank/queries/accounts", &json!({}));
    assert_eq!(r.status, 200);
}
