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
