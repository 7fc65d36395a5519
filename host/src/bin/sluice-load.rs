//! `sluice-load`: an end-to-end load generator for the `social` module, over the real HTTP API.
//!
//! Starts a host itself (`--spawn`, the default: the `sluice` binary next to this one, a
//! temporary data dir, so it can read the host's RSS) or drives a running one (`--server`).
//! Deploys `social.wasm` fresh, generates `--users` accounts each following
//! `--follows-per-user` others picked by a Zipf law over popularity (so a few accounts have
//! most followers), optionally a celebrity with `--celebrity-followers` followers, loads the
//! follows as NDJSON batches, then posts from `--clients` keep-alive connections (authors
//! uniform, `ack=full`: each answer comes after the post reached every follower's timeline)
//! for at most `--duration-s` or `--posts`, at `--rate` posts/s or as fast as possible, while
//! `--query-clients` read random home timelines. The celebrity, if any, posts once as the
//! write phase starts. Reports posts/s, timeline deliveries/s, full-ack latency percentiles,
//! timeline query latency percentiles under the write load and the host's RSS, then checks a
//! sample of timelines against the generated graph.
//!
//! Every phase is bounded in count and time; the defaults finish in well under a minute.
//! `host/benches/social.rs` runs [`run`] next to a native baseline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use sluice::client::Client;

