//! Dead letters you can act on: hop dead letters (stream and microbatch) keep their payloads,
//! replay exactly once after the cause is fixed (across `kill -9`), and can be discarded with
//! an audit line. Module `letters`: hops fail until their gate is open.

use serde_json::{json, Value};

use super::harness::{eventually, Host};

fn dead(host: &Host, topology: &str) -> Vec<Value> {
    let r = host.get(&format!(
        "/v1/modules/letters/topologies/{topology}/dead-letters"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["dead_letters"].as_array().unwrap().clone()
}

fn replay(host: &Host, topology: &str) -> Value {
    let r = host.request(
        "POST",
        &format!("/v1/modules/letters/topologies/{topology}/dead-letters/replay"),
        "application/json",
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn discard(host: &Host, topology: &str, d: &Value) -> sluice::client::Response {
    let depot = d["depot"].as_str().unwrap().replace(':', "%3A");
    host.request(
        "DELETE",
        &format!(
            "/v1/modules/letters/topologies/{topology}/dead-letters?partition={}&depot={depot}&offset={}",
            d["partition"], d["offset"]
        ),
        "application/json",
        b"",
    )
}

/// The one dead letter of each topology, once both are there.
fn one_each(host: &Host) -> (Value, Value) {
    eventually("a hop dead letter in each topology", || {
        let (s, b) = (dead(host, "stream"), dead(host, "batch"));
        (s.len() == 1 && b.len() == 1).then(|| (s[0].clone(), b[0].clone()))
    })
}

fn count(host: &Host, pstate: &str, key: &str) -> Vec<Value> {
    host.select("letters", pstate, json!([{"key": key}]))
}

#[test]
fn hop_dead_letters_keep_their_payloads_replay_once_and_can_be_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--handler-attempts-max", "1"]);
    host.deploy_ok("letters", "letters", "?partitions=4");
    host.append("letters", "sends", &json!({"key": "a", "to": "t1"}));
    let (s, b) = one_each(&host);
    assert!(
        s["depot"].as_str().unwrap().starts_with("hop:land:from-p"),
        "{s}"
    );
    assert_eq!(s["hop"]["handler"], "land");
    assert_eq!(s["hop"]["origin"]["depot"], "sends");
    assert_eq!(s["hop"]["origin"]["offset"], 0);
    assert_eq!(s["record"], "t1");
    assert!(
        s["error"].as_str().unwrap().contains("gate `t1` is closed"),
        "{s}"
    );
    assert!(
        b["depot"]
            .as_str()
            .unwrap()
            .starts_with("batch-hop:land-batch:batch-"),
        "{b}"
    );
    assert_eq!(b["hop"]["handler"], "land-batch");
    assert_eq!(b["record"], "t1");
    // Still closed: replays leave them, unchanged in number.
    assert_eq!(
        replay(&host, "stream"),
        json!({"replayed": 0, "still_failing": 1})
    );
    assert_eq!(
        replay(&host, "batch"),
        json!({"replayed": 0, "still_failing": 1})
    );
    assert_eq!(
        (dead(&host, "stream").len(), dead(&host, "batch").len()),
        (1, 1)
    );
    // Fixed: each runs once.
    let r = host.post_json(
        "/v1/modules/letters/depots/gates/append?ack=full",
        &json!({"key": "t1"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        replay(&host, "stream"),
        json!({"replayed": 1, "still_failing": 0})
    );
    assert_eq!(
        replay(&host, "batch"),
        json!({"replayed": 1, "still_failing": 0})
    );
    assert_eq!(count(&host, "landed", "t1"), vec![json!(1)]);
    assert_eq!(count(&host, "batched", "t1"), vec![json!(1)]);
    assert_eq!(
        (dead(&host, "stream").len(), dead(&host, "batch").len()),
        (0, 0)
    );
    assert_eq!(
        replay(&host, "stream"),
        json!({"replayed": 0, "still_failing": 0})
    );

    // A second pair survives kill -9; replayed ones stay replayed, effects stay single.
    host.append("letters", "sends", &json!({"key": "b", "to": "t2"}));
    let _ = one_each(&host);
    let host = host.kill9_and_restart();
    let (s, b) = one_each(&host);
    assert_eq!(
        (s["record"].clone(), b["record"].clone()),
        (json!("t2"), json!("t2"))
    );
    assert_eq!(count(&host, "landed", "t1"), vec![json!(1)]);
    assert_eq!(count(&host, "batched", "t1"), vec![json!(1)]);

    // Discarded for good, each with an audit line; a second discard finds nothing.
    let r = discard(&host, "stream", &s);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["discarded"]["depot"], s["depot"]);
    assert_eq!(r.json()["discarded"]["error"], s["error"]);
    let again = discard(&host, "stream", &s);
    assert_eq!(
        (again.status, again.error_code()),
        (404, "unknown-dead-letter".into())
    );
    assert_eq!(discard(&host, "batch", &b).status, 200);
    let r = host.request(
        "DELETE",
        "/v1/modules/letters/topologies/stream/dead-letters?partition=0",
        "application/json",
        b"",
    );
    assert_eq!((r.status, r.error_code()), (400, "bad-request".into()));
    assert_eq!(
        (dead(&host, "stream").len(), dead(&host, "batch").len()),
        (0, 0)
    );
    // Opening the gate now changes nothing: discarded work never runs.
    let r = host.post_json(
        "/v1/modules/letters/depots/gates/append?ack=full",
        &json!({"key": "t2"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        replay(&host, "stream"),
        json!({"replayed": 0, "still_failing": 0})
    );
    assert_eq!(
        replay(&host, "batch"),
        json!({"replayed": 0, "still_failing": 0})
    );
    for p in ["landed", "batched"] {
        let v = count(&host, p, "t2");
        assert!(v.iter().all(Value::is_null), "{p}[t2] = {v:?}");
    }
    let host = host.kill9_and_restart();
    assert_eq!(
        (dead(&host, "stream").len(), dead(&host, "batch").len()),
        (0, 0)
    );
    drop(host);
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    let audits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dead letter discarded"))
        .collect();
    assert_eq!(audits.len(), 2, "{log}");
    assert!(audits[0].contains("gate `t2` is closed"), "{}", audits[0]);
}
