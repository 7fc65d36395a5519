//! Query topologies: guest functions reading every partition, read-only, bounded by a deadline.

use serde_json::{json, Value};

use crate::harness::Host;

fn query(host: &Host, module: &str, q: &str, args: &Value) -> (u16, Value) {
    let r = host.post_json(&format!("/v1/modules/{module}/queries/{q}"), args);
    (r.status, r.json())
}

#[test]
fn top_words_reads_all_partitions_highest_first() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wordcount", "wordcount", "?partitions=8");
    assert_eq!(
        host.get("/v1/modules/wordcount").json()["queries"],
        json!(["top-words"])
    );
    // Nothing yet: an empty answer, not an error.
    assert_eq!(
        query(&host, "wordcount", "top-words", &json!({"n": 3})),
        (200, json!({"result": []}))
    );
    let text = "the cat and the hat and the bat saw the rat with a hat";
    let r = host.append("wordcount", "sentences", &json!({ "text": text }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let words: std::collections::BTreeSet<&str> = text.split(' ').collect();
    let partitions: std::collections::BTreeSet<u64> = words
        .iter()
        .map(|w| {
            let r = host.post_json(
                "/v1/modules/wordcount/depots/words/append?ack=append",
                &json!({ "word": w }),
            );
            r.json()["partition"].as_u64().unwrap()
        })
        .collect();
    assert!(
        partitions.len() >= 4,
        "the words spread over several partitions: {partitions:?}"
    );
    let r = host.append("wordcount", "words", &json!({"word": "zebra"}));
    assert_eq!(r.status, 200);
    // "the" 4+1, "and" 2+1, "hat" 2+1 (ties by word), then the rest at 1+1 or 1.
    assert_eq!(
        query(&host, "wordcount", "top-words", &json!({"n": 3})),
        (
            200,
            json!({"result": [
                {"word": "the", "count": 5},
                {"word": "and", "count": 3},
                {"word": "hat", "count": 3},
            ]})
        )
    );
    // An empty body means `{}`: the default n (10) of the 11 distinct words.
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/queries/top-words",
        "application/json",
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"].as_array().unwrap().len(), 10);

    // Errors: unknown query and module, malformed JSON, arguments of the wrong type.
    let (status, body) = query(&host, "wordcount", "nope", &json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown-query"))
    );
    let (status, body) = query(&host, "nomodule", "top-words", &json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown-module"))
    );
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/queries/top-words",
        "application/json",
        b"{\"n\": ",
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "malformed-json"));
    let (status, body) = query(&host, "wordcount", "top-words", &json!({"n": "three"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("query-failed")),
        "{body}"
    );
    assert_eq!(body["error"]["guest_error"], "decode");
    let r = host.get("/v1/modules/wordcount/queries/top-words");
    assert_eq!(r.status, 405);
}

#[test]
fn bank_total_balance_equals_deposits() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("bank", "bank", "?partitions=4");
    let deposits: Vec<Value> = (0..40)
        .map(|i| json!({"account": format!("a{i}"), "amount": 10 + i}))
        .collect();
    let deposited: i64 = (0..40).map(|i| 10 + i).sum();
    host.append_all("bank", "deposits", "", &deposits);
    let transfers: Vec<Value> = (0..60)
        .map(|i| {
            json!({"id": format!("t{i}"), "from": format!("a{}", i % 40),
                   "to": format!("a{}", (i * 7 + 3) % 40), "amount": 5 + i % 30})
        })
        .collect();
    host.append_all("bank", "transfers", "", &transfers);
    assert_eq!(
        query(&host, "bank", "total-balance", &json!({})),
        (200, json!({ "result": deposited }))
    );
}

#[test]
fn queries_are_read_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--query-deadline-ms", "300"]);
    host.deploy_ok("hostile", "hostile", "?partitions=4");
    for key in ["a", "b", "c", "d", "e"] {
        let r = host.append("hostile", "commands", &json!({"key": key, "do": "ok"}));
        assert_eq!(r.status, 200);
    }
    let (status, body) = query(&host, "hostile", "misbehave", &json!({"do": "write"}));
    assert_eq!(
        (
            status,
            body["error"]["code"].as_str(),
            body["error"]["guest_error"].as_str()
        ),
        (422, Some("query-failed"), Some("read-only")),
        "{body}"
    );
    for (what, code) in [
        ("loop", "deadline-exceeded"),
        ("panic", "trap"),
        ("membomb", "memory-limit"),
    ] {
        let (status, body) = query(&host, "hostile", "misbehave", &json!({ "do": what }));
        assert_eq!(
            (status, body["error"]["guest_error"].as_str()),
            (500, Some(code)),
            "{what}: {body}"
        );
    }
    // Nothing was written, and the module answers on.
    assert_eq!(
        query(&host, "hostile", "misbehave", &json!({"do": "ok"})),
        (200, json!({"result": 5}))
    );
    assert_eq!(
        host.select("hostile", "seen", json!([{"key": "q"}])),
        Vec::<Value>::new()
    );
}

/// `total-balance` while transfers are being applied: a query reads every partition at one
/// point between microbatches, so it never sees a debit without its credit.
#[test]
fn total_balance_holds_while_transfers_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--microbatch-interval-ms", "1"]);
    host.deploy_ok("bank", "bank", "?partitions=8");
    let deposits: Vec<Value> = (0..40)
        .map(|i| json!({"account": format!("a{i}"), "amount": 1_000}))
        .collect();
    host.append_all("bank", "deposits", "", &deposits);
    let done = std::sync::atomic::AtomicBool::new(false);
    let answers = std::thread::scope(|s| {
        s.spawn(|| {
            for batch in 0..40 {
                let transfers: Vec<Value> = (batch * 25..batch * 25 + 25)
                    .map(|n| {
                        json!({"id": format!("t{n}"), "from": format!("a{}", n % 40),
                               "to": format!("a{}", (n * 7 + 3) % 40), "amount": 1 + n % 50})
                    })
                    .collect();
                host.append_all("bank", "transfers", "?ack=append", &transfers);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut answers = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Acquire) || answers.len() < 50 {
            let (status, body) = query(&host, "bank", "total-balance", &json!({}));
            assert_eq!(status, 200, "{body}");
            answers.push(body["result"].as_i64().unwrap());
        }
        answers
    });
    let wrong: Vec<_> = answers.iter().filter(|a| **a != 40_000).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} answers were not 40000: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(10)]
    );
}
