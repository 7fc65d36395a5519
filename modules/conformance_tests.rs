//! The conformance modules (`docs/conformance.md`): every SDK's `wordcount` and `probe` are
//! deployed on a real in-process host and held to the same assertions. An SDK that lags the
//! contract, or maps a value differently, fails here.

use std::time::Duration;

use serde_json::{json, Value};
use sluice::testing::{module_wasm, TestHost, TestModule};

/// The suffix of each SDK's build of a conformance module (`wordcount_py.wasm`, …).
const RUST: &str = "";
const PYTHON: &str = "-py";
const JS: &str = "-js";

fn deploy<'h>(host: &'h TestHost, module: &str, sdk: &str) -> TestModule<'h> {
    deploy_as(host, module, module, sdk)
}

#[test]
fn wordcount_rust() {
    wordcount(RUST);
}
#[test]
fn wordcount_python() {
    wordcount(PYTHON);
}
#[test]
fn wordcount_js() {
    wordcount(JS);
}
#[test]
fn probe_rust() {
    probe(RUST);
}
#[test]
fn probe_python() {
    probe(PYTHON);
}
#[test]
fn probe_js() {
    probe(JS);
}

/// The module declares exactly what the Rust reference declares (`describe`: depots and
/// partitioners, PState schemas, topologies with their handler names, queries).
fn assert_declares_as_rust(host: &TestHost, module: &str, sdk: &str) {
    let describe = |name: &str| {
        let r = host
            .request("GET", &format!("/v1/modules/{name}"), "", b"")
            .unwrap();
        assert_eq!(r.status, 200, "describe {name}");
        let mut d = r.json();
        d.as_object_mut().unwrap().remove("name");
        d
    };
    if sdk == RUST {
        let d = describe(module);
        assert!(
            d["topologies"].as_array().is_some_and(|t| !t.is_empty()),
            "{d}"
        );
        return;
    }
    let reference = format!("{module}-rust");
    deploy_as(host, &reference, module, RUST);
    assert_eq!(describe(module), describe(&reference), "{module}{sdk}");
}

fn deploy_as<'h>(host: &'h TestHost, name: &str, module: &str, sdk: &str) -> TestModule<'h> {
    host.deploy(name, &module_wasm(&format!("{module}{sdk}")))
        .unwrap_or_else(|e| panic!("deploying {module}{sdk}: {e:?}"))
}

fn count(m: &TestModule, word: &str) -> Option<i64> {
    m.get::<i64>("counts", json!([{ "key": word }])).unwrap()
}

fn wordcount(sdk: &str) {
    let host = TestHost::start();
    let m = deploy(&host, "wordcount", sdk);
    assert_declares_as_rust(&host, "wordcount", sdk);

    for expected in 1..=2 {
        let a = m.append("words", &json!({"word": "apple"})).unwrap();
        assert_eq!(a.results["wordcount"], json!(expected), "{sdk}");
    }
    let a = m
        .append("sentences", &json!({"text": "The apple and  the pear"}))
        .unwrap();
    assert!(
        a.results.get("sentences").is_none_or(Value::is_null),
        "{a:?}"
    );
    assert_eq!(count(&m, "apple"), Some(3));
    assert_eq!(count(&m, "the"), Some(2));
    assert_eq!(count(&m, "pear"), Some(1));
    assert_eq!(count(&m, "The"), None);
    assert_eq!(count(&m, "plum"), None);

    let top: Value = m.query("top-words", &json!({"n": 3})).unwrap();
    assert_eq!(
        top,
        json!([{"word": "apple", "count": 3}, {"word": "the", "count": 2},
               {"word": "and", "count": 1}])
    );
    let all: Vec<Value> = m.query("top-words", &json!({})).unwrap();
    assert_eq!(all.len(), 4, "n defaults to 10: {all:?}");

    let e = m.append("words", &json!({"text": "no word"})).unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "missing-key"));
    // A record the handler cannot decode is dead-lettered with `decode`.
    let e = m.append("words", &json!({"word": 7})).unwrap_err();
    assert_eq!(e.code, "topology-failed", "{e:?}");
    let dead = m.dead_letters("wordcount").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["code"], "guest-error", "{dead:?}");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.starts_with("decode: "), "{dead:?}");
}

