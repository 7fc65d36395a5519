//! `sluice check DATA_DIR`: verifies a stopped host's data directory without changing it.
//!
//! For every module directory: its manifest; for every partition, both files open read-only,
//! carry this format's header naming that partition, share one lineage; every depot record
//! and PState entry matches its seal; the store's processed offsets are within the log and its
//! hop outbox within its counters (what recovery also refuses). A redb panic on a damaged
//! file is caught and reported. The result lists every problem, naming the file.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use redb::{ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::header::{self, FileKind, Found, Header, FORMAT_VERSION};
use super::seal::{show_key, unseal};
use super::{DEPOT_FILE, STORE_FILE};

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    /// Depot records and PState entries whose seals were verified.
    pub entries: u64,
    /// Every problem, each naming its file.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every module under `data_dir/modules`.
pub fn check_data_dir(data_dir: &Path) -> Report {
    let mut report = Report::default();
    let modules = data_dir.join("modules");
    let entries = match std::fs::read_dir(&modules) {
        Ok(e) => e,
        Err(e) => {
            report.problems.push(format!("{}: {e}", modules.display()));
            return report;
        }
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        if dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".tmp"))
        {
            continue;
        }
        check_module(&dir, &mut report);
    }
    report
}

fn check_module(dir: &Path, report: &mut Report) {
    let file = dir.join("module.json");
    let manifest: serde_json::Value = match std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(format!("{}: {e}", file.display()));
            return;
        }
    };
    let (Some(name), Some(partitions)) =
        (manifest["name"].as_str(), manifest["partitions"].as_u64())
    else {
        report
            .problems
            .push(format!("{}: no `name` or `partitions`", file.display()));
        return;
    };
    let wasm = dir.join(manifest["wasm"].as_str().unwrap_or("module.wasm"));
    if !wasm.is_file() {
        report.problems.push(format!("{}: missing", wasm.display()));
    }
    for p in 0..partitions as u32 {
        let pdir = dir.join(format!("p{p}"));
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| check_partition(&pdir, name, p, report)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => report.problems.push(problem),
            Err(panic) => report.problems.push(format!(
                "{}: redb panicked reading it: {}",
                pdir.display(),
                crate::partition::worker::panic_message(&panic)
            )),
        }
    }
}

/// One opened file of a partition.
struct Opened {
    path: PathBuf,
    db: ReadOnlyDatabase,
    header: Header,
}

fn open(path: &Path, kind: FileKind, module: &str, partition: u32) -> Result<Opened, String> {
    let show = path.display();
    match std::fs::metadata(path) {
        Err(e) => return Err(format!("{show}: {e}")),
        Ok(m) if m.len() == 0 => return Err(format!("{show}: empty (0 bytes)")),
        Ok(_) => {}
    }
    let db = ReadOnlyDatabase::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            format!("{show}: in use (stop the host before checking)")
        }
        redb::DatabaseError::RepairAborted => {
            format!("{show}: not shut down cleanly (start the host once to recover it)")
        }
        e => format!("{show}: damaged or not a redb file: {e}"),
    })?;
    let header = match header::read(&db).map_err(|e| format!("{show}: {e}"))? {
        Found::Header(h) if h.format == FORMAT_VERSION => h,
        Found::Header(h) => {
            return Err(format!(
                "{show}: on-disk format {}, this host reads format {FORMAT_VERSION}",
                h.format
            ))
        }
        other => return Err(format!("{show}: no usable Sluice header ({other:?})")),
    };
    if header.kind != kind || header.module != module || header.partition != partition {
        return Err(format!(
            "{show}: is the {} of module `{}` partition {}, expected the {} of module `{module}` partition {partition}",
            header.kind.name(),
            header.module,
            header.partition,
            kind.name()
        ));
    }
    Ok(Opened {
        path: path.to_path_buf(),
        db,
        header,
    })
}

