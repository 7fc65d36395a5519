//! Storage faults injected *below* redb (issue 13): a `StorageBackend` that keeps a file's
//! bytes as a disk would — what was synced survives a crash, what was written since may or
//! may not — and fails writes with ENOSPC, syncs with EIO, or tears a write in half, at a
//! seeded moment (or makes a sync durable and reports EIO anyway). Against it, the depot log's and the PState store's commits (the partition's
//! two commit points) must keep their promises:
//!
//! - an append that returned `Ok` is present after any crash, at its offsets, byte for byte;
//! - an append that returned `Err` is either wholly present or wholly absent (never a part),
//!   and both happen — which is why such an append is answered `outcome-unknown`, not
//!   "not stored";
//! - offsets stay dense; a store commit's PState writes and progress are both there or both
//!   not; a durable store commit that returned `Ok` survives.
//!
//! `FAULT_SEEDS=N` runs more seeds (default 200).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sluice::depot::log::DepotLog;
use sluice::partition::seams::{Commit, PartitionStore};
use sluice::pstate::engine::Table;
use sluice::pstate::PStateStore;
use sluice::storage::{DbFile, FileKind};
use sluice::value::Value;

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The write fails with "no space left", nothing written.
    Enospc,
    /// The sync fails with an I/O error before anything reached the disk.
    Eio,
    /// The sync makes everything durable, then reports an I/O error anyway (a device that
    /// wrote, then failed to confirm).
    EioAfterSync,
    /// Half of the write lands, then it fails.
    Torn,
}

/// One file's bytes as a disk keeps them.
#[derive(Debug, Default)]
struct Disk {
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// What a reader sees now.
    current: Vec<u8>,
    /// Writes since the last successful sync, in order (each may survive a crash or not).
    pending: Vec<(u64, Vec<u8>)>,
    /// Operations until the armed fault fires, and which.
    armed: Option<(u64, Fault)>,
    fired: bool,
}

impl Disk {
    /// The disk after a crash: the synced bytes plus a seeded choice of the pending writes.
    fn crash(&self, rng: &mut Rng) -> Disk {
        let mut image = self.durable.clone();
        for (offset, data) in &self.pending {
            if rng.below(2) == 0 {
                apply(&mut image, *offset, data);
            }
        }
        Disk {
            durable: image.clone(),
            current: image,
            ..Disk::default()
        }
    }

    /// Counts one operation; answers the fault if it fires now.
    fn tick(&mut self) -> Option<Fault> {
        let (n, f) = self.armed?;
        if n == 0 {
            self.armed = None;
            self.fired = true;
            return Some(f);
        }
        self.armed = Some((n - 1, f));
        None
    }
}

