//! Tests of the wordcount module on an in-process host (`sluice::testing`).

use serde::Deserialize;
use serde_json::json;
use sluice::testing::{module_wasm, TestHost};

#[derive(Deserialize, Debug, PartialEq)]
struct WordCount {
    word: String,
    count: i64,
}

#[test]
fn counts_words_and_sentences_and_ranks_them() {
    let host = TestHost::start();
    let m = host.deploy("wordcount", &module_wasm("wordcount")).unwrap();

    // A `words` append answers the new count (the topology's ack-return value).
    let a = m.append("words", &json!({"word": "apple"})).unwrap();
    assert_eq!(a.results["wordcount"], json!(1));
    let a = m.append("words", &json!({"word": "apple"})).unwrap();
    assert_eq!(a.results["wordcount"], json!(2));

    // A sentence is split and each word hops to its own partition; the ack waits for all.
    m.append("sentences", &json!({"text": "The apple and the pear"}))
        .unwrap();
    assert_eq!(
        m.get::<i64>("counts", json!([{"key": "apple"}])).unwrap(),
        Some(3)
    );
    assert_eq!(
        m.get::<i64>("counts", json!([{"key": "the"}])).unwrap(),
        Some(2)
    );
    assert_eq!(
        m.get::<i64>("counts", json!([{"key": "plum"}])).unwrap(),
        None
    );

    let top: Vec<WordCount> = m.query("top-words", &json!({"n": 2})).unwrap();
    assert_eq!(
        top,
        vec![
            WordCount {
                word: "apple".into(),
                count: 3
            },
            WordCount {
                word: "the".into(),
                count: 2
            },
        ]
    );

    // A record without the partitioning field is refused, naming it.
    let e = m.append("words", &json!({"text": "no word"})).unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (400, "missing-key"));
}

#[test]
fn a_subscription_sees_each_count_as_it_is_committed() {
    let host = TestHost::start();
    let m = host.deploy("wordcount", &module_wasm("wordcount")).unwrap();
    let mut apple = m
        .subscribe("counts", json!([{"key": "apple"}]), None)
        .unwrap();
    assert_eq!(apple.values::<i64>().unwrap(), Vec::<i64>::new());
    for _ in 0..3 {
        m.append("words", &json!({"word": "apple"})).unwrap();
    }
    let counts: Vec<i64> = apple
        .wait_for(std::time::Duration::from_secs(10), |v: &[i64]| v == [3])
        .unwrap();
    assert_eq!(counts, vec![3]);
    // A sentence's hops reach the subscriber too.
    m.append("sentences", &json!({"text": "an apple"})).unwrap();
    apple
        .wait_for(std::time::Duration::from_secs(10), |v: &[i64]| v == [4])
        .unwrap();
    assert!(apple.last_event_id().is_some());
}
