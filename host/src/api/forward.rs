//! Module requests on a cluster host (`sluice serve --cluster`): deploys (new modules and
//! updates) and deletes go to the cluster's catalog; every other request for a module is
//! served here if this host runs the module, and otherwise forwarded to the host that does
//! (`cluster::placement`), over a kept connection to it when one is idle.
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

use std::collections::HashMap;
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
            if let (Route::Local, Some(k)) = (&route, remote_partition(state, name, segments)) {
                if req.headers().contains_key(FORWARDED) {
                    return Err(not_owner(&placement.host, name));
                }
                return handled(forward_to_partition(state, placement, name, k, req).await?);
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

/// The partition a request for one partition's data names (a depot read), if the module is
/// spread and that partition runs on another host.
fn remote_partition(state: &AppState, name: &str, segments: &[&str]) -> Option<u32> {
    let ["v1", "modules", _, "depots", _, "partitions", k] = segments else {
        return None;
    };
    let p: u32 = k.parse().ok()?;
    let m = state.registry.get(name)?;
    (m.remote.is_some() && p < m.partitions && !m.is_local(p)).then_some(p)
}

/// Sends a read of partition `p` of the spread module `module` to the host that owns it,
/// waiting out a failover up to its bound.
async fn forward_to_partition(
    state: &AppState,
    placement: &Arc<Placement>,
    module: &str,
    p: u32,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let limit = state.registry.runtime().limits().request_body_bytes;
    let body = read_body(state, req, limit, "request_body_bytes").await?;
    let target = Target::Partition(p);
    send_until_owned(placement, module, target, &method, &uri, &headers, body).await
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

/// `PUT /v1/modules/{name}` on a cluster: checks the component here (as a new module, or
/// as an update of the build the catalog holds), stores it in the catalog, waits for the
/// host that runs the module to run that version, and answers its description from that
/// host: 201 for a new module, 200 for an update (or for the build already there).
async fn deploy(
    state: &AppState,
    placement: &Arc<Placement>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let params = query_params(&req);
    let options = deploy_options(&params)?;
    let spread = match params.get("placement").map(String::as_str) {
        None => None,
        Some("module") => Some(false),
        Some("partitions") => Some(true),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-parameter",
                format!("`placement={other}`: use `module` (every partition on one host, the default) or `partitions` (each partition placed on its own)"),
            ))
        }
    };
    let headers = req.headers().clone();
    let limit = state.registry.runtime().limits().module_size_bytes;
    let wasm = read_body(state, req, limit, "module_size_bytes").await?;
    let (p, registry, module) = (
        Arc::clone(placement),
        Arc::clone(&state.registry),
        name.to_string(),
    );
    let (version, created) =
        blocking(move || store_build(&p, &registry, &module, &wasm, &options, spread)).await?;
    let uri: Uri = format!("/v1/modules/{name}").parse().expect("a valid path");
    let deadline = Instant::now() + placement.failover_wait + UPDATE_SWAP_WAIT;
    loop {
        let described = send_until_owned(
            placement,
            name,
            Target::Module,
            &Method::GET,
            &uri,
            &headers,
            Bytes::new(),
        )
        .await?;
        let (mut parts, body) = described.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        let runs = parts.status != StatusCode::OK || described_version(&body) >= Some(version);
        if !runs {
            if let Some((host, failed)) = placement.update_failure(name, version) {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "update-failed",
                    format!("version {version} of module `{name}` is stored in the cluster's catalog, but its owner `{host}` could not switch to it ({} tries): {}; it serves the version before meanwhile and tries again after a growing pause", failed.attempts, failed.error),
                );
                e.retry_after_s = Some(5);
                return Err(e);
            }
        }
        if runs || Instant::now() >= deadline {
            if parts.status == StatusCode::OK && created {
                parts.status = StatusCode::CREATED;
            }
            if !runs {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "update-pending",
                    format!("version {version} of module `{name}` is stored in the cluster's catalog, but its owner did not switch to it within {} ms; it will (GET the module to see its version)", (placement.failover_wait + UPDATE_SWAP_WAIT).as_millis()),
                );
                e.retry_after_s = Some(1);
                return Err(e);
            }
            return Ok(Response::from_parts(parts, Full::new(body)));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// How long a deploy waits, beyond the failover bound, for the owner to switch versions.
const UPDATE_SWAP_WAIT: Duration = Duration::from_secs(30);
/// Checks of an update made again because the catalog changed under them.
const UPDATE_ATTEMPTS: usize = 3;

