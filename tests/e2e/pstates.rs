//! PStates over HTTP: subindexed maps, the JSON form of every navigator, partition fan-out,
//! limits and truncation, and the same answers after `kill -9`.

use serde_json::json;

use crate::harness::Host;

fn select_body(host: &Host, body: serde_json::Value) -> crate::harness::Response {
    host.post_json("/v1/modules/kv/pstates/kv/select", &body)
}

fn values(host: &Host, body: serde_json::Value) -> serde_json::Value {
    let r = select_body(host, body.clone());
    assert_eq!(
        r.status,
        200,
        "{body}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["values"].clone()
}

#[test]
fn subindexed_maps_and_every_navigator_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--select-values-max", "100"]);
    host.deploy_ok("kv", "kv", "?partitions=4");
    let d = host.get("/v1/modules/kv").json();
    assert_eq!(
        d["pstates"][0]["schema"],
        "map<string, subindexed map<int, string>>"
    );

    let mut body = String::new();
    for i in 0..300 {
        body.push_str(&json!({"key": "alice", "field": i, "value": format!("v{i}")}).to_string());
        body.push('\n');
    }
    for i in [-5, 0, 5] {
        body.push_str(&json!({"key": "bob", "field": i, "value": "b"}).to_string());
        body.push('\n');
    }
    let r = host.request(
        "POST",
        "/v1/modules/kv/depots/puts/append",
        "application/x-ndjson",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(
        results[299]["results"]["apply"], 300,
        "O(1) count as the ack-return value"
    );
    assert_eq!(results[302]["results"]["apply"], 3);

    let check = |host: &Host, bob: serde_json::Value, bob_gt: serde_json::Value| {
        assert_eq!(
            values(host, json!({"path": [{"key": "alice"}, "count"]})),
            json!([300])
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "nobody"}, "count"]})),
            json!([0])
        );
        assert_eq!(
            values(
                host,
                json!({"path": [{"key": "alice"}, {"sorted-range": {"start": 10, "end": 13}}, "map-keys"]})
            ),
            json!([10, 11, 12])
        );
        assert_eq!(
            values(
                host,
                json!({"path": [{"key": "alice"}, {"sorted-range": {"start": 10, "end": 13, "start-inclusive": false, "end-inclusive": true}}, "map-keys"]})
            ),
            json!([11, 12, 13])
        );
        assert_eq!(
            values(
                host,
                json!({"path": [{"key": "alice"}, {"sorted-range": {"reverse": true, "limit": 3}}, "map-vals"]})
            ),
            json!(["v299", "v298", "v297"])
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "alice"}, "first"]})),
            json!([[0, "v0"]])
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "alice"}, "last"]})),
            json!([[299, "v299"]])
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "alice"}, {"nth": 7}]})),
            json!([[7, "v7"]])
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "bob"}, "map-keys"]})),
            bob
        );
        assert_eq!(
            values(host, json!({"path": [{"key": "bob"}, {"key": -5}]})),
            json!(["b"])
        );
        assert_eq!(
            values(
                host,
                json!({"path": [{"must": "bob"}, {"key": 1}, {"null-to-val": "none"}]})
            ),
            json!(["none"])
        );
        assert_eq!(
            values(
                host,
                json!({"path": [{"key": "bob"}, "map-keys", {"filter-gt": -1}]})
            ),
            bob_gt
        );
        // Paths without a leading key name a partition, or all of them.
        let all = values(host, json!({"path": ["map-keys"], "partition": "all"}));
        let mut keys: Vec<_> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        keys.sort();
        assert_eq!(keys, vec!["alice", "bob"]);
        // `limit` truncates and says so; without it, over select_values_max is an error.
        let r = select_body(
            host,
            json!({"path": [{"key": "alice"}, "map-vals"], "limit": 5}),
        );
        let page = r.json();
        assert_eq!(page["values"], json!(["v0", "v1", "v2", "v3", "v4"]));
        assert_eq!(page["truncated"], true);
        // `next` continues where the page stopped, until it is null.
        let mut all = Vec::new();
        let mut after = serde_json::Value::Null;
        for _ in 0..100 {
            let page = select_body(
                host,
                json!({"path": [{"key": "alice"}, "map-vals"], "limit": 7, "after": after}),
            )
            .json();
            all.extend(page["values"].as_array().unwrap().iter().cloned());
            after = page["next"].clone();
            if after.is_null() {
                break;
            }
        }
        let want: Vec<_> = (0..300).map(|i| json!(format!("v{i}"))).collect();
        assert_eq!(all, want);
        // Across partitions too.
        let mut keys = Vec::new();
        let mut after = serde_json::Value::Null;
        for _ in 0..10 {
            let page = select_body(
                host,
                json!({"path": ["map-keys"], "partition": "all", "limit": 1, "after": after}),
            )
            .json();
            keys.extend(page["values"].as_array().unwrap().iter().cloned());
            after = page["next"].clone();
            if after.is_null() {
                break;
            }
        }
        keys.sort_by_key(|k| k.to_string());
        assert_eq!(keys, vec![json!("alice"), json!("bob")]);
        let r = select_body(host, json!({"path": [{"key": "alice"}, "map-vals"]}));
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (413, "result-too-large")
        );
    };
    check(&host, json!([-5, 0, 5]), json!([0, 5]));

    let errors = [
        (json!({"path": ["map-keys"]}), 400, "partition-required"),
        (
            json!({"path": [{"key": "alice"}, {"nth": -1}]}),
            400,
            "invalid-path",
        ),
        (
            json!({"path": [{"key": "alice"}, {"sorted-range": {"from": 1}}]}),
            400,
            "invalid-path",
        ),
        (
            json!({"path": [{"key": "alice"}, "sideways"]}),
            400,
            "unknown-navigator",
        ),
        (
            json!({"path": [{"key": "alice"}], "partition": 9}),
            400,
            "partition-out-of-range",
        ),
        (
            json!({"path": [{"key": "alice"}], "limit": 0}),
            400,
            "invalid-request",
        ),
    ];
    for (body, status, code) in errors {
        let r = select_body(&host, body.clone());
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // A key of another type than the map's keys finds nothing.
    assert_eq!(
        values(
            &host,
            json!({"path": [{"key": "alice"}, {"key": "not-an-int"}]})
        ),
        json!([])
    );

    // Removing fields keeps the O(1) count exact.
    let r = host.append(
        "kv",
        "puts",
        &json!({"key": "bob", "field": 0, "value": null}),
    );
    assert_eq!(r.json()["results"]["apply"], 2);
    let host = host.kill9_and_restart();
    assert_eq!(
        values(&host, json!({"path": [{"key": "bob"}, "map-keys"]})),
        json!([-5, 5])
    );
    check(&host, json!([-5, 5]), json!([5]));
}