fn check_partition(dir: &Path, module: &str, p: u32, report: &mut Report) -> Result<(), String> {
    let log = open(&dir.join(DEPOT_FILE), FileKind::DepotLog, module, p);
    let store = open(&dir.join(STORE_FILE), FileKind::PStateStore, module, p);
    report.files += 2;
    let (log, store) = match (log, store) {
        (Ok(l), Ok(s)) => (l, s),
        (l, s) => {
            for e in [l.err(), s.err()].into_iter().flatten() {
                report.problems.push(e);
            }
            return Ok(());
        }
    };
    if log.header.lineage != store.header.lineage {
        report.problems.push(format!(
            "{} and {}: not the two files of one partition (lineages {} and {})",
            log.path.display(),
            store.path.display(),
            log.header.lineage,
            store.header.lineage
        ));
    }
    let ends = verify_seals(&log, report)?;
    verify_seals(&store, report)?;
    let txn = store
        .db
        .begin_read()
        .map_err(|e| format!("{}: {e}", store.path.display()))?;
    let progress = crate::partition::progress::read_progress(&txn)
        .map_err(|e| format!("{}: {e}", store.path.display()))?;
    for ((topology, depot), processed) in &progress.offsets {
        let end = ends.get(depot).copied().unwrap_or(0);
        if *processed > end {
            report.problems.push(format!(
                "{}: topology `{topology}` processed depot `{depot}` up to offset {processed}, but {} ends at {end}: acked records are lost",
                store.path.display(),
                log.path.display()
            ));
        }
    }
    for (target, seq, _) in &progress.outbox {
        let next = progress.hops_next.get(target).copied().unwrap_or(0);
        if *seq >= next {
            report.problems.push(format!(
                "{}: the hop outbox holds seq {seq} to partition {target} past its counter {next}",
                store.path.display()
            ));
        }
    }
    Ok(())
}

/// Verifies every sealed value of a file; answers each depot table's end offset.
fn verify_seals(
    f: &Opened,
    report: &mut Report,
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let show = f.path.display();
    let err = |e: &dyn std::fmt::Display| format!("{show}: {e}");
    let txn = f.db.begin_read().map_err(|e| err(&e))?;
    let mut ends = std::collections::BTreeMap::new();
    let names: Vec<String> = txn
        .list_tables()
        .map_err(|e| err(&e))?
        .map(|t| t.name().to_string())
        .collect();
    for name in names {
        if let Some(depot) = name.strip_prefix("depot/") {
            let table = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(&name))
                .map_err(|e| err(&e))?;
            // Retention trimmed the records below `start`; `end` outlives them.
            let (start, trimmed_end) =
                crate::depot::log::bounds(&txn, depot).map_err(|e| err(&e))?;
            let mut expected = start;
            for item in table.iter().map_err(|e| err(&e))? {
                let (k, v) = item.map_err(|e| err(&e))?;
                let offset = k.value();
                report.entries += 1;
                if offset != expected {
                    report.problems.push(format!(
                        "{show}: table `{name}` jumps from offset {expected} to {offset}"
                    ));
                }
                expected = offset + 1;
                if let Err(e) = unseal(&name, &offset.to_be_bytes(), v.value()) {
                    report
                        .problems
                        .push(format!("{show}: table `{name}`, offset {offset}: {e}"));
                }
            }
            ends.insert(depot.to_string(), expected.max(trimmed_end));
        } else if name.starts_with("pstate/") {
            let table = txn
                .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| err(&e))?;
            for item in table.iter().map_err(|e| err(&e))? {
                let (k, v) = item.map_err(|e| err(&e))?;
                report.entries += 1;
                if let Err(e) = unseal(&name, k.value(), v.value()) {
                    report.problems.push(format!(
                        "{show}: table `{name}`, key {}: {e}",
                        show_key(k.value())
                    ));
                }
            }
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{create_partition, open_partition, StorageOptions};

    #[test]
    fn a_clean_partition_passes_and_a_flipped_record_is_named() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("modules/m");
        let opts = StorageOptions::default();
        create_partition(&dir.join("p0"), "m", 0, &opts).unwrap();
        std::fs::write(
            dir.join("module.json"),
            r#"{"name":"m","version":1,"partitions":1}"#,
        )
        .unwrap();
        std::fs::write(dir.join("module.wasm"), b"").unwrap();
        {
            let (log, _) = open_partition(&dir.join("p0"), "m", 0, &opts).unwrap();
            let payload = b"record-payload-0123456789";
            log.append(
                &[("d", payload), ("d", payload)],
                &[],
                &mut Default::default(),
            )
            .unwrap();
        }
        let report = check_data_dir(data.path());
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!((report.files, report.entries), (2, 2));

        let path = dir.join("p0").join(DEPOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let needle = b"record-payload-0123456789";
        let mut flipped = 0;
        for i in 0..bytes.len() - needle.len() {
            if &bytes[i..i + needle.len()] == needle {
                bytes[i + 3] ^= 0x01;
                flipped += 1;
            }
        }
        assert!(flipped > 0);
        std::fs::write(&path, bytes).unwrap();
        let report = check_data_dir(data.path());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("depot.redb") && p.contains("checksum mismatch")),
            "{:?}",
            report.problems
        );
    }
}
