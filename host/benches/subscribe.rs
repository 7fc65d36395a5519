//! Subscription benchmark (real binary, loopback, release): how long after an append's `full`
//! ack its change reaches subscribers of the path — with 1, 100 and 1,000 subscribers of one
//! counter (one shared feed, fanned out) — and the writer's throughput with no subscribers
//! against 1,000 subscribers on the keys it writes, in the same run. Prints Markdown for
//! BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};
use serde_json::json;
use sluice::client::sse::{EventStream, Watched};

/// Appends timed per subscriber count.
const APPENDS: usize = 400;
const WRITERS: usize = 16;
const THROUGHPUT_FOR: Duration = Duration::from_secs(4);
const WORDS: usize = 1_000;

/// CPU time (user + system) of a process so far, in ms.
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 1000.0 / 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p) as usize]
}

fn open(host: &Host, word: &str) -> EventStream {
    host.subscribe("wc", "counts", json!([{ "key": word }]), "", None)
}

/// Reads `stream` until the counter reaches `until`, noting when each count arrived.
fn read_counts(mut s: EventStream, until: i64, origin: Instant) -> Vec<(i64, f64)> {
    let mut w = Watched::default();
    let mut out = Vec::new();
    while let Ok(Some(e)) = s.next_event() {
        let t = origin.elapsed().as_secs_f64() * 1e6;
        if e.is_final() {
            panic!("the stream ended: {e:?}");
        }
        w.apply(&e).unwrap();
        let n = w.values.first().and_then(|v| v.as_i64()).unwrap_or(0);
        out.push((n, t));
        if n >= until {
            break;
        }
    }
    out
}

fn append(conn: &mut Conn, word: &str) {
    let r = conn.request(
        "POST",
        "/v1/modules/wc/depots/words/append?ack=full",
        "application/json",
        json!({ "word": word }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Latency from ack to arrival (µs, signed: negative = before the ack) over all subscribers,
/// and until the last subscriber of each append has it; the writer's own ack latency.
fn latency(host: &Host, subscribers: usize) -> ([f64; 6], f64, f64) {
    let word = format!("hot{subscribers}");
    let host_pid = host.pid().to_string();
    let origin = Instant::now();
    let streams: Vec<EventStream> = (0..subscribers).map(|_| open(host, &word)).collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || read_counts(s, APPENDS as i64, origin))
                .unwrap()
        })
        .collect();
    let mut conn = Conn::open(&host.addr);
    let (host_cpu, own_cpu) = (cpu_ms(&host_pid), cpu_ms("self"));
    let mut acks = vec![0f64; APPENDS + 1];
    let mut ack_latency = Vec::with_capacity(APPENDS);
    for ack in acks.iter_mut().skip(1).take(APPENDS) {
        let sent = origin.elapsed().as_secs_f64() * 1e6;
        append(&mut conn, &word);
        *ack = origin.elapsed().as_secs_f64() * 1e6;
        ack_latency.push(*ack - sent);
    }
    let mut all = Vec::new();
    let mut last = vec![f64::MIN; APPENDS + 1];
    let readers: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let host_cpu = (cpu_ms(&host_pid) - host_cpu) * 1000.0 / APPENDS as f64;
    let own_cpu = (cpu_ms("self") - own_cpu) * 1000.0 / APPENDS as f64;
    for r in readers {
        for (n, t) in r {
            if n >= 1 && (n as usize) <= APPENDS {
                let d = t - acks[n as usize];
                all.push(d);
                last[n as usize] = last[n as usize].max(d);
            }
        }
    }
    let mut last: Vec<f64> = last.into_iter().skip(1).filter(|d| *d > f64::MIN).collect();
    (
        [
            pct(&mut all, 0.5),
            pct(&mut all, 0.99),
            pct(&mut last, 0.5),
            pct(&mut last, 0.99),
            pct(&mut ack_latency, 0.5),
            pct(&mut ack_latency, 0.99),
        ],
        host_cpu,
        own_cpu,
    )
}

/// Appends/s by `WRITERS` clients over `WORDS` words for `THROUGHPUT_FOR`; with
/// `subscribers`, that many streams (one per word, round robin) are read meanwhile. Answers
/// (records/s, events received/s).
fn throughput(host: &Host, subscribers: usize) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..subscribers)
        .map(|i| {
            let mut s = open(host, &format!("w{}", i % WORDS));
            let (stop, events) = (Arc::clone(&stop), Arc::clone(&events));
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match s.next_event() {
                            Ok(Some(e)) if !e.is_final() => {
                                events.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => return,
                        }
                    }
                })
                .unwrap()
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|c| {
            let (addr, done, start) = (host.addr.clone(), Arc::clone(&done), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut n = c as u64 * 7919;
                start.wait();
                let began = Instant::now();
                while began.elapsed() < THROUGHPUT_FOR {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    append(&mut conn, &format!("w{}", (n >> 33) as usize % WORDS));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let events_before = events.load(Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let secs = began.elapsed().as_secs_f64();
    let got = events.load(Ordering::Relaxed) - events_before;
    stop.store(true, Ordering::Relaxed);
    // Readers blocked in a read end when the host stops; they are not joined.
    drop(readers);
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        got as f64 / secs,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let r = host.deploy("wc", &module_wasm("wordcount"), "?partitions=4");
    assert_eq!(r.status, 201);
    let results = Mutex::new(Vec::new());
    for n in [1usize, 100, 1_000] {
        let l = latency(&host, n);
        results.lock().unwrap().push((n, l));
    }
    println!("## Subscriptions: from the `full` ack to the subscriber ({APPENDS} sequential appends to one counter, 4 partitions)\n");
    println!("Delay = when the subscriber had the event − when the writer had the ack (negative: the event came first).\n");
    println!("Host CPU and subscriber-side CPU (the readers in the benchmark process, on the same 2 cores) per append.\n");
    println!("| subscribers of the key | delay p50 µs | delay p99 µs | until the last subscriber p50 µs | p99 µs | writer ack p50 µs | p99 µs | host CPU µs/append | readers' CPU µs/append |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, ([a50, a99, l50, l99, w50, w99], host_cpu, own_cpu)) in results.into_inner().unwrap() {
        println!("| {n} | {a50:.0} | {a99:.0} | {l50:.0} | {l99:.0} | {w50:.0} | {w99:.0} | {host_cpu:.0} | {own_cpu:.0} |");
    }
    let (base, _) = throughput(&host, 0);
    let (with, events) = throughput(&host, 1_000);
    println!("\n## Writer throughput with and without subscribers ({WRITERS} clients, `ack=full`, {WORDS} words, {} s each)\n", THROUGHPUT_FOR.as_secs());
    println!("| subscribers | appends/s | events delivered/s | vs none |");
    println!("|---:|---:|---:|---:|");
    println!("| 0 | {base:.0} | 0 | 1.00 |");
    println!(
        "| 1,000 (one per word written) | {with:.0} | {events:.0} | {:.2} |",
        with / base
    );
}