#[test]
fn direct_partitioner_and_record_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--record-size-bytes", "200"]);
    host.deploy_ok("kv", "kv", "?partitions=4");
    let put = json!({"key": "alice", "field": 1, "value": "x"}).to_string();
    let owner = host
        .append(
            "kv",
            "puts",
            &json!({"key": "alice", "field": 0, "value": "x"}),
        )
        .json()["partition"]
        .as_u64()
        .unwrap();
    let direct = |q: &str| {
        host.request(
            "POST",
            &format!("/v1/modules/kv/depots/direct-puts/append{q}"),
            "application/json",
            put.as_bytes(),
        )
    };
    let r = direct("");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "partition-required")
    );
    let r = direct("?partition=4");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "partition-out-of-range")
    );
    let r = direct(&format!("?partition={owner}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["partition"], owner);
    assert_eq!(r.json()["results"]["apply"], 2);
    let r = direct(&format!("?partition={}", (owner + 1) % 4));
    assert_eq!(
        (r.status, r.json()["error"]["guest_error"].as_str()),
        (500, Some("guest-error"))
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong-partition"));
    let big = json!({"key": "alice", "field": 2, "value": "v".repeat(300)});
    let r = host.append("kv", "puts", &big);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "record-too-large")
    );
    assert_eq!(
        values(&host, json!({"path": [{"key": "alice"}, "count"]})),
        json!([2])
    );
    assert_eq!(
        host.depot_records("kv", "puts"),
        1,
        "the oversize record was not stored"
    );
}

