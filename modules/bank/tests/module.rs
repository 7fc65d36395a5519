//! Tests of the bank module on an in-process host (`sluice::testing`).

use serde_json::json;
use sluice::testing::{module_wasm, TestHost};

#[test]
fn transfers_conserve_money_and_refuse_overdrafts() {
    let host = TestHost::start();
    let bank = host.deploy("bank", &module_wasm("bank")).unwrap();
    bank.append_all(
        "deposits",
        &[
            json!({"account": "alice", "amount": 100}),
            json!({"account": "bob", "amount": 50}),
        ],
    )
    .unwrap();
    bank.append(
        "transfers",
        &json!({"id": "t1", "from": "alice", "to": "bob", "amount": 30}),
    )
    .unwrap();
    bank.append(
        "transfers",
        &json!({"id": "t2", "from": "bob", "to": "carol", "amount": 500}),
    )
    .unwrap();

    let balance = |who: &str| {
        bank.get::<i64>("accounts", json!([{"key": who}, {"key": "balance"}]))
            .unwrap()
    };
    assert_eq!(balance("alice"), Some(70));
    assert_eq!(balance("bob"), Some(80));
    assert_eq!(balance("carol"), None);
    let last: Vec<serde_json::Value> = bank
        .select(
            "accounts",
            json!([{"key": "bob"}, {"key": "history"}, "last"]),
        )
        .unwrap();
    assert_eq!(last[0]["kind"], "refused");
    assert_eq!(last[0]["reason"], "overdraft");

    // The live invariant: all balances sum to all deposits.
    let total: i64 = bank.query("total-balance", &json!({})).unwrap();
    assert_eq!(total, 150);
    bank.wait_processed(std::time::Duration::from_secs(5))
        .unwrap();
    assert!(bank.dead_letters("bank").unwrap().is_empty());
}
