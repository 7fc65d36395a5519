//! Auth, limits and the HTTP edge: every bad request gets its precise status and error code,
//! and nothing is written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::harness::{module_wasm, Host};

fn with_token(
    host: &Host,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(&host.addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--token",
            "admin=admin-secret",
            "--token",
            "write=write-secret",
            "--token",
            "read=read-secret",
        ],
    );
    let wasm = module_wasm("wordcount");
    let deploy = |token: Option<&str>| with_token(&host, "PUT", "/v1/modules/wc", token, &wasm).0;
    assert_eq!(deploy(None), 401);
    assert_eq!(deploy(Some("not-a-token")), 401);
    assert_eq!(deploy(Some("write-secret")), 403);
    assert_eq!(deploy(Some("admin-secret")), 201);
    let append = |token: Option<&str>| {
        with_token(
            &host,
            "POST",
            "/v1/modules/wc/depots/words/append",
            token,
            br#"{"word": "a"}"#,
        )
    };
    let (status, body) = append(Some("read-secret"));
    assert_eq!(status, 403);
    assert!(
        body.contains("\"forbidden\"") && body.contains("`write` role"),
        "{body}"
    );
    assert_eq!(append(None).0, 401);
    assert_eq!(append(Some("write-secret")).0, 200);
    assert_eq!(append(Some("admin-secret")).0, 200, "admin includes write");
    let select = |token: Option<&str>| {
        with_token(
            &host,
            "POST",
            "/v1/modules/wc/pstates/counts/select",
            token,
            br#"{"path": [{"key": "a"}]}"#,
        )
    };
    assert_eq!(select(None).0, 401);
    let (status, body) = select(Some("read-secret"));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"next":null,"truncated":false,"values":[2]}"#)
    );
    assert_eq!(
        with_token(&host, "GET", "/health", None, b"").0,
        200,
        "health needs no token"
    );
}

#[test]
fn non_loopback_without_tokens_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[test]
fn limits_answer_with_the_limit_they_hit() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--ndjson-lines-max",
            "3",
            "--path-navigators-max",
            "2",
            "--module-size-mb",
            "1",
            "--connections-max",
            "2",
        ],
    );
    host.deploy_ok("wc", "wordcount", "");
    // With 2 connections allowed, the previous request's connection may still be closing on
    // the host's side: a 503 `too-many-connections` is retried (nothing was read or queued).
    let admitted = |send: &dyn Fn() -> sluice::client::Response| {
        for _ in 0..100 {
            let r = send();
            if r.error_code() != "too-many-connections" {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never admitted")
    };
    let r = admitted(&|| {
        host.request(
            "POST",
            "/v1/modules/wc/depots/words/append",
            "application/x-ndjson",
            "{\"word\":\"a\"}\n".repeat(4).as_bytes(),
        )
    });
    assert_eq!((r.status, r.error_code().as_str()), (413, "too-many-lines"));
    let r = admitted(&|| {
        host.post_json(
            "/v1/modules/wc/pstates/counts/select",
            &json!({"path": [{"key": "a"}, "count", "count"]}),
        )
    });
    assert_eq!((r.status, r.error_code().as_str()), (400, "path-too-long"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("path_navigators_max"));
    let big = vec![0u8; (1 << 20) + 1];
    let r = admitted(&|| host.deploy("big", &big, ""));
    assert_eq!((r.status, r.error_code().as_str()), (413, "body-too-large"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("module_size_bytes"));

    // Two connections held open (each served once and kept alive, so each holds its slot);
    // the third is refused with a 503 naming the limit, after its request head was read.
    // Earlier connections may still be closing, so the hold is retried until both are served.
    let mut held = Vec::new();
    for _ in 0..50 {
        held = (0..2)
            .map(|_| TcpStream::connect(&host.addr).unwrap())
            .collect::<Vec<_>>();
        let mut served = 0;
        for s in &mut held {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(2000)))
                .unwrap();
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200" {
                served += 1;
            }
        }
        if served == 2 {
            break;
        }
        drop(std::mem::take(&mut held));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(held.len(), 2, "could not hold two connections");
    let r = host.request("GET", "/health", "application/json", b"");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "too-many-connections")
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(held);
    // Once the held connections close, their slots free up (polled: the host notices the close
    // asynchronously).
    let mut status = 0;
    for _ in 0..100 {
        status = host.get("/health").status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 200);
    assert_eq!(host.depot_records("wc", "words"), 0);
}

#[test]
fn the_http_edge_table() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wc", "wordcount", "");
    let deep = "[".repeat(200) + &"]".repeat(200);
    let deep_value = format!(
        "{{\"word\": \"a\", \"x\": {}}}",
        "[".repeat(100) + &"]".repeat(100)
    );
    // (method, path, content type, body, status, code)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let append = "/v1/modules/wc/depots/words/append";
    let select = "/v1/modules/wc/pstates/counts/select";
    let cases: Vec<Case> = vec![
        (
            "DELETE",
            append,
            "application/json",
            vec![],
            405,
            "method-not-allowed",
        ),
        (
            "PATCH",
            "/v1/modules/wc",
            "application/json",
            vec![],
            405,
            "method-not-allowed",
        ),
        (
            "POST",
            append,
            "image/png",
            br#"{"word":"a"}"#.to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            append,
            "application/json",
            b"{\"word\": \"a".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            append,
            "application/json",
            b"{\"word\": \"\xff\xfe\"}".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            append,
            "application/json",
            deep.into_bytes(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            append,
            "application/json",
            deep_value.into_bytes(),
            400,
            "invalid-value",
        ),
        (
            "POST",
            append,
            "application/json",
            b"{\"word\": 1e999}".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            select,
            "application/json",
            br#"{"path": [{"key": 123456789012345678901234567890}]}"#.to_vec(),
            400,
            "schema-mismatch",
        ),
        (
            "POST",
            append,
            "application/json",
            b"[]".to_vec(),
            400,
            "missing-key",
        ),
        (
            "POST",
            append,
            "application/json",
            b"".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "POST",
            select,
            "application/json",
            br#"{"path": [{"key": "a"}], "bogus": true}"#.to_vec(),
            400,
            "unknown-field",
        ),
        (
            "POST",
            select,
            "application/json",
            br#"{"path": "a"}"#.to_vec(),
            400,
            "invalid-path",
        ),
        (
            "POST",
            select,
            "application/json",
            br#"[1, 2]"#.to_vec(),
            400,
            "invalid-request",
        ),
        (
            "GET",
            "/v1/modules/wc/depots/words/partitions/0?from=-1",
            "application/json",
            vec![],
            400,
            "invalid-parameter",
        ),
        (
            "PUT",
            "/v1/modules/wc?partitions=abc",
            "application/wasm",
            b"x".to_vec(),
            400,
            "invalid-parameter",
        ),
    ];
    for (method, path, ct, body, status, code) in cases {
        let r = host.request(method, path, ct, &body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "{method} {path} {ct}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A body cut short (the client promised more, then closed) is refused and writes nothing.
    let mut s = TcpStream::connect(&host.addr).unwrap();
    s.write_all(format!("POST {append} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"word\":").as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(host.depot_records("wc", "words"), 0);
    assert_eq!(host.get("/health").status, 200);
}
