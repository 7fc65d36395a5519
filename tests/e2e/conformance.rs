//! HTTP conformance (issue 13): what RFC 9110 asks of the answers, found by Schemathesis and
//! curl: `Allow` on 405, `WWW-Authenticate` on 401, `HEAD` on every `GET` route, `/health`
//! only for GET/HEAD, a non-component upload is a 400 before any conflict, and the OpenAPI
//! document's `$bytes` pattern matches what the host accepts.

use std::io::{Read, Write};

use crate::harness::Host;

#[test]
fn answers_carry_the_headers_their_status_requires() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    host.deploy_ok("wc", "wordcount", "?partitions=2");

    let r = host.request("GET", "/v1/modules/wc/depots/words/append", "", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = host.request("POST", "/health", "", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = host.request("PATCH", "/v1/modules/wc", "", b"");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, PUT, DELETE"))
    );
    assert_eq!(host.request("DELETE", "/health/ready", "", b"").status, 405);

    for path in [
        "/health",
        "/v1/modules",
        "/v1/modules/wc",
        "/metrics",
        "/v1/openapi.json",
    ] {
        let (status, length, body) = head(&host.addr, path);
        assert_eq!(status, 200, "HEAD {path}");
        assert!(
            length.is_some_and(|l| l > 0),
            "HEAD {path}: content-length {length:?}"
        );
        assert!(
            body.is_empty(),
            "HEAD {path} sent a body of {} bytes",
            body.len()
        );
    }

    // Not a component at all: 400, even with a partition count that would conflict (409).
    let r = host.request(
        "PUT",
        "/v1/modules/wc?partitions=4",
        "application/wasm",
        b"not wasm",
    );
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid-component".into())
    );

    let doc: serde_json::Value = host.get("/v1/openapi.json").json();
    let text = doc.to_string();
    assert!(
        text.contains(r#""pattern":"^([0-9a-f]{2})*$""#),
        "the $bytes pattern"
    );
    assert!(!text.contains("0-9a-fA-F"));
}

#[test]
fn unauthorized_answers_name_the_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--token", "read=read-token-12345"],
    );
    let r = host.get("/v1/modules");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"sluice\"")
    );
}

/// A raw `HEAD` request: status, content-length, and whatever bytes followed the head.
fn head(addr: &str, path: &str) -> (u16, Option<usize>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    });
    (status, length, all[end..].to_vec())
}
