//! Social benchmark: the `social` module over HTTP against the real binary (the `sluice-load`
//! workload: a Zipf follow graph plus a 100,000-follower celebrity, then posts with `ack=full`
//! from 16 clients while timelines are read) against the same workload as plain native Rust
//! over redb — follows, posts stored per author, fanout to every follower's timeline, timelines
//! trimmed to the newest 800 — with no WASM and no HTTP, in the same run. Run with
//! `make bench`; prints a Markdown table.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../src/bin/sluice-load.rs"]
mod load;

#[allow(dead_code)]
#[path = "common/goals.rs"]
mod goals;

use std::time::Instant;

use clap::Parser;
use harness::{module_wasm, Host};
use load::{Graph, LoadArgs, Rng, TIMELINE_ENTRIES_MAX};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

/// The workload, as `sluice-load` flags: one post per request from 16 clients (each answer
/// waits for its own fanout), with a 100,000-follower celebrity posting as the phase starts.
const WORKLOAD: &[&str] = &[
    "sluice-load",
    "--users",
    "10000",
    "--follows-per-user",
    "25",
    "--celebrity-followers",
    "100000",
    "--clients",
    "16",
    "--duration-s",
    "12",
];
/// The same graph (without the celebrity) and posts as NDJSON bodies of 25 from 8 clients.
const WORKLOAD_BATCHED: &[&str] = &[
    "sluice-load",
    "--name",
    "social-load-batched",
    "--users",
    "10000",
    "--follows-per-user",
    "25",
    "--clients",
    "8",
    "--batch",
    "25",
    "--duration-s",
    "12",
];
/// Follows per fsynced native transaction (`sluice-load` sends NDJSON bodies of this many).
const NATIVE_FOLLOWS_PER_TXN: usize = 2_000;
/// Posts per fsynced native log transaction: about what 16 concurrent clients put in one
/// group commit of a partition.
const NATIVE_POSTS_PER_TXN: usize = 16;

/// (followee, follower) → how many posts the followee had when the follow arrived.
const FOLLOWERS: TableDefinition<(&str, &str), u64> = TableDefinition::new("followers");
const FOLLOWING: TableDefinition<(&str, &str), ()> = TableDefinition::new("following");
/// (author, time, id) → post.
const POSTS: TableDefinition<(&str, i64, &str), &[u8]> = TableDefinition::new("posts");
const POST_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("post-counts");
/// (account, time, author, id) → post.
const TIMELINES: TableDefinition<(&str, i64, &str, &str), &[u8]> =
    TableDefinition::new("timelines");
const TIMELINE_SIZES: TableDefinition<&str, u64> = TableDefinition::new("timeline-sizes");

struct Native {
    follows_per_s: f64,
    posts_per_s: f64,
    deliveries_per_s: f64,
    celebrity_ms: f64,
    celebrity_deliveries: u64,
}

fn native_follow(txn: &WriteTransaction, follower: &str, followee: &str) {
    let mut following = txn.open_table(FOLLOWING).unwrap();
    let mut followers = txn.open_table(FOLLOWERS).unwrap();
    let counts = txn.open_table(POST_COUNTS).unwrap();
    following.insert((follower, followee), ()).unwrap();
    if followers.get((followee, follower)).unwrap().is_none() {
        let since = counts.get(followee).unwrap().map_or(0, |v| v.value());
        followers.insert((followee, follower), since).unwrap();
    }
}

/// Stores one post and delivers it to its author's followers' timelines; returns deliveries.
fn native_post(txn: &WriteTransaction, author: &str, id: &str, time: i64, post: &[u8]) -> u64 {
    let mut posts = txn.open_table(POSTS).unwrap();
    let mut counts = txn.open_table(POST_COUNTS).unwrap();
    if posts.get((author, time, id)).unwrap().is_some() {
        return 0;
    }
    let seq = counts.get(author).unwrap().map_or(0, |v| v.value());
    posts.insert((author, time, id), post).unwrap();
    counts.insert(author, seq + 1).unwrap();
    let followers = txn.open_table(FOLLOWERS).unwrap();
    let to: Vec<String> = followers
        .range((author, "")..)
        .unwrap()
        .map(|e| e.unwrap())
        .take_while(|(k, _)| k.value().0 == author)
        .filter(|(_, since)| since.value() <= seq)
        .map(|(k, _)| k.value().1.to_string())
        .collect();
    let mut timelines = txn.open_table(TIMELINES).unwrap();
    let mut sizes = txn.open_table(TIMELINE_SIZES).unwrap();
    for f in &to {
        timelines
            .insert((f.as_str(), time, author, id), post)
            .unwrap();
        let mut size = sizes.get(f.as_str()).unwrap().map_or(0, |v| v.value()) + 1;
        if size > TIMELINE_ENTRIES_MAX {
            let oldest: (String, i64, String, String) = {
                let (k, _) = timelines
                    .range((f.as_str(), i64::MIN, "", "")..)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap();
                let k = k.value();
                (k.0.to_string(), k.1, k.2.to_string(), k.3.to_string())
            };
            timelines
                .remove((
                    oldest.0.as_str(),
                    oldest.1,
                    oldest.2.as_str(),
                    oldest.3.as_str(),
                ))
                .unwrap();
            size -= 1;
        }
        sizes.insert(f.as_str(), size).unwrap();
    }
    to.len() as u64
}

