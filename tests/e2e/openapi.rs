//! The OpenAPI document served at `/v1/openapi.json` is true of the running host: every
//! operation it lists is routed (never the router's `not-found`, never 405), answers a status
//! the document lists for it, and GETs of JSON routes answer JSON; and the role each operation
//! documents (`x-required-role`) is the one the host enforces with tokens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{module_wasm, Host, Response};

/// The real object to put in each path parameter (for the `wordcount` module).
fn real(param: &str) -> &'static str {
    match param {
        "module" => "wordcount",
        "depot" => "words",
        "partition" => "0",
        "pstate" => "counts",
        "query" => "top-words",
        "topology" => "wordcount",
        other => panic!("openapi.json has a path parameter `{other}` this test does not know"),
    }
}

/// The path template with its parameters filled in; `module` overrides the module name.
fn fill(template: &str, module: Option<&str>) -> String {
    template
        .split('/')
        .map(|s| {
            match (
                s.strip_prefix('{').and_then(|s| s.strip_suffix('}')),
                module,
            ) {
                (Some("module"), Some(m)) => m.to_string(),
                (Some(p), _) => real(p).to_string(),
                (None, _) => s.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The first example of the operation's JSON request body, if it has one.
fn json_body_example(op: &Value) -> Option<Value> {
    let media = &op["requestBody"]["content"]["application/json"];
    if let Some(e) = media.get("example") {
        return Some(e.clone());
    }
    media["examples"]
        .as_object()
        .and_then(|ex| ex.values().next())
        .map(|e| e["value"].clone())
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The error code of a JSON error answer.
fn error_code(r: &Response) -> Option<String> {
    serde_json::from_slice::<Value>(&r.body).ok()?["error"]["code"]
        .as_str()
        .map(str::to_string)
}

/// The request probing one documented operation: path, content type and body. Deploying goes
/// to another name with a body that is no component, deleting to a module that does not exist,
/// so nothing is deployed or deleted; everything else goes to the real objects with the first
/// JSON example of its request body.
fn probe(template: &str, method: &str, op: &Value) -> (String, &'static str, Vec<u8>) {
    match method {
        "PUT" => (
            fill(template, Some("openapi-probe")),
            "application/wasm",
            b"not a wasm component".to_vec(),
        ),
        "DELETE" => (
            fill(template, Some("no-such-module")),
            "application/json",
            Vec::new(),
        ),
        _ => (
            fill(template, None) + &required_query(op),
            "application/json",
            json_body_example(op)
                .map(|b| b.to_string().into_bytes())
                .unwrap_or_default(),
        ),
    }
}

/// The operation's required query parameters, from their examples (`?a=…&b=…`, or "").
fn required_query(op: &Value) -> String {
    let params: Vec<String> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query" && p["required"] == true)
        .map(|p| {
            let example = p["example"]
                .as_str()
                .expect("a required query parameter has an example");
            format!(
                "{}={}",
                p["name"].as_str().unwrap(),
                sluice::client::percent_encode(example)
            )
        })
        .collect();
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

/// Whether the operation answers an event stream: probed with HEAD (the stream's headers,
/// validated like GET), so the probe does not wait on an endless answer.
fn streams(op: &Value) -> bool {
    op["responses"]["200"]["content"]
        .get("text/event-stream")
        .is_some()
}

/// Every (path template, METHOD, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if method != "parameters" {
                out.push((template.clone(), method.to_ascii_uppercase(), op.clone()));
            }
        }
    }
    out
}

/// Sends one documented operation to the host; answers what is wrong with the answer.
fn check_operation(host: &Host, template: &str, method: &str, op: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let (path, content_type, body) = probe(template, method, op);
    let what = format!("{method} {path} (documented as {template})");
    let sent = if streams(op) { "HEAD" } else { method };
    let r = host.request(sent, &path, content_type, &body);
    let is_json = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    let code = error_code(&r);
    let mut problem =
        |p: String| problems.push(format!("{what}: {p}; answered {} {}", r.status, text(&r)));

    // The route exists.
    if r.status == 405 {
        problem("405: the method is not routed".into());
    }
    if code.as_deref() == Some("not-found") {
        problem("the router's `not-found`: the path is not routed".into());
    }
    if r.status >= 400 && (!is_json || code.is_none()) {
        problem("an error must answer the JSON error shape".into());
    }

    // It answers a status the document lists for it.
    let responses = op["responses"].as_object().expect("responses");
    if !responses.contains_key(&r.status.to_string()) && !responses.contains_key("default") {
        problem(format!(
            "openapi.json does not list this status (it lists {:?})",
            responses.keys().collect::<Vec<_>>()
        ));
    }

    // Deploy and delete were sent to fail; everything else works on the real objects.
    let expected_error = match method {
        "PUT" => Some((400, "invalid-component")),
        "DELETE" => Some((404, "unknown-module")),
        _ => None,
    };
    match expected_error {
        Some((status, c)) if (r.status, code.as_deref()) != (status, Some(c)) => {
            problem(format!("expected {status} `{c}`"));
        }
        None if !(200..300).contains(&r.status) => {
            problem("expected a success on the real objects".into());
        }
        _ => {}
    }

    // GETs of JSON routes answer JSON (and /metrics what it documents, Prometheus text).
    if method == "GET" && (200..300).contains(&r.status) {
        let content = &responses
            .get(&r.status.to_string())
            .map_or(Value::Null, |o| o["content"].clone());
        if content.get("application/json").is_some() {
            if !is_json || serde_json::from_slice::<Value>(&r.body).is_err() {
                problem(format!(
                    "a JSON route must answer JSON (content type {:?})",
                    r.header("content-type")
                ));
            }
        } else if let Some(documented) = content.as_object().and_then(|c| c.keys().next()) {
            let media = documented.split(';').next().unwrap_or_default();
            if !r
                .header("content-type")
                .is_some_and(|c| c.starts_with(media))
            {
                problem(format!(
                    "served as {:?}, documented as {documented}",
                    r.header("content-type")
                ));
            }
        }
    }
    problems
}

#[test]
fn every_documented_operation_is_routed_and_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    // A manual clock, so that `POST /v1/clock` has something to move.
    let host = Host::start(
        &dir.path().join("data"),
        &["--manual-clock-ms", "1700000000000"],
    );
    let r = host.deploy("wordcount", &module_wasm("wordcount"), "");
    assert_eq!(r.status, 201, "{}", text(&r));
    let r = host.append("wordcount", "words", &json!({"word": "apple"}));
    assert_eq!(r.status, 200, "{}", text(&r));

    let r = host.get("/v1/openapi.json");
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "openapi.json is served as JSON: {:?}",
        r.header("content-type")
    );
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut checked = 0;
    let mut problems = Vec::new();
    for (template, method, op) in operations(&doc) {
        problems.extend(check_operation(&host, &template, &method, &op));
        checked += 1;
    }
    assert!(
        problems.is_empty(),
        "the running host disagrees with openapi.json:\n{}",
        problems.join("\n")
    );
    assert_eq!(
        checked,
        sluice::api::ROUTES.len(),
        "every documented operation was tried"
    );

    // Nothing was deployed or deleted by the probes.
    let list = host.get("/v1/modules").json();
    assert_eq!(
        list["modules"],
        json!([{"name": "wordcount", "version": 1, "partitions": 8, "state": "running"}])
    );
}

