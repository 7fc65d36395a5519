//! How cost grows with the work (issue 15): per-record cost of appends, selects and depot
//! reads on one partition holding 10k, 1M and 10M depot records and PState entries; the
//! host's RSS and disk bytes per stored record at each size; and the cost per timeline
//! delivery of one post at fanouts of 10, 1,000 and 100,000 followers.
//!
//! Method: the real `sluice` binary on loopback, `wordcount` deployed with one partition; it
//! is loaded with distinct words (`w0`, `w1`, …: one depot record and one `counts` entry
//! each) by NDJSON bodies of 1,000 at `ack=append` from 2 clients until the topology has
//! caught up, then, at each size, measured from 1 client: NDJSON ×1000 appends of new words at
//! `ack=full` (µs per record), single-record `ack=full` appends (p50, one fsync each), HTTP
//! selects of random stored keys (p50) and reads of 100 depot records at random offsets (p50).
//! Fanout: `social` (default partitions), accounts followed by 10 / 1,000 / 100,000 accounts
//! each post 5 times with `ack=full` (the answer waits for every delivery); the median post's
//! time divided by its followers. Sizes: `GROWTH_SIZES` (default `10000,1000000,10000000`).
//! Run with `make bench`; prints Markdown tables.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../src/bin/sluice-load.rs"]
mod load;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;

use harness::{module_wasm, Conn, Host};
use load::Rng;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("GROWTH_SIZES")
        .unwrap_or_else(|_| "10000,1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("GROWTH_SIZES: numbers"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    growth(&dir.path().join("wc"), &sizes);
    fanout(&dir.path().join("social"));
}

/// Per-record costs on one partition at each size.
fn growth(data: &std::path::Path, sizes: &[u64]) {
    let host = Host::start(data, &["--partition-queue-depth", "65536"]);
    let r = host.deploy("wordcount", &module_wasm("wordcount"), "?partitions=1");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    println!("## How cost grows: one partition of `wordcount` (`host/benches/growth.rs`)\n");
    println!("| depot records = PState entries | load rec/s (`append`, NDJSON ×1000, 2 clients) | `full` NDJSON ×1000: µs/record | `full` single record p50 µs | select p50 µs | depot read ×100 p50 µs | RSS MiB | disk bytes/record (allocated) |");
    println!("|---|---|---|---|---|---|---|---|");
    // Words `w0 … w(loaded-1)` are stored; measurement appends come after them.
    let loaded = AtomicU64::new(0);
    let mut fresh = 1u64 << 40;
    for &size in sizes {
        let start = Instant::now();
        let before = loaded.load(Ordering::Relaxed);
        load(&host, &loaded, size);
        wait_processed(&host);
        let load_rate = (size - before) as f64 / start.elapsed().as_secs_f64();
        let mut conn = Conn::open(&host.addr);
        // 10 batches of 1,000 new words, `full`.
        let t = Instant::now();
        for _ in 0..10 {
            let body = ndjson(fresh, 1000);
            fresh += 1000;
            append(&mut conn, "full", "application/x-ndjson", body.as_bytes());
        }
        let batch_us = t.elapsed().as_micros() as f64 / 10_000.0;
        let single = p50((0..200).map(|_| {
            let body = format!("{{\"word\":\"w{fresh}\"}}");
            fresh += 1;
            let t = Instant::now();
            append(&mut conn, "full", "application/json", body.as_bytes());
            t.elapsed()
        }));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size);
        let select = p50((0..2000).map(|_| {
            let w = rng.below(size as usize);
            let body = format!("{{\"path\":[{{\"key\":\"w{w}\"}}]}}");
            let t = Instant::now();
            let r = conn.request(
                "POST",
                "/v1/modules/wordcount/pstates/counts/select",
                "application/json",
                body.as_bytes(),
            );
            let e = t.elapsed();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["values"][0], 1, "w{w}");
            e
        }));
        let read = p50((0..500).map(|_| {
            let from = rng.below(size as usize - 100);
            let t = Instant::now();
            let r = conn.request(
                "GET",
                &format!("/v1/modules/wordcount/depots/words/partitions/0?from={from}&limit=100"),
                "application/json",
                b"",
            );
            let e = t.elapsed();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["records"].as_array().map(Vec::len), Some(100));
            e
        }));
        let stored = host.depot_records("wordcount", "words");
        println!(
            "| {size} | {load_rate:.0} | {batch_us:.1} | {} | {} | {} | {:.0} | {:.0} |",
            single.as_micros(),
            select.as_micros(),
            read.as_micros(),
            rss_mib(host.pid()),
            dir_bytes(data) as f64 / stored as f64,
        );
    }
    host.stop();
}

