//! Event sourcing against PostgreSQL (issue 15): the same event-log-plus-read-model work on
//! Sluice and on PostgreSQL, with the same durability, driven by C load generators on both
//! sides, in the same run.
//!
//! The work: append a word (random over 1,000,000) to a log and count it in a read model.
//! - Sluice: `wordcount`'s `words` depot and its `counts` PState (a stream topology), over
//!   HTTP/1.1, `ack=full` (the answer means the count is updated) and `ack=append` (the record
//!   is durable; the count follows). Both acks wait for an fsynced depot-log commit.
//! - PostgreSQL (Debian's server, a throwaway cluster in a temporary directory): one
//!   transaction inserts into `events` and upserts `counts` (`ON CONFLICT … DO UPDATE`), with
//!   `fsync=on` and `synchronous_commit=on` (the answer waits for the WAL flush); a batch of
//!   1,000 is one transaction whose counts are grouped per word before the upsert.
//! - Load: `wrk` (with a Lua script that builds the bodies and counts failed answers) against
//!   Sluice, `pgbench` against PostgreSQL: same client counts, same batch sizes, same duration,
//!   loopback TCP for both.
//!
//! Installs Debian's `postgresql` and `wrk` when missing (as root), runs the server as the
//! `postgres` user when run as root, stops every process it starts. Prints a Markdown table;
//! `make bench-postgres` (part of `make bench`). Environment: `PG_BENCH_SECONDS` (default 8).

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/goals.rs"]
mod goals;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{module_wasm, Host};

/// The words are `w1` … `w1000000`.
const WORDS: u32 = 1_000_000;

/// One workload: how many records a request (a transaction) holds, and how many clients.
#[derive(Clone, Copy)]
struct Workload {
    batch: usize,
    clients: usize,
}