fn probe(sdk: &str) {
    let host = TestHost::start();
    let m = deploy(&host, "probe", sdk);
    assert_declares_as_rust(&host, "probe", sdk);

    // Values cross the boundary unchanged: integers at the i64/u64 edges, floats, text,
    // bytes, maps with non-string keys, nesting.
    let record = json!({
        "ints": [0, -1, 23, 24, 255, 256, 65536, 4294967296i64, 9007199254740993i64,
                 i64::MIN, i64::MAX, u64::MAX],
        "floats": [1.5, -0.25, 1e300],
        "text": "grüße, 世界 🎉",
        "bytes": {"$bytes": "00ff10"},
        "pairs": {"$map": [[1, "one"], [[2, 3], true]]},
        "nested": {"a": [null, false, {"b": []}], "": {}},
    });
    let a = m.append("echo", &record).unwrap();
    let echoed = &a.results["echo"];
    assert_eq!(echoed["record"], record, "{sdk}");
    assert_eq!(echoed["depot"], "echo");
    assert_eq!(echoed["partition"], json!(a.partition));
    assert_eq!(echoed["offset"], json!(a.offset));
    assert_eq!(echoed["partitions"], json!(4));
    for scalar in [json!(null), json!(-7), json!("s"), json!([1, [2]])] {
        let a = m.append("echo", &scalar).unwrap();
        assert_eq!(a.results["echo"]["record"], scalar, "{sdk}");
    }

    // Collections, removal, and an ack-return built from selects.
    let item = |key: &str, n: i64, tag: &str, value: Value| {
        m.append(
            "items",
            &json!({"key": key, "n": n, "tag": tag, "value": value}),
        )
        .unwrap()
        .results["items"]
            .clone()
    };
    assert_eq!(
        item("k1", 5, "red", json!({"x": 1})),
        json!({"total": 5, "tags": 1, "last": {"x": 1}})
    );
    assert_eq!(
        item("k1", 2, "red", json!([1, 2])),
        json!({"total": 7, "tags": 1, "last": [1, 2]})
    );
    assert_eq!(
        item("k1", 0, "blue", json!("z")),
        json!({"total": null, "tags": 2, "last": "z"})
    );
    item("k2", 3, "red", json!(null));
    item("k3", -1, "red", json!(1));
    let tags: Vec<Value> = m.select("tags", json!([{"key": "k1"}])).unwrap();
    assert_eq!(tags, vec![json!(["blue", "red"])]);
    let history: Vec<Value> = m.select("history", json!([{"key": "k1"}, "all"])).unwrap();
    assert_eq!(history, vec![json!({"x": 1}), json!([1, 2]), json!("z")]);

    // The microbatch topology saw every `items` record once, with a batch id.
    m.wait_processed(Duration::from_secs(20)).unwrap();
    assert_eq!(
        m.get::<i64>("batches", json!([{"key": "k1"}])).unwrap(),
        Some(3)
    );
    assert_eq!(
        m.get::<i64>("batches", json!([{"key": "k3"}])).unwrap(),
        Some(1)
    );
    assert!(m.dead_letters("batches").unwrap().is_empty());

    // A guest error keeps its code and message into the dead letters.
    let e = m
        .append_to(
            "fail",
            2,
            &json!({"code": "no-such-account", "message": "who?"}),
        )
        .unwrap_err();
    assert!(e.message.contains("no-such-account: who?"), "{e:?}");
    let dead = m.dead_letters("fail").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    // Every error a guest returns is permanent (`guest-error`): a guest cannot ask for
    // retries by naming a transient code.
    assert_eq!(dead[0]["code"], "guest-error", "{dead:?}");
    assert_eq!(dead[0]["error"], "no-such-account: who?", "{dead:?}");
    assert_eq!(dead[0]["record"]["code"], "no-such-account", "{dead:?}");
    assert_eq!(dead[0]["partition"], 2, "{dead:?}");

    // Hops carrying maps reach each key's partition; a query reads one key's partition.
    m.append("fanout", &json!({"keys": ["a", "b", "c", "a"], "n": 2}))
        .unwrap();
    m.append("fanout", &json!({"keys": ["b"], "n": 5})).unwrap();
    for (key, marks) in [("a", 4), ("b", 7), ("c", 2), ("zz", 0)] {
        let q: i64 = m.query("mark", &json!({ "key": key })).unwrap();
        assert_eq!(q, marks, "{sdk} mark {key}");
    }

    // Queries: arguments unchanged, all partitions summed, sorted ranges merged.
    let args = json!({"n": [1, 2.5, "x", null], "big": u64::MAX});
    let echoed: Value = m.query("echo", &args).unwrap();
    assert_eq!(echoed, json!({"args": args, "partitions": 4}));
    assert_eq!(m.query::<_, i64>("total", &json!({})).unwrap(), 2);
    for k in 0..6 {
        item(&format!("r{k}"), 1, "t", json!(k));
    }
    assert_eq!(m.query::<_, i64>("total", &json!({})).unwrap(), 8);
    let first: Vec<String> = m.query("first-keys", &json!({"n": 4})).unwrap();
    assert_eq!(first, ["k2", "k3", "r0", "r1"]);
    let e = m
        .query::<_, Value>("no-such-query", &json!({}))
        .unwrap_err();
    assert_eq!(e.code, "unknown-query", "{e:?}");
}