/// Sluice's durability design, natively: every record is in an fsynced log before its effects
/// count as done, and the state's commits are made durable at most every
/// `NATIVE_STATE_FLUSH_MS` (a crash replays the log's tail).
struct NativeDb {
    log: Database,
    state: Database,
    next_offset: u64,
    last_durable: Instant,
}

/// Like `--pstate-flush-interval-ms`'s default.
const NATIVE_STATE_FLUSH_MS: u128 = 500;
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

impl NativeDb {
    /// Logs `records` durably, then applies them with `apply` in one state transaction.
    fn group(&mut self, records: &[Vec<u8>], apply: impl FnOnce(&WriteTransaction) -> u64) -> u64 {
        let mut txn = self.log.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for r in records {
                log.insert(self.next_offset, r.as_slice()).unwrap();
                self.next_offset += 1;
            }
        }
        txn.commit().unwrap();
        let mut txn = self.state.begin_write().unwrap();
        let durable = self.last_durable.elapsed().as_millis() >= NATIVE_STATE_FLUSH_MS;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .unwrap();
        let out = apply(&txn);
        txn.commit().unwrap();
        if durable {
            self.last_durable = Instant::now();
        }
        out
    }

    fn flush(&mut self) {
        let mut txn = self.state.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        txn.commit().unwrap();
        self.last_durable = Instant::now();
    }
}

