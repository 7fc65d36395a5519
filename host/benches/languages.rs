//! Modules in three languages on the same work: the `wordcount` conformance module built with
//! the Rust, Python and JavaScript SDKs, deployed side by side on one real host (release
//! binary), driven with the same records in the same run. Prints, per language: component
//! size, first-deploy time (compile, `define`) and the host's RSS growth, then `words` and
//! `sentences` records/s with `full` acks and the guest time per handler call (from
//! `sluice_guest_call_duration_seconds`), each as a ratio to Rust. Run with `make bench`.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

use std::time::Instant;

use harness::{module_wasm, Host};

const WORDS: usize = 20_000;
const SENTENCES: usize = 2_000;
const BATCH: usize = 500;
const CLIENTS: usize = 4;
const VOCABULARY: usize = 1_000;

const LANGUAGES: &[(&str, &str, &str)] = &[
    ("Rust", "wordcount", "wc-rust"),
    ("Python", "wordcount_py", "wc-py"),
    ("JavaScript", "wordcount_js", "wc-js"),
];

fn word(i: usize) -> String {
    format!("w{}", (i * 7919) % VOCABULARY)
}

fn sentence(i: usize) -> String {
    (0..8)
        .map(|k| word(i * 8 + k))
        .collect::<Vec<_>>()
        .join(" ")
}

fn drive(host: &Host, path: &str, n: usize, line: &(dyn Fn(usize) -> String + Sync)) -> f64 {
    host.drive_ndjson(path, n, BATCH, CLIENTS, line)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Sum and count of the `handle` calls' durations of `module`, from `/metrics`.
fn handle_seconds(host: &Host, module: &str) -> (f64, f64) {
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    let series = |suffix: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("sluice_guest_call_duration_seconds_{suffix}{{")))
            .filter(|l| l.contains(&format!("module=\"{module}\"")) && l.contains("handle"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (series("sum"), series("count"))
}

struct Row {
    language: &'static str,
    size_mb: f64,
    deploy_s: f64,
    rss_mib: f64,
    words_per_s: f64,
    sentences_per_s: f64,
    guest_us: f64,
}

fn measure(host: &Host, language: &'static str, wasm: &str, name: &str) -> Row {
    let bytes = module_wasm(wasm);
    let before = rss_mib(host.pid());
    let start = Instant::now();
    let r = host.deploy(name, &bytes, "?partitions=4");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let deploy_s = start.elapsed().as_secs_f64();
    let rss = rss_mib(host.pid()) - before;
    // Warm every partition's instance before timing.
    drive(
        host,
        &format!("/v1/modules/{name}/depots/words/append"),
        200,
        &|i| format!("{{\"word\": \"warm{i}\"}}"),
    );
    let (s0, c0) = handle_seconds(host, name);
    let words_per_s = drive(
        host,
        &format!("/v1/modules/{name}/depots/words/append"),
        WORDS,
        &|i| format!("{{\"word\": \"{}\"}}", word(i)),
    );
    let sentences_per_s = drive(
        host,
        &format!("/v1/modules/{name}/depots/sentences/append"),
        SENTENCES,
        &|i| format!("{{\"text\": \"{}\"}}", sentence(i)),
    );
    let (s1, c1) = handle_seconds(host, name);
    Row {
        language,
        size_mb: bytes.len() as f64 / 1e6,
        deploy_s,
        rss_mib: rss,
        words_per_s,
        sentences_per_s,
        guest_us: (s1 - s0) / (c1 - c0).max(1.0) * 1e6,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let rows: Vec<Row> = LANGUAGES
        .iter()
        .map(|(language, wasm, name)| measure(&host, language, wasm, name))
        .collect();
    // Every language counted the same words.
    for (_, _, name) in LANGUAGES {
        let r = host.select(name, "counts", serde_json::json!([{"key": word(0)}]));
        assert_eq!(
            r,
            host.select("wc-rust", "counts", serde_json::json!([{"key": word(0)}]))
        );
    }
    let rust = &rows[0];
    println!("## Languages: wordcount in Rust, Python and JavaScript (same host, same run)\n");
    println!(
        "{WORDS} `words` and {SENTENCES} `sentences` (8 words each, one hop per word) records, NDJSON bodies of {BATCH}, {CLIENTS} clients, `full` acks, 4 partitions; first deploy compiles (no cache).\n"
    );
    println!("| language | .wasm MB | first deploy s | host RSS +MiB | words/s | × Rust | sentences/s | × Rust | guest µs/call | × Rust |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} |",
            r.language,
            r.size_mb,
            r.deploy_s,
            r.rss_mib,
            r.words_per_s,
            r.words_per_s / rust.words_per_s,
            r.sentences_per_s,
            r.sentences_per_s / rust.sentences_per_s,
            r.guest_us,
            r.guest_us / rust.guest_us,
        );
    }
}
