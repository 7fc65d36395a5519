//! Stream and microbatch writes to the same PState (issue 12 item 2): the first kind to
//! write a PState claims it; the other kind's writes are refused with
//! `pstate-writer-conflict` (a dead letter naming the PState), and nothing is clobbered —
//! also after a restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Host;

fn count(host: &Host, pstate: &str, key: &str) -> u64 {
    host.select("mixed", pstate, json!([{"key": key}]))
        .first()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

fn conflicts(host: &Host) -> Vec<serde_json::Value> {
    host.get("/v1/modules/mixed/topologies/m/dead-letters")
        .json()["dead_letters"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_microbatch_may_not_write_a_pstate_a_stream_topology_writes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("mixed", "mixed_writers", "?partitions=4");
    let keys = ["a", "b", "c"];
    let stream: Vec<_> = (0..300).map(|i| json!({"key": keys[i % 3]})).collect();
    host.append_all("mixed", "stream-incs", "?ack=full", &stream);
    let own: Vec<_> = (0..30)
        .map(|i| json!({"key": keys[i % 3], "into": "batch-counts"}))
        .collect();
    host.append_all("mixed", "batch-incs", "?ack=full", &own);
    assert_eq!(count(&host, "batch-counts", "a"), 10);
    // Interleaved: stream increments while the microbatch tries to write `counts` too.
    let shared: Vec<_> = (0..30)
        .map(|i| json!({"key": keys[i % 3], "into": "counts"}))
        .collect();
    host.append_all("mixed", "batch-incs", "?ack=full", &shared);
    host.append_all("mixed", "stream-incs", "?ack=full", &stream);
    for k in keys {
        assert_eq!(
            count(&host, "counts", k),
            200,
            "counts[{k}] holds every stream write"
        );
    }
    let dead = conflicts(&host);
    assert_eq!(dead.len(), 30, "{dead:?}");
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(
            e.contains("pstate-writer-conflict")
                && e.contains("PState `counts` is written by stream topologies")
                && e.contains("microbatch topology `m`"),
            "{e}"
        );
    }
    // The claims are durable: after a restart the microbatch is still refused.
    let host = host.kill9_and_restart();
    host.append_all("mixed", "batch-incs", "?ack=full", &shared[..3]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while conflicts(&host).len() < 33 {
        assert!(Instant::now() < deadline, "no conflict after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&host, "counts", "a"), 200);
    assert_eq!(count(&host, "batch-counts", "a"), 10);
}