/// Appends distinct words from `loaded` up to `to` (`ack=append`, NDJSON ×1000, 2 clients).
fn load(host: &Host, loaded: &AtomicU64, to: u64) {
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut conn = Conn::open(&host.addr);
                loop {
                    let first = loaded.fetch_add(1000, Ordering::Relaxed);
                    if first >= to {
                        loaded.fetch_sub(1000, Ordering::Relaxed);
                        break;
                    }
                    let n = (to - first).min(1000);
                    if n < 1000 {
                        loaded.fetch_sub(1000 - n, Ordering::Relaxed);
                    }
                    let body = ndjson(first, n);
                    append(&mut conn, "append", "application/x-ndjson", body.as_bytes());
                }
            });
        }
    });
    loaded.store(to, Ordering::Relaxed);
}

/// Until the topology has processed every record.
fn wait_processed(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while host.metric_sum("sluice_topology_lag_records") > 0.0 {
        assert!(Instant::now() < deadline, "the topology did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ndjson(first: u64, n: u64) -> String {
    (first..first + n)
        .map(|i| format!("{{\"word\":\"w{i}\"}}\n"))
        .collect()
}

fn append(conn: &mut Conn, ack: &str, ct: &str, body: &[u8]) {
    loop {
        let r = conn.request(
            "POST",
            &format!("/v1/modules/wordcount/depots/words/append?ack={ack}"),
            ct,
            body,
        );
        if r.status == 503 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            !r.body.windows(7).any(|w| w == b"\"error\""),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        return;
    }
}

/// The cost per delivery of one post at each fanout.
fn fanout(data: &std::path::Path) {
    const FANOUTS: [u64; 3] = [10, 1_000, 100_000];
    let host = Host::start(data, &["--partition-queue-depth", "65536"]);
    let r = host.deploy("social", &module_wasm("social"), "");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let mut conn = Conn::open(&host.addr);
    for f in FANOUTS {
        for chunk in (0..f).collect::<Vec<_>>().chunks(1000) {
            let body: String = chunk
                .iter()
                .map(|i| format!("{{\"follower\":\"f{i}\",\"followee\":\"a{f}\"}}\n"))
                .collect();
            let r = conn.request(
                "POST",
                "/v1/modules/social/depots/follows/append?ack=full",
                "application/x-ndjson",
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }
    println!("\n## How cost grows: one post's fanout on `social` (`host/benches/growth.rs`)\n");
    println!("| followers | `full` ack of one post, median of 5 (ms) | µs per delivery |");
    println!("|---|---|---|");
    for f in FANOUTS {
        let mut times: Vec<Duration> = (0..5)
            .map(|n| {
                let post = format!(
                    "{{\"author\":\"a{f}\",\"id\":\"p{n}\",\"text\":\"post {n}\",\"time\":{}}}",
                    1_000 + n
                );
                let t = Instant::now();
                let r = conn.request(
                    "POST",
                    "/v1/modules/social/depots/posts/append?ack=full",
                    "application/json",
                    post.as_bytes(),
                );
                let e = t.elapsed();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                e
            })
            .collect();
        times.sort();
        let median = times[2];
        println!(
            "| {f} | {:.2} | {:.2} |",
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e6 / f as f64
        );
    }
    // The `full` acks waited for every delivery: the widest fanout's last follower holds
    // its five posts (one timeline entry each).
    let timeline = host.select(
        "social",
        "home-timelines",
        serde_json::json!([{"key": "f99999"}, "count"]),
    );
    assert_eq!(timeline, vec![serde_json::json!(5)], "f99999's timeline");
    host.stop();
}

fn p50(times: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = times.collect();
    v.sort();
    v[v.len() / 2]
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            // Allocated, not apparent, size (redb files grow in steps).
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
