//! Damage at rest (issue 13): files changed, emptied, replaced or removed while the host was
//! stopped. Each case is found and reported naming the file — never served as data — and only
//! what is damaged stops serving: a damaged module is marked failed and the others serve; a
//! partition whose store is ahead of its log refuses to serve, saying acked data is lost.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::harness::{module_wasm, Host};

const WORD: &str = "zebrazebrazebra";

/// Flips one bit in every occurrence of `needle` in the file (redb is copy-on-write: stale
/// copies of a page may remain; flipping all of them hits the live one). Answers how many.
fn flip_all(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + needle.len() - 1] ^= 0x01;
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).unwrap();
    n
}

fn partition_file(data: &Path, module: &str, p: u32, file: &str) -> PathBuf {
    data.join("modules")
        .join(module)
        .join(format!("p{p}"))
        .join(file)
}

/// A host with `wc` (wordcount, one partition) holding `n` appends of [`WORD`], and `ok`
/// (wordcount too), stopped.
fn stopped_host(dir: &Path, args: &[&str], n: usize) -> (PathBuf, Vec<String>) {
    let host = Host::start(&dir.join("data"), args);
    host.deploy_ok("wc", "wordcount", "?partitions=1");
    host.deploy_ok("ok", "wordcount", "?partitions=2");
    for _ in 0..n {
        assert_eq!(
            host.append("wc", "words", &json!({"word": WORD})).status,
            200
        );
    }
    assert_eq!(
        host.append("ok", "words", &json!({"word": "fine"})).status,
        200
    );
    assert_eq!(
        host.select("wc", "counts", json!([{"key": WORD}])),
        vec![json!(n)]
    );
    host.stop()
}

fn sluice_check(data: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The other module keeps serving whatever happened to `wc`.
fn other_module_serves(host: &Host) {
    assert_eq!(
        host.append("ok", "words", &json!({"word": "fine"})).status,
        200
    );
    assert_eq!(
        host.select("ok", "counts", json!([{"key": "fine"}])),
        vec![json!(2)]
    );
}

#[test]
fn flipped_bytes_found_at_start_fail_the_module_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = stopped_host(dir.path(), &[], 20);
    let data = stopped.0.clone();
    let (clean, report) = sluice_check(&data);
    assert!(clean, "{report}");
    assert!(report.contains("checked 6 files"), "{report}");
    let store = partition_file(&data, "wc", 0, "pstate.redb");
    assert!(flip_all(&store, WORD.as_bytes()) > 0);
    let (clean, report) = sluice_check(&data);
    assert!(!clean, "{report}");
    assert!(report.contains("wc/p0/pstate.redb"), "{report}");

    let host = Host::restart(stopped);
    let m = host.get("/v1/modules/wc").json();
    assert_eq!(m["state"], "failed", "{m}");
    let reason = m["reason"].as_str().unwrap();
    assert!(reason.contains("wc/p0/pstate.redb"), "{reason}");
    // Never data: the select that answered `[]` before is an error now.
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": [{"key": WORD}]}),
    );
    assert_eq!((r.status, r.error_code()), (503, "module-failed".into()));
    let r = host.append("wc", "words", &json!({"word": WORD}));
    assert_eq!((r.status, r.error_code()), (503, "module-failed".into()));
    let health = host.get("/health/ready");
    assert_eq!(health.status, 503);
    assert!(health.json()["failed_modules"]["wc"]
        .as_str()
        .unwrap()
        .contains("pstate.redb"));
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("sluice_module_failed{module=\"wc\"} 1"),
        "{metrics}"
    );
    let list = host.get("/v1/modules").json();
    assert!(list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "wc" && m["state"] == "failed"));
    // A deploy onto it is refused until it is undeployed.
    let r = host.deploy("wc", &module_wasm("wordcount"), "");
    assert_eq!((r.status, r.error_code()), (409, "module-failed".into()));
    other_module_serves(&host);
    assert_eq!(
        host.request("DELETE", "/v1/modules/wc", "", b"").status,
        200
    );
    host.deploy_ok("wc", "wordcount", "?partitions=1");
    assert_eq!(
        host.append("wc", "words", &json!({"word": WORD})).status,
        200
    );
}

#[test]
fn unverified_damage_is_an_error_on_read_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = stopped_host(dir.path(), &["--verify-on-open", "false"], 3);
    let data = stopped.0.clone();
    assert!(
        flip_all(
            &partition_file(&data, "wc", 0, "depot.redb"),
            WORD.as_bytes()
        ) > 0
    );
    assert!(
        flip_all(
            &partition_file(&data, "wc", 0, "pstate.redb"),
            WORD.as_bytes()
        ) > 0
    );
    let host = Host::restart(stopped);
    // The record: a damage error naming module, partition, file and offset, not `null`.
    let r = host.get("/v1/modules/wc/depots/words/partitions/0?from=0");
    assert_eq!(
        (r.status, r.error_code()),
        (500, "damaged".into()),
        "{:?}",
        r.json()
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    for part in [
        "module `wc` partition 0",
        "wc/p0/depot.redb",
        "depot/words",
        "offset 0",
        "checksum mismatch",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    // The entry (its key was flipped): a scan meets it and refuses it.
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": [{"all": null}], "partition": 0}),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (500, "damaged".into()),
        "{:?}",
        r.json()
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("wc/p0/pstate.redb") && msg.contains("pstate/counts"),
        "{msg}"
    );
    other_module_serves(&host);
}