/// One request with an optional bearer token; answers the status.
fn status_with_token(
    host: &Host,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    token: Option<&str>,
) -> u16 {
    let mut s = TcpStream::connect(&host.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line"))
}

#[test]
fn the_documented_roles_are_the_enforced_ones() {
    const ROLES: [&str; 3] = ["read", "write", "admin"];
    let token = |role: &str| format!("{role}-secret-token");
    let specs: Vec<String> = ROLES.iter().map(|r| format!("{r}={}", token(r))).collect();
    let args: Vec<&str> = specs.iter().flat_map(|s| ["--token", s.as_str()]).collect();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &args);
    let admin = token("admin");
    let wasm = module_wasm("wordcount");
    let deployed = status_with_token(
        &host,
        "PUT",
        "/v1/modules/wordcount",
        "application/wasm",
        &wasm,
        Some(&admin),
    );
    assert_eq!(deployed, 201);
    let r = host.get("/v1/openapi.json");
    assert_eq!(r.status, 401, "the document itself needs a token");
    let doc: Value = {
        let mut s = TcpStream::connect(&host.addr).unwrap();
        write!(
            s,
            "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token("read")
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        serde_json::from_slice(&raw[split + 4..]).expect("the document")
    };

    let mut problems = Vec::new();
    for (template, method, op) in operations(&doc) {
        let (path, content_type, body) = probe(&template, &method, &op);
        let what = format!("{method} {path}");
        let sent = if streams(&op) {
            "HEAD"
        } else {
            method.as_str()
        };
        let send = |t: Option<&str>| status_with_token(&host, sent, &path, content_type, &body, t);
        let Some(role) = op["x-required-role"].as_str() else {
            // Open routes (/health) say so with `security: []`.
            if op["security"] != json!([]) {
                problems.push(format!("{what}: neither x-required-role nor security: []"));
            }
            let s = send(None);
            if s == 401 || s == 403 {
                problems.push(format!(
                    "{what}: documented open, answered {s} without a token"
                ));
            }
            continue;
        };
        let need = ROLES
            .iter()
            .position(|r| *r == role)
            .unwrap_or_else(|| panic!("{what}: unknown role `{role}`"));
        let s = send(None);
        if s != 401 {
            problems.push(format!("{what}: answered {s} without a token, not 401"));
        }
        for (i, r) in ROLES.iter().enumerate() {
            let s = send(Some(&token(r)));
            let refused = s == 401 || s == 403;
            if i < need && s != 403 {
                problems.push(format!(
                    "{what}: documented as `{role}`, answered {s} to `{r}`, not 403"
                ));
            }
            if i >= need && refused {
                problems.push(format!(
                    "{what}: documented as `{role}`, refused `{r}` with {s}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "openapi.json's x-required-role disagrees with the host:\n{}",
        problems.join("\n")
    );
}
