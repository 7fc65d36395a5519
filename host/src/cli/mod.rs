//! The client subcommands of the `sluice` binary (`deploy`, `modules`, `describe`, `append`,
//! `select`, `watch`, `query`, `dead-letters`): each is one or a few API calls through
//! [`crate::client::Client`], with the answer printed as text (or, with `--json`, as the
//! server's JSON).
//!
//! Invariants: stdout carries only results; a failure prints exactly one line
//! `error: ...` on stderr and exits 1 (clap's usage errors exit 2); a request is sent again
//! only when the server answered 503 with `Retry-After`, which it does only for requests it
//! did not queue, so no record is ever appended twice by a retry.

mod append;
mod commands;
mod table;
mod watch;

use std::io::Write;
use std::time::Duration;

use crate::client::{Client, Response};

/// The server when neither `--server` nor `SLUICE_SERVER` names one (`sluice serve`'s default).
pub const SERVER_DEFAULT: &str = "http://127.0.0.1:7470";

/// How long a request may wait for its answer.
const REQUEST_TIMEOUT_S: u64 = 60;

/// How long a deploy may wait: compiling a large module on a cold cache takes a while.
const DEPLOY_TIMEOUT_S: u64 = 600;

/// Where and how to reach the host; every client subcommand takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The host, as http://HOST:PORT.
    #[arg(long, env = "SLUICE_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// Bearer token sent with every request.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Ack level of an append.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Answered once the record is queued on its partition.
    None,
    /// Answered after the depot-log commit holding the record.
    Append,
    /// Answered after every stream topology processed the record.
    Full,
}

impl Ack {
    fn as_str(self) -> &'static str {
        match self {
            Ack::None => "none",
            Ack::Append => "append",
            Ack::Full => "full",
        }
    }
}

/// Which partitions a select reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionArg {
    One(u32),
    All,
}

fn parse_partition_arg(s: &str) -> Result<PartitionArg, String> {
    if s == "all" {
        return Ok(PartitionArg::All);
    }
    s.parse()
        .map(PartitionArg::One)
        .map_err(|_| format!("expected a partition number or `all`, got `{s}`"))
}

