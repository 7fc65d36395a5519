//! A full disk (issue 12: supervision): a partition whose commit fails with ENOSPC restarts
//! itself, says why in `/health`, `/health/ready` and the errors requests get, and recovers
//! without a process restart once there is room again — with nothing acked lost.
//!
//! Needs a small filesystem: the test mounts a tmpfs (root only; elsewhere it says so and
//! passes without running).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Host;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size_mb: u32) -> Option<SmallDisk> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `path` (a file written until ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn states(host: &Host) -> Vec<String> {
    host.get("/health").json()["modules"]["wc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_full_disk_restarts_the_partition_and_it_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_disk) = SmallDisk::mount(&mnt, 48) else {
        // CI runs as root: there a refused mount is a failure, not a reason to skip.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but mounting a tmpfs was refused"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // The data dir is the small disk itself; the host's log goes beside it (`disk.log`).
    let host = Host::start(&mnt, &[]);
    host.deploy_ok("wc", "wordcount", "?partitions=2");
    let word = |i: u64| format!("w{i:04}-{}", "x".repeat(2000));
    let mut acked = 0u64;
    for i in 0..20 {
        assert_eq!(
            host.append("wc", "words", &json!({"word": word(i)})).status,
            200
        );
        acked += 1;
    }
    fill(&mnt.join("filler"));
    // Appends now fail on some commit; none is answered with a false success.
    let mut failed = None;
    for i in 20..2_000 {
        let r = host.append("wc", "words", &json!({"word": word(i)}));
        match r.status {
            200 => acked += 1,
            500 | 503 => {
                failed = Some(r.json());
                break;
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let failed = failed.expect("the disk never filled up");
    let code = failed["error"]["code"].as_str().unwrap().to_string();
    assert!(
        ["storage", "outcome-unknown", "partition-restarting"].contains(&code.as_str()),
        "{failed}"
    );
    // Issue 13: a failed commit is never "not stored": it says the outcome is unknown, with
    // the partition (and the offset the record has if it was stored, when known).
    if code == "outcome-unknown" {
        let e = &failed["error"];
        assert!(
            e["durable"] == "unknown" || e["durable"] == true,
            "{failed}"
        );
        assert_eq!(e["outcome"], "unknown", "{failed}");
        assert!(e["partition"].is_u64(), "{failed}");
    }
    // The failing partition is not serving and says why; readiness fails, liveness does not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let h = host.get("/health");
        assert_eq!(h.status, 200);
        let j = h.json();
        if j["status"] == "degraded" {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "no partition reported failing: {j}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let bad = health["modules"]["wc"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["state"] != "serving")
        .cloned()
        .unwrap();
    assert_eq!(host.get("/health/ready").status, 503);
    if bad["state"] == "restarting" {
        let cause = bad["cause"].as_str().unwrap();
        assert!(cause.contains(".redb"), "the cause names the file: {cause}");
    }
    // Room again: the partition recovers by itself, without a process restart.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while states(&host).iter().any(|s| s != "serving") {
        assert!(
            Instant::now() < deadline,
            "did not recover: {}\n{}",
            host.get("/health").json(),
            std::fs::read_to_string(dir.path().join("disk.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(host.get("/health/ready").status, 200);
    for i in 5_000..5_010 {
        assert_eq!(
            host.append("wc", "words", &json!({"word": word(i)})).status,
            200
        );
        acked += 1;
    }
    // Every stored record counted once; every acked one stored.
    let stored: Vec<String> = host
        .read_depot("wc", "words")
        .into_iter()
        .flatten()
        .map(|r| r["word"].as_str().unwrap().to_string())
        .collect();
    assert!(
        stored.len() as u64 >= acked,
        "{} stored, {acked} acked",
        stored.len()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in &stored {
        loop {
            let n = host.select("wc", "counts", json!([{"key": w}]));
            if n == vec![json!(1)] {
                break;
            }
            assert!(Instant::now() < deadline, "{}…: counts {n:?}", &w[..5]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(host.get("/health").json()["modules"]["wc"][0]["restarts"]
        .as_u64()
        .is_some());
}