/// `TIMELINE_ENTRIES_MAX` of `modules/social`: what a verified timeline holds at most.
pub const TIMELINE_ENTRIES_MAX: u64 = 800;
/// Attempts of an NDJSON line refused by backpressure before the load generator gives up.
const LINE_ATTEMPTS_MAX: u32 = 50;
/// Timelines checked against the generated graph after the run.
const VERIFY_SAMPLE_USERS: usize = 200;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "sluice-load",
    about = "Load generator: the social module over the real HTTP API"
)]
pub struct LoadArgs {
    /// Drive this running host (http://HOST:PORT) instead of starting one.
    #[arg(long, conflicts_with = "spawn")]
    pub server: Option<String>,
    /// Start a host (the `sluice` binary next to this one) on a temporary data dir (default).
    #[arg(long)]
    pub spawn: bool,
    /// With --server: the host's process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The social module (default: target/wasm32-wasip2/release/social.wasm beside this binary).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Name to deploy the module under (must not exist; deleted at the end unless --keep).
    #[arg(long, default_value = "social-load")]
    pub name: String,
    /// Keep the deployed module (and, with --spawn, print its data dir) after the run.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Accounts, `u0` … (`u0` the most popular).
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Accounts each account follows (distinct, picked by the Zipf law).
    #[arg(long, default_value_t = 30)]
    pub follows_per_user: usize,
    /// Zipf exponent of the popularity of followees (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Followers of the account `celebrity`, which posts `--celebrity-posts` times as the write phase starts (0 = none).
    #[arg(long, default_value_t = 0)]
    pub celebrity_followers: usize,
    /// Posts of the celebrity, one after the other, each a `full` ack.
    #[arg(long, default_value_t = 1)]
    pub celebrity_posts: u64,
    /// Concurrent posting connections.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Posts per request (more than 1: an NDJSON batch).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// At most this many posts (besides the celebrity's).
    #[arg(long, default_value_t = 200_000)]
    pub posts: u64,
    /// The write phase stops sending after this long.
    #[arg(long, default_value_t = 15.0)]
    pub duration_s: f64,
    /// Target posts per second over all clients (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Connections reading random home timelines (limit 20) during the write phase.
    #[arg(long, default_value_t = 1)]
    pub query_clients: usize,
    /// Follow records per NDJSON request while loading the graph.
    #[arg(long, default_value_t = 2_000)]
    pub follow_batch: usize,
    /// Concurrent connections loading the graph.
    #[arg(long, default_value_t = 4)]
    pub follow_clients: usize,
    /// Seed of the generated graph and authors.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Extra arguments for `sluice serve` with --spawn (repeatable), e.g. --host-arg=--partition-queue-depth=10000.
    #[arg(long, allow_hyphen_values = true)]
    pub host_arg: Vec<String>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut micros: Vec<u64>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Self {
            count: micros.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub users: usize,
    pub follows: u64,
    pub top_followers: u64,
    pub follows_per_s: f64,
    pub posts: u64,
    pub deliveries: u64,
    pub write_s: f64,
    pub posts_per_s: f64,
    pub deliveries_per_s: f64,
    pub ack: Percentiles,
    pub query: Percentiles,
    /// The celebrity's post: followers reached and its full-ack latency.
    pub celebrity: Option<(u64, f64)>,
    pub retries_503: u64,
    pub rss_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub verified_timelines: usize,
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self, args: &LoadArgs) -> String {
        let mut s = String::new();
        let rate = if args.rate > 0.0 {
            format!("{} posts/s target", args.rate)
        } else {
            "as fast as possible".into()
        };
        s.push_str(&format!(
            "{} accounts, {} follows (Zipf {}; most-followed account: {} followers), {} partitions; \
             {} posting clients × {} post(s)/request, `ack=full`, {rate}; {} timeline-query client(s)\n\n",
            self.users, self.follows, args.zipf, self.top_followers, args.partitions,
            args.clients, args.batch, args.query_clients
        ));
        s.push_str("| measure | value |\n|---|---|\n");
        s.push_str(&format!(
            "| follows loaded (NDJSON, `ack=full`) | {:.0}/s |\n",
            self.follows_per_s
        ));
        s.push_str(&format!(
            "| posts | {} in {:.1} s = **{:.0} posts/s** |\n",
            self.posts, self.write_s, self.posts_per_s
        ));
        s.push_str(&format!(
            "| timeline deliveries | {} = **{:.0} deliveries/s** (mean fanout {:.1}) |\n",
            self.deliveries,
            self.deliveries_per_s,
            self.deliveries as f64 / self.posts.max(1) as f64
        ));
        s.push_str(&format!(
            "| full-ack latency per request p50 / p99 / p999 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |\n",
            self.ack.p50_ms, self.ack.p99_ms, self.ack.p999_ms, self.ack.max_ms
        ));
        s.push_str(&format!(
            "| timeline query (limit 20) during writes p50 / p99 / p999 ({} queries) | {:.2} / {:.2} / {:.2} ms |\n",
            self.query.count, self.query.p50_ms, self.query.p99_ms, self.query.p999_ms
        ));
        if let Some((n, ms)) = self.celebrity {
            s.push_str(&format!(
                "| celebrity post to {n} followers, full ack | {:.0} ms ({:.0} deliveries/s) |\n",
                ms,
                n as f64 / (ms / 1e3)
            ));
        }
        s.push_str(&format!("| 503 retries | {} |\n", self.retries_503));
        if let (Some(rss), Some(peak)) = (self.rss_mib, self.rss_peak_mib) {
            s.push_str(&format!(
                "| host RSS at the end / peak | {rss:.0} / {peak:.0} MiB |\n"
            ));
        }
        s.push_str(&format!(
            "| timelines verified against the graph | {} |\n",
            self.verified_timelines
        ));
        s
    }
}

/// splitmix64: deterministic, dependency-free randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn user(i: usize) -> String {
    format!("u{i}")
}

/// The generated follow graph: `followees[u]` are the accounts `u{u}` follows.
pub struct Graph {
    pub users: usize,
    pub followees: Vec<Vec<u32>>,
    /// Followers of `celebrity`: `u0`, `u1`, … then `fan0`, `fan1`, … beyond the users.
    pub celebrity_followers: usize,
}

