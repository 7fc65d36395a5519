//! `GET /v1/modules/{m}/pstates/{p}/subscribe`: a subscription as Server-Sent Events.
//!
//! The request names a path (`?path=<JSON, URL-encoded>`) and, when the path does not start
//! with a key, a partition (`&partition=k`); it is validated like a select (4xx JSON errors)
//! before the stream starts. The answer is `text/event-stream`: `value` first, then `diff`s,
//! `reset`s, keep-alive comments, and a final `dropped` / `error` / `closing` event (the
//! format: `docs/subscriptions.md`). Invariants: a subscription is counted against the
//! subscriber limits, not the per-address connection share (its connection gives its share
//! back and is closed when the stream ends); the token may come as `?access_token=` because a
//! browser's `EventSource` cannot send headers — request URIs are never logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::{conn, json, wait_ready, ApiError, AppState};
use crate::subscription::{FeedSpec, Next, Refused, Subscription};

/// The body of every answer: a whole JSON body, or an event stream.
pub type Body = Either<Full<Bytes>, SseBody>;

/// An event stream: the subscription's events as frames, polled by the connection itself
/// (no task in between; dropping the body — the client went away — ends the subscription).
pub struct SseBody {
    state: BodyState,
    keepalive: Duration,
}

type NextFuture = Pin<Box<dyn Future<Output = (Subscription, Option<Next>)> + Send>>;

enum BodyState {
    /// The `retry:` line goes first.
    Start(Subscription),
    Waiting(NextFuture),
    Done,
}

fn wait_next(mut sub: Subscription, keepalive: Duration) -> NextFuture {
    Box::pin(async move {
        let next = sub.next(keepalive).await;
        (sub, next)
    })
}

impl SseBody {
    fn new(sub: Subscription, keepalive: Duration) -> Self {
        Self {
            state: BodyState::Start(sub),
            keepalive,
        }
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = |b: Bytes| Poll::Ready(Some(Ok(Frame::data(b))));
        match std::mem::replace(&mut this.state, BodyState::Done) {
            BodyState::Start(sub) => {
                this.state = BodyState::Waiting(wait_next(sub, this.keepalive));
                frame(Bytes::from_static(b"retry: 1000\n\n"))
            }
            BodyState::Waiting(mut next) => match next.as_mut().poll(cx) {
                Poll::Pending => {
                    this.state = BodyState::Waiting(next);
                    Poll::Pending
                }
                Poll::Ready((sub, n)) => match n {
                    None => {
                        this.state = BodyState::Waiting(wait_next(sub, this.keepalive));
                        frame(Bytes::from_static(b": keep-alive\n\n"))
                    }
                    Some(Next::Event(e)) => {
                        this.state = BodyState::Waiting(wait_next(sub, this.keepalive));
                        frame(e.frame.clone())
                    }
                    Some(Next::End(e)) => frame(e.frame.clone()),
                },
            },
            BodyState::Done => Poll::Ready(None),
        }
    }
}

/// Whether `req` is a subscription (answered by [`handle`], not `api::handle`).
pub fn is_subscribe(req: &Request<Incoming>) -> bool {
    let segments: Vec<&str> = req
        .uri()
        .path()
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .collect();
    matches!(
        segments.as_slice(),
        ["v1", "modules", _, "pstates", _, "subscribe"]
    )
}

/// Answers a subscription request; `ticket` is the connection's admission share, given back
/// once the stream starts.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    ticket: &Mutex<Option<conn::Ticket>>,
) -> Response<Body> {
    let r = match start(state, &req).await {
        Ok(Some(stream)) => {
            drop(ticket.lock().expect("poisoned").take());
            stream
        }
        Ok(None) => head_only(),
        Err(e) => e.into_response().map(Either::Left),
    };
    crate::metrics::inc(
        "sluice_http_requests_total",
        &[("status", r.status().as_str())],
    );
    r
}

fn stream_response(body: Body) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .header(hyper::header::CONNECTION, "close")
        .header("X-Accel-Buffering", "no")
        .body(body)
        .expect("valid response")
}

fn head_only() -> Response<Body> {
    stream_response(Either::Left(Full::new(Bytes::new())))
}

/// Percent-decodes one query-string component (`+` is a space).
pub(super) fn decode_component(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid-parameter",
            "a query parameter is not validly percent-encoded UTF-8",
        )
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn params(req: &Request<Incoming>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for kv in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        out.insert(decode_component(k)?, decode_component(v)?);
    }
    Ok(out)
}

fn accepts_event_stream(req: &Request<Incoming>) -> bool {
    let types: Vec<&str> = req
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .filter(|v| !v.is_empty())
        .collect();
    types.is_empty()
        || types
            .iter()
            .any(|v| matches!(*v, "text/event-stream" | "text/*" | "*/*"))
}

fn refused(e: Refused) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        match e {
            Refused::Host(_) | Refused::Module { .. } => "too-many-subscribers",
            Refused::Closing => "host-stopping",
        },
        e.to_string(),
    );
    err.retry_after_s = Some(1);
    err
}

/// Validates the request and starts the stream (`None`: a HEAD, answered with headers only).
/// On a cluster, a subscription is served by the module's owner only: another host answers
/// 307 to it (browsers' `EventSource` follows), or 503 `no-owner` during a failover.
fn elsewhere(
    placement: &crate::cluster::placement::Placement,
    module: &str,
    req: &Request<Incoming>,
) -> Result<(), ApiError> {
    use crate::cluster::placement::Route;
    match placement.route(module) {
        Route::Local | Route::Unknown => Ok(()),
        Route::Remote { host, address } => {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut e = ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                "owner-elsewhere",
                format!("module `{module}` runs on host `{host}`: subscribe there"),
            )
            .detail("owner", host);
            e.headers
                .push((hyper::header::LOCATION, format!("{address}{target}")));
            Err(e)
        }
        Route::Unowned => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-owner",
                format!("no host runs module `{module}` now (a failover); retry"),
            );
            e.retry_after_s = Some(1);
            Err(e)
        }
    }
}

