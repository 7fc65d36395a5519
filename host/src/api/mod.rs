//! The HTTP+JSON API under `/v1`: the only module that knows HTTP and JSON.
//!
//! [`handle`] turns one request into one response and is callable without a socket;
//! [`serve`] runs it on a listener with hyper. Invariants: every error is an [`ApiError`]
//! (`{"error": {"code", "message"}}` with a fitting status); a request is fully validated
//! (parsed, routed, size-checked) before anything is queued, so a rejected request writes
//! nothing; no request body is read past its limit.

pub mod auth;
pub mod conn;
pub mod cors;
mod error;
mod forward;
pub mod json;
#[cfg(test)]
mod openapi_tests;
pub mod pools;
pub mod subscribe;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::module::{Module, Registry};
use crate::topology::{AckLevel, AppendOutcome};
use crate::value::{from_cbor, to_json};

/// Every route the API answers, as (method, path template). The OpenAPI document served at
/// `/v1/openapi.json` describes exactly these (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/modules"),
    ("POST", "/v1/clock"),
    ("GET", "/v1/cluster"),
    ("PUT", "/v1/modules/{module}"),
    ("GET", "/v1/modules/{module}"),
    ("DELETE", "/v1/modules/{module}"),
    ("POST", "/v1/modules/{module}/depots/{depot}/append"),
    ("GET", "/v1/modules/{module}/depots/{depot}"),
    (
        "GET",
        "/v1/modules/{module}/depots/{depot}/partitions/{partition}",
    ),
    ("POST", "/v1/modules/{module}/pstates/{pstate}/select"),
    ("GET", "/v1/modules/{module}/pstates/{pstate}/subscribe"),
    ("POST", "/v1/modules/{module}/queries/{query}"),
    (
        "GET",
        "/v1/modules/{module}/topologies/{topology}/dead-letters",
    ),
    (
        "DELETE",
        "/v1/modules/{module}/topologies/{topology}/dead-letters",
    ),
    (
        "POST",
        "/v1/modules/{module}/topologies/{topology}/dead-letters/replay",
    ),
];

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Shared by all requests.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub tokens: auth::Tokens,
    /// Connection limits and timeouts ([`conn`]).
    pub conn: conn::ConnLimits,
    /// Where blocking reads and query calls run ([`pools`]).
    pub pools: pools::Pools,
    /// Origins browsers may call from ([`cors`]).
    pub cors: cors::Cors,
    /// This host's part in the cluster (`sluice serve --cluster`); `None`: a single node.
    pub cluster: Option<Arc<crate::cluster::placement::Placement>>,
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

/// Accepts connections until `shutdown` resolves (admission and timeouts: [`conn`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let admission = conn::Admission::new(state.conn.clone());
    let refusals = Arc::new(tokio::sync::Semaphore::new(conn::REFUSALS_ANSWERED_MAX));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // Out of file descriptors, most likely: let connections close.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(refusal) => {
                // Answering a refusal waits for the request head: at most so many at once;
                // beyond that a connection is closed at once (a flood gets no answers).
                let Ok(answering) = Arc::clone(&refusals).try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let limits = state.conn.clone();
                tokio::spawn(async move {
                    let _answering = answering;
                    conn::refuse(stream, refusal, &limits).await
                });
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            // A subscription gives the connection's share back (it has limits of its own).
            let ticket = Arc::new(std::sync::Mutex::new(Some(ticket)));
            let limits = state.conn.clone();
            let service = hyper::service::service_fn(move |req| {
                let (state, ticket) = (Arc::clone(&state), Arc::clone(&ticket));
                async move {
                    if let Some(p) = state.cors.preflight(&req) {
                        return Ok::<_, Infallible>(p.map(http_body_util::Either::Left));
                    }
                    let origin = req.headers().get(hyper::header::ORIGIN).cloned();
                    let mut r = if subscribe::is_subscribe(&req) {
                        subscribe::handle(&state, req, &ticket).await
                    } else {
                        handle(&state, req).await.map(http_body_util::Either::Left)
                    };
                    state.cors.decorate(origin.as_ref(), &mut r);
                    Ok(r)
                }
            });
            let io = hyper_util::rt::TokioIo::new(conn::Watched::new(
                stream,
                limits.write_stall_timeout,
            ));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Answers one request.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let r = match route(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    crate::metrics::inc(
        "sluice_http_requests_total",
        &[("status", r.status().as_str())],
    );
    r
}

/// `GET /metrics`: every series, and gauges of every module's current state.
fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut gauges: Vec<_> = registry.list().iter().flat_map(|m| m.gauges()).collect();
    gauges.extend(
        registry
            .failed()
            .into_iter()
            .map(|f| crate::metrics::Gauge {
                name: "sluice_module_failed",
                labels: vec![("module", f.name)],
                value: 1.0,
            }),
    );
    gauges.extend(registry.subscriptions().gauges());
    Response::builder()
        .status(StatusCode::OK)
        .header(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Full::new(Bytes::from(crate::metrics::render(&gauges))))
        .expect("valid response")
}

