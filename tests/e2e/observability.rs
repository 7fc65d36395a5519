//! Observability: `/metrics` in the Prometheus text format, structured logs, `/health`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::harness::{module_wasm, Host};

/// `name{labels}` → value, for every sample line.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("a sample is `series value`");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn metrics_count_appends_processing_failures_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--handler-attempts-max", "3"]);
    assert_eq!(
        host.get("/health").json(),
        json!({"status": "ok", "modules": {}, "failed_modules": {}})
    );
    for (name, wasm) in [
        ("wordcount", "wordcount"),
        ("hostile", "hostile"),
        ("garbage", "garbage_imports"),
    ] {
        assert_eq!(
            host.deploy(name, &module_wasm(wasm), "?partitions=2")
                .status,
            201
        );
    }
    for w in ["a", "b", "c", "a", "a"] {
        assert_eq!(
            host.append("wordcount", "words", &json!({ "word": w }))
                .status,
            200
        );
    }
    let r = host.post_json(
        "/v1/modules/wordcount/depots/words/append?ack=append",
        &json!({"word": "d"}),
    );
    assert_eq!(r.status, 200);
    let r = host.append("hostile", "commands", &json!({"key": "k", "do": "error"}));
    assert_eq!(r.status, 500);
    assert_eq!(
        host.append("garbage", "go", &json!({"key": "g"})).status,
        200
    );
    for _ in 0..2 {
        let r = host.post_json("/v1/modules/wordcount/queries/top-words", &json!({"n": 2}));
        assert_eq!(r.status, 200);
    }
    let r = host.post_json(
        "/v1/modules/hostile/queries/misbehave",
        &json!({"do": "write"}),
    );
    assert_eq!(r.status, 422);

    let r = host.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.contains("# TYPE sluice_ack_latency_seconds histogram"));
    let s = samples(&text);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in:\n{text}"))
    };
    assert_eq!(
        get(r#"sluice_appends_total{module="wordcount",depot="words",ack="full"}"#),
        5.0
    );
    assert_eq!(
        get(r#"sluice_appends_total{module="wordcount",depot="words",ack="append"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_acks_total{module="wordcount",depot="words",level="full",outcome="ok"}"#),
        5.0
    );
    assert_eq!(
        get(r#"sluice_acks_total{module="hostile",depot="commands",level="full",outcome="error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_ack_latency_seconds_count{module="wordcount",level="full"}"#),
        5.0
    );
    assert_eq!(
        get(r#"sluice_ack_latency_seconds_bucket{module="wordcount",level="full",le="+Inf"}"#),
        5.0
    );
    assert_eq!(
        get(r#"sluice_records_processed_total{module="wordcount",topology="wordcount"}"#),
        6.0
    );
    // A guest error is permanent: dead-lettered at once, not retried.
    assert_eq!(
        get(r#"sluice_handler_retries_total{module="hostile",topology="run"}"#),
        0.0
    );
    assert_eq!(
        get(r#"sluice_dead_letters_total{module="hostile",topology="run"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_guest_failures_total{module="hostile",code="guest-error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_queries_total{module="wordcount",query="top-words",outcome="ok"}"#),
        2.0
    );
    assert_eq!(
        get(r#"sluice_queries_total{module="hostile",query="misbehave",outcome="guest-error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_query_duration_seconds_count{module="wordcount",query="top-words"}"#),
        2.0
    );
    assert!(
        get(r#"sluice_guest_call_duration_seconds_count{module="wordcount",kind="handle"}"#) >= 6.0
    );
    assert_eq!(get(r#"sluice_module_version{module="wordcount"}"#), 1.0);
    // Everything acked was processed: no lag on any partition. (The dead-lettered record
    // counts as processed: its topology moved past it.)
    let lag: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("sluice_topology_lag_records{"))
        .map(|(_, v)| v)
        .sum();
    let lag_series = s
        .keys()
        .filter(|k| k.starts_with("sluice_topology_lag_records{"))
        .count();
    assert_eq!(
        lag_series,
        2 * 2 + 2 + 2,
        "wordcount: 2 topologies, hostile and garbage: 1 each"
    );
    // `ack=append` does not wait for processing: give the last record a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut lag = lag;
    while lag > 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let s = samples(&String::from_utf8(host.get("/metrics").body).unwrap());
        lag = s
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_topology_lag_records{"))
            .map(|(_, v)| v)
            .sum();
    }
    assert_eq!(lag, 0.0);

    // Structured logs: module, partition and topology on the lines of guest work, and the
    // guest's own `log` calls.
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    let failed = log
        .lines()
        .find(|l| l.contains("handler failed"))
        .expect("a handler failure is logged");
    for field in ["module=\"hostile\"", "partition=", "topology=\"run\""] {
        assert!(failed.contains(field), "{field} missing in: {failed}");
    }
    let guest = log
        .lines()
        .find(|l| l.contains("guest=true"))
        .expect("the guest's log call is in the host log");
    for field in [
        "module=\"garbage\"",
        "partition=",
        "topology=\"garbage\"",
        "xxxx",
    ] {
        assert!(
            guest.contains(field),
            "{field} missing in: {}",
            &guest[..200.min(guest.len())]
        );
    }
}
