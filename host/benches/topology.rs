//! Topology benchmark: records/s through the `sentences` stream topology (split + one hop per
//! word + a PState increment on the word's partition) and through `bank` transfers (a
//! microbatch: read balance, debit, history push, hop, credit, history push, committed
//! atomically on all partitions), over HTTP against the real binary — against the same logic as
//! plain native Rust over redb, with the same records per fsynced transaction, in the same run.
//! Run with `make bench`; prints a Markdown table.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/goals.rs"]
mod goals;

use std::collections::HashMap;
use std::time::Instant;

use harness::{module_wasm, Host};
use redb::{Database, Durability, ReadableTable, TableDefinition};

const SENTENCES: usize = 20_000;
const TRANSFERS: usize = 20_000;
const ACCOUNTS: usize = 1_000;
const BATCH: usize = 500;
const CLIENTS: usize = 4;
const WORDS: &[&str] = &[
    "the", "cat", "and", "hat", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
    "sluice", "stream", "event", "log", "state", "index", "query", "batch",
];

fn sentence(i: usize) -> String {
    (0..8)
        .map(|k| WORDS[(i * 7 + k * 13) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn transfer(i: usize) -> (String, String, i64) {
    (
        format!("a{}", i % ACCOUNTS),
        format!("a{}", (i * 31 + 7) % ACCOUNTS),
        1 + (i % 50) as i64,
    )
}

fn drive(host: &Host, path: &str, n: usize, line: &(dyn Fn(usize) -> String + Sync)) -> f64 {
    host.drive_ndjson(path, n, BATCH, CLIENTS, line)
}

const LOG: TableDefinition<u64, &str> = TableDefinition::new("log");
const COUNTS: TableDefinition<&str, i64> = TableDefinition::new("counts");
const BALANCES: TableDefinition<&str, i64> = TableDefinition::new("balances");
const HISTORY: TableDefinition<(&str, u64), &str> = TableDefinition::new("history");

/// The sentences logic in plain Rust over redb: log the sentence, count its words.
fn native_sentences(dir: &std::path::Path) -> f64 {
    let db = Database::create(dir.join("native-sentences.redb")).unwrap();
    let start = Instant::now();
    for b in 0..SENTENCES.div_ceil(BATCH) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let mut counts = txn.open_table(COUNTS).unwrap();
            for i in b * BATCH..((b + 1) * BATCH).min(SENTENCES) {
                let s = sentence(i);
                log.insert(i as u64, s.as_str()).unwrap();
                for w in s.split_whitespace() {
                    let n = counts.get(w).unwrap().map_or(0, |v| v.value());
                    counts.insert(w, n + 1).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
    SENTENCES as f64 / start.elapsed().as_secs_f64()
}

/// The bank's transfer logic in plain Rust over redb.
fn native_bank(dir: &std::path::Path) -> f64 {
    let db = Database::create(dir.join("native-bank.redb")).unwrap();
    {
        let txn = db.begin_write().unwrap();
        {
            let mut bal = txn.open_table(BALANCES).unwrap();
            for a in 0..ACCOUNTS {
                bal.insert(format!("a{a}").as_str(), 1_000_000).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let mut seq: HashMap<String, u64> = HashMap::new();
    let start = Instant::now();
    for b in 0..TRANSFERS.div_ceil(BATCH) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut bal = txn.open_table(BALANCES).unwrap();
            let mut hist = txn.open_table(HISTORY).unwrap();
            for i in b * BATCH..((b + 1) * BATCH).min(TRANSFERS) {
                let (from, to, amount) = transfer(i);
                let fb = bal.get(from.as_str()).unwrap().map_or(0, |v| v.value());
                let mut push = |acct: &str, entry: String| {
                    let n = seq.entry(acct.to_string()).or_insert(0);
                    hist.insert((acct, *n), entry.as_str()).unwrap();
                    *n += 1;
                };
                if fb < amount {
                    push(&from, format!("refused t{i}"));
                    continue;
                }
                bal.insert(from.as_str(), fb - amount).unwrap();
                push(&from, format!("debit t{i} {amount}"));
                let tb = bal.get(to.as_str()).unwrap().map_or(0, |v| v.value());
                bal.insert(to.as_str(), tb + amount).unwrap();
                push(&to, format!("credit t{i} {amount}"));
            }
        }
        txn.commit().unwrap();
    }
    TRANSFERS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "100000"],
    );
    for m in ["wordcount", "bank"] {
        let r = host.deploy(m, &module_wasm(m), "");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let sentences = drive(
        &host,
        "/v1/modules/wordcount/depots/sentences/append?ack=full",
        SENTENCES,
        &|i| format!("{{\"text\":\"{}\"}}", sentence(i)),
    );
    let deposits = drive(
        &host,
        "/v1/modules/bank/depots/deposits/append?ack=full",
        ACCOUNTS,
        &|a| format!("{{\"account\":\"a{a}\",\"amount\":1000000}}"),
    );
    let transfers = drive(
        &host,
        "/v1/modules/bank/depots/transfers/append?ack=full",
        TRANSFERS,
        &|i| {
            let (from, to, amount) = transfer(i);
            format!("{{\"id\":\"t{i}\",\"from\":\"{from}\",\"to\":\"{to}\",\"amount\":{amount}}}")
        },
    );
    let _ = deposits;
    let native_s = native_sentences(dir.path());
    let native_b = native_bank(dir.path());
    println!("## Topologies vs the same logic in native Rust over redb (same run)\n");
    println!("{CLIENTS} clients, NDJSON bodies of {BATCH} records, `ack=full` (answered after every hop / the batch committed); native: one thread, {BATCH} records per fsynced redb transaction.\n");
    println!("| workload | Sluice records/s | native Rust + redb records/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| `sentences` (8 words each: 8 hops, 8 increments) | {sentences:.0} ({:.0} hop deliveries/s) | {native_s:.0} | {:.2} |",
        sentences * 8.0,
        sentences / native_s
    );
    println!("| `bank` transfers (microbatch, debit + hop + credit) | {transfers:.0} | {native_b:.0} | {:.2} |", transfers / native_b);
    for (what, figure, native) in [
        ("`sentences` ≥ 0.5× native", sentences, native_s),
        ("`bank` transfers ≥ 0.5× native", transfers, native_b),
    ] {
        goals::record(
            what,
            &format!("{figure:.0} records/s"),
            &format!("native Rust + redb: {native:.0}"),
            figure,
            native,
            goals::Target::RatioAtLeast(0.5),
        );
    }
}