/// Counts the answers of one append request and their latency.
struct AckMetrics {
    ok: Arc<std::sync::atomic::AtomicU64>,
    error: Arc<std::sync::atomic::AtomicU64>,
    latency: Option<Arc<crate::metrics::Histogram>>,
    started: std::time::Instant,
}

impl AckMetrics {
    fn new(module: &str, depot: &str, ack: AckLevel) -> Self {
        let level = match ack {
            AckLevel::None => "none",
            AckLevel::Append => "append",
            AckLevel::Full => "full",
        };
        let c = |outcome| {
            crate::metrics::counter(
                "sluice_acks_total",
                &[
                    ("module", module),
                    ("depot", depot),
                    ("level", level),
                    ("outcome", outcome),
                ],
            )
        };
        Self {
            ok: c("ok"),
            error: c("error"),
            latency: (ack != AckLevel::None).then(|| {
                crate::metrics::histogram(
                    "sluice_ack_latency_seconds",
                    &[("module", module), ("level", level)],
                )
            }),
            started: std::time::Instant::now(),
        }
    }

    fn record(&self, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if ok {
            self.ok.fetch_add(1, Relaxed);
            if let Some(h) = &self.latency {
                h.observe(self.started.elapsed());
            }
        } else {
            self.error.fetch_add(1, Relaxed);
        }
    }
}

fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

async fn read_body(
    state: &AppState,
    req: Request<Incoming>,
    limit: usize,
    limit_name: &str,
) -> Result<Bytes, ApiError> {
    let timeout = state.conn.body_read_timeout;
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the request body did not arrive within the body_read_timeout of {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the request body is over the {limit_name} limit of {limit} bytes"),
            ))
        }
        Err(e) => Err(ApiError::bad_request(
            "bad-body",
            format!("reading the body: {e}"),
        )),
    }
}

fn module(state: &AppState, name: &str) -> Result<Arc<Module>, ApiError> {
    if let Some(m) = state.registry.get(name) {
        return Ok(m);
    }
    match state.registry.failed_module(name) {
        Some(f) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "module-failed",
            format!("module `{name}` failed to load: {}", f.reason),
        )
        .detail("reason", f.reason)),
        None => Err(ApiError::not_found(
            "unknown-module",
            format!("no module named `{name}`"),
        )),
    }
}

/// A deploy's options from its query (`partitions`, `retain.<depot>`).
fn deploy_options(
    params: &HashMap<String, String>,
) -> Result<crate::module::DeployOptions, ApiError> {
    let mut options = crate::module::DeployOptions {
        partitions: parse_u64(params, "partitions")?.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        ..Default::default()
    };
    for (k, v) in params {
        let Some(depot) = k.strip_prefix("retain.") else {
            continue;
        };
        let v = subscribe::decode_component(v)?;
        let setting =
            match v.as_str() {
                "module" => None,
                v => Some(crate::depot::Retention::parse_setting(v).map_err(|e| {
                    ApiError::bad_request("invalid-parameter", format!("`{k}`: {e}"))
                })?),
            };
        options.retention.insert(depot.to_string(), setting);
    }
    Ok(options)
}

fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid-parameter",
                    format!("`{name}` must be a non-negative integer, got `{v}`"),
                )
            })
        })
        .transpose()
}

fn parse_partition(params: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    parse_u64(params, "partition")?
        .map(|p| {
            u32::try_from(p).map_err(|_| {
                ApiError::bad_request(
                    "partition-out-of-range",
                    format!("partition {p} is out of range"),
                )
            })
        })
        .transpose()
}

/// `POST /v1/clock {"advance_ms": N}`: moves a manual clock (`--manual-clock-ms`) forward.
async fn advance_clock(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(clock) = state.registry.manual_clock() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-manual-clock",
            "this host runs on the system clock; start it with --manual-clock-ms to move its clock by hand",
        ));
    };
    let body = read_body(state, req, 4096, "clock_body_bytes").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid-json", format!("the body is not JSON: {e}")))?;
    let Some(ms) = v.get("advance_ms").and_then(serde_json::Value::as_u64) else {
        return Err(ApiError::bad_request(
            "invalid-body",
            "expected {\"advance_ms\": N} with N a non-negative integer",
        ));
    };
    let time = clock.advance(ms);
    Ok(json_response(StatusCode::OK, &json!({ "time_ms": time })))
}

