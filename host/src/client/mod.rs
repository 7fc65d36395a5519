//! A small blocking HTTP/1.1 client of the Sluice API, over one keep-alive connection.
//!
//! Used by the CLI subcommands, the load generator and tests; it depends on nothing but std
//! and serde_json so it is cheap everywhere. Invariant: a [`Client`] holds at most one open
//! connection and re-opens it when the server closed it; it never retries a request that may
//! have reached the server (appends are not idempotent).

pub mod sse;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `s` percent-encoded for a URL path segment or query component (everything but RFC 3986's
/// unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL path of a subscription to `path` (its JSON text) in `pstate` of `module`.
pub fn subscribe_path(module: &str, pstate: &str, path: &str, partition: Option<u32>) -> String {
    let mut u = format!(
        "/v1/modules/{}/pstates/{}/subscribe?path={}",
        percent_encode(module),
        percent_encode(pstate),
        percent_encode(path)
    );
    if let Some(p) = partition {
        u.push_str(&format!("&partition={p}"));
    }
    u
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of a JSON error answer, or "".
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// `error.message` of a JSON error answer, or the body as text.
    pub fn error_message(&self) -> String {
        match self.json()["error"]["message"].as_str() {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client of one host.
pub struct Client {
    /// `host:port`.
    addr: String,
    token: Option<String>,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client of `server`: `http://host:port` or `host:port`.
    pub fn new(server: &str) -> Result<Self, String> {
        let addr = server
            .trim_end_matches('/')
            .strip_prefix("http://")
            .unwrap_or(server.trim_end_matches('/'));
        if server.starts_with("https://") {
            return Err("https is not supported by this client; use http://".into());
        }
        if addr.is_empty() || addr.contains('/') {
            return Err(format!(
                "invalid server `{server}`: expected http://HOST:PORT"
            ));
        }
        Ok(Self {
            addr: addr.to_string(),
            token: None,
            timeout: Duration::from_secs(60),
            conn: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn connect(&self) -> std::io::Result<BufReader<TcpStream>> {
        let s = TcpStream::connect(&self.addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        Ok(BufReader::new(s))
    }

    /// Sends one request and reads the answer.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.request_with_headers(method, path, content_type, body, &[])
    }

    /// Sends one request with extra headers (e.g. `Idempotency-Key`) and reads the answer.
    pub fn request_with_headers(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        // A kept-alive connection may have been closed by the server while idle: if sending
        // fails, or it closes before any byte of the answer, the request never reached a
        // handler, so it is safe to send it once more on a fresh connection.
        let fresh = self.conn.is_none();
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        match send_and_read(&mut conn, &msg) {
            Ok((r, keep)) => {
                if keep {
                    self.conn = Some(conn);
                }
                Ok(r)
            }
            Err(Failure::BeforeAnswer(_)) if !fresh => {
                let mut conn = self.connect()?;
                let (r, keep) = send_and_read(&mut conn, &msg).map_err(Failure::into_io)?;
                if keep {
                    self.conn = Some(conn);
                }
                Ok(r)
            }
            Err(e) => Err(e.into_io()),
        }
    }

    /// Opens a subscription (`GET path` as an event stream) on a connection of its own;
    /// `read_timeout` bounds each wait for the next bytes (`None`: wait forever).
    pub fn subscribe(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        read_timeout: Option<Duration>,
    ) -> std::io::Result<Result<sse::EventStream, Response>> {
        sse::EventStream::open(
            &self.addr,
            path,
            self.token.as_deref(),
            last_event_id,
            read_timeout,
        )
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, "application/json", b"")
    }

    pub fn post_json(&mut self, path: &str, body: &serde_json::Value) -> std::io::Result<Response> {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }
}

enum Failure {
    /// Nothing of an answer arrived (the connection was already closed).
    BeforeAnswer(std::io::Error),
    During(std::io::Error),
}

impl Failure {
    fn into_io(self) -> std::io::Error {
        match self {
            Failure::BeforeAnswer(e) | Failure::During(e) => e,
        }
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Returns the answer and whether the connection may be reused.
fn send_and_read(conn: &mut BufReader<TcpStream>, msg: &[u8]) -> Result<(Response, bool), Failure> {
    if let Err(e) = conn.get_mut().write_all(msg) {
        // The server may answer early (e.g. 413) and close: try to read that answer.
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && e.kind() != std::io::ErrorKind::ConnectionReset
        {
            return Err(Failure::BeforeAnswer(e));
        }
    }
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => {
            return Err(Failure::BeforeAnswer(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(Failure::BeforeAnswer(e)),
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::During(bad("malformed status line")))?;
    let mut headers = Vec::new();
    let mut length: Option<usize> = None;
    let mut keep = true;
    loop {
        line.clear();
        conn.read_line(&mut line).map_err(Failure::During)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(
                    v.parse()
                        .map_err(|_| Failure::During(bad("bad content-length")))?,
                );
            }
            if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                keep = false;
            }
            headers.push((k.to_string(), v.to_string()));
        }
    }
    let body = match length {
        Some(n) => {
            let mut body = vec![0; n];
            conn.read_exact(&mut body).map_err(Failure::During)?;
            body
        }
        None => {
            keep = false;
            let mut body = Vec::new();
            conn.read_to_end(&mut body).map_err(Failure::During)?;
            body
        }
    };
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep,
    ))
}
