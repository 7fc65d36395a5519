//! `sluice append`: one JSON record, or an NDJSON file sent in batches with a progress bar
//! and a summary.
//!
//! Invariants: every line of a file is checked to be JSON before anything is sent, so a
//! malformed file appends nothing; a batch is sent only with the file's non-blank lines, so
//! the host's `line` numbers map to file lines one to one; only what the host says it did not
//! queue (a 503 with `Retry-After`, or a line's `queue-full` error) is sent again.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{one_line, pretty, segment, Ack, Api, CliError, Connection};
use crate::client::Response;

/// Records per request with `--file` unless `--batch` says otherwise (well under the host's
/// default `ndjson_lines_max`).
pub(super) const BATCH_LINES_DEFAULT: usize = 500;

/// Times a request answered 503 with `Retry-After` is sent again; and rounds in a row in
/// which the host refused every line of a batch with `queue-full` before those lines count as
/// failed (a round that appends anything starts the count again).
const RETRIES_MAX: u32 = 60;

/// The longest `Retry-After` waited for, in seconds.
const RETRY_AFTER_S_MAX: u64 = 30;

/// Wait before re-sending the lines of a batch refused by backpressure (`queue-full`) when
/// the host took none of them.
const QUEUE_FULL_WAIT_MS: u64 = 200;

/// Failed lines listed after the summary (all are counted).
const FAILURES_SHOWN_MAX: usize = 10;

/// Failed lines carried in the `--json` summary.
const FAILURES_JSON_MAX: usize = 100;

/// Where records go.
pub(super) struct Target<'a> {
    pub module: &'a str,
    pub depot: &'a str,
    pub ack: Ack,
    pub partition: Option<u32>,
}

impl Target<'_> {
    fn path(&self) -> String {
        let mut p = format!(
            "/v1/modules/{}/depots/{}/append?ack={}",
            segment(self.module),
            segment(self.depot),
            self.ack.as_str()
        );
        if let Some(k) = self.partition {
            p.push_str(&format!("&partition={k}"));
        }
        p
    }
}

/// Sends a request again, after the wait the host asks for, while it answers 503 with
/// `Retry-After` (which it sends only for requests it did not queue).
fn send_retrying(
    api: &mut Api,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, CliError> {
    let mut retries = 0;
    loop {
        let r = api.send("POST", path, content_type, body)?;
        let wait_s = r
            .header("retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok());
        match wait_s {
            Some(s) if r.status == 503 && retries < RETRIES_MAX => {
                retries += 1;
                std::thread::sleep(Duration::from_secs(s.clamp(1, RETRY_AFTER_S_MAX)));
            }
            _ => return Ok(r),
        }
    }
}

/// Appends one record: `record` is its JSON, or `-` for stdin.
pub(super) fn one(
    conn: &Connection,
    target: &Target,
    record: &str,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    let text = if record == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Input(format!("cannot read the record from stdin: {e}")))?
    } else {
        record.to_string()
    };
    let what = if record == "-" {
        "the record on stdin"
    } else {
        "RECORD"
    };
    super::parse_json_arg(what, &text)?;
    let mut api = Api::open(conn)?;
    let r = send_retrying(
        &mut api,
        &target.path(),
        "application/json",
        text.as_bytes(),
    )?;
    if !r.is_success() {
        return Err(CliError::from_answer(&r));
    }
    let answer = r.json();
    if conn.json {
        out.extend(pretty(&answer).as_bytes());
        return Ok(());
    }
    out.extend(render_outcome(&answer).as_bytes());
    Ok(())
}

fn render_outcome(a: &Value) -> String {
    let partition = &a["partition"];
    if a["offset"].is_null() {
        return format!("queued on partition {partition}\n");
    }
    let mut s = format!(
        "appended to partition {partition} at offset {}\n",
        a["offset"]
    );
    for (topology, v) in a["results"].as_object().into_iter().flatten() {
        s.push_str(&format!("{topology}: {v}\n"));
    }
    s
}

/// What an NDJSON file's append came to.
#[derive(Default)]
struct Tally {
    appended: u64,
    /// (file line, the host's error object).
    failures: Vec<(u64, Value)>,
    failed: u64,
}

impl Tally {
    fn fail(&mut self, line: u64, error: Value) {
        self.failed += 1;
        self.failures.push((line, error));
    }

