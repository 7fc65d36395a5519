//! The cluster's replicated log (issue 14): fenced writes through `cluster::fence::Owner` to
//! a JetStream stream — R3 and R1 on three real `nats-server`s on loopback — beside the
//! single node's durable redb commit of the same bytes, same run. One writer, one write in
//! flight (what a partition does: each append and each commit waits for its answer), so the
//! figures are round trips; entries larger than a part go as pipelined parts.
//! Run with `make bench` (skips without a `nats-server`); prints Markdown.

#[allow(dead_code)]
#[path = "../../tests/e2e/nats.rs"]
mod nats;

use std::sync::Arc;
use std::time::Instant;

use sluice::cluster::fence::{LogView, Owner};
use sluice::cluster::log::EntryKind;

/// (entry bytes, writes) per workload.
const SHAPES: &[(usize, usize)] = &[(100, 2_000), (16 << 10, 500), (1 << 20, 40)];

fn pct(mut us: Vec<f64>, p: f64) -> f64 {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    us[((us.len() - 1) as f64 * p) as usize]
}

struct Run {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(n: usize, mut write: impl FnMut(usize)) -> Run {
    let mut us = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        write(i);
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = started.elapsed().as_secs_f64();
    Run {
        per_s: n as f64 / secs,
        p50_us: pct(us.clone(), 0.5),
        p99_us: pct(us, 0.99),
    }
}

fn redb_baseline(bytes: usize, n: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("log.redb")).unwrap();
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    let body = vec![7u8; bytes];
    measure(n, |i| {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            t.insert(i as u64, body.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    })
}

fn main() {
    let Some(cluster) = nats::NatsCluster::start(3) else {
        println!("## Cluster log\n\nskipped: no nats-server on PATH\n");
        return;
    };
    let (rt, r3) = nats::connect(&cluster);
    let mut r1 = r3.clone();
    r1.replicas = 1;
    println!("## The cluster's replicated log (issue 14): fenced writes vs a durable redb commit (`host/benches/cluster_log.rs`)\n");
    println!("nats-server {} ×3 on loopback, one writer, one write in flight; redb: one insert per fsynced transaction.\n", server_version());
    println!("| entry | redb commits/s (p50 / p99 µs) | R1 writes/s (p50 / p99 µs) | R3 writes/s (p50 / p99 µs) | R3 / redb |");
    println!("|---|---|---|---|---|");
    for (i, &(bytes, n)) in SHAPES.iter().enumerate() {
        let base = redb_baseline(bytes, n);
        let mut runs = Vec::new();
        for (name, nats) in [("r1", &r1), ("r3", &r3)] {
            let log = Arc::new(nats::open_log(&rt, nats, &format!("bench{i}{name}"), 0));
            let mut owner =
                Owner::claim(log, "bench", &mut LogView::default(), 0, |_| Ok(())).unwrap();
            let body = vec![7u8; bytes];
            runs.push(measure(n, |_| {
                owner.write(EntryKind::In, &body).expect("write");
            }));
        }
        let cell = |r: &Run| format!("{:.0} ({:.0} / {:.0})", r.per_s, r.p50_us, r.p99_us);
        println!(
            "| {} | {} | {} | {} | {:.2} |",
            human(bytes),
            cell(&base),
            cell(&runs[0]),
            cell(&runs[1]),
            runs[1].per_s / base.per_s
        );
    }
    println!();
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn server_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("nats-server: ", "")
        })
        .unwrap_or_default()
}