async fn route(
    state: &AppState,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    // HEAD is GET without the body (hyper sends the head only).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let limits = state.registry.runtime().limits().clone();
    state.tokens.check(&method, &segments, req.headers())?;
    if let (Some(placement), ["v1", "modules", ..]) = (&state.cluster, segments.as_slice()) {
        match forward::module_request(state, placement, &method, &segments, req).await? {
            forward::Outcome::Handled(r) => return Ok(r),
            forward::Outcome::Local(r) => req = r,
        }
    }
    let not_allowed = || {
        let allow = allowed_methods(&segments);
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!(
                "{} is not allowed on {path}; allowed: {allow}",
                req.method()
            ),
        );
        e.headers.push((hyper::header::ALLOW, allow));
        e
    };
    match segments.as_slice() {
        ["health"] | ["health", "ready"] if method != Method::GET => Err(not_allowed()),
        ["health"] => Ok(health(state, false)),
        ["health", "ready"] => Ok(health(state, true)),
        ["metrics"] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            let registry = Arc::clone(&state.registry);
            state.pools.read(move || Ok(metrics(&registry))).await
        }
        ["v1", "openapi.json"] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())))
                .expect("valid response"))
        }
        ["v1", "clock"] => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            advance_clock(state, req).await
        }
        ["v1", "cluster"] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            Ok(json_response(StatusCode::OK, &cluster_view(state)))
        }
        ["v1", "modules"] => {
            match method {
                Method::GET => {
                    let mut list: Vec<_> = state
                    .registry
                    .list()
                    .iter()
                    .map(|m| json!({"name": m.name, "version": m.version, "partitions": m.partitions, "state": "running"}))
                    .collect();
                    list.extend(
                        state.registry.failed().into_iter().map(
                            |f| json!({"name": f.name, "state": "failed", "reason": f.reason}),
                        ),
                    );
                    Ok(json_response(StatusCode::OK, &json!({ "modules": list })))
                }
                _ => Err(not_allowed()),
            }
        }
        ["v1", "modules", name] => match method {
            Method::PUT => {
                let name = name.to_string();
                let options = deploy_options(&query_params(&req))?;
                let wasm =
                    read_body(state, req, limits.module_size_bytes, "module_size_bytes").await?;
                let registry = Arc::clone(&state.registry);
                let (module, created) = tokio::task::spawn_blocking(move || {
                    registry.deploy_or_update(&name, &wasm, options)
                })
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })??;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(status, &module.describe()))
            }
            Method::GET => match state.registry.failed_module(name) {
                Some(f) => Ok(json_response(
                    StatusCode::OK,
                    &json!({"name": f.name, "state": "failed", "reason": f.reason}),
                )),
                None => {
                    let mut d = module(state, name)?.describe();
                    d["state"] = "running".into();
                    Ok(json_response(StatusCode::OK, &d))
                }
            },
            Method::DELETE => {
                let name = name.to_string();
                let registry = Arc::clone(&state.registry);
                let existed = tokio::task::spawn_blocking(move || registry.undeploy(&name))
                    .await
                    .map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    })??;
                if existed {
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({"deleted": segments[2]}),
                    ))
                } else {
                    Err(ApiError::not_found(
                        "unknown-module",
                        format!("no module named `{}`", segments[2]),
                    ))
                }
            }
            _ => Err(not_allowed()),
        },
        ["v1", "modules", m, "depots", d, "append"] => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            append(state, module, d, req, &limits).await
        }
        ["v1", "modules", m, "depots", d] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            let d = d.to_string();
            state.pools.read(move || depot_info(&module, &d)).await
        }
        ["v1", "modules", m, "depots", d, "partitions", k] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            let params = query_params(&req);
            let (d, k) = (d.to_string(), k.to_string());
            let (max, bytes) = (limits.depot_read_max, limits.answer_bytes_max);
            state
                .pools
                .read(move || depot_read(&module, &d, &k, &params, max, bytes))
                .await
        }
        ["v1", "modules", m, "pstates", p, "select"] => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            let body =
                read_body(state, req, limits.request_body_bytes, "request_body_bytes").await?;
            select(state, module, p, &body, &limits).await
        }
        ["v1", "modules", m, "queries", q] => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            let body =
                read_body(state, req, limits.request_body_bytes, "request_body_bytes").await?;
            query(state, module, q, &body).await
        }
        ["v1", "modules", m, "topologies", t, "dead-letters", "replay"] => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            if !module.topologies.iter().any(|x| x.name == *t) {
                return Err(ApiError::not_found(
                    "unknown-topology",
                    format!("module `{}` has no topology `{t}`", module.name),
                ));
            }
            let (mut replayed, mut failing) = (0, 0);
            for rx in module.replay_dead_letters(t) {
                let (r, f) = rx
                    .await
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "partition-unavailable",
                            "a partition stopped before answering",
                        )
                    })?
                    .map_err(|e| ApiError::bad_request("cannot-replay", e))?;
                replayed += r;
                failing += f;
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"replayed": replayed, "still_failing": failing}),
            ))
        }
        ["v1", "modules", m, "topologies", t, "dead-letters"] if method == Method::DELETE => {
            let module = module(state, m)?;
            let who = state.tokens.who(req.headers());
            discard_dead_letter(module, t, &query_params(&req), &who).await
        }
        ["v1", "modules", m, "topologies", t, "dead-letters"] => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            let module = module(state, m)?;
            let t = t.to_string();
            state.pools.read(move || dead_letters(&module, &t)).await
        }
        _ => Err(ApiError::not_found(
            "not-found",
            format!("no route for {path}"),
        )),
    }
}