    fn summary(&self, total: u64, elapsed: Duration, as_json: bool) -> String {
        let elapsed_s = elapsed.as_secs_f64();
        let rate = if elapsed_s > 0.0 {
            self.appended as f64 / elapsed_s
        } else {
            0.0
        };
        if as_json {
            let failures: Vec<Value> = self
                .failures
                .iter()
                .take(FAILURES_JSON_MAX)
                .map(|(line, e)| json!({"line": line, "error": e}))
                .collect();
            return pretty(&json!({
                "records": total,
                "appended": self.appended,
                "failed": self.failed,
                "elapsed_s": (elapsed_s * 1000.0).round() / 1000.0,
                "records_per_s": rate.round(),
                "failures": failures,
            }));
        }
        let mut s = format!(
            "appended {} records, {} failed, in {elapsed_s:.2} s ({rate:.0} records/s)\n",
            self.appended, self.failed
        );
        for (line, e) in self.failures.iter().take(FAILURES_SHOWN_MAX) {
            s.push_str(&format!("line {line}: {}\n", error_text(e)));
        }
        if self.failures.len() > FAILURES_SHOWN_MAX {
            s.push_str(&format!(
                "... and {} more failed lines\n",
                self.failures.len() - FAILURES_SHOWN_MAX
            ));
        }
        s
    }
}

/// `code: message` of an API error object.
fn error_text(e: &Value) -> String {
    format!(
        "{}: {}",
        e["code"].as_str().unwrap_or("error"),
        one_line(e["message"].as_str().unwrap_or(""))
    )
}

/// The non-blank lines of an NDJSON text with their 1-based line numbers, each checked to be
/// JSON.
fn records_of(file: &Path, text: &str) -> Result<Vec<(u64, String)>, CliError> {
    let mut records = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        // Blank as the host sees it: ASCII whitespace only.
        if line.bytes().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
            return Err(CliError::Input(format!(
                "{} line {} is not valid JSON: {e}; nothing was sent",
                file.display(),
                i + 1
            )));
        }
        records.push((i as u64 + 1, line.to_string()));
    }
    if records.is_empty() {
        return Err(CliError::Input(format!(
            "{} has no records",
            file.display()
        )));
    }
    Ok(records)
}

/// Appends every line of an NDJSON file, `batch` lines a request.
pub(super) fn file(
    conn: &Connection,
    target: &Target,
    file: &Path,
    batch: usize,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
    let records = records_of(file, &text)?;
    drop(text);
    let total = records.len() as u64;
    let mut api = Api::open(conn)?;
    let path = target.path();
    let mut progress = std::io::stderr()
        .is_terminal()
        .then(|| Progress::new(total));
    let started = Instant::now();
    let mut tally = Tally::default();
    let result = (|| {
        for chunk in records.chunks(batch) {
            send_batch(&mut api, &path, chunk, &mut tally, &mut progress)?;
        }
        Ok(())
    })();
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    out.extend(
        tally
            .summary(total, started.elapsed(), conn.json)
            .as_bytes(),
    );
    result.map_err(|e| match e {
        // The host refused a whole batch: name the file line it blamed, if any.
        BatchError::Refused { error, line } => {
            let CliError::Api {
                status,
                code,
                message,
            } = error
            else {
                return error;
            };
            let at = line.map_or(String::new(), |l| format!(" ({} line {l})", file.display()));
            let before = match tally.appended {
                0 => "nothing was appended".to_string(),
                n => format!("{n} records were appended before"),
            };
            CliError::Api {
                status,
                code,
                message: format!("{message}{at}; {before}"),
            }
        }
        BatchError::Transport(e) => e,
    })?;
    match tally.failures.first() {
        None => Ok(()),
        Some((line, e)) => Err(CliError::Partial {
            failed: tally.failed,
            total,
            line: *line,
            first: error_text(e),
        }),
    }
}

enum BatchError {
    /// A 4xx for the whole batch; `line` is the file line the host named.
    Refused {
        error: CliError,
        line: Option<u64>,
    },
    Transport(CliError),
}

/// Sends one batch, re-sending its lines refused by backpressure, and counts the outcome.
fn send_batch(
    api: &mut Api,
    path: &str,
    chunk: &[(u64, String)],
    tally: &mut Tally,
    progress: &mut Option<Progress>,
) -> Result<(), BatchError> {
    let mut pending: Vec<&(u64, String)> = chunk.iter().collect();
    let mut idle_rounds = 0;
    while !pending.is_empty() {
        let mut body = String::new();
        for (_, line) in &pending {
            body.push_str(line);
            body.push('\n');
        }
        let r = send_retrying(api, path, "application/x-ndjson", body.as_bytes())
            .map_err(BatchError::Transport)?;
        if (400..500).contains(&r.status) {
            let line = r.json()["error"]["line"]
                .as_u64()
                .and_then(|k| pending.get((k as usize).checked_sub(1)?))
                .map(|(l, _)| *l);
            return Err(BatchError::Refused {
                error: CliError::from_answer(&r),
                line,
            });
        }
        if !r.is_success() {
            let error = match CliError::from_answer(&r) {
                CliError::Api { code, message, .. } => json!({"code": code, "message": message}),
                other => json!({"code": "error", "message": other.to_string()}),
            };
            for (line, _) in &pending {
                tally.fail(*line, error.clone());
            }
            return Ok(());
        }
        let answer = r.json();
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        let mut again = Vec::new();
        let appended_before = tally.appended;
        for (i, item) in pending.iter().enumerate() {
            let missing = json!({"code": "no-result", "message": "the host answered no result for this line"});
            match results.get(i).map(|r| &r["error"]) {
                None => tally.fail(item.0, missing),
                Some(Value::Null) => tally.appended += 1,
                Some(e) if e["code"] == "queue-full" && idle_rounds < RETRIES_MAX => {
                    again.push(*item)
                }
                Some(e) => tally.fail(item.0, e.clone()),
            }
        }
        if let Some(p) = progress.as_mut() {
            p.draw(tally.appended + tally.failed, false);
        }
        // The host took some lines: its queues drain as fast as it answers, so send the rest
        // at once; it took none: give them time to drain.
        if tally.appended > appended_before {
            idle_rounds = 0;
        } else if !again.is_empty() {
            idle_rounds += 1;
            std::thread::sleep(Duration::from_millis(QUEUE_FULL_WAIT_MS));
        }
        pending = again;
    }
    Ok(())
}

