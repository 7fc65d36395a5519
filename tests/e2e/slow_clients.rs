//! Slow, idle and greedy clients (issue 13): before, 100 slowloris sockets with
//! `--connections-max 100` (or 1,030 idle ones against the default 1024) left 0 of 20 normal
//! clients served for 40 s, and refused clients saw a reset. Now one client address holds at
//! most its share of the connections, request heads must arrive within the header-read
//! timeout (idle keep-alive connections included), and a refused connection gets its 503.
//! Clients use distinct 127.0.0.x source addresses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::Host;

/// A connection from source address `from` (127.0.0.x).
fn connect_from(from: &str, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on a fresh connection from `from`; the status and the body.
fn request_from(from: &str, to: &str, path: &str) -> (u16, String) {
    let mut s = connect_from(from, to);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Whether the host closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slowloris_from_one_address_leaves_the_others_served_and_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--connections-max",
            "100",
            "--connections-per-address-max",
            "40",
            "--header-read-timeout-ms",
            "1000",
        ],
    );
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = connect_from("127.0.0.2", &host.addr);
            // A head that never ends.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Every normal client is served at once, from another address.
    for i in 0..20 {
        let (status, _) = request_from("127.0.0.3", &host.addr, "/health");
        assert_eq!(status, 200, "normal client {i}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // One more from the slow address, with a whole request: a 503 saying why, not a reset.
    let (status, body) = request_from("127.0.0.2", &host.addr, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too-many-connections-from-address"), "{body}");
    // The host cuts every slow head off after the header-read timeout.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "slow socket {i} still open"
        );
    }
    let (status, _) = request_from("127.0.0.2", &host.addr, "/health");
    assert_eq!(
        status, 200,
        "the address is served again once its sockets closed"
    );
}

#[test]
fn a_thousand_idle_sockets_do_not_lock_out_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--header-read-timeout-ms", "1500"],
    );
    // 1,030 idle sockets (over the default connections_max of 1024) from one address.
    let mut idle: Vec<TcpStream> = (0..1030)
        .map(|_| connect_from("127.0.0.4", &host.addr))
        .collect();
    for i in 0..20 {
        let (status, _) = request_from("127.0.0.5", &host.addr, "/health");
        assert_eq!(status, 200, "normal client {i}");
    }
    // Idle connections are closed by the header-read timeout; a keep-alive one too.
    let mut kept = connect_from("127.0.0.6", &host.addr);
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)),
        "idle keep-alive kept open"
    );
    for s in idle.iter_mut().take(50) {
        assert!(closed_within(s, Duration::from_secs(5)));
    }
}

/// Clients that never read their answers: before, four of them took the host to 948 MB. Now
/// an answer that makes no progress for `--write-stall-timeout-ms` closes its connection (and
/// each answer is bounded by `--answer-bytes-max`), and everyone else is served meanwhile.
#[test]
fn clients_that_never_read_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--write-stall-timeout-ms", "500"],
    );
    host.deploy_ok("wc", "wordcount", "?partitions=1");
    // ~8 MB of records: 200 words of 40 KB.
    for chunk in 0..4 {
        let lines: Vec<_> = (0..50)
            .map(|i| serde_json::json!({"word": format!("{chunk}-{i}-{}", "y".repeat(40_000))}))
            .collect();
        host.append_all("wc", "words", "?ack=append", &lines);
    }
    let path = "/v1/modules/wc/depots/words/partitions/0?from=0&limit=1000";
    let full_answer = host.get(path).body.len();
    assert!(full_answer > 4 << 20, "{full_answer}");
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let to: SocketAddr = host.addr.parse().unwrap();
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&to.into()).unwrap();
            let mut s: TcpStream = s.into();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = request_from("127.0.0.7", &host.addr, "/health");
    assert_eq!(status, 200, "others are served while the answers stall");
    // Long enough for the host to produce the four answers up to the point where the socket
    // buffers are full, even on a loaded machine (a debug build makes 32 MB of JSON slowly):
    // a client read while its answer is still being produced would let it make progress.
    std::thread::sleep(Duration::from_millis(6000));
    // Now read: what the kernel buffered, then the end — well before the whole answer.
    for (i, s) in stalled.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            ended,
            "stalled client {i}: the connection was not closed (got {got} of {full_answer})"
        );
        assert!(
            got < full_answer,
            "stalled client {i} got the whole answer ({got} bytes)"
        );
    }
}
