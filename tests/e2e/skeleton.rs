//! The walking skeleton: deploy wordcount, append, select, survive restarts.

use serde_json::json;

use crate::harness::{module_wasm, Conn, Host};

#[test]
fn deploy_append_select_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);

    let r = host.deploy("wordcount", &module_wasm("wordcount"), "");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let d = r.json();
    assert_eq!(d["name"], "wordcount");
    assert_eq!(d["partitions"], 8);
    assert_eq!(d["depots"][0]["name"], "words");
    assert_eq!(d["depots"][0]["partitioner"], json!({"hash": "word"}));
    assert_eq!(
        d["pstates"][0],
        json!({"name": "counts", "schema": "map<string, int>"})
    );

    let mut apple_partition = None;
    for (i, word) in ["apple", "banana", "apple"].iter().enumerate() {
        let r = host.append("wordcount", "words", &json!({ "word": word }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let a = r.json();
        let p = a["partition"].as_u64().unwrap();
        assert!(p < 8);
        if *word == "apple" {
            if let Some(prev) = apple_partition {
                assert_eq!(prev, p, "the same key always lands on the same partition");
                assert_eq!(a["offset"], 1, "dense offsets in the partition");
            }
            apple_partition = Some(p);
        }
        if i == 2 {
            assert_eq!(
                a["results"]["wordcount"], 2,
                "ack-return value of the handler"
            );
        }
    }
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "apple"}])),
        vec![json!(2)]
    );
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "banana"}])),
        vec![json!(1)]
    );
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "cherry"}])),
        Vec::<serde_json::Value>::new()
    );

    // Graceful restart keeps modules and data.
    let host = host.terminate_and_restart();
    let list = host.get("/v1/modules").json();
    assert_eq!(list["modules"][0]["name"], "wordcount");
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "apple"}])),
        vec![json!(2)]
    );

    // kill -9 right after an acked append loses nothing.
    let r = host.append("wordcount", "words", &json!({"word": "apple"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["offset"], 2);
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append?ack=append",
        "application/json",
        br#"{"word": "durian"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let durian = r.json();
    let host = host.kill9_and_restart();
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "apple"}])),
        vec![json!(3)]
    );
    // The `append`-acked record is durable and is processed on restart (replay from the log).
    let p = durian["partition"].as_u64().unwrap();
    let page = host
        .get(&format!(
            "/v1/modules/wordcount/depots/words/partitions/{p}?from=0&limit=100"
        ))
        .json();
    let records = page["records"].as_array().unwrap();
    assert!(records
        .iter()
        .any(|r| r["offset"] == durian["offset"] && r["record"] == json!({"word": "durian"})));
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = host.select("wordcount", "counts", json!([{"key": "durian"}]));
        if !seen.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(seen, vec![json!(1)]);
    assert_eq!(host.depot_records("wordcount", "words"), 5);
}

#[test]
fn ack_levels_ndjson_batches_and_depot_reads() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=4");

    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append?ack=none",
        "application/json",
        br#"{"word": "fig"}"#,
    );
    assert_eq!(r.status, 202);
    assert!(r.json()["partition"].as_u64().unwrap() < 4);

    let body = "{\"word\": \"a\"}\n{\"word\": \"b\"}\n\n{\"word\": \"a\"}\n";
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append",
        "application/x-ndjson",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3, "one result per record, in input order");
    assert_eq!(results[0]["results"]["wordcount"], 1);
    assert_eq!(results[2]["results"]["wordcount"], 2);
    assert_eq!(results[0]["partition"], results[2]["partition"]);

    // A bad line rejects the whole batch and writes nothing.
    let before = host.depot_records("wordcount", "words");
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append",
        "application/x-ndjson",
        b"{\"word\": \"c\"}\n{\"nope\": 1}\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "missing-key");
    assert_eq!(r.json()["error"]["line"], 2);
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append",
        "application/x-ndjson",
        b"{\"word\": \"c\"}\n{oops\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "malformed-json");
    assert_eq!(host.depot_records("wordcount", "words"), before);

    // Depot reads page through a partition in offset order.
    let p = results[0]["partition"].as_u64().unwrap();
    let page = host
        .get(&format!(
            "/v1/modules/wordcount/depots/words/partitions/{p}?from=0&limit=1"
        ))
        .json();
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["records"][0]["offset"], 0);
    assert_eq!(page["next"], 1);
    let info = host.get("/v1/modules/wordcount/depots/words").json();
    assert_eq!(info["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(
        host.select("wordcount", "counts", json!([{"key": "a"}])),
        vec![json!(2)]
    );

    // One keep-alive connection carries many requests.
    let mut conn = Conn::open(&host.addr);
    for n in 1..=3 {
        let r = conn.request(
            "POST",
            "/v1/modules/wordcount/depots/words/append",
            "application/json",
            br#"{"word": "kiwi"}"#,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["results"]["wordcount"], n);
    }
}

/// Hosts given one `--compile-cache-dir` compile a component once between them: the second
/// host's deploy loads the first host's compiled code (its compile counter stays at zero).
#[test]
fn hosts_sharing_a_compile_cache_compile_a_component_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    let cache_arg = cache.to_str().unwrap();
    let compiles = |host: &Host| host.metric_sum("sluice_component_compiles_total");
    let first = Host::start(&dir.path().join("a"), &["--compile-cache-dir", cache_arg]);
    first.deploy_ok("wc", "wordcount", "?partitions=2");
    assert_eq!(compiles(&first), 1.0);
    let second = Host::start(&dir.path().join("b"), &["--compile-cache-dir", cache_arg]);
    second.deploy_ok("wc", "wordcount", "?partitions=2");
    assert_eq!(compiles(&second), 0.0, "the second host recompiled");
    let r = second.append("wc", "words", &json!({"word": "shared"}));
    assert_eq!(r.json()["results"]["wordcount"], json!(1));
    assert!(
        !dir.path().join("b/cache").exists(),
        "the host's own cache was used"
    );
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 2, "one compiled component and its digest");
}