/// A one-line progress bar on stderr, redrawn in place with `\r`.
struct Progress {
    total: u64,
    started: Instant,
    drawn_at: Option<Instant>,
    width: usize,
}

/// Redraws at most this often.
const PROGRESS_REDRAW_MS: u64 = 100;

/// Characters of the bar itself.
const PROGRESS_BAR_CHARS: u64 = 30;

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            total,
            started: Instant::now(),
            drawn_at: None,
            width: 0,
        }
    }

    fn draw(&mut self, done: u64, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .drawn_at
                .is_some_and(|t| now - t < Duration::from_millis(PROGRESS_REDRAW_MS))
        {
            return;
        }
        self.drawn_at = Some(now);
        let line = progress_line(done, self.total, now - self.started);
        self.width = self.width.max(line.chars().count());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line:<w$}", w = self.width);
        let _ = err.flush();
    }

    /// Erases the bar.
    fn finish(&mut self) {
        if self.drawn_at.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{:w$}\r", "", w = self.width);
            let _ = err.flush();
        }
    }
}

fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let filled = (done * PROGRESS_BAR_CHARS).checked_div(total).unwrap_or(0);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "[{}{}] {done}/{total} records {percent:>3}% {rate:.0} records/s",
        "#".repeat(filled as usize),
        " ".repeat((PROGRESS_BAR_CHARS - filled) as usize),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_before_sending() {
        let f = Path::new("w.ndjson");
        let recs = records_of(f, "{\"word\": \"a\"}\r\n\n  \n{\"word\": \"b\"}").unwrap();
        assert_eq!(
            recs,
            vec![
                (1, "{\"word\": \"a\"}".to_string()),
                (4, "{\"word\": \"b\"}".to_string())
            ]
        );
        let e = records_of(f, "{}\n{oops}\n").unwrap_err().to_string();
        assert!(e.starts_with("w.ndjson line 2 is not valid JSON: "), "{e}");
        assert!(records_of(f, "\n \n").is_err());
    }

    #[test]
    fn targets_carry_ack_and_partition() {
        let t = Target {
            module: "kv",
            depot: "puts",
            ack: Ack::Append,
            partition: Some(3),
        };
        assert_eq!(
            t.path(),
            "/v1/modules/kv/depots/puts/append?ack=append&partition=3"
        );
    }

    #[test]
    fn outcomes_and_summaries() {
        assert_eq!(
            render_outcome(&json!({"partition": 2, "offset": 0, "results": {"wordcount": 1}})),
            "appended to partition 2 at offset 0\nwordcount: 1\n"
        );
        assert_eq!(
            render_outcome(&json!({"partition": 5})),
            "queued on partition 5\n"
        );
        let mut t = Tally {
            appended: 10,
            ..Tally::default()
        };
        t.fail(
            7,
            json!({"code": "queue-full", "message": "partition 1 is full"}),
        );
        assert_eq!(
            t.summary(11, Duration::from_secs(2), false),
            "appended 10 records, 1 failed, in 2.00 s (5 records/s)\n\
             line 7: queue-full: partition 1 is full\n"
        );
        let j: Value = serde_json::from_str(&t.summary(11, Duration::from_secs(2), true)).unwrap();
        assert_eq!(j["appended"], 10);
        assert_eq!(j["failed"], 1);
        assert_eq!(j["failures"][0]["line"], 7);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(50, 100, Duration::from_secs(1)),
            format!(
                "[{}{}] 50/100 records  50% 50 records/s",
                "#".repeat(15),
                " ".repeat(15)
            )
        );
        assert!(progress_line(0, 0, Duration::ZERO).contains("100%"));
    }
}