/// The `Allow` header of a route (405 answers carry it).
/// `GET /v1/cluster`: the hosts this host sees (a single node: only its mode).
fn cluster_view(state: &AppState) -> serde_json::Value {
    let Some(placement) = &state.cluster else {
        return json!({"mode": "single-node", "hosts": [], "modules": []});
    };
    let m = &placement.membership;
    json!({
        "mode": "cluster",
        "host": m.host,
        "connected": m.connected(),
        "owner_timeout_ms": m.owner_timeout().as_millis() as u64,
        "failover_wait_ms": placement.failover_wait.as_millis() as u64,
        "hosts": m.hosts(),
        "modules": placement.modules_view(),
        "placement": placement.stats(),
    })
}

fn allowed_methods(segments: &[&str]) -> String {
    let methods = match segments {
        ["v1", "modules", _] => "GET, HEAD, PUT, DELETE",
        ["v1", "modules", _, "depots", _, "append"]
        | ["v1", "modules", _, "pstates", _, "select"]
        | ["v1", "modules", _, "queries", _]
        | ["v1", "modules", _, "topologies", _, "dead-letters", "replay"] => "POST",
        ["v1", "modules", _, "topologies", _, "dead-letters"] => "GET, HEAD, DELETE",
        _ => "GET, HEAD",
    };
    methods.to_string()
}

fn outcome_json(o: &AppendOutcome) -> serde_json::Value {
    let results: serde_json::Map<String, serde_json::Value> = o
        .results
        .iter()
        .map(|(t, v)| (t.clone(), to_json(v)))
        .collect();
    let mut j = json!({"partition": o.partition, "offset": o.offset, "results": results});
    if o.replayed {
        j["replayed"] = true.into();
    }
    j
}

/// How long an append waits for a module update to swap versions.
const UPDATE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest `Idempotency-Key` accepted.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// The `Idempotency-Key` header: 1–255 visible ASCII characters.
fn idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v.to_str().unwrap_or("");
    if k.is_empty()
        || k.len() > IDEMPOTENCY_KEY_BYTES_MAX
        || !k.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "invalid-idempotency-key",
            format!("`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"),
        ));
    }
    Ok(Some(k.to_string()))
}

/// Submits to `module`, or — while it is being swapped for a new version — waits for its
/// successor and submits there: appends during an update wait, they do not fail.
async fn submit(
    state: &AppState,
    module: &mut Arc<Module>,
    depot: &str,
    record: &crate::value::Value,
    partition: Option<u32>,
    key: Option<&str>,
    ack: AckLevel,
) -> Result<crate::module::Submitted, crate::module::AppendError> {
    let prepared = module.prepare(depot, record, partition, key)?;
    submit_prepared(state, module, &prepared, ack).await
}

/// Queues a prepared record; while the module is being updated (or rebuilt around a
/// partition fenced here), waits for its successor.
async fn submit_prepared(
    state: &AppState,
    module: &mut Arc<Module>,
    prepared: &crate::module::Prepared,
    ack: AckLevel,
) -> Result<crate::module::Submitted, crate::module::AppendError> {
    let started = std::time::Instant::now();
    loop {
        match module.submit_prepared(prepared, ack) {
            Err(crate::module::AppendError::Updating(name))
                if started.elapsed() < UPDATE_WAIT_MAX =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                if let Some(m) = state.registry.get(&name) {
                    *module = m;
                }
            }
            // A spread module's partition fenced here: placement rebuilds the module
            // around it on its next tick, and the successor forwards to the new owner.
            // Nothing was queued.
            Err(crate::module::AppendError::Failed { .. })
                if module.remote.is_some()
                    && started.elapsed().as_millis() < u128::from(RECOVERY_WAIT_MS_MAX) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if let Some(m) = state.registry.get(&module.name) {
                    *module = m;
                }
            }
            r => return r,
        }
    }
}

