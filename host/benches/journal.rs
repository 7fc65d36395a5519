//! The group-commit journal (`host/src/journal`) against today's layout, in the same run:
//! 8 partition workers, each taking whatever its queue holds and making it durable before
//! answering, fed by single-record clients that wait for each answer (like `ack=append`
//! over HTTP, without HTTP). Today each partition commits its own redb file (one fsync per
//! partition batch); with the journal every worker appends its batch as one frame to the
//! shared journal and syncs, and workers syncing together share one fdatasync.
//! `cargo bench -p sluice --bench journal` (part of `make bench`).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};
use sluice::journal::{Journal, JournalConfig};

const PARTITIONS: usize = 8;
const RUN: Duration = Duration::from_secs(3);
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// One record to make durable, and where its answer goes.
type Request = (Vec<u8>, Sender<()>);

/// How a partition worker makes a batch durable.
enum Durable {
    Redb(Database, u64),
    Journal(Arc<Journal>, u64),
}

impl Durable {
    fn commit(&mut self, batch: &[Request]) {
        match self {
            Durable::Redb(db, next) => {
                let txn = db.begin_write().unwrap();
                {
                    let mut t = txn.open_table(LOG).unwrap();
                    for (record, _) in batch {
                        t.insert(*next, record.as_slice()).unwrap();
                        *next += 1;
                    }
                }
                txn.commit().unwrap();
            }
            Durable::Journal(j, stream) => {
                let mut frame = Vec::new();
                for (record, _) in batch {
                    frame.extend_from_slice(&(record.len() as u32).to_le_bytes());
                    frame.extend_from_slice(record);
                }
                j.append_durable(*stream, &frame).unwrap();
            }
        }
    }
}

fn worker(mut durable: Durable, rx: Receiver<Request>) -> u64 {
    let mut commits = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        durable.commit(&batch);
        commits += 1;
        for (_, answer) in batch {
            let _ = answer.send(());
        }
    }
    commits
}

struct Outcome {
    records_per_s: f64,
    commits: u64,
    p50_us: u64,
}

/// `clients` clients over [`PARTITIONS`] workers for [`RUN`].
fn run(clients: usize, make: impl Fn(usize) -> Durable) -> Outcome {
    let (txs, workers): (Vec<_>, Vec<_>) = (0..PARTITIONS)
        .map(|p| {
            let (tx, rx) = channel::<Request>();
            let d = make(p);
            (tx, std::thread::spawn(move || worker(d, rx)))
        })
        .unzip();
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let tx = txs[c % PARTITIONS].clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                let mut latencies = Vec::new();
                let record = format!("{{\"word\":\"w{c}\"}}").into_bytes();
                while began.elapsed() < RUN {
                    let t = Instant::now();
                    let (answer, done) = channel();
                    tx.send((record.clone(), answer)).unwrap();
                    done.recv().unwrap();
                    latencies.push(t.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    drop(txs);
    start.wait();
    let began = Instant::now();
    let mut latencies: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = began.elapsed().as_secs_f64();
    let commits = workers.into_iter().map(|w| w.join().unwrap()).sum();
    latencies.sort_unstable();
    Outcome {
        records_per_s: latencies.len() as f64 / elapsed,
        commits,
        p50_us: latencies.get(latencies.len() / 2).copied().unwrap_or(0),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("## Group commit: the journal vs a redb file per partition (`host/benches/journal.rs`, same run)\n");
    println!("{PARTITIONS} partition workers, each making its queued records durable in one commit before answering; single-record clients, each waiting for its answer; {} s per row.\n", RUN.as_secs());
    println!("| clients | redb file per partition: records/s (p50 µs, fsyncs/s) | shared journal: records/s (p50 µs, fsyncs/s) | journal ÷ redb |");
    println!("|---|---|---|---|");
    for clients in [1, 16, 64] {
        let dir = tempfile::tempdir().unwrap();
        let redb = run(clients, |p| {
            Durable::Redb(
                Database::create(dir.path().join(format!("p{p}.redb"))).unwrap(),
                0,
            )
        });
        let (journal, _) =
            Journal::open(&dir.path().join("journal"), JournalConfig::default()).unwrap();
        let journal = Arc::new(journal);
        let shared = run(clients, |p| {
            Durable::Journal(Arc::clone(&journal), p as u64)
        });
        let secs = RUN.as_secs_f64();
        println!(
            "| {clients} | {:.0} ({} µs, {:.0}) | {:.0} ({} µs, {:.0}) | {:.2} |",
            redb.records_per_s,
            redb.p50_us,
            redb.commits as f64 / secs,
            shared.records_per_s,
            shared.p50_us,
            journal.syncs() as f64 / secs,
            shared.records_per_s / redb.records_per_s,
        );
    }
}
