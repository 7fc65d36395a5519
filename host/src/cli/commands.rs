//! The client commands that are one API call each: `deploy`, `modules`, `describe`, `select`,
//! `query`, `dead-letters`. Each renders the answer into `out` (the raw JSON with `--json`).

use std::path::Path;

use serde_json::Value;

use super::table::{cell, of_objects, Table};
use super::{parse_json_arg, pretty, segment, Api, CliError, Connection, PartitionArg};

/// The module name a file deploys as: its stem, with `_` (cargo's output names) turned into
/// `-`.
pub(super) fn name_from_file(file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    (!stem.is_empty()).then(|| stem.replace('_', "-"))
}

pub(super) fn deploy(
    conn: &Connection,
    file: &Path,
    name: Option<&str>,
    (partitions, placement): (Option<u32>, Option<&str>),
    retain: &[String],
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    let name = match name {
        Some(n) => n.to_string(),
        None => name_from_file(file).ok_or_else(|| {
            CliError::Input(format!(
                "cannot take a module name from `{}`: pass --name",
                file.display()
            ))
        })?,
    };
    let wasm = std::fs::read(file)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
    let query = deploy_query(partitions, placement, retain)?;
    let mut api = Api::with_timeout(conn, super::DEPLOY_TIMEOUT_S)?;
    let path = format!("/v1/modules/{}", segment(&name));
    // The version running before, to tell an update from a PUT of the build already running
    // (both answer 200). Any failure here (usually `unknown-module`) the PUT reports better.
    let before = if conn.json {
        None
    } else {
        api.get(&path).ok().map(|d| d["version"].clone())
    };
    let (r, d) = api.call("PUT", &format!("{path}{query}"), "application/wasm", &wasm)?;
    if conn.json {
        out.extend(pretty(&d).as_bytes());
        return Ok(());
    }
    out.extend(deployed_line(r.status, &d, before.as_ref()).as_bytes());
    Ok(())
}

/// What a deploy's answer says happened.
fn deployed_line(status: u16, d: &Value, version_before: Option<&Value>) -> String {
    let (name, version) = (cell(&d["name"]), cell(&d["version"]));
    if status == 201 {
        format!(
            "deployed {name} version {version} ({} partitions)\n",
            cell(&d["partitions"])
        )
    } else if version_before == Some(&d["version"]) {
        format!("{name} version {version} is already deployed: unchanged\n")
    } else {
        format!("updated {name} to version {version}\n")
    }
}

pub(super) fn modules(conn: &Connection, out: &mut Vec<u8>) -> Result<(), CliError> {
    let list = Api::open(conn)?.get("/v1/modules")?;
    if conn.json {
        out.extend(pretty(&list).as_bytes());
        return Ok(());
    }
    out.extend(render_modules(&list).as_bytes());
    Ok(())
}

pub(super) fn cluster(conn: &Connection, out: &mut Vec<u8>) -> Result<(), CliError> {
    let view = Api::open(conn)?.get("/v1/cluster")?;
    if conn.json {
        out.extend(pretty(&view).as_bytes());
        return Ok(());
    }
    out.extend(render_cluster(&view).as_bytes());
    Ok(())
}