/// Checks `wasm` and stores it in the catalog, as a new module or as the next version of
/// the deployed one; answers the version that holds it and whether the module is new. The
/// build already at the head stores nothing (a PUT is idempotent).
fn store_build(
    p: &Placement,
    registry: &crate::module::Registry,
    module: &str,
    wasm: &[u8],
    options: &crate::module::DeployOptions,
    spread: Option<bool>,
) -> Result<(u64, bool), ApiError> {
    for _ in 0..UPDATE_ATTEMPTS {
        p.catalog.refresh().map_err(catalog_error)?;
        let head = p.catalog.head(module).filter(|h| !h.deleted);
        let stored = match head {
            None => {
                let partitions = registry.check_for_cluster(module, wasm, options)?;
                p.catalog
                    .deploy_placed(module, partitions, spread.unwrap_or(false), wasm)
                    .map(|h| (h.version, true))
            }
            Some(head) if spread.is_some_and(|s| s != head.spread) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "incompatible-update",
                    format!("module `{module}`'s placement cannot change on an update; delete it and deploy it again"),
                ));
            }
            Some(head) => {
                let old = p.catalog.wasm(&head).map_err(catalog_error)?;
                registry.check_update_for_cluster(module, &old, head.partitions, wasm, options)?;
                if old == wasm {
                    return Ok((head.version, false));
                }
                p.catalog
                    .update(module, head.version, wasm)
                    .map(|h| (h.version, false))
            }
        };
        match stored {
            Ok(v) => {
                p.tick(); // this host runs (or updates) it now if it is the owner
                return Ok(v);
            }
            Err(CatalogError::Changed(_) | CatalogError::Exists(_)) => continue,
            Err(e) => return Err(catalog_error(e)),
        }
    }
    Err(catalog_error(CatalogError::Contended(module.to_string())))
}

/// The `version` of a module's description.
fn described_version(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["version"].as_u64()
}

