//! Module requests on a cluster host (`sluice serve --cluster`): deploys and deletes go to
//! the cluster's catalog; every other request for a module is served here if this host runs
//! the module, and otherwise forwarded to the host that does (`cluster::placement`).
//!
//! Forwarding rules (nothing is ever answered as done unless the owner answered so):
//! - while no host runs the module (a failover), the request waits up to the failover bound
//!   (`--failover-wait-ms`), then gets 503 `no-owner` with `Retry-After`: nothing was done;
//! - a request that could not be sent (no connection) or that the receiver refused as not
//!   its owner (`Sluice-Not-Owner`) is sent again, to whoever owns the module by then;
//! - a request sent whose answer was lost is retried only if it is a read (GET); otherwise
//!   it gets 503 `owner-unreachable` saying its outcome is unknown (retry it with the same
//!   `Idempotency-Key` to get the original answer);
//! - a forwarded request is never forwarded again (a host that does not run the module
//!   answers `not-owner`), so requests do not loop between hosts with stale views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde_json::json;

use super::error::ApiError;
use super::{deploy_options, json_response, query_params, read_body, AppState};
use crate::cluster::catalog::CatalogError;
use crate::cluster::placement::{Placement, Route};

/// Marks a request one host forwarded to another (the value: the forwarding host).
pub const FORWARDED: &str = "sluice-forwarded";
/// Marks a refusal by a host that does not run the module (nothing was done).
pub const NOT_OWNER: &str = "sluice-not-owner";

/// How long a forwarded request may take, answer included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two attempts while the module has no reachable owner.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What became of a module request.
pub(super) enum Outcome {
    /// Answered here (from the catalog, or by the owner it was forwarded to).
    Handled(Response<Full<Bytes>>),
    /// This host runs the module: the ordinary routes serve it.
    Local(Request<Incoming>),
}

/// Handles `/v1/modules…` on a cluster host.
pub(super) async fn module_request(
    state: &AppState,
    placement: &Arc<Placement>,
    method: &Method,
    segments: &[&str],
    req: Request<Incoming>,
) -> Result<Outcome, ApiError> {
    let handled = |r: Response<Full<Bytes>>| Ok(Outcome::Handled(r));
    match (method, segments) {
        (&Method::GET, ["v1", "modules"]) => handled(list(placement)),
        (_, ["v1", "modules"]) => Ok(Outcome::Local(req)),
        (&Method::PUT, ["v1", "modules", name]) => {
            handled(deploy(state, placement, name, req).await?)
        }
        (&Method::DELETE, ["v1", "modules", name]) => handled(delete(placement, name).await?),
        (_, ["v1", "modules", name, ..]) => {
            let mut route = placement.route(name);
            if route == Route::Unknown {
                // Deployed through another host a moment ago, perhaps: read the catalog.
                let p = Arc::clone(placement);
                blocking(move || p.catalog.refresh().map_err(catalog_error)).await?;
                route = placement.route(name);
            }
            match route {
                Route::Local => Ok(Outcome::Local(req)),
                Route::Unknown => Err(ApiError::not_found(
                    "unknown-module",
                    format!("no module named `{name}` on the cluster"),
                )),
                _ if req.headers().contains_key(FORWARDED) => Err(not_owner(&placement.host, name)),
                _ => handled(forward(state, placement, name, req).await?),
            }
        }
        _ => Ok(Outcome::Local(req)),
    }
}

/// The refusal of a forwarded request by a host that does not run the module.
fn not_owner(host: &str, module: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-owner",
        format!("host `{host}` does not run module `{module}`; nothing was done"),
    );
    e.retry_after_s = Some(1);
    e.headers
        .push((HeaderName::from_static(NOT_OWNER), "1".into()));
    e
}

