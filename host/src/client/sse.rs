//! The client side of subscriptions: reading a Server-Sent Events stream, and applying its
//! diffs to the JSON form of a selection (what `sluice watch`, `testing` and the tests do;
//! the reference for clients in other languages, with `docs/subscriptions.md`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value as J;

use super::Response;

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `value`, `diff`, `reset`, or a final `dropped` / `error` / `closing`.
    pub event: String,
    pub data: J,
}

impl SseEvent {
    /// Whether the stream ends after this event.
    pub fn is_final(&self) -> bool {
        matches!(self.event.as_str(), "dropped" | "error" | "closing")
    }
}

/// An open event stream.
pub struct EventStream {
    reader: Box<dyn BufRead + Send>,
    /// Keep-alive comments seen so far.
    pub keepalives: u64,
}

/// A chunked transfer-encoded body as a plain reader.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left =
                usize::from_str_radix(size, 16).map_err(|_| super::bad("malformed chunk size"))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}

impl EventStream {
    /// Opens `GET path` with `Accept: text/event-stream`; a non-2xx answer is returned whole.
    pub fn open(
        addr: &str,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
        read_timeout: Option<Duration>,
    ) -> std::io::Result<Result<EventStream, Response>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(read_timeout)?;
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| super::bad("malformed status line"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(super::bad("the head ended early"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let chunked =
            header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                Some(n) => {
                    body.resize(n, 0);
                    r.read_exact(&mut body)?;
                }
                None => {
                    r.read_to_end(&mut body)?;
                }
            }
            return Ok(Err(Response {
                status,
                headers,
                body,
            }));
        }
        let reader: Box<dyn BufRead + Send> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(r)
        };
        Ok(Ok(EventStream {
            reader,
            keepalives: 0,
        }))
    }

    /// The next event (`None`: the stream ended). Comments and `retry:` lines are skipped.
    pub fn next_event(&mut self) -> std::io::Result<Option<SseEvent>> {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        let mut any = false;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if any {
                    let data = serde_json::from_str(&data).unwrap_or(J::String(data));
                    return Ok(Some(SseEvent { id, event, data }));
                }
                continue;
            }
            if l.starts_with(':') {
                self.keepalives += 1;
                continue;
            }
            let (field, value) = l.split_once(':').unwrap_or((l, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_string()),
                "event" => event = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => continue,
            }
            any = true;
        }
    }
}

/// A subscriber's view: the selection kept current by applying each event.
#[derive(Debug, Default, Clone)]
pub struct Watched {
    pub values: Vec<J>,
    pub last_id: Option<String>,
}

impl Watched {
    /// Applies one event: `value`/`reset` replace the selection, `diff` changes it.
    pub fn apply(&mut self, e: &SseEvent) -> Result<(), String> {
        match e.event.as_str() {
            "value" | "reset" => {
                self.values = e.data["values"]
                    .as_array()
                    .cloned()
                    .ok_or("a value event without values")?;
            }
            "diff" => {
                let changes = e.data["changes"]
                    .as_array()
                    .ok_or("a diff without changes")?;
                let mut doc = J::Array(std::mem::take(&mut self.values));
                let r = changes.iter().try_for_each(|c| apply_change(&mut doc, c));
                self.values = match doc {
                    J::Array(v) => v,
                    other => vec![other],
                };
                r?;
            }
            _ => return Ok(()),
        }
        if e.id.is_some() {
            self.last_id = e.id.clone();
        }
        Ok(())
    }
}

/// The value at `path` in a selection document.
fn locate<'v>(doc: &'v mut J, path: &[J]) -> Result<&'v mut J, String> {
    let mut at = doc;
    for step in path {
        at = match at {
            J::Array(items) => {
                let i = step
                    .as_u64()
                    .ok_or_else(|| format!("step {step} into a list"))?
                    as usize;
                items.get_mut(i).ok_or_else(|| format!("no index {i}"))?
            }
            J::Object(o) => {
                let is_map = o.len() == 1 && o.contains_key("$map");
                if is_map {
                    let pairs = o
                        .get_mut("$map")
                        .and_then(J::as_array_mut)
                        .ok_or("a malformed $map")?;
                    let pair = pairs
                        .iter_mut()
                        .find(|p| p.get(0) == Some(step))
                        .ok_or_else(|| format!("no key {step}"))?;
                    &mut pair[1]
                } else {
                    let k = step
                        .as_str()
                        .ok_or_else(|| format!("step {step} into an object"))?;
                    o.get_mut(k).ok_or_else(|| format!("no key {k}"))?
                }
            }
            _ => return Err(format!("step {step} into a scalar")),
        };
    }
    Ok(at)
}

