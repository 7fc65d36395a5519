//! Isolation benchmark: a healthy module's append throughput alone, then while another module's
//! handler loops forever on every record (stopped by the deadline each time), in the same run.
//! Run with `make bench`; prints a Markdown table.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};

const RUN: Duration = Duration::from_secs(3);
const HEALTHY_CLIENTS: usize = 4;
const NOISY_CLIENTS: usize = 2;

fn healthy(host: &Host) -> f64 {
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..HEALTHY_CLIENTS {
            let done = &done;
            s.spawn(move || {
                let mut conn = Conn::open(&host.addr);
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    let body = format!("{{\"word\":\"w{}\"}}", (i * 7 + c as u64) % 500);
                    let r = conn.request(
                        "POST",
                        "/v1/modules/wordcount/depots/words/append",
                        "application/json",
                        body.as_bytes(),
                    );
                    assert_eq!(r.status, 200);
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--call-deadline-ms", "100", "--handler-attempts-max", "1"],
    );
    for (m, file) in [("wordcount", "wordcount"), ("hostile", "hostile")] {
        assert_eq!(host.deploy(m, &module_wasm(file), "").status, 201);
    }
    let alone = healthy(&host);
    let stop = AtomicBool::new(false);
    let noisy_calls = AtomicU64::new(0);
    let with_noise = std::thread::scope(|s| {
        for c in 0..NOISY_CLIENTS {
            let (stop, noisy_calls, host) = (&stop, &noisy_calls, &host);
            s.spawn(move || {
                let mut conn = Conn::open(&host.addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{{\"key\":\"k{}\",\"do\":\"loop\"}}", i * 2 + c as u64);
                    let r = conn.request(
                        "POST",
                        "/v1/modules/hostile/depots/commands/append",
                        "application/json",
                        body.as_bytes(),
                    );
                    assert_eq!(r.status, 500);
                    i += 1;
                }
                noisy_calls.fetch_add(i, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        let rate = healthy(&host);
        stop.store(true, Ordering::Relaxed);
        rate
    });
    println!("## Isolation: a healthy module next to a looping one (same run)\n");
    println!("`wordcount`, {HEALTHY_CLIENTS} clients, single-record `full` acks, {} s; the noisy module `hostile` gets `loop` records from {NOISY_CLIENTS} clients (each burns its 100 ms deadline on one core).\n", RUN.as_secs());
    println!("| healthy alone rec/s | healthy with a looping neighbour rec/s | throughput kept | looping calls stopped |");
    println!("|---|---|---|---|");
    println!(
        "| {alone:.0} | {with_noise:.0} | {:.0}% | {} |",
        100.0 * with_noise / alone,
        noisy_calls.load(Ordering::Relaxed)
    );
}
