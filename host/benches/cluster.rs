//! A 3-host cluster beside the single node, same run (issue 14): `wordcount` appends
//! (`words`, `ack=append` and `ack=full`, single records and NDJSON batches) and `social` posts
//! (`ack=full`, each delivered to 10 followers), sent to the module's owner and to a host
//! that forwards them; then the failover time (owner `kill -9`ed → appends acked again) over
//! several runs. Three real `nats-server`s (R3) and real `sluice` hosts on loopback, all on
//! this 2-core machine. Run with `make bench` (skips without a `nats-server`); prints
//! Markdown.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../../tests/e2e/nats.rs"]
mod nats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::{eventually, module_wasm, Conn, Host};
use serde_json::json;

/// How long one workload runs.
const RUN_TIME: Duration = Duration::from_millis(3000);
/// Owner timeout of the cluster's hosts (and so the failover's detection time).
const OWNER_TIMEOUT_MS: u64 = 3000;
/// Failovers measured.
const FAILOVER_RUNS: usize = 3;
/// Followers of each social account (every post is delivered to that many timelines).
const FANOUT: usize = 10;
const ACCOUNTS: usize = 200;

struct Outcome {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `clients` connections to `addr` each sending `POST path` with `body(i)` (`per` records
/// each) for [`RUN_TIME`]; 503s are retried and not counted.
fn run(
    addr: &str,
    path: &str,
    ct: &str,
    per: u64,
    clients: usize,
    body: impl Fn(u64) -> String + Sync,
) -> Outcome {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let lat: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (next, body) = (&next, &body);
                s.spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut lat = Vec::new();
                    while start.elapsed() < RUN_TIME {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let b = body(i);
                        loop {
                            let t = Instant::now();
                            let r = conn.request("POST", path, ct, b.as_bytes());
                            if r.status == 503 {
                                std::thread::sleep(Duration::from_millis(1));
                                continue;
                            }
                            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                            lat.push(t.elapsed().as_micros() as u64);
                            break;
                        }
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut all: Vec<u64> = lat.into_iter().flatten().collect();
    all.sort_unstable();
    Outcome {
        per_s: all.len() as f64 * per as f64 / secs,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
    }
}

/// The workloads: (name, module, path, content type, records per request, clients, body).
type Body = fn(u64) -> String;

fn workloads() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    u64,
    usize,
    Body,
)> {
    fn word(i: u64) -> String {
        format!("{{\"word\":\"w{}\"}}", i % 1000)
    }
    fn batch(i: u64) -> String {
        (0..100).map(|k| word(i * 100 + k) + "\n").collect()
    }
    fn post(i: u64) -> String {
        json!({"author": format!("a{}", i % ACCOUNTS as u64), "id": format!("p{i}"), "text": "hello", "time": i})
            .to_string()
    }
    let words_append = "/v1/modules/wordcount/depots/words/append?ack=append";
    let words_full = "/v1/modules/wordcount/depots/words/append?ack=full";
    let posts = "/v1/modules/social/depots/posts/append?ack=full";
    vec![
        (
            "words, ack=append, 1 client",
            "wordcount",
            words_append,
            "application/json",
            1,
            1,
            word,
        ),
        (
            "words, ack=append, 8 clients",
            "wordcount",
            words_append,
            "application/json",
            1,
            8,
            word,
        ),
        (
            "words, ack=full, 8 clients",
            "wordcount",
            words_full,
            "application/json",
            1,
            8,
            word,
        ),
        (
            "words, NDJSON ×100, ack=append, 4 clients",
            "wordcount",
            words_append,
            "application/x-ndjson",
            100,
            4,
            batch,
        ),
        (
            "social posts (fanout 10), ack=full, 8 clients",
            "social",
            posts,
            "application/json",
            1,
            8,
            post,
        ),
    ]
}

/// Deploys both modules through `host` and gives every social account its followers.
fn set_up(host: &Host) {
    for (m, q) in [("wordcount", "?partitions=4"), ("social", "?partitions=4")] {
        let r = host.deploy(m, &module_wasm(m), q);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let follows: Vec<serde_json::Value> = (0..ACCOUNTS)
        .flat_map(|a| {
            (1..=FANOUT).map(move |k| {
                json!({"follower": format!("a{}", (a + k) % ACCOUNTS), "followee": format!("a{a}")})
            })
        })
        .collect();
    for chunk in follows.chunks(500) {
        host.append_all("social", "follows", "?ack=full", chunk);
    }
}

fn owner(host: &Host, module: &str) -> Option<String> {
    let view = host.get("/v1/cluster").json();
    view["modules"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == module)?["owner"]
        .as_str()
        .map(str::to_string)
}

fn main() {
    let Some(cluster) = nats::NatsCluster::start(3) else {
        println!("## Cluster vs single node\n\nskipped: no `nats-server` on PATH");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let single = Host::start(&dir.path().join("single"), &[]);
    set_up(&single);
    let urls = cluster.urls();
    let timeout = OWNER_TIMEOUT_MS.to_string();
    let mut hosts: Vec<(String, Host)> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| {
            let args = [
                "--cluster",
                &urls,
                "--host-id",
                id,
                "--owner-timeout-ms",
                &timeout,
            ];
            (id.to_string(), Host::start(&dir.path().join(id), &args))
        })
        .collect();
    for (_, h) in &hosts {
        let alive = || {
            let v = h.get("/v1/cluster").json();
            let n = v["hosts"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|h| h["alive"] == true).count());
            (n == 3).then_some(())
        };
        eventually("three live hosts", alive);
    }
    set_up(&hosts[0].1);
    println!("## Cluster vs single node (3 hosts, 3 nats-server R3, one 2-core machine)\n");
    println!(
        "| workload | single node | cluster, to the owner | ratio | cluster, forwarded | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, module, path, ct, per, clients, body) in workloads() {
        let o = eventually("an owner", || owner(&hosts[0].1, module));
        let owner_host = &hosts.iter().find(|(id, _)| *id == o).unwrap().1;
        let other = &hosts.iter().find(|(id, _)| *id != o).unwrap().1;
        let s = run(&single.addr, path, ct, per, clients, body);
        let c = run(&owner_host.addr, path, ct, per, clients, body);
        let f = run(&other.addr, path, ct, per, clients, body);
        let cell = |x: &Outcome| {
            format!(
                "{:.0}/s (p50 {} µs, p99 {} µs)",
                x.per_s, x.p50_us, x.p99_us
            )
        };
        println!(
            "| {name} | {} | {} | {:.2} | {} | {:.2} |",
            cell(&s),
            cell(&c),
            c.per_s / s.per_s,
            cell(&f),
            f.per_s / s.per_s
        );
    }
    println!("\n### Failover: the owner of `wordcount` killed (`kill -9`) → appends acked again\n");
    println!("owner timeout {OWNER_TIMEOUT_MS} ms\n\n| run | until acked again | the claim (restore + start) |\n|---|---|---|");
    for run in 0..FAILOVER_RUNS {
        let o = eventually("an owner", || owner(&hosts[0].1, "wordcount"));
        let at = hosts.iter().position(|(id, _)| *id == o).unwrap();
        let (id, victim) = hosts.remove(at);
        let stopped = victim.stop_by_kill9();
        let killed = Instant::now();
        let survivor = &hosts[0].1;
        let path = "/v1/modules/wordcount/depots/words/append?ack=full";
        loop {
            let r =
                survivor.try_request("POST", path, "application/json", br#"{"word":"failover"}"#);
            if r.is_some_and(|r| r.status == 200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = killed.elapsed();
        let claim = hosts
            .iter()
            .map(|(_, h)| {
                h.get("/v1/cluster").json()["placement"]["last_claim_ms"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        println!("| {run} | {} ms | {claim} ms |", took.as_millis());
        hosts.push((id, Host::restart(stopped)));
        std::thread::sleep(Duration::from_millis(2 * OWNER_TIMEOUT_MS));
    }
}
