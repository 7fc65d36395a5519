//! Depot append benchmark: throughput and latency of appends over HTTP against the real
//! `sluice` binary, for each ack level, single records and NDJSON batches, 1 and 16 clients,
//! against raw redb inserts of the same records with the same batch sizes and fsync, measured
//! in the same run. Run with `make bench`; prints a Markdown table.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/goals.rs"]
mod goals;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};
use redb::{Database, Durability, TableDefinition};

/// How long one configuration runs at most.
const RUN_TIME_MAX: Duration = Duration::from_millis(1500);
/// How many records one configuration appends at most.
const RECORDS_MAX: u64 = 60_000;

fn record(i: u64) -> String {
    format!("{{\"word\":\"w{}\"}}", i % 1000)
}

struct Outcome {
    records: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    retries: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(host: &Host, ack: &str, batch: Option<usize>, clients: usize) -> Outcome {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let results: Vec<(Vec<u64>, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let next = &next;
                s.spawn(move || {
                    let mut conn = Conn::open(&host.addr);
                    let mut lat = Vec::new();
                    let (mut done, mut retries) = (0u64, 0u64);
                    let per = batch.unwrap_or(1) as u64;
                    let path = format!("/v1/modules/wordcount/depots/words/append?ack={ack}");
                    while start.elapsed() < RUN_TIME_MAX {
                        let first = next.fetch_add(per, Ordering::Relaxed);
                        if first >= RECORDS_MAX {
                            break;
                        }
                        let (ct, body) = match batch {
                            None => ("application/json", record(first)),
                            Some(n) => (
                                "application/x-ndjson",
                                (first..first + n as u64)
                                    .map(|i| record(i) + "\n")
                                    .collect(),
                            ),
                        };
                        loop {
                            let t = Instant::now();
                            let r = conn.request("POST", &path, ct, body.as_bytes());
                            if r.status == 503 {
                                retries += 1;
                                std::thread::sleep(Duration::from_millis(1));
                                continue;
                            }
                            assert!(
                                r.status == 200 || r.status == 202,
                                "{}",
                                String::from_utf8_lossy(&r.body)
                            );
                            if batch.is_some() && r.body.windows(7).any(|w| w == b"\"error\"") {
                                panic!("batch line failed: {}", String::from_utf8_lossy(&r.body));
                            }
                            lat.push(t.elapsed().as_micros() as u64);
                            break;
                        }
                        done += per;
                    }
                    (lat, done, retries)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let mut latencies_us: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    latencies_us.sort_unstable();
    Outcome {
        records: results.iter().map(|r| r.1).sum(),
        elapsed,
        latencies_us,
        retries: results.iter().map(|r| r.2).sum(),
    }
}

/// Raw redb: the same records, `batch` per fsynced transaction.
fn raw_redb(dir: &std::path::Path, batch: usize, records: u64) -> f64 {
    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
    let path = dir.join(format!("raw-{batch}.redb"));
    let db = Database::create(&path).unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < records {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut t = txn.open_table(TABLE).unwrap();
            for _ in 0..batch {
                t.insert(i, record(i).as_bytes()).unwrap();
                i += 1;
            }
        }
        txn.commit().unwrap();
    }
    records as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "65536"],
    );
    let r = host.deploy("wordcount", &module_wasm("wordcount"), "");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    let baseline: Vec<(usize, f64)> = [(1usize, 1_000u64), (100, 50_000), (1000, 100_000)]
        .iter()
        .map(|&(b, n)| (b, raw_redb(dir.path(), b, n)))
        .collect();
    let base = |b: usize| baseline.iter().find(|(x, _)| *x == b).unwrap().1;

    println!("## Depot appends over HTTP vs raw redb (same run)\n");
    println!("raw redb, fsync per transaction: 1/txn {:.0} rec/s, 100/txn {:.0} rec/s, 1000/txn {:.0} rec/s\n", base(1), base(100), base(1000));
    println!("| ack | request | clients | records/s | req p50 µs | req p99 µs | 503 retries | raw redb rec/s (same batch) | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut appended = 0u64;
    for ack in ["none", "append", "full"] {
        for batch in [None, Some(1), Some(100), Some(1000)] {
            for clients in [1usize, 16] {
                let o = run(&host, ack, batch, clients);
                appended += o.records;
                if ack == "none" {
                    // Let the queues drain so the next configuration starts clean.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while host.depot_records("wordcount", "words") < appended
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                let rate = o.records as f64 / o.elapsed.as_secs_f64();
                let b = batch.unwrap_or(1);
                let request = match batch {
                    None => "single JSON".to_string(),
                    Some(n) => format!("NDJSON x{n}"),
                };
                println!(
                    "| {ack} | {request} | {clients} | {rate:.0} | {} | {} | {} | {:.0} | {:.2} |",
                    percentile(&o.latencies_us, 0.50),
                    percentile(&o.latencies_us, 0.99),
                    o.retries,
                    base(b),
                    rate / base(b)
                );
                if batch == Some(1000) && clients == 16 && ack != "none" {
                    goals::record(
                        &format!(
                            "batched appends ≥ 0.5× raw redb (NDJSON ×1000, 16 clients, `{ack}`)"
                        ),
                        &format!("{rate:.0} records/s"),
                        &format!("raw redb, 1,000 per fsynced txn: {:.0}", base(b)),
                        rate,
                        base(b),
                        goals::Target::RatioAtLeast(0.5),
                    );
                }
            }
        }
    }
}