fn render_cluster(view: &Value) -> String {
    if view["mode"] != "cluster" {
        return "single node (not started with --cluster)\n".into();
    }
    let mut text = format!(
        "host {}{}, owner timeout {} ms\n",
        cell(&view["host"]),
        if view["connected"] == true {
            ""
        } else {
            " (cut off from NATS)"
        },
        cell(&view["owner_timeout_ms"])
    );
    let mut hosts = Table::new(&["host", "address", "alive", "last heartbeat ms ago"]);
    for h in view["hosts"].as_array().into_iter().flatten() {
        hosts.row(vec![
            cell(&h["host"]),
            cell(&h["address"]),
            cell(&h["alive"]),
            cell(&h["last_heartbeat_ms_ago"]),
        ]);
    }
    text.push_str(&hosts.render());
    let modules = view["modules"].as_array().cloned().unwrap_or_default();
    if !modules.is_empty() {
        text.push('\n');
        let mut t = Table::new(&[
            "module",
            "partition",
            "owner",
            "epoch",
            "log seq",
            "lag",
            "state",
        ]);
        for m in &modules {
            let partitions = m["partition_owners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if partitions.is_empty() {
                let dash = || "-".to_string();
                let name = cell(&m["name"]);
                t.row(vec![
                    name,
                    dash(),
                    "(none)".into(),
                    dash(),
                    dash(),
                    dash(),
                    "unowned".into(),
                ]);
            }
            for p in &partitions {
                // A module placed per partition names each partition's own owner.
                let owner = if p["host"].is_string() {
                    &p["host"]
                } else {
                    &m["owner"]
                };
                t.row(vec![
                    cell(&m["name"]),
                    cell(&p["partition"]),
                    cell(owner),
                    cell(&p["epoch"]),
                    cell(&p["log_seq"]),
                    cell(&p["lag"]),
                    cell(&p["state"]),
                ]);
            }
        }
        text.push_str(&t.render());
    }
    text
}

fn render_modules(list: &Value) -> String {
    let modules = list["modules"].as_array().cloned().unwrap_or_default();
    // A module that failed to load shows its state and why (only then is the column there).
    let failed = modules.iter().any(|m| m["state"] == "failed");
    let mut header = vec!["name", "version", "partitions"];
    if failed {
        header.extend(["state", "reason"]);
    }
    let mut t = Table::new(&header);
    for m in &modules {
        let mut row = vec![
            cell(&m["name"]),
            cell(&m["version"]),
            cell(&m["partitions"]),
        ];
        if failed {
            row.extend([cell(&m["state"]), cell(&m["reason"])]);
        }
        t.row(row);
    }
    t.render()
}

pub(super) fn describe(conn: &Connection, module: &str, out: &mut Vec<u8>) -> Result<(), CliError> {
    let d = Api::open(conn)?.get(&format!("/v1/modules/{}", segment(module)))?;
    if conn.json {
        out.extend(pretty(&d).as_bytes());
        return Ok(());
    }
    out.extend(render_description(&d).as_bytes());
    Ok(())
}

/// The deploy's query string: `?partitions=N&placement=P&retain.<depot>=<setting>…`
/// (`--retain DEPOT=SETTING`).
fn deploy_query(
    partitions: Option<u32>,
    placement: Option<&str>,
    retain: &[String],
) -> Result<String, CliError> {
    let mut params: Vec<String> = partitions
        .map(|p| format!("partitions={p}"))
        .into_iter()
        .collect();
    params.extend(placement.map(|p| format!("placement={}", segment(p))));
    for r in retain {
        let (depot, setting) = r.split_once('=').ok_or_else(|| {
            CliError::Input(format!(
                "--retain `{r}`: write DEPOT=records:N[,age_ms:MS], DEPOT=none or DEPOT=module"
            ))
        })?;
        params.push(format!("retain.{}={}", segment(depot), segment(setting)));
    }
    Ok(if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    })
}

/// `{"hash": "word"}` as `hash(word)`; `"random"` as `random`.
fn partitioner(p: &Value) -> String {
    match p.as_object() {
        Some(o) if o.len() == 1 => {
            let (kind, arg) = o.iter().next().expect("one entry");
            format!("{kind}({})", cell(arg))
        }
        _ => cell(p),
    }
}