/// The client subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Deploy a module, or update the deployed module of that name.
    Deploy {
        /// The module's .wasm file.
        file: std::path::PathBuf,
        /// The module's name [default: the file's stem with `_` turned into `-`].
        #[arg(long)]
        name: Option<String>,
        /// Partitions of a new module [default: the host's --partitions].
        #[arg(long)]
        partitions: Option<u32>,
        /// Retention set by this deployment, replacing the module's for that depot:
        /// `DEPOT=records:N[,age_ms:MS]`, `DEPOT=none` (keep all) or `DEPOT=module` (back to
        /// the module's declaration); repeatable.
        #[arg(long, value_name = "DEPOT=SETTING")]
        retain: Vec<String>,
        /// On a cluster, how a new module is placed: `module` (every partition on one host)
        /// or `partitions` (each partition on its own host) [default: module].
        #[arg(long)]
        placement: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List the deployed modules.
    Modules {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show the cluster as the host sees it: hosts (alive, last heartbeat) and, per module
    /// partition, its owner.
    Cluster {
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a module's depots, PStates, topologies and queries.
    Describe {
        /// The module's name.
        module: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Append one JSON record to a depot, or a whole NDJSON file in batches.
    Append {
        /// The module's name.
        module: String,
        /// The depot's name.
        depot: String,
        /// The record as JSON, or `-` to read it from stdin.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        record: Option<String>,
        /// An NDJSON file (one record a line) to append in batches.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// When the host answers.
        #[arg(long, value_enum, default_value = "full")]
        ack: Ack,
        /// The partition, for `direct` depots.
        #[arg(long)]
        partition: Option<u32>,
        /// Records per request with --file.
        #[arg(long, default_value_t = append::BATCH_LINES_DEFAULT,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        batch: usize,
        #[command(flatten)]
        conn: Connection,
    },
    /// Read a PState along a path; prints the values one per line.
    Select {
        /// The module's name.
        module: String,
        /// The PState's name.
        pstate: String,
        /// The path as JSON, e.g. '[{"key": "apple"}]'.
        path: String,
        /// A partition number, or `all` [default: the partition owning the path's key].
        #[arg(long, value_parser = parse_partition_arg)]
        partition: Option<PartitionArg>,
        /// The most values to return.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Subscribe to a path: print its value, then each diff as it is committed (reconnects
    /// with Last-Event-ID when the host restarts).
    Watch {
        /// The module's name.
        module: String,
        /// The PState's name.
        pstate: String,
        /// The path as JSON, e.g. '[{"key": "apple"}]'.
        path: String,
        /// The partition [default: the partition owning the path's key].
        #[arg(long)]
        partition: Option<u32>,
        /// Resume after this event id.
        #[arg(long)]
        last_event_id: Option<String>,
        /// Exit after this many value/diff/reset events.
        #[arg(long)]
        events: Option<u64>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run a query topology.
    Query {
        /// The module's name.
        module: String,
        /// The query topology's name.
        query: String,
        /// The arguments as JSON.
        #[arg(default_value = "{}")]
        args: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List the records a topology gave up on, with their errors; or run them again
    /// (`--replay`), or discard one (`--discard`).
    DeadLetters {
        /// The module's name.
        module: String,
        /// The topology's name.
        topology: String,
        /// Run the topology again on its dead letters (after a fix was deployed).
        #[arg(long, conflicts_with = "discard")]
        replay: bool,
        /// Discard one dead letter for good, named as listed: PARTITION,DEPOT,OFFSET.
        #[arg(long, value_name = "PARTITION,DEPOT,OFFSET")]
        discard: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Verify a stopped host's data directory (headers, checksums of every record and entry,
    /// log against store); exits 1 on any damage, naming each file.
    Check {
        /// The host's data directory.
        data_dir: std::path::PathBuf,
    },
}

/// Why a client command failed; printed as `error: {self}`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach {server}: {source}")]
    Unreachable {
        server: String,
        source: std::io::Error,
    },
    #[error("no answer from {server} within {timeout_s} s")]
    Timeout { server: String, timeout_s: u64 },
    /// Something answered, but not in HTTP/1.1 as the host speaks it.
    #[error("unreadable answer from {server}: {source}")]
    BadAnswer {
        server: String,
        source: std::io::Error,
    },
    /// A bad argument or input file.
    #[error("{0}")]
    Input(String),
    /// Some records of an NDJSON file were not appended.
    #[error("{failed} of {total} records failed; the first, line {line}: {first}")]
    Partial {
        failed: u64,
        total: u64,
        line: u64,
        first: String,
    },
}

impl CliError {
    /// The error a non-2xx answer carries: the API's `{"error": {code, message}}`, or for an
    /// answer without one (a proxy, say) `http-<status>` and the body's first line.
    fn from_answer(r: &Response) -> Self {
        let code = r.error_code();
        let (code, message) = if code.is_empty() {
            let text = String::from_utf8_lossy(&r.body);
            let first = text.lines().next().unwrap_or("").trim();
            (format!("http-{}", r.status), first.to_string())
        } else {
            (code, one_line(&r.error_message()))
        };
        CliError::Api {
            status: r.status,
            code,
            message,
        }
    }
}

/// Runs a client command and returns the process exit code, having printed the results on
/// stdout or one error line on stderr.
pub fn run(command: Command) -> i32 {
    let mut out = Vec::new();
    let result = match command {
        Command::Deploy {
            file,
            name,
            partitions,
            retain,
            placement,
            conn,
        } => commands::deploy(
            &conn,
            &file,
            name.as_deref(),
            (partitions, placement.as_deref()),
            &retain,
            &mut out,
        ),
        Command::Modules { conn } => commands::modules(&conn, &mut out),
        Command::Cluster { conn } => commands::cluster(&conn, &mut out),
        Command::Describe { module, conn } => commands::describe(&conn, &module, &mut out),
        Command::Append {
            module,
            depot,
            record,
            file,
            ack,
            partition,
            batch,
            conn,
        } => {
            let target = append::Target {
                module: &module,
                depot: &depot,
                ack,
                partition,
            };
            match (file, record) {
                (Some(file), _) => append::file(&conn, &target, &file, batch, &mut out),
                (None, record) => {
                    append::one(&conn, &target, record.as_deref().unwrap_or("-"), &mut out)
                }
            }
        }
        Command::Select {
            module,
            pstate,
            path,
            partition,
            limit,
            conn,
        } => commands::select(&conn, &module, &pstate, &path, partition, limit, &mut out),
        Command::Watch {
            module,
            pstate,
            path,
            partition,
            last_event_id,
            events,
            conn,
        } => watch::run(
            &conn,
            watch::Target {
                module: &module,
                pstate: &pstate,
                path: &path,
                partition,
                last_event_id,
                events,
            },
        ),
        Command::Query {
            module,
            query,
            args,
            conn,
        } => commands::query(&conn, &module, &query, &args, &mut out),
        Command::DeadLetters {
            module,
            topology,
            replay,
            discard,
            conn,
        } => {
            let action = match (replay, discard) {
                (true, _) => commands::LetterAction::Replay,
                (false, Some(d)) => commands::LetterAction::Discard(d),
                (false, None) => commands::LetterAction::List,
            };
            commands::dead_letters(&conn, &module, &topology, action, &mut out)
        }
        Command::Check { data_dir } => check(&data_dir, &mut out),
    };
    // A closed stdout (`sluice modules | head -1`) is not an error worth reporting.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            1
        }
    }
}

/// `sluice check`: the report on stdout, an error if anything is damaged.
fn check(data_dir: &std::path::Path, out: &mut Vec<u8>) -> Result<(), CliError> {
    let report = crate::storage::check::check_data_dir(data_dir);
    for p in &report.problems {
        let _ = writeln!(out, "damaged: {p}");
    }
    let _ = writeln!(
        out,
        "checked {} files, {} records and entries: {}",
        report.files,
        report.entries,
        if report.is_clean() {
            "ok".to_string()
        } else {
            format!("{} problems", report.problems.len())
        }
    );
    if report.is_clean() {
        Ok(())
    } else {
        Err(CliError::Input(format!(
            "{} is damaged ({} problems)",
            data_dir.display(),
            report.problems.len()
        )))
    }
}

/// `text` on one line: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One path segment of a URL, percent-encoded.
fn segment(s: &str) -> String {
    crate::client::percent_encode(s)
}

/// `text` parsed as JSON, or an error naming the argument it came from.
fn parse_json_arg(what: &str, text: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text).map_err(|e| {
        let hint = if text.trim_start().starts_with(['{', '[', '"']) {
            ""
        } else {
            " (strings need quotes: '\"apple\"')"
        };
        CliError::Input(format!("{what} is not valid JSON: {e}{hint}"))
    })
}

/// A connection to the host, turning transport failures into [`CliError`]s.
struct Api {
    client: Client,
    server: String,
    timeout_s: u64,
}

impl Api {
    fn open(conn: &Connection) -> Result<Self, CliError> {
        Self::with_timeout(conn, REQUEST_TIMEOUT_S)
    }

    fn with_timeout(conn: &Connection, timeout_s: u64) -> Result<Self, CliError> {
        let client = Client::new(&conn.server)
            .map_err(CliError::Input)?
            .with_token(conn.token.clone())
            .with_timeout(Duration::from_secs(timeout_s));
        let server = format!("http://{}", client.addr());
        Ok(Self {
            client,
            server,
            timeout_s,
        })
    }

    /// Sends one request; any answer, error statuses included, is `Ok`.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, CliError> {
        self.client
            .request(method, path, content_type, body)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    CliError::Timeout {
                        server: self.server.clone(),
                        timeout_s: self.timeout_s,
                    }
                }
                std::io::ErrorKind::InvalidData => CliError::BadAnswer {
                    server: self.server.clone(),
                    source: e,
                },
                _ => CliError::Unreachable {
                    server: self.server.clone(),
                    source: e,
                },
            })
    }

    /// Sends one request and answers the JSON body of a 2xx answer.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(Response, serde_json::Value), CliError> {
        let r = self.send(method, path, content_type, body)?;
        if !r.is_success() {
            return Err(CliError::from_answer(&r));
        }
        let json = r.json();
        Ok((r, json))
    }

    fn get(&mut self, path: &str) -> Result<serde_json::Value, CliError> {
        Ok(self.call("GET", path, "application/json", b"")?.1)
    }

    fn post(&mut self, path: &str, body: &str) -> Result<serde_json::Value, CliError> {
        Ok(self
            .call("POST", path, "application/json", body.as_bytes())?
            .1)
    }
}

