//! Live-operations benchmark: query-topology latency over 8 partitions against plain selects
//! in the same run, and a module update under sustained append load (refused and lost appends,
//! the swap's duration, append latency around it). Run with `make bench`; prints Markdown.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};
use serde_json::json;

const SAMPLES: usize = 3_000;
const WORDS: usize = 200;
const CLIENTS: usize = 4;

fn pct(mut us: Vec<f64>, p: f64) -> f64 {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    us[((us.len() - 1) as f64 * p) as usize]
}

fn time(conn: &mut Conn, path: &str, body: &serde_json::Value) -> (f64, f64) {
    let body = body.to_string();
    let mut us = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let s = Instant::now();
        let r = conn.request("POST", path, "application/json", body.as_bytes());
        us.push(s.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    (pct(us.clone(), 0.5), pct(us, 0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let r = host.deploy("wordcount", &module_wasm("wordcount"), "?partitions=8");
    assert_eq!(r.status, 201);
    let mut lines = String::new();
    for n in 0..1_000 {
        lines.push_str(&json!({"word": format!("w{}", (n * 7) % WORDS)}).to_string());
        lines.push('\n');
    }
    let r = host.request(
        "POST",
        "/v1/modules/wordcount/depots/words/append",
        "application/x-ndjson",
        lines.as_bytes(),
    );
    assert_eq!(r.status, 200);

    let mut conn = Conn::open(&host.addr);
    let select = "/v1/modules/wordcount/pstates/counts/select";
    let key = time(&mut conn, select, &json!({"path": [{"key": "w7"}]}));
    let all = time(
        &mut conn,
        select,
        &json!({"path": ["all"], "partition": "all"}),
    );
    let query = time(
        &mut conn,
        "/v1/modules/wordcount/queries/top-words",
        &json!({"n": 10}),
    );
    println!("## Queries (8 partitions, {WORDS} words, {SAMPLES} sequential requests each, one keep-alive connection)\n");
    println!("| request | p50 µs | p99 µs | p50 vs key select |");
    println!("|---|---:|---:|---:|");
    for (name, (p50, p99)) in [
        ("select one key (baseline)", key),
        (
            "select every entry of every partition (HTTP fan-out, no guest)",
            all,
        ),
        (
            "query `top-words` (guest fan-out over 8 partitions, sort, top 10)",
            query,
        ),
    ] {
        println!("| {name} | {p50:.0} | {p99:.0} | {:.2}× |", p50 / key.0);
    }

    // A module update under load: CLIENTS keep appending single records with `ack=full`.
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (samples, update_at, update_took, update_status) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, addr) = (&stop, host.addr.clone());
                s.spawn(move || {
                    let mut conn = Conn::open(&addr);
                    let mut out = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        let body = json!({"word": format!("u{}", (n * CLIENTS + c) % WORDS)});
                        let t0 = Instant::now();
                        let r = conn.request(
                            "POST",
                            "/v1/modules/wordcount/depots/words/append",
                            "application/json",
                            body.to_string().as_bytes(),
                        );
                        out.push((t0.duration_since(started), t0.elapsed(), r.status));
                        n += 1;
                    }
                    out
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let at = started.elapsed();
        let t0 = Instant::now();
        let r = host.deploy("wordcount", &module_wasm("wordcount_next"), "");
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Release);
        let samples: Vec<(Duration, Duration, u16)> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (samples, at, took, r.status)
    });
    assert_eq!(update_status, 200);
    let refused = samples.iter().filter(|s| s.2 != 200).count();
    let acked = samples.len() - refused;
    let stored = host.depot_records("wordcount", "words") - 1_000;
    let before: Vec<f64> = samples
        .iter()
        .filter(|s| s.0 + s.1 < update_at)
        .map(|s| s.1.as_secs_f64() * 1e3)
        .collect();
    let around: Vec<f64> = samples
        .iter()
        .filter(|s| s.0 < update_at + update_took && s.0 + s.1 > update_at)
        .map(|s| s.1.as_secs_f64() * 1e3)
        .collect();
    let rate_before = before.len() as f64 / update_at.as_secs_f64();
    println!("\n## Module update under load ({CLIENTS} clients, single-record `ack=full` appends, update after 2 s)\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| appends answered | {} |", samples.len());
    println!("| refused (non-200) | {refused} |");
    println!(
        "| acked but not stored (lost) | {} |",
        acked as i64 - stored as i64
    );
    println!(
        "| update request (compile + define + check + drain + swap) | {:.0} ms |",
        update_took.as_secs_f64() * 1e3
    );
    println!("| appends in flight across the swap | {} |", around.len());
    println!(
        "| their max latency | {:.1} ms |",
        around.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| append p50 / p99 before the update | {:.2} / {:.2} ms |",
        pct(before.clone(), 0.5),
        pct(before, 0.99)
    );
    println!("| append rate before the update | {rate_before:.0}/s |");
}
