//! Idempotent appends (issue 13): an `Idempotency-Key` makes a retried append answer the
//! original record (partition, offset, `"replayed": true`, header `Idempotent-Replayed`)
//! instead of appending again — within the window, across `kill -9`, on a `random` depot
//! (which routes a keyed append by its key), and per line of an NDJSON batch (`<key>#<line>`).
//! A key reused for another record is refused.

use serde_json::json;

use crate::harness::Host;

fn keyed(host: &Host, path: &str, key: &str, body: &serde_json::Value) -> crate::harness::Response {
    let mut c = sluice::client::Client::new(&format!("http://{}", host.addr)).unwrap();
    c.request_with_headers(
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
        &[("Idempotency-Key", key)],
    )
    .unwrap()
}

#[test]
fn a_retried_append_answers_the_original_and_stores_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wc", "wordcount", "?partitions=4");
    let words = "/v1/modules/wc/depots/words/append";

    for ack in ["append", "full"] {
        let path = format!("{words}?ack={ack}");
        let key = format!("order-{ack}");
        let first = keyed(&host, &path, &key, &json!({"word": "apple"}));
        assert_eq!(first.status, 200, "{:?}", first.json());
        assert_eq!(first.header("idempotent-replayed"), None);
        for _ in 0..3 {
            let again = keyed(&host, &path, &key, &json!({"word": "apple"}));
            assert_eq!(again.status, 200);
            assert_eq!(again.header("idempotent-replayed"), Some("true"));
            let (a, b) = (first.json(), again.json());
            assert_eq!(
                (a["partition"].clone(), a["offset"].clone()),
                (b["partition"].clone(), b["offset"].clone())
            );
            assert_eq!(b["replayed"], true);
        }
    }
    assert_eq!(host.depot_records("wc", "words"), 2, "each key stored once");
    assert_eq!(
        host.select("wc", "counts", json!([{"key": "apple"}])),
        vec![json!(2)]
    );

    // The same key for another record: refused, naming where the key's record is.
    let r = keyed(
        &host,
        &format!("{words}?ack=append"),
        "order-append",
        &json!({"word": "pear"}),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (422, "idempotency-key-reused".into())
    );
    assert!(r.json()["error"]["offset"].is_u64());
    let r = keyed(&host, words, "", &json!({"word": "pear"}));
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid-idempotency-key".into())
    );

    // A random depot: every retry goes to the first attempt's partition and finds its key.
    let sentences = "/v1/modules/wc/depots/sentences/append?ack=full";
    let first = keyed(&host, sentences, "s-1", &json!({"text": "one two three"})).json();
    for _ in 0..8 {
        let again = keyed(&host, sentences, "s-1", &json!({"text": "one two three"})).json();
        assert_eq!(
            (again["partition"].clone(), again["offset"].clone()),
            (first["partition"].clone(), first["offset"].clone())
        );
    }
    assert_eq!(host.depot_records("wc", "sentences"), 1);

    // An NDJSON batch retried whole: every line answers its original record.
    let body: String = (0..5)
        .map(|i| json!({"word": format!("b{i}")}).to_string() + "\n")
        .collect();
    let send = || {
        let mut c = sluice::client::Client::new(&format!("http://{}", host.addr)).unwrap();
        c.request_with_headers(
            "POST",
            "/v1/modules/wc/depots/words/append?ack=append",
            "application/x-ndjson",
            body.as_bytes(),
            &[("Idempotency-Key", "batch-7")],
        )
        .unwrap()
        .json()
    };
    let (a, b) = (send(), send());
    for i in 0..5 {
        assert_eq!(
            a["results"][i]["offset"], b["results"][i]["offset"],
            "line {i}"
        );
        assert_eq!(b["results"][i]["replayed"], true);
    }
    assert_eq!(host.depot_records("wc", "words"), 7);

    // Keys survive kill -9: the retry after the crash still answers the original.
    let key_place = keyed(
        &host,
        &format!("{words}?ack=append"),
        "crash-1",
        &json!({"word": "kiwi"}),
    )
    .json();
    let host = host.kill9_and_restart();
    let again = keyed(
        &host,
        &format!("{words}?ack=append"),
        "crash-1",
        &json!({"word": "kiwi"}),
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["offset"], key_place["offset"]);
    assert_eq!(host.depot_records("wc", "words"), 8);
}

#[test]
fn a_key_is_new_again_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--idempotency-window-s", "1"]);
    host.deploy_ok("wc", "wordcount", "?partitions=1");
    let path = "/v1/modules/wc/depots/words/append?ack=append";
    let first = keyed(&host, path, "k", &json!({"word": "a"})).json();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let later = keyed(&host, path, "k", &json!({"word": "a"}));
    assert_eq!(later.header("idempotent-replayed"), None);
    assert_ne!(later.json()["offset"], first["offset"]);
    assert_eq!(host.depot_records("wc", "words"), 2);
}