#[test]
fn an_emptied_or_swapped_partition_file_fails_the_module_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = stopped_host(dir.path(), &[], 5);
    let data = stopped.0.clone();
    let log = partition_file(&data, "wc", 0, "depot.redb");
    let kept = std::fs::read(&log).unwrap();
    // Emptied: before, the host started with the records gone and reused their offsets.
    std::fs::write(&log, b"").unwrap();
    let host = Host::restart(stopped);
    let m = host.get("/v1/modules/wc").json();
    assert_eq!(m["state"], "failed", "{m}");
    let reason = m["reason"].as_str().unwrap();
    assert!(
        reason.contains("wc/p0/depot.redb") && reason.contains("empty"),
        "{reason}"
    );
    other_module_serves(&host);
    let stopped = host.stop();

    // Replaced by another partition's log (of `ok`): the header says whose it is.
    std::fs::copy(partition_file(&data, "ok", 1, "depot.redb"), &log).unwrap();
    let host = Host::restart(stopped);
    let reason = host.get("/v1/modules/wc").json()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("module `ok` partition 1"), "{reason}");
    let stopped = host.stop();

    // Replaced by a fresh log of the same partition (another deploy): the lineages differ.
    let other = dir.path().join("other");
    let h = Host::start(&other, &[]);
    h.deploy_ok("wc", "wordcount", "?partitions=1");
    h.stop();
    std::fs::copy(partition_file(&other, "wc", 0, "depot.redb"), &log).unwrap();
    let host = Host::restart(stopped);
    let reason = host.get("/v1/modules/wc").json()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("not the two files of one partition"),
        "{reason}"
    );
    let stopped = host.stop();

    // The original file back: everything is there.
    std::fs::write(&log, kept).unwrap();
    let host = Host::restart(stopped);
    assert_eq!(host.get("/v1/modules/wc").json()["state"], "running");
    assert_eq!(
        host.select("wc", "counts", json!([{"key": WORD}])),
        vec![json!(5)]
    );
}

#[test]
fn a_log_behind_its_store_fails_the_partition_saying_acked_data_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = stopped_host(dir.path(), &[], 4);
    let data = stopped.0.clone();
    let log = partition_file(&data, "wc", 0, "depot.redb");
    let old = std::fs::read(&log).unwrap();
    let host = Host::restart(stopped);
    for _ in 0..6 {
        assert_eq!(
            host.append("wc", "words", &json!({"word": WORD})).status,
            200
        );
    }
    let stopped = host.stop();
    // The log rolled back to 4 records (a restored backup); the store has processed 10.
    std::fs::write(&log, old).unwrap();
    let (clean, report) = sluice_check(&data);
    assert!(
        !clean && report.contains("acked records are lost"),
        "{report}"
    );
    let host = Host::restart(stopped);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let part = loop {
        let p = host.get("/health").json()["modules"]["wc"][0].clone();
        if p["state"] == "failed" || std::time::Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(part["state"], "failed", "{part}");
    let cause = part["cause"].as_str().unwrap();
    assert!(
        cause.contains("acked data is lost")
            && cause.contains("up to offset 10")
            && cause.contains("ends at offset 4"),
        "{cause}"
    );
    let r = host.append("wc", "words", &json!({"word": WORD}));
    assert_eq!((r.status, r.error_code()), (503, "partition-failed".into()));
    let r = host.post_json(
        "/v1/modules/wc/pstates/counts/select",
        &json!({"path": [{"key": WORD}]}),
    );
    assert_eq!((r.status, r.error_code()), (503, "partition-failed".into()));
    assert_eq!(host.get("/health/ready").status, 503);
    other_module_serves(&host);
}

#[test]
fn stray_and_broken_module_directories_do_not_stop_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = stopped_host(dir.path(), &[], 1);
    let modules = stopped.0.join("modules");
    std::fs::create_dir(modules.join("stray")).unwrap();
    std::fs::create_dir(modules.join("broken")).unwrap();
    std::fs::write(modules.join("broken/module.json"), b"{not json").unwrap();
    // A 0-byte compiled-module cache entry (the cache used to be written without fsync).
    let cache = stopped.0.join("cache");
    let mut entries = 0;
    for e in std::fs::read_dir(&cache).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "cwasm") {
            std::fs::write(&path, b"").unwrap();
            entries += 1;
        }
    }
    assert!(entries > 0, "no cache entries in {}", cache.display());
    let host = Host::restart(stopped);
    let list = host.get("/v1/modules").json();
    let state = |name: &str| {
        list["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    assert_eq!(state("wc")["state"], "running");
    assert_eq!(state("stray")["state"], "failed");
    assert!(state("stray")["reason"]
        .as_str()
        .unwrap()
        .contains("stray/module.json"));
    assert!(state("broken")["reason"]
        .as_str()
        .unwrap()
        .contains("broken/module.json"));
    // The cache entry was recompiled: the module serves, and the entry is whole again.
    other_module_serves(&host);
    assert_eq!(
        host.select("wc", "counts", json!([{"key": WORD}])),
        vec![json!(1)]
    );
    for e in std::fs::read_dir(&cache).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "cwasm") {
            assert!(
                std::fs::metadata(&path).unwrap().len() > 0,
                "{}",
                path.display()
            );
        }
    }
}