/// A subscription to partition `p` of a module placed per partition, which runs on
/// another host: 307 to its owner, or 503 `no-owner` during a failover.
fn partition_elsewhere(
    state: &AppState,
    module: &str,
    p: u32,
    req: &Request<Incoming>,
) -> ApiError {
    let owner = state
        .cluster
        .as_ref()
        .and_then(|placement| placement.partition_owner(module, p));
    let Some((host, address)) = owner else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-owner",
            format!("no host runs partition {p} of module `{module}` now (a failover); retry"),
        );
        e.retry_after_s = Some(1);
        return e;
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut e = ApiError::new(
        StatusCode::TEMPORARY_REDIRECT,
        "owner-elsewhere",
        format!("partition {p} of module `{module}` runs on host `{host}`: subscribe there"),
    )
    .detail("owner", host)
    .detail("partition", p);
    e.headers
        .push((hyper::header::LOCATION, format!("{address}{target}")));
    e
}

async fn start(
    state: &AppState,
    req: &Request<Incoming>,
) -> Result<Option<Response<Body>>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let ["v1", "modules", m, "pstates", ps, "subscribe"] = segments.as_slice() else {
        return Err(ApiError::not_found(
            "not-found",
            format!("no route for {path}"),
        ));
    };
    let params = params(req)?;
    let header_token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = header_token.or(params.get("access_token").map(String::as_str));
    state.tokens.check_token(&Method::GET, &segments, token)?;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!(
                "{} is not allowed on {path}; allowed: GET, HEAD",
                req.method()
            ),
        );
        e.headers.push((hyper::header::ALLOW, "GET, HEAD".into()));
        return Err(e);
    }
    if let Some(placement) = &state.cluster {
        elsewhere(placement, m, req)?;
    }
    if !accepts_event_stream(req) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "a subscription answers `text/event-stream`; send `Accept: text/event-stream`",
        ));
    }
    let limits = state.registry.runtime().limits().clone();
    let module = super::module(state, m)?;
    let raw = params.get("path").ok_or_else(|| {
        ApiError::bad_request(
            "invalid-request",
            "missing `path`: a JSON list of navigators, URL-encoded",
        )
    })?;
    let path_json: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        ApiError::bad_request("invalid-json", format!("`path` is not valid JSON: {e}"))
    })?;
    let path_nav = json::parse_path(&path_json, limits.path_navigators_max)?;
    let partition = super::parse_partition(&params)?;
    let p = module.select_partition(ps, &path_nav, partition)?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("last_event_id").cloned())
        .filter(|s| !s.is_empty());
    wait_ready(&module, p).await?;
    // The same checks and limits as a select, answered before the stream starts.
    let (mm, pp, nav) = (Arc::clone(&module), ps.to_string(), path_nav.clone());
    let values_max = limits.select_values_max;
    let now = state
        .pools
        .read(move || Ok(mm.select(&pp, &nav, Some(p), values_max + 1)?))
        .await?;
    let bytes: usize = now
        .iter()
        .map(|v| crate::value::to_json(v).to_string().len())
        .sum();
    if bytes > limits.answer_bytes_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result-too-large",
            format!("the path's value is over the answer_bytes_max limit of {} bytes; narrow it (e.g. sorted-range with a limit)", limits.answer_bytes_max),
        ));
    }
    if now.len() > values_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result-too-large",
            format!("the path selects more than the select_values_max limit of {values_max} values; narrow it (e.g. sorted-range with a limit)"),
        ));
    }
    if *req.method() == Method::HEAD {
        return Ok(None);
    }
    let subs = Arc::clone(state.registry.subscriptions());
    let permit = subs.admit(&module.name).map_err(refused)?;
    let top_key = match path_nav.first() {
        Some(crate::pstate::Navigator::Key(k) | crate::pstate::Navigator::Must(k)) => Some(
            crate::pstate::key::encode(k)
                .map_err(|e| ApiError::bad_request("invalid-path", e.to_string()))?,
        ),
        _ => None,
    };
    let spec = FeedSpec {
        module: module.name.clone(),
        pstate: ps.to_string(),
        path: path_nav,
        path_key: path_json.to_string(),
        top_key,
        partition: p,
        values_max,
        bytes_max: limits.answer_bytes_max.saturating_add(4096),
    };
    let Some(files) = module.serving_files(p) else {
        return Err(partition_elsewhere(state, &module.name, p, req));
    };
    let store = Arc::clone(&files.store);
    drop(module);
    let sub = subs.subscribe(&store, spec, last_event_id, permit);
    let keepalive = subs.limits().keepalive;
    Ok(Some(stream_response(Either::Right(SseBody::new(
        sub, keepalive,
    )))))
}

#[cfg(test)]
mod tests {
    use super::decode_component;

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(
            decode_component("%5B%7B%22key%22%3A%22a+b%22%7D%5D").unwrap(),
            r#"[{"key":"a b"}]"#
        );
        assert_eq!(decode_component("%E6%97%A5").unwrap(), "日");
        assert!(decode_component("%zz").is_err());
        assert!(decode_component("%").is_err());
        assert!(decode_component("%ff").is_err());
    }
}
