//! PState migration benchmark: `profiles` (100,000 entries on 4 partitions) updated to
//! `profiles-next`, whose `migrate` turns each stored string into a map. Measures the
//! background rewrite's throughput and what it does to the partitions' latency: `full`-ack
//! appends (through the partition worker that also runs the rewrite) and key selects (which
//! migrate old values on read), before, during and after the migration, same run, same load.
//! Run with `make bench`; prints Markdown.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};
use serde_json::json;

const ENTRIES: usize = 100_000;
const PHASE: Duration = Duration::from_secs(4);

fn pct(mut us: Vec<f64>, p: f64) -> f64 {
    if us.is_empty() {
        return f64::NAN;
    }
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    us[((us.len() - 1) as f64 * p) as usize]
}

/// One appending client (`ack=full`) and one selecting client until `stop` (or `PHASE`
/// when `stop` is never set by the caller); answers their latencies in µs.
fn load(host: &Host, stop: &AtomicBool, seed: usize) -> (Vec<f64>, Vec<f64>) {
    let started = Instant::now();
    let done = || stop.load(Ordering::Acquire) || started.elapsed() > Duration::from_secs(600);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut conn = Conn::open(&host.addr);
            let mut us = Vec::new();
            let mut i = seed;
            while !done() {
                i += 1;
                let body =
                    json!({"key": format!("n{i}"), "name": format!("New{i} Name{i}")}).to_string();
                let t = Instant::now();
                let r = conn.request(
                    "POST",
                    "/v1/modules/profiles/depots/names/append?ack=full",
                    "application/json",
                    body.as_bytes(),
                );
                us.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
            us
        });
        let reader = s.spawn(|| {
            let mut conn = Conn::open(&host.addr);
            let mut us = Vec::new();
            let mut x = 1usize + seed;
            while !done() {
                x = (x * 48271) % 2_147_483_647;
                let body = json!({"path": [{"key": format!("k{}", x % ENTRIES)}]}).to_string();
                let t = Instant::now();
                let r = conn.request(
                    "POST",
                    "/v1/modules/profiles/pstates/profiles/select",
                    "application/json",
                    body.as_bytes(),
                );
                us.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
            us
        });
        (writer.join().unwrap(), reader.join().unwrap())
    })
}

fn timed_phase(host: &Host, seed: usize) -> (Vec<f64>, Vec<f64>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| load(host, &stop, seed));
        std::thread::sleep(PHASE);
        stop.store(true, Ordering::Release);
        h.join().unwrap()
    })
}

fn row(name: &str, secs: f64, (w, r): &(Vec<f64>, Vec<f64>)) {
    println!(
        "| {name} | {secs:.1} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
        w.len(),
        pct(w.clone(), 0.5),
        pct(w.clone(), 0.99),
        r.len(),
        pct(r.clone(), 0.5),
        pct(r.clone(), 0.99),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let r = host.deploy("profiles", &module_wasm("profiles"), "?partitions=4");
    assert_eq!(r.status, 201);
    host.drive_ndjson(
        "/v1/modules/profiles/depots/names/append",
        ENTRIES,
        1000,
        2,
        &|i| json!({"key": format!("k{i}"), "name": format!("First{i} Last{i}")}).to_string(),
    );
    harness::eventually("the profiles stored", || {
        (host.metric_sum("sluice_topology_lag_records") == 0.0).then_some(())
    });
    let before = timed_phase(&host, 1_000_000);

    let t = Instant::now();
    let r = host.deploy("profiles", &module_wasm("profiles_next"), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let swap = t.elapsed();
    let stop = AtomicBool::new(false);
    let (during, migrated) = std::thread::scope(|s| {
        let h = s.spawn(|| load(&host, &stop, 2_000_000));
        let m = harness::eventually("the migration done", || {
            let m = host.get("/v1/modules/profiles").json()["migrations"][0].clone();
            (m["state"] != "running").then_some(m)
        });
        let took = t.elapsed();
        stop.store(true, Ordering::Release);
        (h.join().unwrap(), (m, took))
    });
    let (m, took) = migrated;
    assert_eq!(m["state"], "done", "{m}");
    let after = timed_phase(&host, 3_000_000);
    let rewritten = m["rewritten"].as_u64().unwrap();
    println!("## PState migration ({ENTRIES} entries, 4 partitions, one `full`-ack appender and one key selector throughout)\n");
    println!(
        "The update (drain, record the migration on every partition, start the new version) took {} ms; \
         the background rewrite then migrated {rewritten} entries (the rest were rewritten by writes) in {:.2} s: \
         **{:.0} entries/s** while serving the load below.\n",
        swap.as_millis(),
        took.as_secs_f64(),
        rewritten as f64 / took.as_secs_f64()
    );
    println!("| phase | s | appends | append p50 µs | append p99 µs | selects | select p50 µs | select p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    row("before the update (baseline)", PHASE.as_secs_f64(), &before);
    row("while migrating", took.as_secs_f64(), &during);
    row("after the migration", PHASE.as_secs_f64(), &after);
}
