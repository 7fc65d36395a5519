//! Microbatch topologies: the bank. Batches commit atomically on all partitions, exactly once,
//! across `kill -9` at random moments.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::Host;

fn balance(host: &Host, account: &str) -> Vec<Value> {
    host.select(
        "bank",
        "accounts",
        json!([{"key": account}, {"key": "balance"}]),
    )
}

#[test]
fn bank_transfers_apply_exactly_once_with_read_your_writes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("bank", "bank", "?partitions=4");
    let d = host.get("/v1/modules/bank").json();
    assert_eq!(d["topologies"][0]["kind"], "microbatch");

    for (account, amount) in [("alice", 100), ("bob", 50)] {
        let r = host.append(
            "bank",
            "deposits",
            &json!({"account": account, "amount": amount}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // A `full` ack waits for the batch holding the record to commit: read-your-writes.
    assert_eq!(balance(&host, "alice"), vec![json!(100)]);
    let r = host.append(
        "bank",
        "transfers",
        &json!({"id": "t1", "from": "alice", "to": "bob", "amount": 30}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(balance(&host, "alice"), vec![json!(70)]);
    assert_eq!(balance(&host, "bob"), vec![json!(80)]);
    let r = host.append(
        "bank",
        "transfers",
        &json!({"id": "t2", "from": "bob", "to": "carol", "amount": 500}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(balance(&host, "bob"), vec![json!(80)]);
    assert_eq!(balance(&host, "carol"), Vec::<Value>::new());
    let last = host.select(
        "bank",
        "accounts",
        json!([{"key": "bob"}, {"key": "history"}, "last"]),
    );
    assert_eq!(
        last,
        vec![json!({"amount": 500, "id": "t2", "kind": "refused", "reason": "overdraft"})]
    );
    let entries = host.select(
        "bank",
        "accounts",
        json!([{"key": "bob"}, {"key": "history"}, "count"]),
    );
    assert_eq!(entries, vec![json!(3)], "deposit, credit, refusal");
}

#[test]
fn kill_9_at_20_points_conserves_money_and_applies_no_transfer_twice() {
    const KILL_POINTS: u64 = 20;
    const ACCOUNTS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--select-values-max", "1000000"];
    let mut host = Host::start(&dir.path().join("data"), &args);
    host.deploy_ok("bank", "bank", "?partitions=4");
    let next = AtomicU64::new(0);
    for round in 0..KILL_POINTS {
        // Kill points spread over 120..620 ms into the load.
        let kill_after = Duration::from_millis(120 + (round * 137) % 500);
        (host, _) = host.load_then_kill9_and_restart(4, kill_after, &next, |host, c, n| {
            let (depot, body) = if (n + c) % 3 == 0 {
                (
                    "deposits",
                    json!({"account": format!("a{}", n % ACCOUNTS), "amount": 1 + n % 97}),
                )
            } else {
                let to = (n * 7 + 3) % ACCOUNTS;
                (
                    "transfers",
                    json!({"id": format!("t{n}"), "from": format!("a{}", n % ACCOUNTS),
                           "to": format!("a{to}"), "amount": 1 + n % 61}),
                )
            };
            let path = format!("/v1/modules/bank/depots/{depot}/append?ack=append");
            host.try_request(
                "POST",
                &path,
                "application/json",
                body.to_string().as_bytes(),
            )
            .map(|_| None::<()>)
        });

        let deposits: i64 = host
            .read_depot("bank", "deposits")
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .iter()
            .map(|d| d["amount"].as_i64().unwrap())
            .sum();
        let transfers = host
            .read_depot("bank", "transfers")
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = host.post_json(
                "/v1/modules/bank/pstates/accounts/select",
                &json!({"path": ["map-vals"], "partition": "all"}),
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let accounts = r.json()["values"].as_array().unwrap().clone();
            let total: i64 = accounts
                .iter()
                .map(|a| a["balance"].as_i64().unwrap_or(0))
                .sum();
            let mut outcome: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
            for a in &accounts {
                for e in a["history"].as_array().into_iter().flatten() {
                    let Some(id) = e["id"].as_str() else { continue };
                    let o = outcome.entry(id.to_string()).or_default();
                    match e["kind"].as_str().unwrap() {
                        "debit" => o.0 += 1,
                        "credit" => o.1 += 1,
                        _ => o.2 += 1,
                    }
                }
            }
            // Partitions apply a decided batch one after the other, so a reader may briefly see
            // one side of a transfer; never one applied twice.
            for (id, (debit, credit, refused)) in &outcome {
                assert!(
                    *debit <= 1 && *credit <= 1 && *refused <= 1 && debit + refused <= 1,
                    "round {round}: transfer {id} applied {debit} debit / {credit} credit / {refused} refused"
                );
            }
            let settled = outcome.len() == transfers.len()
                && outcome.values().all(|(d, c, r)| d + r == 1 && d == c);
            if total == deposits && settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: after restart the bank never caught up: total {total} of {deposits}, {} of {} transfers settled",
                outcome.len(),
                transfers.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Issue 13: a backlog is taken in batches of at most `--microbatch-records-max` records per
/// depot partition, not in one batch of unbounded size.
#[test]
fn a_backlog_is_taken_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--microbatch-records-max", "3"]);
    host.deploy_ok("bank", "bank", "?partitions=1");
    let lines: Vec<_> = (0..30)
        .map(|_| json!({"account": "alice", "amount": 1}))
        .collect();
    host.append_all("bank", "deposits", "?ack=append", &lines);
    let r = host.append(
        "bank",
        "deposits",
        &json!({"account": "alice", "amount": 1}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(balance(&host, "alice"), vec![json!(31)]);
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    let batches: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_microbatches_total{module=\"bank\""))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no sluice_microbatches_total in\n{metrics}"));
    assert!(
        batches >= 11.0,
        "31 records in batches of <= 3 need >= 11 batches, saw {batches}"
    );
}