/// `/health` (always 200: liveness) and `/health/ready` (503 while a partition cannot serve),
/// with every module's partition states.
fn health(state: &AppState, readiness: bool) -> Response<Full<Bytes>> {
    use crate::partition::worker::PartitionState;
    let mut modules = serde_json::Map::new();
    let mut all_serving = true;
    for m in state.registry.list() {
        let parts: Vec<_> = (0..m.partitions)
            .map(|p| {
                let h = &m.handles[p as usize];
                let st = h.status.state();
                all_serving &= matches!(st, PartitionState::Serving | PartitionState::Remote);
                let mut v = json!({
                    "partition": p,
                    "state": st.name(),
                    "restarts": h.status.restarts.load(std::sync::atomic::Ordering::Relaxed),
                    "durable_position": h.status.durable_position.load(std::sync::atomic::Ordering::Relaxed),
                });
                if let PartitionState::Restarting { cause } | PartitionState::Failed { cause } = st {
                    v["cause"] = cause.into();
                }
                if let Some(last) = h.status.last_failure.lock().expect("poisoned").clone() {
                    v["last_failure"] = last.into();
                }
                v
            })
            .collect();
        modules.insert(m.name.clone(), parts.into());
    }
    let mut failed = serde_json::Map::new();
    for f in state.registry.failed() {
        all_serving = false;
        failed.insert(f.name, f.reason.into());
    }
    let status = if all_serving { "ok" } else { "degraded" };
    let code = if readiness && !all_serving {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(
        code,
        &json!({"status": status, "modules": modules, "failed_modules": failed}),
    )
}

async fn append(
    state: &AppState,
    mut module: Arc<Module>,
    depot: &str,
    req: Request<Incoming>,
    limits: &crate::config::Limits,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let params = query_params(&req);
    let ack = match params.get("ack") {
        None => AckLevel::Full,
        Some(a) => AckLevel::parse(a).ok_or_else(|| {
            ApiError::bad_request(
                "invalid-ack",
                format!("unknown ack level `{a}`: use none, append or full"),
            )
        })?,
    };
    let partition = parse_partition(&params)?;
    let key = idempotency_key(req.headers())?;
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let ndjson = content_type
        .as_deref()
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    // JSON is also taken as text/plain and as curl's default form type; anything else is a
    // client mistake worth naming.
    if let Some(ct) = content_type.as_deref() {
        let json_like = [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
        ];
        if !ndjson && !json_like.iter().any(|j| ct.starts_with(j)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!("content type `{ct}`: send application/json (one record) or application/x-ndjson (a batch)"),
            ));
        }
    }
    if !module.depots.contains_key(depot) {
        return Err(ApiError::not_found(
            "unknown-depot",
            format!("module `{}` has no depot `{depot}`", module.name),
        ));
    }
    let body = read_body(state, req, limits.request_body_bytes, "request_body_bytes").await?;
    let acks = AckMetrics::new(&module.name, depot, ack);
    if !ndjson {
        let record = json::parse_record(&body)?;
        let submitted = submit(
            state,
            &mut module,
            depot,
            &record,
            partition,
            key.as_deref(),
            ack,
        )
        .await;
        let submitted = submitted.inspect_err(|_| acks.record(false))?;
        return match submitted.reply {
            None => {
                acks.record(true);
                Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"partition": submitted.partition}),
                ))
            }
            Some(rx) => {
                let outcome = rx.await.map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "partition-unavailable",
                        "the partition stopped before answering",
                    )
                });
                acks.record(matches!(outcome, Ok(Ok(_))));
                let outcome = outcome??;
                let mut r = json_response(StatusCode::OK, &outcome_json(&outcome));
                if outcome.replayed {
                    r.headers_mut().insert(
                        "idempotent-replayed",
                        hyper::header::HeaderValue::from_static("true"),
                    );
                }
                Ok(r)
            }
        };
    }
    // NDJSON: every line is parsed and routed before any is queued, so a bad line rejects
    // the whole batch with nothing written.
    let records = json::parse_ndjson(&body, limits.ndjson_lines_max)?;
    let mut prepared = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        // Line i of a keyed batch is keyed by the key, a separator no client key can hold
        // (0x1f), and i (from 1): a retried batch must carry the same lines in the same order.
        let line_key = key.as_ref().map(|k| format!("{k}\u{1f}{}", i + 1));
        let p = module
            .prepare(depot, r, partition, line_key.as_deref())
            .map_err(|e| ApiError::from(e).detail("line", i + 1))?;
        prepared.push(p);
    }
    let mut pending = Vec::with_capacity(prepared.len());
    for p in &prepared {
        pending.push(submit_prepared(state, &mut module, p, ack).await);
    }
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        let ok = matches!(&p, Ok(s) if s.reply.is_none());
        let v = match p {
            Err(e) => ApiError::from(e).to_json(),
            Ok(s) => match s.reply {
                None => json!({"partition": s.partition}),
                Some(rx) => match rx.await {
                    Ok(Ok(o)) => {
                        acks.record(true);
                        outcome_json(&o)
                    }
                    Ok(Err(e)) => ApiError::from(e).to_json(),
                    Err(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "partition-unavailable",
                        "the partition stopped before answering",
                    )
                    .to_json(),
                },
            },
        };
        if ok {
            acks.record(true);
        } else if v.get("error").is_some() {
            acks.record(false);
        }
        results.push(v);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

fn check_depot(module: &Module, depot: &str) -> Result<(), ApiError> {
    if module.depots.contains_key(depot) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "unknown-depot",
            format!("module `{}` has no depot `{depot}`", module.name),
        ))
    }
}

