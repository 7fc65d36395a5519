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

/// Peak RSS (MiB) at start and at the end of a fresh host with `cache_mb` after the workload
/// with `posts` celebrity posts; the data directory is kept (with the module) for a restart.
fn peak_rss(cache_mb: &str, posts: u64) -> (f64, f64, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "100000", "--cache-mb", cache_mb],
    );
    let server = format!("http://{}", host.addr);
    let before = load::rss_mib(host.pid()).map_or(0.0, |(r, _)| r);
    let mut args = workload(posts);
    args.keep = true;
    let report = load::run(&args, &server, Some(host.pid()), &module_wasm("social"))
        .unwrap_or_else(|e| panic!("load run failed: {e}"));
    assert!(report.verified_timelines > 0);
    host.stop();
    (before, report.rss_peak_mib.unwrap_or(0.0), dir)
}

/// Milliseconds from starting a host on `data` until `/health/ready` answers 200.
fn startup_ms(data: &std::path::Path, verify: bool) -> f64 {
    let started = std::time::Instant::now();
    let flag = if verify { "true" } else { "false" };
    let host = Host::start(data, &["--verify-on-open", flag]);
    while host.get("/health/ready").status != 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    host.stop();
    ms
}

fn dir_mib(dir: &std::path::Path) -> f64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total as f64 / (1 << 20) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("## Memory: peak host RSS, social module, one 100,000-follower account\n");
    println!("| celebrity posts | RSS at start | peak RSS, `--cache-mb 256` (default) | peak RSS, `--cache-mb 16384` (≈ redb's 1 GiB per file before) | ratio |");
    println!("|---|---|---|---|---|");
    // 50 posts are 5 million timeline deliveries: the baseline runs only the 20-post case.
    let (_, unbounded, _) = peak_rss("16384", 20);
    let (start, bounded, _) = peak_rss("256", 20);
    println!(
        "| 20 | {start:.0} MiB | {bounded:.0} MiB | {unbounded:.0} MiB | {:.2} |",
        bounded / unbounded.max(1.0)
    );
    let (start, bounded, dir) = peak_rss("256", 50);
    println!("| 50 | {start:.0} MiB | {bounded:.0} MiB | — | |");
    // What verifying every page checksum at start costs, on the 50-post data directory.
    let data = dir.path().join("data");
    let (on, off) = (startup_ms(&data, true), startup_ms(&data, false));
    println!("\n## Start-up: verifying every page at open\n");
    println!("| data directory | start until ready, `--verify-on-open true` (default) | `false` | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} MiB (the 50-post run) | {on:.0} ms | {off:.0} ms | {:.2} |",
        dir_mib(&data),
        on / off.max(1.0)
    );
}