/// The same workload in one thread over redb: the same graph, the celebrity's post, then
/// `posts` posts by uniformly random authors.
fn native(dir: &std::path::Path, args: &LoadArgs, posts: u64) -> Native {
    let mut db = NativeDb {
        log: Database::create(dir.join("native-log.redb")).unwrap(),
        state: Database::create(dir.join("native-state.redb")).unwrap(),
        next_offset: 0,
        last_durable: Instant::now(),
    };
    let graph = Graph::generate(args);
    let edges: Vec<(String, String)> = graph.edges().collect();
    let started = Instant::now();
    for chunk in edges.chunks(NATIVE_FOLLOWS_PER_TXN) {
        let records: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(a, b)| {
                serde_json::json!({"follower": a, "followee": b})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        db.group(&records, |txn| {
            for (a, b) in chunk {
                native_follow(txn, a, b);
            }
            0
        });
    }
    db.flush();
    let follows_per_s = edges.len() as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let line = serde_json::json!({"author": "celebrity", "id": "c0", "text": "hello, everyone", "time": 0})
        .to_string();
    let celebrity_deliveries = db.group(&[line.clone().into_bytes()], |txn| {
        native_post(txn, "celebrity", "c0", 0, line.as_bytes())
    });
    let celebrity_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut rng = Rng(args.seed ^ 0xa17);
    let mut deliveries = celebrity_deliveries;
    let mut n = 0u64;
    while n < posts {
        let group: Vec<(String, u64, String)> = (0..NATIVE_POSTS_PER_TXN.min((posts - n) as usize))
            .map(|_| {
                n += 1;
                let author = load::user(rng.below(graph.users));
                let line = load::post_line(&author, n);
                (author, n, line)
            })
            .collect();
        let records: Vec<Vec<u8>> = group
            .iter()
            .map(|(_, _, l)| l.clone().into_bytes())
            .collect();
        deliveries += db.group(&records, |txn| {
            group
                .iter()
                .map(|(author, n, line)| {
                    native_post(txn, author, &format!("p{n}"), *n as i64, line.as_bytes())
                })
                .sum()
        });
    }
    db.flush();
    let secs = started.elapsed().as_secs_f64();
    Native {
        follows_per_s,
        posts_per_s: (posts + 1) as f64 / secs,
        deliveries_per_s: deliveries as f64 / secs,
        celebrity_ms,
        celebrity_deliveries,
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", a / b)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let args = LoadArgs::parse_from(WORKLOAD);
    let batched_args = LoadArgs::parse_from(WORKLOAD_BATCHED);
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "100000"],
    );
    let server = format!("http://{}", host.addr);
    let wasm = module_wasm("social");
    let single = load::run(&args, &server, Some(host.pid()), &wasm)
        .unwrap_or_else(|e| panic!("load run failed: {e}"));
    let batched = load::run(&batched_args, &server, Some(host.pid()), &wasm)
        .unwrap_or_else(|e| panic!("batched load run failed: {e}"));
    drop(host);
    let native = native(dir.path(), &args, single.posts);

    println!(
        "## Social: the `social` module vs the same workload in native Rust over redb (same run)\n"
    );
    println!("### 1 post per request\n");
    print!("{}", single.markdown(&args));
    println!("\n### 25 posts per request (NDJSON)\n");
    print!("{}", batched.markdown(&batched_args));
    println!(
        "\nNative: one thread; {NATIVE_FOLLOWS_PER_TXN} follows / {NATIVE_POSTS_PER_TXN} posts per group: appended to an fsynced redb log, then applied in one state transaction made durable every {NATIVE_STATE_FLUSH_MS} ms (Sluice's durability design); the celebrity's post first, then as many posts as the first Sluice run took ({}).\n",
        single.posts
    );
    let (celebrity_n, celebrity_ms) = single.celebrity.unwrap_or((0, 0.0));
    println!("| measure | native Rust + redb (1 thread) | Sluice, 16 clients × 1 post | ratio | Sluice, 8 clients × 25 posts | ratio |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| follows loaded/s | {:.0} | {:.0} | {} | {:.0} | {} |",
        native.follows_per_s,
        single.follows_per_s,
        ratio(single.follows_per_s, native.follows_per_s),
        batched.follows_per_s,
        ratio(batched.follows_per_s, native.follows_per_s),
    );
    println!(
        "| posts/s (`ack=full`) | {:.0} | {:.0} | {} | {:.0} | {} |",
        native.posts_per_s,
        single.posts_per_s,
        ratio(single.posts_per_s, native.posts_per_s),
        batched.posts_per_s,
        ratio(batched.posts_per_s, native.posts_per_s),
    );
    println!(
        "| timeline deliveries/s | {:.0} | {:.0} | {} | {:.0} | {} |",
        native.deliveries_per_s,
        single.deliveries_per_s,
        ratio(single.deliveries_per_s, native.deliveries_per_s),
        batched.deliveries_per_s,
        ratio(batched.deliveries_per_s, native.deliveries_per_s),
    );
    println!(
        "| {celebrity_n}-follower post, until every timeline has it | {:.0} ms ({} deliveries) | {celebrity_ms:.0} ms | {} | | |",
        native.celebrity_ms,
        native.celebrity_deliveries,
        ratio(native.celebrity_ms, celebrity_ms),
    );
    record_goals(&native, &single, &batched);
}

/// The `social` rows of issue 15's goals table (`common/goals.rs`).
fn record_goals(native: &Native, single: &load::Report, batched: &load::Report) {
    use goals::Target;
    let baseline = format!(
        "native Rust + redb: {:.0} deliveries/s",
        native.deliveries_per_s
    );
    for (shape, r) in [
        ("16 clients × 1 post", single),
        ("8 clients × 25 posts", batched),
    ] {
        goals::record(
            &format!("`social` deliveries ≥ 1.0× native ({shape})"),
            &format!("{:.0} deliveries/s", r.deliveries_per_s),
            &baseline,
            r.deliveries_per_s,
            native.deliveries_per_s,
            Target::RatioAtLeast(1.0),
        );
        goals::record(
            &format!("timeline query p99 < 5 ms during the writes ({shape})"),
            &format!("{:.2} ms (p50 {:.2})", r.query.p99_ms, r.query.p50_ms),
            "",
            r.query.p99_ms,
            0.0,
            Target::Below(5.0),
        );
        goals::record(
            &format!("`full`-ack p99 reported ({shape})"),
            &format!("{:.1} ms (p50 {:.1})", r.ack.p99_ms, r.ack.p50_ms),
            "",
            r.ack.p99_ms,
            0.0,
            Target::Report,
        );
    }
}