/// Applies one change (its JSON form, `docs/subscriptions.md`) to a selection document.
pub fn apply_change(doc: &mut J, c: &J) -> Result<(), String> {
    let path = c["path"].as_array().ok_or("a change without a path")?;
    let at = locate(doc, path)?;
    let op = c["op"].as_str().unwrap_or("");
    match (op, at) {
        ("replace", at) => *at = c["value"].clone(),
        ("put", J::Object(o)) if o.len() == 1 && o.contains_key("$map") => {
            let pairs = o["$map"].as_array_mut().ok_or("a malformed $map")?;
            let key = &c["key"];
            match pairs.iter_mut().find(|p| p.get(0) == Some(key)) {
                Some(p) => p[1] = c["value"].clone(),
                None => {
                    let at = c["index"].as_u64().map_or(pairs.len(), |i| i as usize);
                    pairs.insert(
                        at.min(pairs.len()),
                        J::Array(vec![key.clone(), c["value"].clone()]),
                    );
                }
            }
        }
        ("put", J::Object(o)) => {
            let k = c["key"]
                .as_str()
                .ok_or("a put into an object needs a string key")?;
            o.insert(k.to_string(), c["value"].clone());
        }
        ("delete", J::Object(o)) if o.len() == 1 && o.contains_key("$map") => {
            let pairs = o["$map"].as_array_mut().ok_or("a malformed $map")?;
            let before = pairs.len();
            pairs.retain(|p| p.get(0) != Some(&c["key"]));
            if pairs.len() == before {
                return Err("delete of a missing key".into());
            }
        }
        ("delete", J::Object(o)) => {
            let k = c["key"]
                .as_str()
                .ok_or("a delete from an object needs a string key")?;
            o.remove(k).ok_or("delete of a missing key")?;
        }
        ("push", J::Array(items)) => {
            items.extend(c["values"].as_array().cloned().unwrap_or_default());
        }
        ("splice", J::Array(items)) => {
            let index = c["index"].as_u64().ok_or("splice without index")? as usize;
            let remove = c["remove"].as_u64().ok_or("splice without remove")? as usize;
            if index + remove > items.len() {
                return Err("splice out of range".into());
            }
            let insert = c["insert"].as_array().cloned().unwrap_or_default();
            items.splice(index..index + remove, insert);
        }
        ("increment", at @ J::Number(_)) => {
            let by = c["by"].as_i64().ok_or("increment without by")?;
            let n = at.as_i64().map(|n| J::from(n + by)).or_else(|| {
                at.as_u64()
                    .map(|n| J::from((i128::from(n) + i128::from(by)) as u64))
            });
            *at = n.ok_or("increment of a non-integer")?;
        }
        (op, at) => return Err(format!("`{op}` does not fit {at}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::diff::{change_json, diff};
    use crate::value::{to_json, Value};

    /// The JSON apply agrees with the host's diffs on values of every JSON form.
    #[test]
    fn json_apply_follows_the_hosts_diffs() {
        let i = |n: i64| Value::Integer(n.into());
        let t = |s: &str| Value::Text(s.into());
        let cases = vec![
            (vec![i(1)], vec![i(4)]),
            (
                vec![Value::Map(vec![(t("a"), i(1))])],
                vec![Value::Map(vec![
                    (t("a"), i(2)),
                    (t("b"), Value::Array(vec![i(1)])),
                ])],
            ),
            (
                vec![Value::Map(vec![(i(1), t("x")), (i(5), t("y"))])],
                vec![Value::Map(vec![(i(1), t("x")), (i(3), t("z"))])],
            ),
            (vec![i(3), i(2), i(1)], vec![i(4), i(3), i(2)]),
            (vec![Value::Bytes(vec![1])], vec![Value::Bytes(vec![2])]),
        ];
        for (old, new) in cases {
            let mut doc = J::Array(old.iter().map(to_json).collect());
            for c in diff(&old, &new) {
                apply_change(&mut doc, &change_json(&c)).unwrap();
            }
            assert_eq!(
                doc,
                J::Array(new.iter().map(to_json).collect()),
                "{old:?} -> {new:?}"
            );
        }
    }
}