impl Graph {
    pub fn generate(args: &LoadArgs) -> Graph {
        let n = args.users.max(2);
        let mut rng = Rng(args.seed);
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for r in 0..n {
            total += 1.0 / ((r + 1) as f64).powf(args.zipf);
            cdf.push(total);
        }
        let k = args.follows_per_user.min(n - 1);
        let followees = (0..n)
            .map(|u| {
                let mut mine: Vec<u32> = Vec::with_capacity(k);
                let mut attempts = 0;
                while mine.len() < k && attempts < k * 50 {
                    attempts += 1;
                    let x = rng.unit() * total;
                    let v = cdf.partition_point(|&c| c < x).min(n - 1);
                    if v != u && !mine.contains(&(v as u32)) {
                        mine.push(v as u32);
                    }
                }
                mine
            })
            .collect();
        Graph {
            users: n,
            followees,
            celebrity_followers: args.celebrity_followers,
        }
    }

    pub fn follows(&self) -> u64 {
        self.followees.iter().map(|f| f.len() as u64).sum::<u64>() + self.celebrity_followers as u64
    }

    /// Followers per account (the celebrity not included).
    pub fn follower_counts(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.users];
        for f in self.followees.iter().flatten() {
            c[*f as usize] += 1;
        }
        c
    }

    /// Every follow as (follower, followee).
    pub fn edges(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let regular = self
            .followees
            .iter()
            .enumerate()
            .flat_map(|(u, fs)| fs.iter().map(move |f| (user(u), user(*f as usize))));
        let fans = (0..self.celebrity_followers).map(move |i| {
            let follower = if i < self.users {
                user(i)
            } else {
                format!("fan{}", i - self.users)
            };
            (follower, "celebrity".to_string())
        });
        regular.chain(fans)
    }
}

pub fn post_line(author: &str, n: u64) -> String {
    json!({
        "author": author,
        "id": format!("p{n}"),
        "text": format!("post number {n} by {author}: a short line of text like a real post"),
        "time": n as i64,
    })
    .to_string()
}

fn client(server: &str) -> Result<Client, String> {
    Ok(Client::new(server)?.with_timeout(Duration::from_secs(300)))
}

/// Sends NDJSON lines with `ack=full`, re-sending lines refused by backpressure; returns each
/// line's `results` object and the number of re-sent lines.
fn append_lines(c: &mut Client, path: &str, lines: &[String]) -> Result<(Vec<Value>, u64), String> {
    let mut results = vec![Value::Null; lines.len()];
    let mut pending: Vec<usize> = (0..lines.len()).collect();
    let mut retries = 0;
    for _ in 0..LINE_ATTEMPTS_MAX {
        let body: String = pending.iter().map(|&i| lines[i].clone() + "\n").collect();
        let r = c
            .request("POST", path, "application/x-ndjson", body.as_bytes())
            .map_err(|e| format!("POST {path}: {e}"))?;
        if r.status == 503 {
            retries += pending.len() as u64;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if r.status != 200 {
            return Err(format!("POST {path}: {} {}", r.status, r.error_message()));
        }
        let answers = r.json()["results"].as_array().cloned().unwrap_or_default();
        if answers.len() != pending.len() {
            return Err(format!(
                "POST {path}: {} answers for {} lines",
                answers.len(),
                pending.len()
            ));
        }
        let mut again = Vec::new();
        for (&i, a) in pending.iter().zip(answers) {
            match a.get("error") {
                None => results[i] = a["results"].clone(),
                Some(e) if e["code"] == "queue-full" => again.push(i),
                Some(e) => return Err(format!("POST {path}: line {i}: {e}")),
            }
        }
        if again.is_empty() {
            return Ok((results, retries));
        }
        retries += again.len() as u64;
        pending = again;
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "POST {path}: lines still refused after {LINE_ATTEMPTS_MAX} attempts"
    ))
}