/// What one load generator reported.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    records_per_s: f64,
    /// Mean request (transaction) latency.
    mean_ms: f64,
    /// 99th percentile, where the generator reports it (wrk; pgbench reports the mean only).
    p99_ms: Option<f64>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("PG_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let wrk = tool("wrk", &["/usr/bin/wrk"], "wrk");
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "65536"],
    );
    // The module at the default partition count, and at one partition per core (each
    // partition fsyncs its own depot log: fewer partitions share an fsync among more records).
    const MODULES: [(&str, u32); 2] = [("wordcount", 8), ("wordcount2", 2)];
    for (name, partitions) in MODULES {
        let r = host.deploy(
            name,
            &module_wasm("wordcount"),
            &format!("?partitions={partitions}"),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let fsyncs = fsync_rate(dir.path());

    let workloads = [
        Workload {
            batch: 1,
            clients: 1,
        },
        Workload {
            batch: 1,
            clients: 16,
        },
        Workload {
            batch: 1000,
            clients: 4,
        },
    ];
    println!("## Event sourcing vs PostgreSQL: an event log plus counts, same durability (`host/benches/postgres.rs`)\n");
    println!(
        "{seconds} s per row, words random over {WORDS}; {} fdatasyncs/s of one 4 KiB write on this disk (one client's limit at one fsync per answer).\n",
        fsyncs as u64
    );
    println!("| records per request | clients | PostgreSQL rec/s | mean ms | Sluice partitions | `full` rec/s | mean ms | p99 ms | ratio | `append` rec/s | mean ms | p99 ms | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut sent = [0u64; MODULES.len()];
    for w in workloads {
        let p = pg.run(w, seconds);
        for (i, (module, partitions)) in MODULES.iter().enumerate() {
            let run = |ack| sluice(&wrk, &host, module, ack, w, seconds, dir.path());
            let ((full, n_full), (append, n_append)) = (run("full"), run("append"));
            sent[i] += n_full + n_append;
            println!(
                "| {} | {} | {:.0} | {:.2} | {partitions} | {:.0} | {:.2} | {} | {:.2} | {:.0} | {:.2} | {} | {:.2} |",
                w.batch,
                w.clients,
                p.records_per_s,
                p.mean_ms,
                full.records_per_s,
                full.mean_ms,
                ms(full.p99_ms),
                full.records_per_s / p.records_per_s,
                append.records_per_s,
                append.mean_ms,
                ms(append.p99_ms),
                append.records_per_s / p.records_per_s,
            );
            for (ack, r) in [("full", &full), ("append", &append)] {
                record_goal(
                    w,
                    *partitions,
                    ack,
                    r.records_per_s,
                    p.records_per_s,
                    fsyncs,
                );
            }
        }
    }
    // Both sides did the work they were asked: every answered record is in the log, and
    // PostgreSQL's read model counts every event.
    let (events, counted) = pg.totals();
    assert_eq!(events, counted, "PostgreSQL: events vs the sum of counts");
    print!("\nChecked after the run: PostgreSQL {events} events = the sum of its counts");
    for ((module, _), sent) in MODULES.iter().zip(sent) {
        let stored = harness::eventually("Sluice's depot holds every answered record", || {
            let n = host.depot_records(module, "words");
            (n >= sent).then_some(n)
        });
        print!("; `{module}`'s `words` depot holds {stored} records (≥ the {sent} answered with success)");
    }
    println!(".");
}

/// The row of issue 15's goals table for workload `w` at `ack` (`common/goals.rs`): 16
/// single-record clients ≥ 3× PostgreSQL, 1,000-record batches ≥ 5×, one client against
/// the disk's fsync rate (the limit at one fsync per answer).
fn record_goal(w: Workload, partitions: u32, ack: &str, sluice: f64, pg: f64, fsyncs: f64) {
    let at = format!("{partitions} partitions, `{ack}`");
    let figure = format!("{sluice:.0} records/s");
    let postgres = format!("PostgreSQL: {pg:.0}");
    match (w.batch, w.clients) {
        (1, 1) => goals::record(
            &format!("one client at the fsync limit ({at})"),
            &figure,
            &format!("{fsyncs:.0} fdatasyncs/s; {postgres}"),
            sluice,
            fsyncs,
            goals::Target::RatioAtLeast(0.9),
        ),
        (1, clients) => goals::record(
            &format!("event log + counts ≥ 3× PostgreSQL, {clients} single-record clients ({at})"),
            &figure,
            &postgres,
            sluice,
            pg,
            goals::Target::RatioAtLeast(3.0),
        ),
        (batch, clients) => goals::record(
            &format!(
                "event log + counts ≥ 5× PostgreSQL, {batch}-record batches, {clients} clients ({at})"
            ),
            &figure,
            &postgres,
            sluice,
            pg,
            goals::Target::RatioAtLeast(5.0),
        ),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Sluice under `wrk`: `(what wrk measured, records answered with success)`.
fn sluice(
    wrk: &Path,
    host: &Host,
    module: &str,
    ack: &str,
    w: Workload,
    seconds: u64,
    dir: &Path,
) -> (Measured, u64) {
    let script = dir.join(format!("{module}-{ack}-{}.lua", w.batch));
    std::fs::write(&script, wrk_script(module, ack, w.batch)).unwrap();
    let threads = w.clients.min(2);
    let out = run(Command::new(wrk)
        .args(["--latency", "-t", &threads.to_string()])
        .args(["-c", &w.clients.to_string()])
        .args(["-d", &format!("{seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("http://{}/", host.addr)));
    let line = out
        .lines()
        .find(|l| l.starts_with("sluice-bench "))
        .unwrap_or_else(|| panic!("no summary line in wrk's output:\n{out}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
    };
    let (errors, oks) = (field("errors="), field("oks="));
    assert_eq!(
        errors, 0,
        "Sluice answered {errors} requests with an error:\n{out}"
    );
    let rps: f64 = value_after(&out, "Requests/sec:").expect("Requests/sec");
    let mean_ms = wrk_ms(
        out.lines()
            .find(|l| l.trim_start().starts_with("Latency") && !l.contains("Distribution"))
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("Latency line"),
    );
    let p99_ms = out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(wrk_ms);
    let m = Measured {
        records_per_s: rps * w.batch as f64,
        mean_ms,
        p99_ms,
    };
    (m, oks * w.batch as u64)
}

/// The Lua script: each thread builds bodies of `batch` random words (seeded per thread) and
/// counts answers that are not 2xx or that carry a per-line error.
fn wrk_script(module: &str, ack: &str, batch: usize) -> String {
    let (content_type, sep) = if batch == 1 {
        ("application/json", "")
    } else {
        ("application/x-ndjson", "\\n")
    };
    format!(
        r#"
local counter = 0
local threads = {{}}
function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  math.randomseed(7919 * (id + 1))
  errors = 0
  oks = 0
end
local headers = {{ ["Content-Type"] = "{content_type}" }}
local path = "/v1/modules/{module}/depots/words/append?ack={ack}"
request = function()
  local lines = {{}}
  for i = 1, {batch} do
    lines[i] = '{{"word":"w' .. math.random(1, {WORDS}) .. '"}}{sep}'
  end
  return wrk.format("POST", path, headers, table.concat(lines))
end
response = function(status, headers, body)
  if status < 200 or status > 299 or string.find(body, '"error"', 1, true) then
    if errors == 0 then
      io.write(string.format("sluice-bench first error: %d %s\n", status, body))
    end
    errors = errors + 1
  else
    oks = oks + 1
  end
end
function done(summary, latency, requests)
  local e, o = 0, 0
  for _, t in ipairs(threads) do
    e = e + t:get("errors")
    o = o + t:get("oks")
  end
  io.write(string.format("sluice-bench errors=%d oks=%d\n", e, o))
end
"#
    )
}

/// wrk's durations: `812.00us`, `1.20ms`, `2.00s`.
fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        panic!("a wrk duration: {v:?}")
    };
    num.parse::<f64>().expect("a number") * scale
}

fn value_after(text: &str, label: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// fdatasyncs per second of a 4 KiB overwrite in `dir` over one second: the rate one client
/// waiting for one fsync per answer cannot beat.
fn fsync_rate(dir: &Path) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A throwaway PostgreSQL cluster on a free loopback port, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// `postgres` when this runs as root (the server refuses root).
    user: Option<&'static str>,
    dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = postgres_bin();
        let user = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        if let Some(u) = user {
            run(Command::new("chown").args([u, &dir.path().display().to_string()]));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            bin,
            data,
            port,
            user,
            dir,
        };
        run(pg
            .command("initdb")
            .args(["-A", "trust", "-U", "bench", "--no-sync", "-D"])
            .arg(&pg.data));
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
             -c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min \
             -c max_connections=50",
            pg.data.display()
        );
        run(pg
            .command("pg_ctl")
            .args(["-w", "-l"])
            .arg(pg.data.join("server.log"))
            .args(["-o", &options, "-D"])
            .arg(&pg.data)
            .arg("start"));
        pg.psql(
            "CREATE TABLE events (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, word text NOT NULL); \
             CREATE TABLE counts (word text PRIMARY KEY, n bigint NOT NULL);",
        );
        pg
    }

    /// A command of the server's binaries, as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn connect_args(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn psql(&self, sql: &str) -> String {
        run(self.command("psql").args(self.connect_args()).args([
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ]))
    }

    /// `(events, sum of counts)`.
    fn totals(&self) -> (u64, u64) {
        let out = self
            .psql("SELECT (SELECT count(*) FROM events), (SELECT coalesce(sum(n), 0) FROM counts)");
        let mut it = out
            .trim()
            .split('|')
            .map(|v| v.parse::<u64>().expect("a count"));
        (it.next().unwrap(), it.next().unwrap())
    }

    /// pgbench on `w` for `seconds`; its script is written in the cluster's directory
    /// (readable by the server's user: pgbench runs as that user too).
    fn run(&self, w: Workload, seconds: u64) -> Measured {
        let script = self.dir.path().join(format!("pg-{}.sql", w.batch));
        std::fs::write(&script, pgbench_script(w.batch)).unwrap();
        // Single statements are prepared once per connection; a batch's 1,000 values exceed
        // pgbench's prepared-parameter limit and go as text (the client sends every record).
        let mode = if w.batch == 1 { "prepared" } else { "simple" };
        let threads = w.clients.min(2);
        let out = run(self
            .command("pgbench")
            .args(self.connect_args())
            .args(["-n", "-M", mode, "-c", &w.clients.to_string()])
            .args(["-j", &threads.to_string(), "-T", &seconds.to_string(), "-f"])
            .arg(&script)
            .arg("postgres"));
        let tps = out
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{out}"));
        let failed = out
            .lines()
            .find(|l| l.starts_with("number of failed transactions"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(failed, 0, "pgbench: failed transactions:\n{out}");
        Measured {
            records_per_s: tps * w.batch as f64,
            mean_ms: value_after(&out, "latency average =").expect("latency average"),
            p99_ms: None,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One transaction per request: the batch's words into `events`, their counts (grouped per
/// word, in word order, so concurrent batches lock rows in one order and never deadlock) into
/// `counts`.
fn pgbench_script(batch: usize) -> String {
    let mut s = String::new();
    for i in 1..=batch {
        s.push_str(&format!("\\set w{i} random(1, {WORDS})\n"));
    }
    if batch == 1 {
        s.push_str(
            "BEGIN;\n\
             INSERT INTO events (word) VALUES ('w' || :w1);\n\
             INSERT INTO counts (word, n) VALUES ('w' || :w1, 1) ON CONFLICT (word) DO UPDATE SET n = counts.n + 1;\n\
             END;\n",
        );
    } else {
        let values: Vec<String> = (1..=batch).map(|i| format!("('w' || :w{i})")).collect();
        s.push_str(&format!(
            "BEGIN;\n\
             WITH b (word) AS (VALUES {}), e AS (INSERT INTO events (word) SELECT word FROM b) \
             INSERT INTO counts (word, n) SELECT word, count(*) FROM b GROUP BY word ORDER BY word \
             ON CONFLICT (word) DO UPDATE SET n = counts.n + excluded.n;\n\
             END;\n",
            values.join(", ")
        ));
    }
    s
}

/// The newest installed server's binaries (Debian's layout), installing the package when
/// missing and allowed.
fn postgres_bin() -> PathBuf {
    let find = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists() && b.join("pgbench").exists())
            .collect();
        dirs.sort_by_key(|d| {
            d.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        dirs.pop()
    };
    find()
        .or_else(|| {
            install("postgresql");
            find()
        })
        .expect("PostgreSQL's server (Debian: apt-get install postgresql)")
}

/// `name` at one of `paths` or on PATH, installing Debian's `package` when missing.
fn tool(name: &str, paths: &[&str], package: &str) -> PathBuf {
    let find = || {
        paths
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| {
                let out = Command::new("which").arg(name).output().ok()?;
                let p = String::from_utf8(out.stdout).ok()?;
                (!p.trim().is_empty()).then(|| PathBuf::from(p.trim()))
            })
    };
    find()
        .or_else(|| {
            install(package);
            find()
        })
        .unwrap_or_else(|| panic!("{name} (Debian: apt-get install {package})"))
}

fn install(package: &str) {
    if !is_root() {
        return;
    }
    eprintln!("installing {package} (apt-get)");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `c` to completion; its stdout, or a panic with its stderr.
fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
