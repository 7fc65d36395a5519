//! Memory benchmark (issue 13): the host's peak RSS on the `social` module with one
//! 100,000-follower account posting 20 and then 50 times (every post a `full` ack, fanned out
//! to every follower's timeline), with the default redb cache budget (`--cache-mb 256`, split
//! over the open partition files) against the same run with a budget as large as redb's old
//! default (1 GiB per file, 16 files: `--cache-mb 16384`) — the baseline, in the same run.
//! Run with `make bench`; prints a Markdown table. Peak RSS is the kernel's `VmHWM`.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../src/bin/sluice-load.rs"]
mod load;

use clap::Parser;
use harness::{module_wasm, Host};
use load::LoadArgs;

fn workload(posts: u64) -> LoadArgs {
    let posts = posts.to_string();
    LoadArgs::parse_from([
        "sluice-load",
        "--users",
        "2000",
        "--follows-per-user",
        "10",
        "--celebrity-followers",
        "100000",
        "--celebrity-posts",
        posts.as_str(),
        "--clients",
        "2",
        "--posts",
        "200",
        "--duration-s",
        "3",
    ])
}

/// Peak RSS (MiB) of a fresh host with `cache_mb` after the workload with `posts` celebrity posts.
fn peak_rss(cache_mb: &str, posts: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "100000", "--cache-mb", cache_mb],
    );
    let server = format!("http://{}", host.addr);
    let before = load::rss_mib(host.pid()).map_or(0.0, |(r, _)| r);
    let report = load::run(
        &workload(posts),
        &server,
        Some(host.pid()),
        &module_wasm("social"),
    )
    .unwrap_or_else(|e| panic!("load run failed: {e}"));
    assert!(report.verified_timelines > 0);
    (before, report.rss_peak_mib.unwrap_or(0.0))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("## Memory: peak host RSS, social module, one 100,000-follower account\n");
    println!("| celebrity posts | RSS at start | peak RSS, `--cache-mb 256` (default) | peak RSS, `--cache-mb 16384` (≈ redb's 1 GiB per file before) | ratio |");
    println!("|---|---|---|---|---|");
    // 50 posts are 5 million timeline deliveries: the baseline runs only the 20-post case.
    let (start, unbounded) = peak_rss("16384", 20);
    for posts in [20, 50] {
        let (start, bounded) = if posts == 20 {
            let (s, b) = peak_rss("256", posts);
            (s.max(start), b)
        } else {
            peak_rss("256", posts)
        };
        let baseline = if posts == 20 {
            format!("{unbounded:.0} MiB")
        } else {
            "—".into()
        };
        let ratio = if posts == 20 {
            format!("{:.2}", bounded / unbounded.max(1.0))
        } else {
            String::new()
        };
        println!("| {posts} | {start:.0} MiB | {bounded:.0} MiB | {baseline} | {ratio} |");
    }
}