/// The host's resident set and its peak, in MiB, from `/proc/PID/status`.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs the whole workload against the host at `server` (`pid` for its RSS), deploying
/// `wasm` as `args.name`.
pub fn run(args: &LoadArgs, server: &str, pid: Option<u32>, wasm: &[u8]) -> Result<Report, String> {
    let base = format!("/v1/modules/{}", args.name);
    let mut admin = client(server)?;
    let r = admin
        .request(
            "PUT",
            &format!("{base}?partitions={}", args.partitions),
            "application/wasm",
            wasm,
        )
        .map_err(|e| format!("deploy: {e}"))?;
    if r.status != 201 {
        return Err(format!(
            "deploying `{}`: {} {} (pass --name to use another name)",
            args.name,
            r.status,
            r.error_message()
        ));
    }
    let graph = Graph::generate(args);
    let counts = graph.follower_counts();
    let mut report = Report {
        users: graph.users,
        follows: graph.follows(),
        top_followers: counts
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(graph.celebrity_followers as u64),
        ..Report::default()
    };

    // Phase 1: the follow graph.
    let follow_lines: Vec<String> = graph
        .edges()
        .map(|(a, b)| json!({"follower": a, "followee": b}).to_string())
        .collect();
    let follow_path = format!("{base}/depots/follows/append?ack=full");
    let next_batch = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let started = Instant::now();
    let batches: Vec<&[String]> = follow_lines.chunks(args.follow_batch.max(1)).collect();
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..args.follow_clients.max(1))
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    let mut c = client(server)?;
                    loop {
                        let b = next_batch.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(lines) = batches.get(b) else {
                            return Ok(());
                        };
                        let (_, r) = append_lines(&mut c, &follow_path, lines)?;
                        retries.fetch_add(r, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("follow loader")?;
        }
        Ok(())
    })?;
    report.follows_per_s = follow_lines.len() as f64 / started.elapsed().as_secs_f64();
    drop(follow_lines);

    // Phase 2: posts (and the celebrity's), with timeline queries alongside.
    let post_path = format!("{base}/depots/posts/append?ack=full");
    let query_path = format!("{base}/queries/timeline");
    let next_post = AtomicU64::new(0);
    let deliveries = AtomicU64::new(0);
    let posted = AtomicU64::new(0);
    let writers_done = AtomicBool::new(false);
    let posts_by_author: Vec<AtomicU64> = (0..graph.users).map(|_| AtomicU64::new(0)).collect();
    let ack_micros = Mutex::new(Vec::new());
    let query_micros = Mutex::new(Vec::new());
    let duration = Duration::from_secs_f64(args.duration_s);
    let clients = args.clients.max(1);
    let batch = args.batch.max(1) as u64;
    let interval = (args.rate > 0.0)
        .then(|| Duration::from_secs_f64(clients as f64 * batch as f64 / args.rate));
    let started = Instant::now();
    let celebrity = std::thread::scope(|s| -> Result<Option<(u64, f64)>, String> {
        let celebrity = (graph.celebrity_followers > 0).then(|| {
            s.spawn(|| -> Result<(u64, f64), String> {
                let mut c = client(server)?;
                let (mut n, mut ms) = (0, 0.0);
                for i in 0..args.celebrity_posts.max(1) {
                    let line = json!({"author": "celebrity", "id": format!("c{i}"), "text": "hello, everyone", "time": i}).to_string();
                    let t = Instant::now();
                    let r = c
                        .request("POST", &post_path, "application/json", line.as_bytes())
                        .map_err(|e| format!("celebrity post: {e}"))?;
                    if i == 0 {
                        ms = t.elapsed().as_secs_f64() * 1e3;
                    }
                    if r.status != 200 {
                        return Err(format!("celebrity post: {} {}", r.status, r.error_message()));
                    }
                    let got = r.json()["results"]["posts"].as_u64().unwrap_or(0);
                    deliveries.fetch_add(got, Ordering::Relaxed);
                    if i == 0 {
                        n = got;
                    }
                }
                Ok((n, ms))
            })
        });
        let writers: Vec<_> = (0..clients)
            .map(|w| {
                let (deliveries, posted, next_post, ack_micros, retries, posts_by_author) = (
                    &deliveries,
                    &posted,
                    &next_post,
                    &ack_micros,
                    &retries,
                    &posts_by_author,
                );
                let post_path = &post_path;
                s.spawn(move || -> Result<(), String> {
                    let mut c = client(server)?;
                    let mut rng = Rng(args.seed ^ (0x5eed_0000 + w as u64));
                    let mut mine = Vec::new();
                    let mut due = Instant::now();
                    while started.elapsed() < duration {
                        let first = next_post.fetch_add(batch, Ordering::Relaxed);
                        if first >= args.posts {
                            break;
                        }
                        let n = batch.min(args.posts - first);
                        if let Some(i) = interval {
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            due += i;
                        }
                        let authors: Vec<usize> = (0..n).map(|_| rng.below(graph.users)).collect();
                        let lines: Vec<String> = authors
                            .iter()
                            .zip(first..)
                            .map(|(&a, k)| post_line(&user(a), k + 1))
                            .collect();
                        let t = Instant::now();
                        let results = if n == 1 {
                            let mut tries = 0;
                            loop {
                                let r = c
                                    .request(
                                        "POST",
                                        post_path,
                                        "application/json",
                                        lines[0].as_bytes(),
                                    )
                                    .map_err(|e| format!("post: {e}"))?;
                                if r.status == 503 && tries < LINE_ATTEMPTS_MAX {
                                    tries += 1;
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                                if r.status != 200 {
                                    return Err(format!(
                                        "post: {} {}",
                                        r.status,
                                        r.error_message()
                                    ));
                                }
                                break vec![r.json()["results"].clone()];
                            }
                        } else {
                            let (r, re) = append_lines(&mut c, post_path, &lines)?;
                            retries.fetch_add(re, Ordering::Relaxed);
                            r
                        };
                        mine.push(t.elapsed().as_micros() as u64);
                        for r in &results {
                            deliveries
                                .fetch_add(r["posts"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        }
                        for a in authors {
                            posts_by_author[a].fetch_add(1, Ordering::Relaxed);
                        }
                        posted.fetch_add(n, Ordering::Relaxed);
                    }
                    ack_micros.lock().expect("poisoned").extend(mine);
                    Ok(())
                })
            })
            .collect();
        let readers: Vec<_> = (0..args.query_clients)
            .map(|q| {
                let (writers_done, query_micros, query_path) =
                    (&writers_done, &query_micros, &query_path);
                s.spawn(move || -> Result<(), String> {
                    let mut c = client(server)?;
                    let mut rng = Rng(args.seed ^ (0x9e4d_0000 + q as u64));
                    let mut mine = Vec::new();
                    while !writers_done.load(Ordering::Relaxed) {
                        let body = json!({"account": user(rng.below(graph.users)), "limit": 20})
                            .to_string();
                        let t = Instant::now();
                        let r = c
                            .request("POST", query_path, "application/json", body.as_bytes())
                            .map_err(|e| format!("timeline query: {e}"))?;
                        if r.status != 200 {
                            return Err(format!(
                                "timeline query: {} {}",
                                r.status,
                                r.error_message()
                            ));
                        }
                        mine.push(t.elapsed().as_micros() as u64);
                    }
                    query_micros.lock().expect("poisoned").extend(mine);
                    Ok(())
                })
            })
            .collect();
        let mut first_error = None;
        for w in writers {
            if let Err(e) = w.join().expect("writer") {
                first_error.get_or_insert(e);
            }
        }
        let celebrity = celebrity.map(|c| c.join().expect("celebrity")).transpose();
        writers_done.store(true, Ordering::Relaxed);
        for r in readers {
            if let Err(e) = r.join().expect("reader") {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => celebrity,
        }
    })?;
    report.write_s = started.elapsed().as_secs_f64();
    report.posts = posted.load(Ordering::Relaxed);
    report.deliveries = deliveries.load(Ordering::Relaxed);
    report.posts_per_s = report.posts as f64 / report.write_s;
    report.deliveries_per_s = report.deliveries as f64 / report.write_s;
    report.ack = Percentiles::of(ack_micros.into_inner().expect("poisoned"));
    report.query = Percentiles::of(query_micros.into_inner().expect("poisoned"));
    report.celebrity = celebrity;
    report.retries_503 = retries.load(Ordering::Relaxed);
    if let Some((rss, peak)) = pid.and_then(rss_mib) {
        report.rss_mib = Some(rss);
        report.rss_peak_mib = Some(peak);
    }

    // Check: a sample of timelines holds exactly what the graph and the posts made imply.
    let posts_by_author: Vec<u64> = posts_by_author
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let mut rng = Rng(args.seed ^ 0xc4ec);
    let select_path = format!("{base}/pstates/home-timelines/select");
    for _ in 0..VERIFY_SAMPLE_USERS.min(graph.users) {
        let u = rng.below(graph.users);
        let celebrity_post = if report.celebrity.is_some() && u < graph.celebrity_followers {
            args.celebrity_posts.max(1)
        } else {
            0
        };
        let expected = graph.followees[u]
            .iter()
            .map(|f| posts_by_author[*f as usize])
            .sum::<u64>()
            + celebrity_post;
        let r = admin
            .post_json(&select_path, &json!({"path": [{"key": user(u)}, "count"]}))
            .map_err(|e| format!("verify: {e}"))?;
        let got = r.json()["values"][0].as_u64().unwrap_or(u64::MAX);
        if got != expected.min(TIMELINE_ENTRIES_MAX) {
            return Err(format!(
                "verify: timeline of {} holds {got} entries, expected {}",
                user(u),
                expected.min(TIMELINE_ENTRIES_MAX)
            ));
        }
        report.verified_timelines += 1;
    }
    if !args.keep {
        let _ = admin.request("DELETE", &base, "application/json", b"");
    }
    Ok(report)
}

/// A host started by `--spawn`; killed (and its data dir removed) on drop.
struct Spawned {
    child: Child,
    server: String,
    data_dir: PathBuf,
    keep: bool,
}

impl Spawned {
    fn start(args: &LoadArgs) -> Result<Spawned, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let bin = exe.with_file_name("sluice");
        let data_dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
        std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let log = std::fs::File::create(data_dir.join("host.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.join("data"))
            .args(["--partition-queue-depth", "100000"])
            .args(&args.host_arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (build it with `cargo build --release -p sluice`)",
                    bin.display()
                )
            })?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let server = match line.trim().strip_prefix("sluice listening on ") {
            Some(s) => s.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the host did not start ({line:?}); see {}",
                    data_dir.join("host.log").display()
                ));
            }
        };
        Ok(Spawned {
            child,
            server,
            data_dir,
            keep: args.keep,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep {
            eprintln!("kept the host's data in {}", self.data_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn default_module() -> Option<PathBuf> {
    // target/release/sluice-load → target/wasm32-wasip2/release/social.wasm
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?;
    Some(target.join("wasm32-wasip2/release/social.wasm"))
}

fn read_module(args: &LoadArgs) -> Result<Vec<u8>, String> {
    let path = args
        .module
        .clone()
        .or_else(default_module)
        .ok_or("cannot locate social.wasm; pass --module")?;
    std::fs::read(&path).map_err(|e| {
        format!(
            "{}: {e}; build it with `make modules` or pass --module",
            Path::new(&path).display()
        )
    })
}

fn main() {
    let args = LoadArgs::parse();
    let result = read_module(&args).and_then(|wasm| match &args.server {
        Some(server) => run(&args, server, args.server_pid, &wasm),
        None => {
            let host = Spawned::start(&args)?;
            let pid = host.child.id();
            run(&args, &host.server, Some(pid), &wasm)
        }
    });
    match result {
        Ok(report) => print!("{}", report.markdown(&args)),
        Err(e) => {
            eprintln!("sluice-load: {e}");
            std::process::exit(1);
        }
    }
}