fn render_description(d: &Value) -> String {
    let items = |k: &str| d[k].as_array().cloned().unwrap_or_default();
    let mut s = format!(
        "module {}  version {}  partitions {}\n",
        cell(&d["name"]),
        cell(&d["version"]),
        cell(&d["partitions"])
    );
    let mut depots = Table::new(&["depot", "partitioner"]);
    for x in items("depots") {
        let mut how = partitioner(&x["partitioner"]);
        if let Some(ms) = x["tick_interval_ms"].as_u64() {
            how.push_str(&format!("; ticks every {ms} ms"));
        }
        if let Some(r) = x["retention"].as_object() {
            let bounds: Vec<String> = [("max_records", "records"), ("max_age_ms", "ms")]
                .iter()
                .filter_map(|(k, unit)| r.get(*k)?.as_u64().map(|n| format!("{n} {unit}")))
                .collect();
            how.push_str(&format!("; keeps {}", bounds.join(" and ")));
        }
        depots.row(vec![cell(&x["name"]), how]);
    }
    let mut pstates = Table::new(&["pstate", "schema"]);
    for x in items("pstates") {
        let mut schema = cell(&x["schema"]);
        if x["global"] == serde_json::json!(true) {
            schema.push_str(&format!(
                "  (global, on partition {})",
                cell(&x["partition"])
            ));
        }
        pstates.row(vec![cell(&x["name"]), schema]);
    }
    let mut topologies = Table::new(&["topology", "kind", "depots"]);
    for x in items("topologies") {
        let depots: Vec<String> = x["depots"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        topologies.row(vec![cell(&x["name"]), cell(&x["kind"]), depots.join(", ")]);
    }
    let mut queries = Table::new(&["query"]);
    for x in items("queries") {
        queries.row(vec![cell(&x)]);
    }
    for t in [depots, pstates, topologies, queries] {
        s.push('\n');
        s.push_str(&t.render());
    }
    let migrations = items("migrations");
    if !migrations.is_empty() {
        let mut t = Table::new(&["migration", "state", "progress", "to"]);
        for x in migrations {
            let progress = format!(
                "{}/{} rewritten, {}/{} partitions done",
                cell(&x["rewritten"]),
                cell(&x["entries"]),
                cell(&x["partitions_done"]),
                cell(&d["partitions"])
            );
            t.row(vec![
                cell(&x["pstate"]),
                cell(&x["state"]),
                progress,
                cell(&x["to"]),
            ]);
        }
        s.push('\n');
        s.push_str(&t.render());
    }
    s
}

pub(super) fn select(
    conn: &Connection,
    module: &str,
    pstate: &str,
    path: &str,
    partition: Option<PartitionArg>,
    limit: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    parse_json_arg("PATH", path)?;
    // The path goes into the body as the user wrote it, so numbers keep their exact text.
    let mut body = format!("{{\"path\": {path}");
    match partition {
        Some(PartitionArg::One(p)) => body.push_str(&format!(", \"partition\": {p}")),
        Some(PartitionArg::All) => body.push_str(", \"partition\": \"all\""),
        None => {}
    }
    if let Some(l) = limit {
        body.push_str(&format!(", \"limit\": {l}"));
    }
    body.push('}');
    let answer = Api::open(conn)?.post(
        &format!(
            "/v1/modules/{}/pstates/{}/select",
            segment(module),
            segment(pstate)
        ),
        &body,
    )?;
    if conn.json {
        out.extend(pretty(&answer).as_bytes());
        return Ok(());
    }
    for v in answer["values"].as_array().into_iter().flatten() {
        out.extend(format!("{v}\n").as_bytes());
    }
    if answer["truncated"] == Value::Bool(true) {
        // Not on stdout, which holds only values; the next page needs --json's `next`.
        eprintln!("(truncated at the limit; --json shows `next` for the following page)");
    }
    Ok(())
}

pub(super) fn query(
    conn: &Connection,
    module: &str,
    query: &str,
    args: &str,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    parse_json_arg("ARGS", args)?;
    let answer = Api::open(conn)?.post(
        &format!("/v1/modules/{}/queries/{}", segment(module), segment(query)),
        args,
    )?;
    if conn.json {
        out.extend(pretty(&answer).as_bytes());
        return Ok(());
    }
    let result = &answer["result"];
    let text = match of_objects(result) {
        Some(t) => t.render(),
        None => pretty(result),
    };
    out.extend(text.as_bytes());
    Ok(())
}

/// What `sluice dead-letters` does.
pub(super) enum LetterAction {
    List,
    Replay,
    /// `PARTITION,DEPOT,OFFSET`.
    Discard(String),
}

pub(super) fn dead_letters(
    conn: &Connection,
    module: &str,
    topology: &str,
    action: LetterAction,
    out: &mut Vec<u8>,
) -> Result<(), CliError> {
    let path = format!(
        "/v1/modules/{}/topologies/{}/dead-letters",
        segment(module),
        segment(topology)
    );
    let mut api = Api::open(conn)?;
    let answer = match &action {
        LetterAction::List => api.get(&path)?,
        LetterAction::Replay => api.post(&format!("{path}/replay"), "")?,
        LetterAction::Discard(which) => {
            api.call(
                "DELETE",
                &format!("{path}{}", discard_query(which)?),
                "application/json",
                b"",
            )?
            .1
        }
    };
    if conn.json {
        out.extend(pretty(&answer).as_bytes());
        return Ok(());
    }
    let text = match action {
        LetterAction::List => render_dead_letters(&answer),
        LetterAction::Replay => format!(
            "replayed {}, still failing {}\n",
            cell(&answer["replayed"]),
            cell(&answer["still_failing"])
        ),
        LetterAction::Discard(_) => {
            let d = &answer["discarded"];
            format!(
                "discarded partition {} {} offset {} ({})\n",
                cell(&d["partition"]),
                cell(&d["depot"]),
                cell(&d["offset"]),
                cell(&d["error"])
            )
        }
    };
    out.extend(text.as_bytes());
    Ok(())
}

/// `1,hop:land:from-p3,0` as `?partition=1&depot=hop%3Aland%3Afrom-p3&offset=0` (depot names
/// hold no commas).
fn discard_query(which: &str) -> Result<String, CliError> {
    let bad = || {
        CliError::Input(format!(
            "--discard `{which}`: write PARTITION,DEPOT,OFFSET as `sluice dead-letters` lists them"
        ))
    };
    let mut parts = which.split(',');
    let (Some(p), Some(depot), Some(offset), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (p, offset): (u32, u64) = (
        p.trim().parse().map_err(|_| bad())?,
        offset.trim().parse().map_err(|_| bad())?,
    );
    Ok(format!(
        "?partition={p}&depot={}&offset={offset}",
        segment(depot.trim())
    ))
}

fn render_dead_letters(answer: &Value) -> String {
    let mut t = Table::new(&["partition", "depot", "offset", "code", "attempts", "error"]);
    for d in answer["dead_letters"].as_array().into_iter().flatten() {
        t.row(
            ["partition", "depot", "offset", "code", "attempts", "error"]
                .iter()
                .map(|k| cell(&d[*k]))
                .collect(),
        );
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_come_from_file_stems() {
        assert_eq!(
            name_from_file(Path::new("target/x/old_contract.wasm")).as_deref(),
            Some("old-contract")
        );
        assert_eq!(
            name_from_file(Path::new("wordcount.wasm")).as_deref(),
            Some("wordcount")
        );
        assert_eq!(name_from_file(Path::new("/")), None);
    }

    #[test]
    fn deploy_answers() {
        let d = json!({"name": "wc", "version": 2, "partitions": 4});
        assert_eq!(
            deployed_line(
                201,
                &json!({"name": "wc", "version": 1, "partitions": 4}),
                None
            ),
            "deployed wc version 1 (4 partitions)\n"
        );
        assert_eq!(
            deployed_line(200, &d, Some(&json!(1))),
            "updated wc to version 2\n"
        );
        assert_eq!(
            deployed_line(200, &d, Some(&json!(2))),
            "wc version 2 is already deployed: unchanged\n"
        );
    }

    #[test]
    fn descriptions_show_ticks_retention_and_global_pstates() {
        let d = json!({
            "name": "analytics", "version": 1, "partitions": 2,
            "depots": [{"name": "ticks", "partitioner": "direct", "tick_interval_ms": 60000,
                        "retention": {"max_records": 1440, "max_age_ms": null}}],
            "pstates": [{"name": "daily", "schema": "map<int, int>", "global": true, "partition": 0}],
            "topologies": [], "queries": [],
        });
        let text = render_description(&d);
        assert!(
            text.contains("ticks  direct; ticks every 60000 ms; keeps 1440 records\n"),
            "{text}"
        );
        assert!(
            text.contains("daily   map<int, int>  (global, on partition 0)\n"),
            "{text}"
        );
    }

    #[test]
    fn a_discard_names_partition_depot_and_offset() {
        assert_eq!(
            discard_query("1,hop:land:from-p3,0").unwrap(),
            "?partition=1&depot=hop%3Aland%3Afrom-p3&offset=0"
        );
        assert!(discard_query("1,words").is_err());
        assert!(discard_query("x,words,3").is_err());
    }

    #[test]
    fn deploys_carry_partitions_and_retention_settings() {
        assert_eq!(deploy_query(None, None, &[]).unwrap(), "");
        assert_eq!(
            deploy_query(
                Some(4),
                Some("partitions"),
                &["events=records:10,age_ms:60000".into(), "ticks=none".into()]
            )
            .unwrap(),
            "?partitions=4&placement=partitions&retain.events=records%3A10%2Cage_ms%3A60000&retain.ticks=none"
        );
        assert!(deploy_query(None, None, &["events".into()]).is_err());
    }

    #[test]
    fn descriptions_show_migrations_in_progress() {
        let d = json!({
            "name": "profiles", "version": 2, "partitions": 4, "depots": [], "topologies": [],
            "queries": [], "pstates": [{"name": "profiles", "schema": "map<string, map<string, string>>", "migrate": true}],
            "migrations": [{"pstate": "profiles", "from": "map<string, string>",
                "to": "map<string, map<string, string>>", "state": "running", "entries": 100000,
                "rewritten": 2500, "partitions_done": 1, "errors": []}],
        });
        let text = render_description(&d);
        assert!(
            text.contains("profiles   running  2500/100000 rewritten, 1/4 partitions done  map<string, map<string, string>>"),
            "{text}"
        );
    }

    #[test]
    fn descriptions_render_as_sections() {
        let d = json!({
            "name": "wordcount", "version": 1, "partitions": 8,
            "depots": [{"name": "words", "partitioner": {"hash": "word"}},
                       {"name": "sentences", "partitioner": "random"}],
            "pstates": [{"name": "counts", "schema": "map<string, int>"}],
            "topologies": [{"name": "wordcount", "kind": "stream", "depots": ["words"],
                            "handler": "count", "hop_handlers": []}],
            "queries": ["top-words"],
        });
        assert_eq!(
            render_description(&d),
            "module wordcount  version 1  partitions 8\n\
             \n\
             DEPOT      PARTITIONER\n\
             words      hash(word)\n\
             sentences  random\n\
             \n\
             PSTATE  SCHEMA\n\
             counts  map<string, int>\n\
             \n\
             TOPOLOGY   KIND    DEPOTS\n\
             wordcount  stream  words\n\
             \n\
             QUERY\n\
             top-words\n"
        );
    }

    #[test]
    fn dead_letters_render_as_a_table() {
        let a = json!({"topology": "t", "dead_letters": [
            {"partition": 3, "depot": "words", "offset": 7, "code": "guest-error",
             "error": "boom\nat line 1", "attempts": 3, "record": {"word": "x"}}]});
        assert_eq!(
            render_dead_letters(&a),
            "PARTITION  DEPOT  OFFSET  CODE         ATTEMPTS  ERROR\n\
             3          words  7       guest-error  3         boom at line 1\n"
        );
        assert_eq!(
            render_modules(&json!({"modules": []})),
            "NAME  VERSION  PARTITIONS\n"
        );
    }
}