/// Issue 13: navigators a read-only client could make walk a whole partition. `count` of the
/// top level reads one stored size (kept exact through inserts and removals), `nth` past the
/// end answers at once, and `after` cannot skip more than 100,000 values.
#[test]
fn bounded_navigators() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wc", "wordcount", "?partitions=2");
    let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    for w in &words {
        assert_eq!(host.append("wc", "words", &json!({"word": w})).status, 200);
    }
    let counts = |host: &Host| -> u64 {
        let r = host.post_json(
            "/v1/modules/wc/pstates/counts/select",
            &json!({"path": ["count"], "partition": "all"}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    assert_eq!(counts(&host), 30);
    // Appending a word again adds no key; the count stays exact across a restart.
    assert_eq!(
        host.append("wc", "words", &json!({"word": "w0"})).status,
        200
    );
    assert_eq!(counts(&host), 30);
    let host = host.terminate_and_restart();
    assert_eq!(counts(&host), 30);
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": [{"nth": 1_000_000_000u64}], "partition": 0}),
    );
    assert_eq!((r.status, r.json()["values"].clone()), (200, json!([])));
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": ["all"], "partition": 0, "limit": 1, "after": {"partition": 0, "skip": 100_001}}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid-request")
    );
}

/// Issue 13: answers are bounded in bytes (`--answer-bytes-max`), cut with a continuation:
/// before, one depot read answered 90 MB.
#[test]
fn answers_are_cut_at_answer_bytes_max_and_page_on() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--answer-bytes-max", "600"]);
    host.deploy_ok("wc", "wordcount", "?partitions=1");
    let words: Vec<String> = (0..40)
        .map(|i| format!("word-{i:03}-{}", "x".repeat(20)))
        .collect();
    let lines: Vec<_> = words.iter().map(|w| json!({"word": w})).collect();
    host.append_all("wc", "words", "", &lines);
    // The depot read: at most ~600 bytes a page, every record reached by following `next`.
    let (mut from, mut seen, mut pages) = (0u64, Vec::new(), 0);
    loop {
        let page = host
            .get(&format!(
                "/v1/modules/wc/depots/words/partitions/0?from={from}&limit=1000"
            ))
            .json();
        let records = page["records"].as_array().unwrap().clone();
        if records.is_empty() {
            break;
        }
        assert!(
            page.to_string().len() < 600 + 200,
            "page of {} bytes",
            page.to_string().len()
        );
        pages += 1;
        seen.extend(
            records
                .iter()
                .map(|r| r["record"]["word"].as_str().unwrap().to_string()),
        );
        from = page["next"].as_u64().unwrap();
    }
    assert_eq!(seen, words);
    assert!(pages >= 4, "{pages} pages");
    // A select with `limit`: cut by bytes, with `next`; without `limit`: 413 naming the limit.
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": ["all"], "partition": 0, "limit": 1000}),
    );
    let j = r.json();
    assert_eq!(
        (r.status, j["truncated"].clone()),
        (200, json!(true)),
        "{j}"
    );
    let n = j["values"].as_array().unwrap().len();
    assert!(n > 0 && n < 40, "{n}");
    assert_eq!(j["next"], json!({"partition": 0, "skip": n}));
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": ["all"], "partition": 0}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "result-too-large")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("answer_bytes_max"));
}