fn depot_info(module: &Module, depot: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    check_depot(module, depot)?;
    let mut parts = Vec::new();
    for k in 0..module.handles.len() {
        let (start, end) = match (module.serving_files(k as u32), &module.remote) {
            (Some(f), _) => (
                f.log.start_offset(depot).map_err(error::storage)?,
                f.log.end_offset(depot).map_err(error::storage)?,
            ),
            // A spread module's partition on another host: read there.
            (None, Some(r)) => {
                let id = crate::cluster::remote::PartitionId {
                    module: module.name.clone(),
                    since: r.since,
                    partition: k as u32,
                };
                r.link.depot_bounds(&id, depot)?
            }
            (None, None) => continue,
        };
        parts.push(json!({"partition": k, "start": start, "end": end}));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"depot": depot, "partitions": parts}),
    ))
}

fn depot_read(
    module: &Module,
    depot: &str,
    k: &str,
    params: &HashMap<String, String>,
    read_max: usize,
    answer_bytes_max: usize,
) -> Result<Response<Full<Bytes>>, ApiError> {
    check_depot(module, depot)?;
    let p: usize = k
        .parse()
        .ok()
        .filter(|p| *p < module.handles.len())
        .ok_or_else(|| {
            ApiError::not_found(
                "partition-out-of-range",
                format!(
                    "no partition `{k}`: this module has partitions 0..{}",
                    module.partitions
                ),
            )
        })?;
    let from = parse_u64(params, "from")?.unwrap_or(0);
    let limit = parse_u64(params, "limit")?
        .map_or(100, |l| l as usize)
        .min(read_max);
    let log = &module.local_files(p as u32)?.log;
    let start = log.start_offset(depot).map_err(error::storage)?;
    if from < start {
        return Err(ApiError::new(
            StatusCode::GONE,
            "offset-trimmed",
            format!(
                "offset {from} of depot `{depot}` partition {p} was trimmed by its retention; the partition starts at offset {start}"
            ),
        ));
    }
    let records = log.read(depot, from, limit).map_err(error::storage)?;
    let next = records.last().map_or(from, |(o, _)| o + 1);
    let mut records = records
        .iter()
        .map(|(o, bytes)| {
            let record = decode_record(log, depot, *o, bytes)?;
            Ok(json!({"offset": o, "record": record}))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut next = next;
    let truncated = match cut_at_bytes(&records, answer_bytes_max) {
        Some(cut) => {
            records.truncate(cut);
            next = records
                .last()
                .map_or(from, |r| r["offset"].as_u64().unwrap_or(from) + 1);
            true
        }
        None => false,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"partition": p, "records": records, "next": next, "truncated": truncated}),
    ))
}

/// Where to cut a list of answer items so the answer stays within `max` bytes (always after
/// at least one item, so paging progresses); `None` if all of it fits.
fn cut_at_bytes(items: &[serde_json::Value], max: usize) -> Option<usize> {
    let mut total = 0usize;
    for (i, v) in items.iter().enumerate() {
        total += serde_json::to_vec(v).map_or(0, |b| b.len()) + 1;
        if total > max && i > 0 {
            return Some(i);
        }
    }
    None
}

/// A stored record as JSON; a record that does not decode is damage, never `null`.
fn decode_record(
    log: &crate::depot::log::DepotLog,
    depot: &str,
    offset: u64,
    bytes: &[u8],
) -> Result<serde_json::Value, ApiError> {
    from_cbor(bytes).map(|v| to_json(&v)).map_err(|e| {
        error::storage(log.file().damaged(
            &format!("depot/{depot}"),
            &format!("offset {offset}"),
            format!("undecodable record: {e}"),
        ))
    })
}

/// How long a select waits for a partition still replaying its log after a restart.
const RECOVERY_WAIT_MS_MAX: u64 = 10_000;