fn apply(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

#[derive(Debug, Clone)]
struct FaultyBackend(Arc<Mutex<Disk>>);

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.0.lock().unwrap();
        let end = offset as usize + out.len();
        if end > d.current.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&d.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.tick() == Some(Fault::Enospc) && len > d.current.len() as u64 {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        d.current.resize(len as usize, 0);
        // A length change is metadata the disk keeps once synced; model it as a write.
        let tail = d.current.len() as u64;
        d.pending.push((tail, Vec::new()));
        if (len as usize) < d.durable.len() {
            d.durable.truncate(len as usize);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        let fault = d.tick();
        if fault == Some(Fault::Eio) {
            return Err(std::io::Error::other("injected EIO on fsync"));
        }
        d.durable = d.current.clone();
        d.pending.clear();
        if fault == Some(Fault::EioAfterSync) {
            return Err(std::io::Error::other(
                "injected EIO after the data was synced",
            ));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        match d.tick() {
            Some(Fault::Enospc) => Err(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            Some(Fault::Torn) => {
                let half = &data[..data.len() / 2];
                apply(&mut d.current, offset, half);
                d.pending.push((offset, half.to_vec()));
                Err(std::io::Error::other("injected torn write"))
            }
            _ => {
                apply(&mut d.current, offset, data);
                d.pending.push((offset, data.to_vec()));
                Ok(())
            }
        }
    }
}

fn open_log(disk: &Arc<Mutex<Disk>>) -> DepotLog {
    DepotLog::from_file(
        DbFile::with_backend(
            Path::new("faulty/depot.redb"),
            FaultyBackend(Arc::clone(disk)),
            FileKind::DepotLog,
        )
        .expect("a crashed disk reopens"),
    )
}

fn open_store(disk: &Arc<Mutex<Disk>>) -> PStateStore {
    PStateStore::from_file(
        DbFile::with_backend(
            Path::new("faulty/pstate.redb"),
            FaultyBackend(Arc::clone(disk)),
            FileKind::PStateStore,
        )
        .expect("a crashed disk reopens"),
    )
}

fn arm(disk: &Arc<Mutex<Disk>>, rng: &mut Rng) {
    let kind = match rng.below(4) {
        0 => Fault::Enospc,
        1 => Fault::Eio,
        2 => Fault::EioAfterSync,
        _ => Fault::Torn,
    };
    let mut d = disk.lock().unwrap();
    d.armed = Some((rng.below(40), kind));
    d.fired = false;
}

/// Tallies over all seeds: failed appends found whole after the crash, and found absent.
#[derive(Default, Debug)]
struct Tally {
    unknown_present: u64,
    unknown_absent: u64,
    faults: u64,
}

fn depot_log_seed(seed: u64, tally: &mut Tally) {
    let mut rng = Rng(seed);
    let disk = Arc::new(Mutex::new(Disk::default()));
    let mut log = open_log(&disk);
    // Every record ever handed to an append: (bytes) → acked offset, or None if its append failed.
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut failed: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut next = HashMap::new();
    let mut id = 0u64;
    for round in 0..30 {
        let n = 1 + rng.below(4) as usize;
        let batch: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                id += 1;
                format!("s{seed}-r{id}-{}", "x".repeat(rng.below(300) as usize)).into_bytes()
            })
            .collect();
        if rng.below(3) == 0 {
            arm(&disk, &mut rng);
        }
        let records: Vec<(&str, &[u8])> = batch.iter().map(|b| ("d", b.as_slice())).collect();
        match log.append(&records, &[], &mut next) {
            Ok(offsets) => acked.extend(offsets.into_iter().zip(batch)),
            Err(_) => failed.push(batch),
        }
        let fired = {
            let mut d = disk.lock().unwrap();
            d.armed = None;
            std::mem::take(&mut d.fired)
        };
        if fired || rng.below(8) == 0 {
            // Crash and restart on what the disk kept.
            tally.faults += fired as u64;
            drop(log);
            let crashed = disk.lock().unwrap().crash(&mut rng);
            *disk.lock().unwrap() = crashed;
            log = open_log(&disk);
            next.clear();
            check_log(seed, round, &log, &mut acked, &mut failed, tally);
        }
    }
}

/// After a crash: every acked record is at its offset; each failed batch is whole or absent;
/// nothing else is stored. Failed batches found stored become acked (they are, now).
fn check_log(
    seed: u64,
    round: usize,
    log: &DepotLog,
    acked: &mut Vec<(u64, Vec<u8>)>,
    failed: &mut Vec<Vec<Vec<u8>>>,
    tally: &mut Tally,
) {
    let stored = log.read("d", 0, usize::MAX).expect("the log reads back");
    for (i, (o, _)) in stored.iter().enumerate() {
        assert_eq!(*o, i as u64, "seed {seed} round {round}: offsets dense");
    }
    let by_bytes: HashMap<&[u8], u64> = stored.iter().map(|(o, b)| (b.as_slice(), *o)).collect();
    for (o, b) in acked.iter() {
        assert_eq!(
            by_bytes.get(b.as_slice()),
            Some(o),
            "seed {seed} round {round}: an acked record is missing or moved"
        );
    }
    for batch in failed.drain(..) {
        let present: Vec<Option<u64>> = batch
            .iter()
            .map(|b| by_bytes.get(b.as_slice()).copied())
            .collect();
        if present.iter().all(Option::is_some) {
            tally.unknown_present += 1;
            acked.extend(present.into_iter().flatten().zip(batch));
        } else {
            assert!(
                present.iter().all(Option::is_none),
                "seed {seed} round {round}: a failed append is partly stored: {present:?}"
            );
            tally.unknown_absent += 1;
        }
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "seed {seed} round {round}: stored records that no append wrote"
    );
}

fn store_seed(seed: u64) {
    let mut rng = Rng(seed ^ 0x5555);
    let disk = Arc::new(Mutex::new(Disk::default()));
    let mut store = open_store(&disk);
    // The last commit made durable with `Ok`: it (or a later one) must survive.
    let mut durable_ok = 0u64;
    let mut i = 0u64;
    for round in 0..40 {
        i += 1;
        let mut c = Commit::default();
        c.writes.insert(
            ("p".into(), Table::Main, b"k".to_vec()),
            Some(Value::Integer(i.into())),
        );
        c.offsets.insert(("t".into(), "d".into()), i);
        c.position = i;
        if rng.below(3) == 0 {
            arm(&disk, &mut rng);
        }
        let durable = rng.below(2) == 0;
        if store.commit(&c, durable).is_ok() && durable {
            durable_ok = i;
        }
        let fired = {
            let mut d = disk.lock().unwrap();
            d.armed = None;
            std::mem::take(&mut d.fired)
        };
        if fired || rng.below(6) == 0 {
            drop(store);
            let crashed = disk.lock().unwrap().crash(&mut rng);
            *disk.lock().unwrap() = crashed;
            store = open_store(&disk);
            let snap = store.begin_read().unwrap();
            let value = store
                .get(&snap, "p", Table::Main, b"k")
                .unwrap()
                .map(|v| sluice::value::as_i64(&v).unwrap() as u64)
                .unwrap_or(0);
            let progress = store.progress().unwrap();
            let offset = progress
                .offsets
                .get(&("t".to_string(), "d".to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                value, offset,
                "seed {seed} round {round}: a commit split in two"
            );
            assert_eq!(
                progress.position, offset,
                "seed {seed} round {round}: position"
            );
            assert!(
                value >= durable_ok,
                "seed {seed} round {round}: durable commit {durable_ok} lost (found {value})"
            );
            i = value;
            durable_ok = value;
        }
    }
}

#[test]
fn commits_keep_their_promises_under_enospc_eio_and_torn_writes() {
    let seeds: u64 = std::env::var("FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut tally = Tally::default();
    for seed in 1..=seeds {
        depot_log_seed(seed, &mut tally);
        store_seed(seed);
    }
    eprintln!("{tally:?}");
    assert!(tally.faults > seeds / 2, "faults fired: {tally:?}");
    assert!(
        tally.unknown_present > 0 && tally.unknown_absent > 0,
        "a failed append can be stored or not ({tally:?}): hence `outcome-unknown`"
    );
}
