//! Bad input gets a precise JSON error and writes nothing.

use serde_json::json;

use crate::harness::{eventually, module_wasm, Host};

#[test]
fn bad_modules_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);

    let r = host.deploy("junk", b"this is not wasm", "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid-component")
    );

    let core_module = b"\0asm\x01\0\0\0";
    let r = host.deploy("core", core_module, "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid-component")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("core WebAssembly module"));

    let r = host.deploy("http", &module_wasm("forbidden_http"), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "forbidden-import"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["error"]["import"]
        .as_str()
        .unwrap()
        .starts_with("wasi:http/"));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("--disable http"), "{message}");

    let r = host.deploy("UPPER", &module_wasm("wordcount"), "");
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid-name"));
    let r = host.deploy("wc", &module_wasm("wordcount"), "?partitions=3");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid-partitions")
    );

    // Nothing of the refused deploys was kept.
    assert_eq!(host.get("/v1/modules").json(), json!({"modules": []}));
    host.deploy_ok("wc", "wordcount", "");
    // The same build again is a no-op (PUT is idempotent); another build is an update.
    let r = host.deploy("wc", &module_wasm("wordcount"), "");
    assert_eq!((r.status, r.json()["version"].as_u64()), (200, Some(1)));
}

#[test]
fn bad_requests_get_json_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--request-body-bytes", "1024"]);
    host.deploy_ok("wc", "wordcount", "");

    // (method, path, content type, body, status, error code)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/modules/nope/depots/words/append",
            "application/json",
            br#"{"word":"a"}"#.to_vec(),
            404,
            "unknown-module",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/nope/append",
            "application/json",
            br#"{"word":"a"}"#.to_vec(),
            404,
            "unknown-depot",
        ),
        (
            "POST",
            "/v1/modules/wc/pstates/nope/select",
            "application/json",
            br#"{"path":[{"key":"a"}]}"#.to_vec(),
            404,
            "unknown-pstate",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append",
            "application/json",
            b"{\"word\": ".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append",
            "application/json",
            br#"{"other": 1}"#.to_vec(),
            400,
            "missing-key",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append",
            "application/json",
            br#"{"word": {"a": 1}}"#.to_vec(),
            400,
            "invalid-key",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append?partition=2",
            "application/json",
            br#"{"word":"a"}"#.to_vec(),
            400,
            "partition-not-allowed",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append?ack=maybe",
            "application/json",
            br#"{"word":"a"}"#.to_vec(),
            400,
            "invalid-ack",
        ),
        (
            "POST",
            "/v1/modules/wc/depots/words/append",
            "application/json",
            format!("{{\"word\": \"{}\"}}", "x".repeat(2000)).into_bytes(),
            413,
            "body-too-large",
        ),
        (
            "GET",
            "/v1/modules/wc/depots/words/append",
            "application/json",
            vec![],
            405,
            "method-not-allowed",
        ),
        (
            "POST",
            "/v1/modules/wc/pstates/counts/select",
            "application/json",
            br#"{"path":[{"sideways":1}]}"#.to_vec(),
            400,
            "unknown-navigator",
        ),
        (
            "POST",
            "/v1/modules/wc/pstates/counts/select",
            "application/json",
            br#"{"path":[{"key":5}]}"#.to_vec(),
            400,
            "schema-mismatch",
        ),
        (
            "POST",
            "/v1/modules/wc/pstates/counts/select",
            "application/json",
            br#"{"path":[]}"#.to_vec(),
            400,
            "invalid-path",
        ),
        (
            "POST",
            "/v1/modules/wc/pstates/counts/select",
            "application/json",
            br#"{"path":[{"key":"a"}],"extra":1}"#.to_vec(),
            400,
            "unknown-field",
        ),
        (
            "GET",
            "/v1/modules/wc/depots/words/partitions/99",
            "application/json",
            vec![],
            404,
            "partition-out-of-range",
        ),
        (
            "GET",
            "/v1/modules/wc/topologies/nope/dead-letters",
            "application/json",
            vec![],
            404,
            "unknown-topology",
        ),
        (
            "GET",
            "/v2/else",
            "application/json",
            vec![],
            404,
            "not-found",
        ),
    ];
    for (method, path, ct, body, status, code) in cases {
        let r = host.request(method, path, ct, &body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        host.depot_records("wc", "words"),
        0,
        "no rejected request wrote a record"
    );
    // The host keeps serving: every partition serves (one still recovering from the deploy
    // on a loaded machine gets a moment) and none restarted.
    let health = eventually("every partition serving", || {
        let h = host.get("/health").json();
        (h["status"] == "ok").then_some(h)
    });
    for p in health["modules"]["wc"].as_array().expect("wc's partitions") {
        assert_eq!(p["restarts"], 0, "{p}");
    }
}

/// Issue 12 item 3: one oversized line rejects the whole NDJSON batch, nothing written.
#[test]
fn an_oversized_ndjson_line_rejects_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--record-size-bytes", "64"]);
    host.deploy_ok("wc", "wordcount", "?partitions=4");
    let big = "x".repeat(100);
    let body = format!("{{\"word\": \"a\"}}\n{{\"word\": \"{big}\"}}\n{{\"word\": \"b\"}}\n");
    let r = host.request(
        "POST",
        "/v1/modules/wc/depots/words/append",
        "application/x-ndjson",
        body.as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "record-too-large");
    assert_eq!(e["line"], 2);
    assert_eq!(
        host.depot_records("wc", "words"),
        0,
        "nothing may be written"
    );
    assert!(host
        .select("wc", "counts", json!([{"key": "a"}]))
        .is_empty());
}

/// Issue 12 item 4: a `random` depot spreads NDJSON batches over every partition (each record
/// is routed once).
#[test]
fn random_partitioner_spreads_ndjson_batches_evenly() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wc", "wordcount", "?partitions=8");
    for b in 0..4 {
        let lines: Vec<_> = (0..4)
            .map(|i| json!({"text": format!("w{b} w{i}")}))
            .collect();
        host.append_all("wc", "sentences", "?ack=full", &lines);
    }
    let info = host.get("/v1/modules/wc/depots/sentences").json();
    let ends: Vec<u64> = info["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end"].as_u64().unwrap())
        .collect();
    assert_eq!(ends, vec![2; 8], "16 records over 8 partitions");
}
