//! The `sluice` client subcommands, run as the real binary against a real host: what they
//! print on stdout, their `--json` answers, and their exit codes and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::harness::{module_wasm, Host};

/// What one `sluice` run came to.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success (with nothing on stderr) and answers stdout.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(self.stderr, "", "nothing on stderr on success");
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", self.stdout))
    }

    /// Asserts exit code 1 with exactly one line on stderr, and answers that line.
    fn failed(&self) -> &str {
        assert_eq!(
            self.code, 1,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line, got {:?}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        lines[0]
    }
}

/// Runs `sluice SUBCOMMAND --server URL REST...` with `stdin` as its input.
fn sluice_with(server: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg(args[0]);
    if !server.is_empty() {
        cmd.arg("--server").arg(server);
    }
    let mut child = cmd
        .args(&args[1..])
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_TOKEN")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sluice");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("writing stdin");
    }
    let out = child.wait_with_output().expect("waiting for sluice");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

fn sluice(host: &Host, args: &[&str]) -> Run {
    sluice_with(&format!("http://{}", host.addr), args, None, &[])
}

/// The wordcount module as the CLI's users find it: a file built by `make modules`.
fn wordcount_file() -> PathBuf {
    module_wasm("wordcount"); // panics with a hint when the modules are not built
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/wordcount.wasm")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn deploy_describe_append_select_query() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let wasm = wordcount_file();

    let out = sluice(&host, &["deploy", path_str(&wasm), "--partitions", "4"]);
    assert_eq!(out.ok(), "deployed wordcount version 1 (4 partitions)\n");

    assert_eq!(
        sluice(&host, &["modules"]).ok(),
        "NAME       VERSION  PARTITIONS\nwordcount  1        4\n"
    );
    let list = sluice(&host, &["modules", "--json"]).json();
    assert_eq!(
        list["modules"],
        json!([{"name": "wordcount", "version": 1, "partitions": 4, "state": "running"}])
    );

    let described = sluice(&host, &["describe", "wordcount"]);
    let text = described.ok();
    assert!(
        text.starts_with("module wordcount  version 1  partitions 4\n"),
        "{text}"
    );
    for line in [
        "words      hash(word)",
        "sentences  random",
        "counts  map<string, int>",
        "wordcount  stream  words",
        "sentences  stream  sentences",
        "top-words",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    let d = sluice(&host, &["describe", "wordcount", "--json"]).json();
    assert_eq!(
        d["depots"][0],
        json!({"name": "words", "partitioner": {"hash": "word"}})
    );
    assert_eq!(d["queries"], json!(["top-words"]));

    let first = sluice(
        &host,
        &["append", "wordcount", "words", r#"{"word": "apple"}"#],
    );
    let first = first.ok();
    assert!(first.starts_with("appended to partition "), "{first}");
    assert!(first.ends_with(" at offset 0\nwordcount: 1\n"), "{first}");
    let second = sluice(
        &host,
        &["append", "wordcount", "words", r#"{"word": "apple"}"#],
    );
    assert!(
        second.ok().ends_with(" at offset 1\nwordcount: 2\n"),
        "{}",
        second.stdout
    );
    // `-` reads the record from stdin.
    let banana = sluice_with(
        &format!("http://{}", host.addr),
        &["append", "wordcount", "words", "-"],
        Some("{\"word\": \"banana\"}\n"),
        &[],
    );
    assert!(banana.ok().ends_with("wordcount: 1\n"), "{}", banana.stdout);
    let a = sluice(
        &host,
        &[
            "append",
            "wordcount",
            "words",
            r#"{"word": "cherry"}"#,
            "--ack",
            "append",
            "--json",
        ],
    )
    .json();
    assert!(
        a["partition"].as_u64().unwrap() < 4 && a["offset"].is_u64(),
        "{a}"
    );
    let queued = sluice(
        &host,
        &[
            "append",
            "wordcount",
            "words",
            r#"{"word": "date"}"#,
            "--ack",
            "none",
        ],
    );
    assert!(
        queued.ok().starts_with("queued on partition "),
        "{}",
        queued.stdout
    );

    assert_eq!(
        sluice(
            &host,
            &["select", "wordcount", "counts", r#"[{"key":"apple"}]"#]
        )
        .ok(),
        "2\n"
    );
    let s = sluice(
        &host,
        &[
            "select",
            "wordcount",
            "counts",
            r#"[{"key":"banana"}]"#,
            "--json",
        ],
    )
    .json();
    assert_eq!(s["values"], json!([1]));
    assert_eq!(s["truncated"], false);
    let keys = sluice(
        &host,
        &[
            "select",
            "wordcount",
            "counts",
            r#"["map-keys"]"#,
            "--partition",
            "all",
        ],
    );
    let keys: Vec<&str> = keys.ok().lines().collect();
    assert!(
        keys.contains(&"\"apple\"") && keys.contains(&"\"banana\""),
        "{keys:?}"
    );
    let page = sluice(
        &host,
        &[
            "select",
            "wordcount",
            "counts",
            r#"["map-keys"]"#,
            "--partition",
            "all",
            "--limit",
            "1",
            "--json",
        ],
    )
    .json();
    assert_eq!(page["values"].as_array().unwrap().len(), 1);
    assert_eq!(page["truncated"], true);

    // Ties at 1 (banana, cherry, date) go by word.
    assert_eq!(
        sluice(&host, &["query", "wordcount", "top-words", r#"{"n":2}"#]).ok(),
        "COUNT  WORD\n2      apple\n1      banana\n"
    );
    let q = sluice(&host, &["query", "wordcount", "top-words", "--json"]).json();
    assert_eq!(q["result"][0], json!({"word": "apple", "count": 2}));

    assert_eq!(
        sluice(&host, &["dead-letters", "wordcount", "wordcount"]).ok(),
        "PARTITION  DEPOT  OFFSET  CODE  ATTEMPTS  ERROR\n"
    );
    let dl = sluice(&host, &["dead-letters", "wordcount", "wordcount", "--json"]).json();
    assert_eq!(dl["dead_letters"], json!([]));
    assert_eq!(
        sluice(
            &host,
            &["dead-letters", "wordcount", "wordcount", "--replay"]
        )
        .ok(),
        "replayed 0, still failing 0\n"
    );
    let gone = sluice(
        &host,
        &[
            "dead-letters",
            "wordcount",
            "wordcount",
            "--discard",
            "0,words,99",
        ],
    );
    assert!(
        gone.failed().contains("unknown-dead-letter"),
        "{}",
        gone.stderr
    );

    // The same build again changes nothing; a new build of it is an update.
    assert_eq!(
        sluice(&host, &["deploy", path_str(&wasm)]).ok(),
        "wordcount version 1 is already deployed: unchanged\n"
    );
    module_wasm("wordcount_next");
    let next = wasm.with_file_name("wordcount_next.wasm");
    assert_eq!(
        sluice(&host, &["deploy", path_str(&next), "--name", "wordcount"]).ok(),
        "updated wordcount to version 2\n"
    );
    let d = sluice(&host, &["describe", "wordcount", "--json"]).json();
    assert_eq!(
        (d["version"].as_u64(), d["partitions"].as_u64()),
        (Some(2), Some(4))
    );
}

#[test]
fn append_file_sends_batches_and_sums_up() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let wasm = wordcount_file();
    let out = sluice(
        &host,
        &[
            "deploy",
            path_str(&wasm),
            "--name",
            "wc",
            "--partitions",
            "4",
        ],
    );
    assert_eq!(out.ok(), "deployed wc version 1 (4 partitions)\n");

    // 2000 records, 50 words 40 times each, with blank lines in between.
    let mut ndjson = String::new();
    for i in 0..2000 {
        ndjson.push_str(&format!("{{\"word\": \"w{}\"}}\n", i % 50));
        if i % 300 == 0 {
            ndjson.push('\n');
        }
    }
    let file = dir.path().join("words.ndjson");
    std::fs::write(&file, &ndjson).unwrap();
    let out = sluice(
        &host,
        &[
            "append",
            "wc",
            "words",
            "--file",
            path_str(&file),
            "--batch",
            "300",
        ],
    );
    let summary = out.ok();
    assert!(
        summary.starts_with("appended 2000 records, 0 failed, in ")
            && summary.ends_with(" records/s)\n"),
        "{summary}"
    );
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert_eq!(
        sluice(&host, &["select", "wc", "counts", r#"[{"key":"w7"}]"#]).ok(),
        "40\n"
    );
    assert_eq!(
        sluice(
            &host,
            &[
                "select",
                "wc",
                "counts",
                r#"["count"]"#,
                "--partition",
                "all"
            ]
        )
        .ok()
        .lines()
        .map(|l| l.parse::<u64>().unwrap())
        .sum::<u64>(),
        50,
        "every word counted"
    );

    let small = dir.path().join("small.ndjson");
    std::fs::write(&small, "{\"word\": \"w7\"}\n{\"word\": \"x\"}\n").unwrap();
    let s = sluice(
        &host,
        &[
            "append",
            "wc",
            "words",
            "--file",
            path_str(&small),
            "--json",
        ],
    )
    .json();
    assert_eq!(
        (
            s["records"].as_u64(),
            s["appended"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    assert_eq!(s["failures"], json!([]));
    let q = sluice(
        &host,
        &["query", "wc", "top-words", r#"{"n": 1}"#, "--json"],
    )
    .json();
    assert_eq!(q["result"], json!([{"word": "w7", "count": 41}]));

    // A malformed line is found before anything is sent.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"word\": \"w7\"}\n\n{\"word\": \n").unwrap();
    let out = sluice(&host, &["append", "wc", "words", "--file", path_str(&bad)]);
    let line = out.failed();
    assert!(
        line.starts_with(&format!(
            "error: {} line 3 is not valid JSON: ",
            bad.display()
        )),
        "{line}"
    );

    // The host refusing a batch (a record without the key) stops the run, naming the line.
    let unroutable = dir.path().join("unroutable.ndjson");
    std::fs::write(
        &unroutable,
        "{\"word\": \"w7\"}\n{\"word\": \"w7\"}\n{\"word\": \"w7\"}\n{\"nope\": 1}\n",
    )
    .unwrap();
    let out = sluice(
        &host,
        &[
            "append",
            "wc",
            "words",
            "--file",
            path_str(&unroutable),
            "--batch",
            "2",
        ],
    );
    let line = out.failed();
    assert!(line.starts_with("error: missing-key: "), "{line}");
    assert!(
        line.ends_with(&format!(
            "({} line 4); 2 records were appended before",
            unroutable.display()
        )),
        "{line}"
    );
    assert!(
        out.stdout.starts_with("appended 2 records, 0 failed"),
        "{}",
        out.stdout
    );
    assert_eq!(
        sluice(&host, &["select", "wc", "counts", r#"[{"key":"w7"}]"#]).ok(),
        "43\n",
        "the batch before the refused one was appended, nothing of the malformed file"
    );
}

#[test]
fn append_file_resends_lines_refused_by_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    // Queues of 8: a batch of 400 records on 2 partitions is mostly refused with `queue-full`.
    let host = Host::start(
        &dir.path().join("data"),
        &["--partition-queue-depth", "8", "--partitions", "2"],
    );
    host.deploy_ok("wordcount", "wordcount", "");
    let ndjson: String = (0..400)
        .map(|i| format!("{{\"word\": \"w{}\"}}\n", i % 20))
        .collect();
    let file = dir.path().join("words.ndjson");
    std::fs::write(&file, ndjson).unwrap();
    let out = sluice(
        &host,
        &[
            "append",
            "wordcount",
            "words",
            "--file",
            path_str(&file),
            "--batch",
            "400",
            "--json",
        ],
    )
    .json();
    assert_eq!(
        (out["appended"].as_u64(), out["failed"].as_u64()),
        (Some(400), Some(0)),
        "{out}"
    );
    let counts = sluice(
        &host,
        &[
            "select",
            "wordcount",
            "counts",
            r#"["map-vals"]"#,
            "--partition",
            "all",
        ],
    );
    let counts: Vec<&str> = counts.ok().lines().collect();
    assert_eq!(counts, vec!["20"; 20], "every record appended exactly once");
}

#[test]
fn failures_exit_1_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let server = format!("http://{}", host.addr);

    assert_eq!(
        sluice(&host, &["modules"]).ok(),
        "NAME  VERSION  PARTITIONS\n"
    );
    // SLUICE_SERVER instead of --server.
    let out = sluice_with(
        "",
        &["modules", "--json"],
        None,
        &[("SLUICE_SERVER", &server)],
    );
    assert_eq!(out.json(), json!({"modules": []}));

    let out = sluice(&host, &["describe", "nope"]);
    assert_eq!(
        out.failed(),
        "error: unknown-module: no module named `nope`"
    );
    assert_eq!(out.stdout, "");
    let out = sluice(
        &host,
        &["select", "nope", "counts", r#"[{"key": "a"}]"#, "--json"],
    );
    assert!(out.failed().starts_with("error: unknown-module: "));
    let out = sluice(&host, &["append", "nope", "words", "{}"]);
    assert!(out.failed().starts_with("error: unknown-module: "));

    // A closed port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = format!("http://127.0.0.1:{port}");
    let out = sluice_with(&closed, &["modules"], None, &[]);
    assert!(
        out.failed()
            .starts_with(&format!("error: cannot reach {closed}: ")),
        "{}",
        out.stderr
    );

    // Bad JSON arguments are named and nothing is sent.
    let out = sluice(&host, &["select", "wordcount", "counts", "apple"]);
    let line = out.failed();
    assert!(
        line.starts_with("error: PATH is not valid JSON: "),
        "{line}"
    );
    assert!(
        line.contains(r#"'"apple"'"#),
        "a hint to quote strings: {line}"
    );
    let out = sluice(&host, &["query", "wordcount", "top-words", "{\"n\":"]);
    assert!(
        out.failed().starts_with("error: ARGS is not valid JSON: "),
        "{}",
        out.stderr
    );
    let out = sluice(&host, &["append", "wordcount", "words", "{word}"]);
    assert!(
        out.failed()
            .starts_with("error: RECORD is not valid JSON: "),
        "{}",
        out.stderr
    );

    // Files that cannot be deployed.
    let missing = dir.path().join("missing.wasm");
    let out = sluice(&host, &["deploy", path_str(&missing)]);
    assert!(
        out.failed().starts_with("error: cannot read "),
        "{}",
        out.stderr
    );
    let not_wasm = dir.path().join("not_wasm.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let out = sluice(&host, &["deploy", path_str(&not_wasm)]);
    out.failed();
    assert_eq!(
        sluice(&host, &["modules"]).ok(),
        "NAME  VERSION  PARTITIONS\n"
    );

    // Usage errors are clap's: exit 2.
    assert_eq!(sluice(&host, &["append", "wordcount", "words"]).code, 2);
    assert_eq!(
        sluice(
            &host,
            &["append", "wordcount", "words", "{}", "--ack", "most"]
        )
        .code,
        2
    );
    assert_eq!(
        sluice(
            &host,
            &["select", "wc", "counts", "[]", "--partition", "some"]
        )
        .code,
        2
    );
    assert_eq!(
        sluice(&host, &["append", "m", "d", "--file", "f", "--batch", "0"]).code,
        2
    );
}

#[test]
fn tokens_from_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--token", "admin=cli-secret-1"]);
    let server = format!("http://{}", host.addr);

    let out = sluice(&host, &["modules"]);
    assert!(
        out.failed().starts_with("error: unauthorized: "),
        "{}",
        out.stderr
    );
    let out = sluice(&host, &["modules", "--token", "wrong-token"]);
    assert!(
        out.failed().starts_with("error: unauthorized: "),
        "{}",
        out.stderr
    );
    sluice(&host, &["modules", "--token", "cli-secret-1"]).ok();
    let wasm = wordcount_file();
    let out = sluice_with(
        &server,
        &["deploy", path_str(&wasm)],
        None,
        &[("SLUICE_TOKEN", "cli-secret-1")],
    );
    assert_eq!(out.ok(), "deployed wordcount version 1 (8 partitions)\n");
}