async fn select(
    state: &AppState,
    module: Arc<Module>,
    pstate: &str,
    body: &[u8],
    limits: &crate::config::Limits,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let values_max = limits.select_values_max;
    let request = json::parse_select(body, limits.path_navigators_max)?;
    let partitions: Vec<u32> = match request.partition {
        json::PartitionSel::All => {
            module.catalog.schema(pstate)?;
            (0..module.partitions).collect()
        }
        json::PartitionSel::One(p) => {
            vec![module.select_partition(pstate, &request.path, Some(p))?]
        }
        json::PartitionSel::ByKey => vec![module.select_partition(pstate, &request.path, None)?],
    };
    let limit = request.limit.unwrap_or(values_max).min(values_max);
    let (start, mut skip) = request.after.unwrap_or((partitions[0], 0));
    if skip > SELECT_SKIP_MAX {
        return Err(ApiError::bad_request(
            "invalid-request",
            format!("`after` skips more than {SELECT_SKIP_MAX} values; page deeper with `sorted-range` from the last key"),
        ));
    }
    let mut values = Vec::new();
    // Where each value came from: (partition, its index there), for a continuation.
    let mut positions: Vec<(u32, usize)> = Vec::new();
    let mut next = None;
    let mut rest = partitions
        .iter()
        .copied()
        .filter(|p| *p >= start)
        .peekable();
    while let Some(p) = rest.next() {
        wait_ready(&module, p).await?;
        let remaining = limit - values.len();
        let (m, ps, path) = (
            Arc::clone(&module),
            pstate.to_string(),
            request.path.clone(),
        );
        let got: Vec<_> = state
            .pools
            .read(move || Ok(m.select(&ps, &path, Some(p), skip + remaining + 1)?))
            .await?
            .into_iter()
            .skip(skip)
            .collect();
        let first = skip;
        if got.len() > remaining {
            positions.extend((0..remaining).map(|i| (p, first + i)));
            values.extend(got.into_iter().take(remaining));
            next = Some((p, skip + remaining));
            break;
        }
        positions.extend((0..got.len()).map(|i| (p, first + i)));
        values.extend(got);
        skip = 0;
        if values.len() == limit {
            next = rest.peek().map(|p| (*p, 0));
            break;
        }
    }
    if next.is_some() && request.limit.is_none() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result-too-large",
            format!("the select returned more than the select_values_max limit of {values_max} values; pass `limit` (and page with `after`) or narrow the path"),
        ));
    }
    let mut values: Vec<_> = values.iter().map(to_json).collect();
    if let Some(cut) = cut_at_bytes(&values, limits.answer_bytes_max) {
        if request.limit.is_none() {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "result-too-large",
                format!("the answer would be over the answer_bytes_max limit of {} bytes; pass `limit` (and page with `after`) or narrow the path", limits.answer_bytes_max),
            ));
        }
        values.truncate(cut);
        next = Some(positions[cut]);
    }
    let next = next.map(|(p, s)| json!({"partition": p, "skip": s}));
    Ok(json_response(
        StatusCode::OK,
        &json!({ "values": values, "truncated": next.is_some(), "next": next }),
    ))
}

/// Runs a query topology: the body is its JSON arguments (empty means `{}`); answers
/// `{"result": ...}`.
async fn query(
    state: &AppState,
    module: Arc<Module>,
    name: &str,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !module.queries.names().contains(name) {
        return Err(ApiError::not_found(
            "unknown-query",
            format!("module `{}` has no query `{name}`", module.name),
        ));
    }
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        crate::value::Value::Map(Vec::new())
    } else {
        json::parse_record(body)?
    };
    let module = without_given_up_partitions(state, module).await?;
    for p in 0..module.partitions {
        wait_ready(&module, p).await?;
    }
    let (module_name, query_name) = (module.name.clone(), name.to_string());
    let name = name.to_string();
    let started = std::time::Instant::now();
    let result = state
        .pools
        .query(move || Ok(module.queries.run(&name, &args)))
        .await?;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(crate::query::QueryError::Failed { .. }) => "guest-error",
        Err(_) => "failed",
    };
    crate::metrics::histogram(
        "sluice_query_duration_seconds",
        &[("module", &module_name), ("query", &query_name)],
    )
    .observe(started.elapsed());
    crate::metrics::inc(
        "sluice_queries_total",
        &[
            ("module", &module_name),
            ("query", &query_name),
            ("outcome", outcome),
        ],
    );
    let value = result?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "result": to_json(&value) }),
    ))
}

/// How many values a continuation may skip (deeper paging goes by key with `sorted-range`).
const SELECT_SKIP_MAX: usize = 100_000;