/// `DELETE /v1/modules/{name}` on a cluster: marks it deleted in the catalog; every host
/// running it drops it (this one at once, the others within a tick); its partition streams
/// are deleted (a host still running it finds its writes refused, and drops it too).
async fn delete(placement: &Arc<Placement>, name: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let (p, module) = (Arc::clone(placement), name.to_string());
    let existed = blocking(move || {
        let existed = p.catalog.delete(&module).map_err(catalog_error)?;
        p.tick();
        if let Some(head) = p.catalog.head(&module).filter(|h| existed && h.deleted) {
            p.delete_logs(&head);
        }
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
    send_until_owned(
        placement,
        module,
        Target::Module,
        &method,
        &uri,
        &headers,
        body,
    )
    .await
}

/// What a forwarded request is for: a whole module, or one partition of a spread module.
#[derive(Debug, Clone, Copy)]
enum Target {
    Module,
    Partition(u32),
}

impl Target {
    /// The host to send to now (id and HTTP address), `None` during a failover.
    fn owner(
        self,
        placement: &Placement,
        module: &str,
    ) -> Result<Option<(String, String)>, ApiError> {
        match self {
            Target::Partition(p) => Ok(placement.partition_owner(module, p)),
            Target::Module => match placement.route(module) {
                Route::Local => Ok(Some((
                    placement.host.clone(),
                    placement.membership.address.clone(),
                ))),
                Route::Remote { host, address } => Ok(Some((host, address))),
                Route::Unowned => Ok(None),
                Route::Unknown => Err(ApiError::not_found(
                    "unknown-module",
                    format!("no module named `{module}` on the cluster"),
                )),
            },
        }
    }

    fn describe(self, module: &str) -> String {
        match self {
            Target::Module => format!("module `{module}`"),
            Target::Partition(p) => format!("partition {p} of module `{module}`"),
        }
    }
}

/// Sends the request to whoever runs `target` of `module` (this host included, through its
/// own HTTP address), waiting out a failover up to its bound. A request that never reached
/// an owner is sent again; one whose answer was lost is too when it is a read, and is
/// answered "outcome unknown" otherwise.
async fn send_until_owned(
    placement: &Arc<Placement>,
    module: &str,
    target: Target,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let deadline = Instant::now() + placement.failover_wait;
    let mut last = String::from("no host runs it");
    loop {
        if let Some((host, address)) = target.owner(placement, module)? {
            let sent = send(
                &address,
                method,
                uri,
                headers,
                body.clone(),
                &placement.host,
            );
            match while_owner(placement, module, target, &host, sent).await {
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
                            "host `{host}`, which runs {}, took the request but its answer was lost ({why}): it may have been applied; retry it with the same Idempotency-Key to get the original answer",
                            target.describe(module)
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
                    "no host answered for {} within the failover bound of {} ms ({last}); nothing was done",
                    target.describe(module),
                    placement.failover_wait.as_millis()
                ),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Awaits `sent` while `host` still runs `target` of `module` as this host sees it: an owner
/// seen dead (or replaced) with the request in hand may never answer (paused, cut off), so
/// the wait ends there, its outcome unknown.
async fn while_owner(
    placement: &Placement,
    module: &str,
    target: Target,
    host: &str,
    sent: impl std::future::Future<Output = Result<Response<Full<Bytes>>, Failure>>,
) -> Result<Response<Full<Bytes>>, Failure> {
    tokio::pin!(sent);
    loop {
        tokio::select! {
            r = &mut sent => return r,
            () = tokio::time::sleep(OWNER_CHECK) => {
                let still = matches!(target.owner(placement, module), Ok(Some((h, _))) if h == host);
                if !still {
                    return Err(Failure::Unknown(format!(
                        "host `{host}` stopped running {} (seen dead or replaced) while it had the request",
                        target.describe(module)
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

/// One forwarded request to the host at `address` (`http://ip:port`), over an idle
/// connection to it if one is kept ([`IDLE`]), else over a new one.
async fn send(
    address: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    me: &str,
) -> Result<Response<Full<Bytes>>, Failure> {
    let authority = address.trim_start_matches("http://").trim_end_matches('/');
    let request = forwarded_request(authority, method, uri, headers, body, me)?;
    let answered = tokio::time::timeout(FORWARD_TIMEOUT, async {
        let (sender, response) = send_on_some_connection(authority, request).await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Failure::Unknown(format!("reading the answer: {e}")))?
            .to_bytes();
        keep_idle(authority, sender);
        Ok(Response::from_parts(parts, Full::new(body)))
    });
    answered
        .await
        .map_err(|_| Failure::Unknown(format!("no answer within {FORWARD_TIMEOUT:?}")))?
}

/// The request as the owner gets it: same method, path, query and headers (hop-by-hop ones
/// dropped), marked forwarded by `me`.
fn forwarded_request(
    authority: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    me: &str,
) -> Result<Request<Full<Bytes>>, Failure> {
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
    request
        .header(hyper::header::HOST, authority)
        .header(
            FORWARDED,
            HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("host")),
        )
        .body(Full::new(body))
        .map_err(|e| Failure::NotSent(format!("building the request: {e}")))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `request` on a kept connection; if that connection turns out closed before the
/// request was written (hyper hands the request back), on a new one. A request written and
/// then unanswered is [`Failure::Unknown`], wherever it was sent.
async fn send_on_some_connection(
    authority: &str,
    request: Request<Full<Bytes>>,
) -> Result<(Sender, Response<Incoming>), Failure> {
    let mut request = request;
    while let Some(mut sender) = take_idle(authority) {
        if sender.ready().await.is_err() {
            continue; // closed while idle: nothing was sent on it
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((sender, response)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(Failure::Unknown(e.into_error().to_string())),
            },
        }
    }
    let mut sender = connect(authority).await?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Unknown(e.to_string()))?;
    Ok((sender, response))
}

/// A new HTTP/1 connection to `authority`.
async fn connect(authority: &str) -> Result<Sender, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| Failure::NotSent("connecting timed out".into()))?
        .map_err(|e| Failure::NotSent(format!("connecting: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Failure::NotSent(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Connections to other hosts whose last forwarded request was answered, by authority, kept
/// for the next one. Invariant: a kept connection is idle (its answer was read whole) and was
/// used less than [`IDLE_KEEP`] ago, well inside the receiver's idle timeout (10 s by default),
/// so the receiver does not close it as it is reused — and if it does, hyper hands the unsent
/// request back and it goes on a new connection.
static IDLE: std::sync::LazyLock<std::sync::Mutex<IdleConnections>> =
    std::sync::LazyLock::new(Default::default);
/// Per authority, kept connections with the time each was last answered on.
type IdleConnections = HashMap<String, Vec<(Instant, Sender)>>;
const IDLE_KEEP: Duration = Duration::from_secs(4);
/// The most idle connections kept to one host (a burst opens more; the rest are closed).
const IDLE_PER_HOST_MAX: usize = 64;

fn take_idle(authority: &str) -> Option<Sender> {
    let mut idle = IDLE.lock().expect("poisoned");
    let kept = idle.get_mut(authority)?;
    while let Some((at, sender)) = kept.pop() {
        if at.elapsed() < IDLE_KEEP && !sender.is_closed() {
            return Some(sender);
        }
    }
    None
}

fn keep_idle(authority: &str, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    let mut idle = IDLE.lock().expect("poisoned");
    let kept = idle.entry(authority.to_string()).or_default();
    kept.retain(|(at, s)| at.elapsed() < IDLE_KEEP && !s.is_closed());
    if kept.len() < IDLE_PER_HOST_MAX {
        kept.push((Instant::now(), sender));
    }
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
        CatalogError::Changed(_) => ApiError::new(StatusCode::CONFLICT, "module-changed", message),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server on loopback answering `200 <n>` (n counts requests); `keep_alive: false`
    /// closes every connection after its answer. Returns its address and the connections
    /// it accepted.
    async fn server(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let requests = Arc::clone(&requests);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(n.to_string()),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    async fn get(address: &str) -> String {
        let uri: Uri = "/v1/modules/m".parse().unwrap();
        let r = send(
            address,
            &Method::GET,
            &uri,
            &HeaderMap::new(),
            Bytes::new(),
            "h1",
        )
        .await
        .unwrap_or_else(|_| panic!("no answer from {address}"));
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Connections the server accepted for `requests` forwarded one after another, each
    /// answered in order.
    async fn connections_for(keep_alive: bool, requests: usize) -> usize {
        let (address, accepted) = server(keep_alive).await;
        for n in 1..=requests {
            assert_eq!(get(&address).await, n.to_string());
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn forwarded_requests_reuse_one_connection() {
        assert_eq!(connections_for(true, 5).await, 1);
    }

    #[tokio::test]
    async fn a_connection_the_receiver_closed_is_replaced() {
        assert_eq!(connections_for(false, 3).await, 3);
    }
}