/// The JSON `v` pretty-printed, with a final newline.
fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("word-count_2.x~"), "word-count_2.x~");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn errors_print_on_one_line() {
        assert_eq!(one_line("a\n  b\r\n\nc "), "a b c");
        let r = Response {
            status: 404,
            headers: vec![],
            body: br#"{"error":{"code":"unknown-module","message":"no module\nnamed `x`"}}"#
                .to_vec(),
        };
        assert_eq!(
            CliError::from_answer(&r).to_string(),
            "unknown-module: no module named `x`"
        );
        let r = Response {
            status: 502,
            headers: vec![],
            body: b"Bad Gateway\n<html>".to_vec(),
        };
        assert_eq!(
            CliError::from_answer(&r).to_string(),
            "http-502: Bad Gateway"
        );
    }

    #[test]
    fn bad_json_arguments_are_named() {
        let e = parse_json_arg("PATH", "apple").unwrap_err().to_string();
        assert!(e.starts_with("PATH is not valid JSON: "), "{e}");
        assert!(e.contains("strings need quotes"), "{e}");
        let e = parse_json_arg("ARGS", "{\"n\": }").unwrap_err().to_string();
        assert!(!e.contains("strings need quotes"), "{e}");
        assert_eq!(parse_json_arg("ARGS", "{}").unwrap(), serde_json::json!({}));
    }

    #[test]
    fn partition_arguments() {
        assert_eq!(parse_partition_arg("all"), Ok(PartitionArg::All));
        assert_eq!(parse_partition_arg("3"), Ok(PartitionArg::One(3)));
        assert!(parse_partition_arg("-1").is_err());
    }
}