/// `GET /v1/modules` on a cluster: the catalog's modules and who runs each.
fn list(placement: &Placement) -> Response<Full<Bytes>> {
    let modules: Vec<_> = placement
        .modules_view()
        .into_iter()
        .map(|m| {
            let state = if m["owner"].is_null() {
                "unowned"
            } else {
                "running"
            };
            json!({
                "name": m["name"],
                "version": m["version"],
                "partitions": m["partitions"],
                "state": state,
                "owner": m["owner"],
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "modules": modules }))
}

/// `PUT /v1/modules/{name}` on a cluster: checks the component here, stores it in the
/// catalog, waits for a host to run it and answers its description from that host.
async fn deploy(
    state: &AppState,
    placement: &Arc<Placement>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let options = deploy_options(&query_params(&req))?;
    let headers = req.headers().clone();
    let limit = state.registry.runtime().limits().module_size_bytes;
    let wasm = read_body(state, req, limit, "module_size_bytes").await?;
    let (p, registry, module) = (
        Arc::clone(placement),
        Arc::clone(&state.registry),
        name.to_string(),
    );
    blocking(move || {
        let partitions = registry.check_for_cluster(&module, &wasm, &options)?;
        p.catalog
            .deploy(&module, partitions, &wasm)
            .map_err(catalog_error)?;
        p.tick(); // this host runs it now if it is the module's first choice
        Ok(())
    })
    .await?;
    let uri: Uri = format!("/v1/modules/{name}").parse().expect("a valid path");
    let described =
        send_until_owned(placement, name, &Method::GET, &uri, &headers, Bytes::new()).await?;
    let (mut parts, body) = described.into_parts();
    if parts.status == StatusCode::OK {
        parts.status = StatusCode::CREATED;
    }
    Ok(Response::from_parts(parts, body))
}

/// `DELETE /v1/modules/{name}` on a cluster: marks it deleted in the catalog; every host
/// running it drops it (this one at once, the others within a tick).
async fn delete(placement: &Arc<Placement>, name: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let (p, module) = (Arc::clone(placement), name.to_string());
    let existed = blocking(move || {
        let existed = p.catalog.delete(&module).map_err(catalog_error)?;
        p.tick();
        Ok(existed)
    })
    .await?;
    if existed {
        Ok(json_response(StatusCode::OK, &json!({"deleted": name})))
    } else {
        Err(ApiError::not_found(
            "unknown-module",
            format!("no module named `{name}` on the cluster"),
        ))
    }
}

/// Forwards a request for `module` to its owner.
async fn forward(
    state: &AppState,
    placement: &Arc<Placement>,
    module: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let limits = state.registry.runtime().limits();
    let limit = limits.module_size_bytes.max(limits.request_body_bytes);
    let body = read_body(state, req, limit, "request_body_bytes").await?;
    send_until_owned(placement, module, &method, &uri, &headers, body).await
}

/// Sends the request to whoever runs `module` (this host included, through its own HTTP
/// address), waiting out a failover up to its bound.
async fn send_until_owned(
    placement: &Arc<Placement>,
    module: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let deadline = Instant::now() + placement.failover_wait;
    let mut last = String::from("no host runs it");
    loop {
        let target = match placement.route(module) {
            Route::Local => Some((placement.host.clone(), placement.membership.address.clone())),
            Route::Remote { host, address } => Some((host, address)),
            Route::Unowned => None,
            Route::Unknown => {
                return Err(ApiError::not_found(
                    "unknown-module",
                    format!("no module named `{module}` on the cluster"),
                ))
            }
        };
        if let Some((host, address)) = target {
            let sent = send(
                &address,
                method,
                uri,
                headers,
                body.clone(),
                &placement.host,
            );
            match while_owner(placement, module, &host, sent).await {
                Ok(r) if r.headers().contains_key(NOT_OWNER) => {
                    last = format!("host `{host}` no longer runs it");
                }
                Ok(r) => return Ok(r),
                Err(Failure::NotSent(why)) => last = format!("host `{host}`: {why}"),
                Err(Failure::Unknown(why)) if method == Method::GET => {
                    last = format!("host `{host}`: {why}")
                }
                Err(Failure::Unknown(why)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "owner-unreachable",
                        format!(
                            "host `{host}`, which runs module `{module}`, took the request but its answer was lost ({why}): it may have been applied; retry it with the same Idempotency-Key to get the original answer"
                        ),
                    )
                    .detail("owner", host)
                    .detail("outcome", "unknown"));
                }
            }
        }
        if Instant::now() >= deadline {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-owner",
                format!(
                    "no host answered for module `{module}` within the failover bound of {} ms ({last}); nothing was done",
                    placement.failover_wait.as_millis()
                ),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Awaits `sent` while `host` still runs `module` as this host sees it: an owner seen dead
/// (or replaced) with the request in hand may never answer (paused, cut off), so the wait
/// ends there, its outcome unknown.
async fn while_owner(
    placement: &Placement,
    module: &str,
    host: &str,
    sent: impl std::future::Future<Output = Result<Response<Full<Bytes>>, Failure>>,
) -> Result<Response<Full<Bytes>>, Failure> {
    tokio::pin!(sent);
    loop {
        tokio::select! {
            r = &mut sent => return r,
            () = tokio::time::sleep(OWNER_CHECK) => {
                let still = match placement.route(module) {
                    Route::Local => host == placement.host,
                    Route::Remote { host: h, .. } => h == host,
                    _ => false,
                };
                if !still {
                    return Err(Failure::Unknown(format!(
                        "host `{host}` stopped running the module (seen dead or replaced) while it had the request"
                    )));
                }
            }
        }
    }
}

/// How often a forwarder waiting for an answer checks that its target still owns the module.
const OWNER_CHECK: Duration = Duration::from_millis(200);

/// Why a forwarded request got no answer.
enum Failure {
    /// It never reached the owner: nothing was done.
    NotSent(String),
    /// It was sent; the answer was lost.
    Unknown(String),
}

/// One forwarded request to the host at `address` (`http://ip:port`).
async fn send(
    address: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    me: &str,
) -> Result<Response<Full<Bytes>>, Failure> {
    let authority = address.trim_start_matches("http://").trim_end_matches('/');
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| Failure::NotSent("connecting timed out".into()))?
        .map_err(|e| Failure::NotSent(format!("connecting: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Failure::NotSent(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder().method(method.clone()).uri(path);
    for (k, v) in headers {
        if !matches!(
            k.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | FORWARDED
        ) {
            request = request.header(k, v);
        }
    }
    let request = request
        .header(hyper::header::HOST, authority)
        .header(
            FORWARDED,
            HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("host")),
        )
        .body(Full::new(body))
        .map_err(|e| Failure::NotSent(format!("building the request: {e}")))?;
    let answered = tokio::time::timeout(FORWARD_TIMEOUT, async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Unknown(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Failure::Unknown(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Response::from_parts(parts, Full::new(body)))
    });
    answered
        .await
        .map_err(|_| Failure::Unknown(format!("no answer within {FORWARD_TIMEOUT:?}")))?
}

/// Runs a blocking cluster call (NATS round trips) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

fn catalog_error(e: CatalogError) -> ApiError {
    let message = e.to_string();
    match e {
        CatalogError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "module-exists", message),
        CatalogError::Damaged { .. } => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "catalog-damaged",
            message,
        ),
        CatalogError::Log(_) | CatalogError::Contended(_) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster-unavailable",
                message,
            );
            e.retry_after_s = Some(1);
            e
        }
    }
}
