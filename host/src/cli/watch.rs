//! `sluice watch MODULE PSTATE PATH`: subscribe to a path and print its value and each diff
//! as they come.
//!
//! Text: `value <id> <values>` (and `reset <id> <values> (<reason>)`), then one line
//! `diff <id> <change>` per change; `--json`: one JSON event per line, `{"id", "event",
//! "data"}`. When the stream ends because the host stopped, restarted or dropped a slow
//! subscriber, it reconnects with `Last-Event-ID` (resuming without a gap, or printing the
//! `reset` the host sends) for up to [`RECONNECT_FOR_S`] seconds. Unlike other commands it
//! writes to stdout as events arrive.

use std::io::Write;
use std::time::{Duration, Instant};

use super::{CliError, Connection};
use crate::client::sse::{SseEvent, Watched};
use crate::client::Client;

/// How long the command keeps trying to reconnect to a host that went away.
pub const RECONNECT_FOR_S: u64 = 60;

/// What to watch.
pub struct Target<'a> {
    pub module: &'a str,
    pub pstate: &'a str,
    pub path: &'a str,
    pub partition: Option<u32>,
    pub last_event_id: Option<String>,
    /// Stop after this many value/diff/reset events.
    pub events: Option<u64>,
}

fn url(t: &Target<'_>) -> String {
    crate::client::subscribe_path(t.module, t.pstate, t.path, t.partition)
}

fn print(e: &SseEvent, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        let line = serde_json::json!({"id": e.id, "event": e.event, "data": e.data});
        writeln!(out, "{line}")?;
    } else {
        let id = e.id.as_deref().unwrap_or("-");
        match e.event.as_str() {
            "value" => writeln!(out, "value {id} {}", e.data["values"])?,
            "reset" => writeln!(
                out,
                "reset {id} {} ({})",
                e.data["values"],
                e.data["reason"].as_str().unwrap_or("")
            )?,
            "diff" => {
                for c in e.data["changes"].as_array().into_iter().flatten() {
                    writeln!(out, "diff {id} {c}")?;
                }
            }
            other => writeln!(out, "{other}: {}", e.data["message"].as_str().unwrap_or(""))?,
        }
    }
    out.flush()
}

/// Runs the command until the stream ends for good, `--events` were printed, or stdout closes.
pub fn run(conn: &Connection, mut target: Target<'_>) -> Result<(), CliError> {
    super::parse_json_arg("PATH", target.path)?;
    let client = Client::new(&conn.server)
        .map_err(CliError::Input)?
        .with_token(conn.token.clone());
    let server = format!("http://{}", client.addr());
    let mut seen = 0u64;
    let mut state = Watched::default();
    let mut stdout = std::io::stdout().lock();
    let mut lost_since: Option<Instant> = None;
    loop {
        let opened = client.subscribe(&url(&target), target.last_event_id.as_deref(), None);
        let mut stream = match opened {
            Ok(Ok(s)) => {
                lost_since = None;
                s
            }
            Ok(Err(answer)) if answer.status == 503 && lost_since.is_some() => {
                reconnect_wait(&mut lost_since, &server, None)?;
                continue;
            }
            Ok(Err(answer)) => return Err(CliError::from_answer(&answer)),
            Err(e) if lost_since.is_some() => {
                reconnect_wait(&mut lost_since, &server, Some(e))?;
                continue;
            }
            Err(e) => return Err(CliError::Unreachable { server, source: e }),
        };
        // Until the host goes away mid-stream (then reconnect and resume) or a final event.
        while let Ok(Some(e)) = stream.next_event() {
            if e.is_final() {
                if e.event == "error" {
                    return Err(CliError::Api {
                        status: 200,
                        code: e.data["code"].as_str().unwrap_or("error").to_string(),
                        message: e.data["message"].as_str().unwrap_or("").to_string(),
                    });
                }
                if !conn.json {
                    eprintln!(
                        "({}: {}; reconnecting)",
                        e.event,
                        e.data["message"].as_str().unwrap_or("")
                    );
                } else if print(&e, true, &mut stdout).is_err() {
                    return Ok(());
                }
                break;
            }
            state.apply(&e).map_err(|m| {
                CliError::Input(format!("the host sent a diff that does not apply: {m}"))
            })?;
            target.last_event_id = state.last_id.clone();
            if print(&e, conn.json, &mut stdout).is_err() {
                return Ok(()); // stdout closed
            }
            seen += 1;
            if target.events.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
        lost_since.get_or_insert_with(Instant::now);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn reconnect_wait(
    lost_since: &mut Option<Instant>,
    server: &str,
    e: Option<std::io::Error>,
) -> Result<(), CliError> {
    let since = *lost_since.get_or_insert_with(Instant::now);
    if since.elapsed() > Duration::from_secs(RECONNECT_FOR_S) {
        return Err(CliError::Unreachable {
            server: server.to_string(),
            source: e.unwrap_or_else(|| std::io::Error::other("the host kept answering 503")),
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}