async fn wait_ready(module: &Module, p: u32) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    use crate::partition::worker::PartitionState;
    if module.remote.is_some() && !module.is_local(p) {
        // A spread module's partition on another host (or failed here for good and
        // about to be given up): read on its owner, which waits out a failover.
        return Ok(());
    }
    while !module.is_ready(p) {
        match module.partition_state(p) {
            PartitionState::Restarting { cause } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition-restarting",
                    format!("partition {p} failed and is restarting: {cause}"),
                );
                e.retry_after_s = Some(1);
                return Err(e);
            }
            PartitionState::Failed { cause } => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition-failed",
                    format!("partition {p} has failed and serves nothing: {cause}"),
                ))
            }
            _ => {}
        }
        if started.elapsed().as_millis() as u64 > RECOVERY_WAIT_MS_MAX {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partition-recovering",
                format!("partition {p} is still replaying its depot log after a restart"),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

/// `module`, or the version of it that replaces it here, once none of its partitions
/// is failed here and about to be given up (a spread module fenced by another host's
/// claim): a query reads the partitions that run here from this host's stores, so it
/// waits for placement to rebuild the module around the moved partition, up to a bound.
async fn without_given_up_partitions(
    state: &AppState,
    mut module: Arc<Module>,
) -> Result<Arc<Module>, ApiError> {
    let started = std::time::Instant::now();
    let given_up = |m: &Module| (0..m.partitions).find(|p| m.has_files(*p) && !m.is_local(*p));
    while let Some(p) = given_up(&module) {
        if started.elapsed().as_millis() as u64 > RECOVERY_WAIT_MS_MAX {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partition-moving",
                format!("partition {p} failed here for good and is moving to another host; retry"),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if let Some(now) = state.registry.get(&module.name) {
            module = now;
        }
    }
    Ok(module)
}

/// `DELETE …/dead-letters?partition=P&depot=D&offset=O`: discards one dead letter for good.
async fn discard_dead_letter(
    module: Arc<Module>,
    topology: &str,
    params: &HashMap<String, String>,
    who: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !module.topologies.iter().any(|x| x.name == topology) {
        return Err(ApiError::not_found(
            "unknown-topology",
            format!("module `{}` has no topology `{topology}`", module.name),
        ));
    }
    let param = |name: &str| {
        params
            .get(name)
            .map(|v| subscribe::decode_component(v))
            .transpose()?
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad-request",
                    format!("name the dead letter: `partition`, `depot` and `offset` are required (missing `{name}`)"),
                )
            })
    };
    let number = |name: &str| -> Result<u64, ApiError> {
        param(name)?.parse().map_err(|_| {
            ApiError::bad_request(
                "bad-request",
                format!("`{name}` must be a non-negative integer"),
            )
        })
    };
    let (partition, depot, offset) = (number("partition")?, param("depot")?, number("offset")?);
    if partition >= module.partitions as u64 {
        return Err(ApiError::bad_request(
            "bad-partition",
            format!(
                "module `{}` has {} partitions",
                module.name, module.partitions
            ),
        ));
    }
    let discarded = module
        .discard_dead_letter(partition as u32, topology, &depot, offset, who)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partition-unavailable",
                "the partition stopped before answering",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "partition-unavailable", e))?;
    use crate::partition::dead_letters::Discard;
    match discarded {
        Discard::Done(d) => Ok(json_response(
            StatusCode::OK,
            &json!({"discarded": {"partition": partition, "depot": d.depot, "offset": d.offset,
                    "code": d.error_code, "error": d.error}}),
        )),
        Discard::Busy => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "dead-letter-busy",
                format!("a microbatch of `{topology}` is running on partition {partition} (it may be replaying this dead letter); try again"),
            );
            e.headers.push((hyper::header::RETRY_AFTER, "1".into()));
            Err(e)
        }
        Discard::Missing => Err(ApiError::not_found(
            "unknown-dead-letter",
            format!("topology `{topology}` has no dead letter at partition {partition}, depot `{depot}`, offset {offset}"),
        )),
    }
}

fn dead_letters(module: &Module, topology: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if !module.topologies.iter().any(|t| t.name == topology) {
        return Err(ApiError::not_found(
            "unknown-topology",
            format!("module `{}` has no topology `{topology}`", module.name),
        ));
    }
    let mut out = Vec::new();
    for k in 0..module.handles.len() {
        match (module.serving_files(k as u32), &module.remote) {
            (Some(files), _) => out.extend(partition_dead_letters(files, k as u32, topology)?),
            // A spread module's partition on another host: listed there.
            (None, Some(r)) => {
                let id = crate::cluster::remote::PartitionId {
                    module: module.name.clone(),
                    since: r.since,
                    partition: k as u32,
                };
                let listed = r.link.dead_letters(
                    &id,
                    topology,
                    crate::cluster::remote::DeadLetterOp::List,
                )?;
                let entries = match listed.first() {
                    Some(crate::value::Value::Text(t)) => {
                        serde_json::from_str::<Vec<serde_json::Value>>(t).ok()
                    }
                    _ => None,
                }
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "partition-unavailable",
                        format!("partition {k}'s host answered with no dead-letter list"),
                    )
                })?;
                out.extend(entries);
            }
            (None, None) => {}
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"topology": topology, "dead_letters": out}),
    ))
}

/// The dead letters of `topology` on partition `k`, as `GET …/dead-letters` lists them
/// (also what a host answers for a partition of a spread module it owns).
pub(crate) fn partition_dead_letters(
    h: &crate::module::PartitionFiles,
    k: u32,
    topology: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    const DEAD_LETTERS_PAGE_MAX: usize = 1000;
    let dls = crate::partition::seams::PartitionStore::dead_letters(
        &*h.store,
        topology,
        DEAD_LETTERS_PAGE_MAX,
    )
    .map_err(|e| {
        let code = if e.damaged { "damaged" } else { "storage" };
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, e.message)
    })?;
    let mut out = Vec::new();
    for d in dls {
        let mut entry = json!({"partition": k, "depot": d.depot, "offset": d.offset,
            "code": d.error_code, "error": d.error, "attempts": d.attempts});
        let record = match &d.hop {
            Some(hop) => {
                entry["hop"] = json!({"handler": hop.handler, "origin":
                    {"depot": hop.origin_depot, "offset": hop.origin_offset}});
                from_cbor(&hop.payload).map_or(serde_json::Value::Null, |v| to_json(&v))
            }
            None => match h
                .log
                .read(&d.depot, d.offset, 1)
                .map_err(error::storage)?
                .into_iter()
                .next()
            {
                Some((o, b)) if o == d.offset => decode_record(&h.log, &d.depot, o, &b)?,
                _ => serde_json::Value::Null,
            },
        };
        entry["record"] = record;
        out.push(entry);
    }
    Ok(out)
}
