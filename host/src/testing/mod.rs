//! A test harness for module authors: an in-process Sluice host for ordinary `cargo test`
//! tests, with typed helpers.
//!
//! ```no_run
//! use serde_json::json;
//! use sluice::testing::{module_wasm, TestHost};
//!
//! let host = TestHost::start();
//! let wordcount = host.deploy("wordcount", &module_wasm("wordcount")).unwrap();
//! wordcount.append("words", &json!({"word": "apple"})).unwrap(); // waits for processing
//! let counts: Vec<i64> = wordcount.select("counts", json!([{"key": "apple"}])).unwrap();
//! assert_eq!(counts, vec![1]);
//! let top: serde_json::Value = wordcount.query("top-words", &json!({"n": 1})).unwrap();
//! assert_eq!(top, json!([{"word": "apple", "count": 1}]));
//! ```
//!
//! Owns [`TestHost`]: a real host (the same registry, workers, wasmtime sandbox, redb files and
//! HTTP API as `sluice serve`) in this process, on a free loopback port, with its data in a
//! fresh temporary directory removed on drop. Its helpers go through the HTTP API, so a test
//! exercises exactly what clients will see. Invariant: every helper either returns the
//! decoded answer or an [`Error`] carrying the API's error code and message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{serve, AppState};
use crate::client::{Client, Response};
use crate::config::{Config, Limits};
use crate::module::Registry;

/// A failed helper call: the API's error code and message (or a transport/decoding error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Error {
    fn local(code: &str, message: impl Into<String>) -> Self {
        Self {
            status: 0,
            code: code.into(),
            message: message.into(),
        }
    }

    fn from_response(r: &Response) -> Self {
        Self {
            status: r.status,
            code: r.error_code(),
            message: r.error_message(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The `.wasm` of a module built into this workspace's `target/wasm32-wasip2/release/`
/// (`name` as the crate is named; dashes become underscores), found from the current
/// directory upwards. Panics with the build command when it is missing.
pub fn module_wasm(name: &str) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let start = std::env::current_dir().expect("a current directory");
    for dir in start.ancestors() {
        let p = dir.join("target/wasm32-wasip2/release").join(&file);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{file} not found in target/wasm32-wasip2/release above {}; build it with `cargo build --release --target wasm32-wasip2`",
        start.display()
    )
}

/// The compiled-module cache every [`TestHost`] of this workspace shares:
/// `target/sluice-compile-cache` beside the built modules (so a large component — a Python
/// module is ~18 MB — is compiled once, not once per test host); `None` outside a workspace.
pub fn shared_compile_cache() -> Option<PathBuf> {
    let start = std::env::current_dir().ok()?;
    start
        .ancestors()
        .map(|dir| dir.join("target"))
        .find(|target| target.join("wasm32-wasip2").is_dir())
        .map(|target| target.join("sluice-compile-cache"))
}

/// Options of a [`TestHost`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Partitions of each deployed module.
    pub partitions: u32,
    pub limits: Limits,
    /// Where compiled components are cached; by default [`shared_compile_cache`] (or the
    /// host's own data directory outside a workspace).
    pub compile_cache_dir: Option<PathBuf>,
    /// Start with a wall clock at this time (ms since the Unix epoch) that moves only by
    /// [`TestHost::advance_clock`] (tick depots without sleeping); `None`: the system clock.
    pub manual_clock_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            partitions: 4,
            manual_clock_ms: None,
            compile_cache_dir: shared_compile_cache(),
            limits: Limits {
                // Tests want quick answers when something loops.
                call_deadline_ms: 1_000,
                query_deadline_ms: 1_000,
                handler_attempts_max: 1,
                ..Limits::default()
            },
        }
    }
}

/// An in-process host; see the module docs.
pub struct TestHost {
    registry: Arc<Registry>,
    addr: SocketAddr,
    dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    client: Mutex<Client>,
    clock: Option<Arc<crate::partition::seams::ManualClock>>,
}

impl TestHost {
    /// A host with [`Options::default`].
    pub fn start() -> TestHost {
        Self::with_options(Options::default())
    }

    pub fn with_options(options: Options) -> TestHost {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = options
            .manual_clock_ms
            .map(|ms| Arc::new(crate::partition::seams::ManualClock::new(ms)));
        let registry = Registry::open(Config {
            manual_clock: clock.clone(),
            data_dir: dir.clone(),
            limits: options.limits,
            default_partitions: options.partitions,
            cache_budget_bytes: crate::config::CACHE_BUDGET_BYTES_DEFAULT,
            verify_on_open: true,
            compile_cache_dir: options.compile_cache_dir,
        })
        .expect("opening the test host's data directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("a local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::new(AppState {
            registry: Arc::clone(&registry),
            tokens: Default::default(),
            conn: crate::api::conn::ConnLimits::default(),
            pools: crate::api::pools::Pools::default(),
            cors: Default::default(),
            cluster: None,
        });
        runtime.spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        let client = Client::new(&format!("http://{addr}")).expect("a valid address");
        TestHost {
            registry,
            addr,
            dir,
            runtime: Some(runtime),
            stop: Some(stop),
            client: Mutex::new(client),
            clock,
        }
    }

    /// Moves the manual wall clock ([`Options::manual_clock_ms`]) forward by `ms`; tick depots
    /// see it within a flush interval. Returns the new time.
    ///
    /// # Panics
    /// If the host was started without a manual clock.
    pub fn advance_clock(&self, ms: u64) -> u64 {
        self.clock
            .as_ref()
            .expect("TestHost started without Options::manual_clock_ms")
            .advance(ms)
    }

    /// `http://127.0.0.1:PORT`, for any HTTP client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data directory (removed when the host is dropped).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Sends one request to the host's API.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response> {
        self.client
            .lock()
            .expect("poisoned")
            .request(method, path, content_type, body)
            .map_err(|e| Error::local("transport", e.to_string()))
    }

    fn json_call(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let r = self.request(
            method,
            path,
            "application/json",
            body.to_string().as_bytes(),
        )?;
        if r.is_success() {
            Ok(r.json())
        } else {
            Err(Error::from_response(&r))
        }
    }

    /// Deploys (or updates) module `name` from a `.wasm` file.
    pub fn deploy(&self, name: &str, wasm: &Path) -> Result<TestModule<'_>> {
        let bytes = std::fs::read(wasm)
            .map_err(|e| Error::local("io", format!("{}: {e}", wasm.display())))?;
        let r = self.request(
            "PUT",
            &format!("/v1/modules/{name}"),
            "application/wasm",
            &bytes,
        )?;
        if !r.is_success() {
            return Err(Error::from_response(&r));
        }
        Ok(self.module(name))
    }

    /// A handle on a deployed module.
    pub fn module(&self, name: &str) -> TestModule<'_> {
        TestModule {
            host: self,
            name: name.to_string(),
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        self.registry.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where an append landed, and what the topologies answered (`full` acks).
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
    /// Ack-return values by topology.
    pub results: serde_json::Map<String, Value>,
}

/// A deployed module of a [`TestHost`].
pub struct TestModule<'h> {
    host: &'h TestHost,
    name: String,
}

fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::local("encode", e.to_string()))
}

fn decode<T: DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::local("decode", format!("{what}: {e}")))
}

impl TestModule<'_> {
    /// Appends one record and waits until every topology reading the depot processed it
    /// (`full` ack).
    pub fn append<T: Serialize + ?Sized>(&self, depot: &str, record: &T) -> Result<Appended> {
        self.append_at(
            &format!("/v1/modules/{}/depots/{depot}/append", self.name),
            record,
        )
    }

    /// Like [`TestModule::append`], to partition `partition` of a `direct` depot.
    pub fn append_to<T: Serialize + ?Sized>(
        &self,
        depot: &str,
        partition: u32,
        record: &T,
    ) -> Result<Appended> {
        let url = format!(
            "/v1/modules/{}/depots/{depot}/append?partition={partition}",
            self.name
        );
        self.append_at(&url, record)
    }

    fn append_at<T: Serialize + ?Sized>(&self, url: &str, record: &T) -> Result<Appended> {
        let v = self.host.json_call("POST", url, &encode(record)?)?;
        Ok(Appended {
            partition: v["partition"].as_u64().unwrap_or(0) as u32,
            offset: v["offset"].as_u64().unwrap_or(0),
            results: v["results"].as_object().cloned().unwrap_or_default(),
        })
    }

    /// Appends records as one NDJSON batch, each waited for like [`TestModule::append`];
    /// the first failed line is the error.
    pub fn append_all<T: Serialize>(&self, depot: &str, records: &[T]) -> Result<Vec<Appended>> {
        let mut body = String::new();
        for r in records {
            body.push_str(&encode(r)?.to_string());
            body.push('\n');
        }
        let r = self.host.request(
            "POST",
            &format!("/v1/modules/{}/depots/{depot}/append", self.name),
            "application/x-ndjson",
            body.as_bytes(),
        )?;
        if !r.is_success() {
            return Err(Error::from_response(&r));
        }
        let mut out = Vec::new();
        for v in r.json()["results"].as_array().cloned().unwrap_or_default() {
            if let Some(e) = v.get("error") {
                return Err(Error {
                    status: 0,
                    code: e["code"].as_str().unwrap_or("").to_string(),
                    message: e["message"].as_str().unwrap_or("").to_string(),
                });
            }
            out.push(Appended {
                partition: v["partition"].as_u64().unwrap_or(0) as u32,
                offset: v["offset"].as_u64().unwrap_or(0),
                results: v["results"].as_object().cloned().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Every value `path` (navigators in their JSON form, e.g. `json!([{"key": "alice"}])`)
    /// selects in `pstate`; the path must start with a key (which picks the partition).
    pub fn select<T: DeserializeOwned>(&self, pstate: &str, path: Value) -> Result<Vec<T>> {
        self.select_in(pstate, path, None)
    }

    /// Like [`TestModule::select`], over every partition (the path need not start with a key).
    pub fn select_all<T: DeserializeOwned>(&self, pstate: &str, path: Value) -> Result<Vec<T>> {
        self.select_in(pstate, path, Some(json!("all")))
    }

    /// The one value at `path`, if any.
    pub fn get<T: DeserializeOwned>(&self, pstate: &str, path: Value) -> Result<Option<T>> {
        Ok(self.select(pstate, path)?.into_iter().next())
    }

    fn select_in<T: DeserializeOwned>(
        &self,
        pstate: &str,
        path: Value,
        partition: Option<Value>,
    ) -> Result<Vec<T>> {
        let mut body = json!({ "path": path });
        if let Some(p) = partition {
            body["partition"] = p;
        }
        let v = self.host.json_call(
            "POST",
            &format!("/v1/modules/{}/pstates/{pstate}/select", self.name),
            &body,
        )?;
        decode(v["values"].clone(), "the selected values")
    }

    /// Subscribes to `path` in `pstate` (a path starting with a key; `partition` otherwise):
    /// the returned [`Subscription`] holds the current value and keeps it current with each
    /// event ([`Subscription::wait_for`]).
    pub fn subscribe(
        &self,
        pstate: &str,
        path: Value,
        partition: Option<u32>,
    ) -> Result<Subscription> {
        let url = crate::client::subscribe_path(&self.name, pstate, &path.to_string(), partition);
        let client = self.host.client.lock().expect("poisoned");
        let stream = client
            .subscribe(&url, None, Some(Duration::from_secs(30)))
            .map_err(|e| Error::local("transport", e.to_string()))?
            .map_err(|r| Error::from_response(&r))?;
        drop(client);
        let mut sub = Subscription {
            stream,
            watched: Default::default(),
        };
        sub.next_event()?;
        Ok(sub)
    }

    /// Runs query `name` with `args` and decodes its result.
    pub fn query<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        name: &str,
        args: &A,
    ) -> Result<R> {
        let v = self.host.json_call(
            "POST",
            &format!("/v1/modules/{}/queries/{name}", self.name),
            &encode(args)?,
        )?;
        decode(v["result"].clone(), "the query result")
    }

    /// The dead letters of `topology` (records and hops given up on), as the API shows them.
    pub fn dead_letters(&self, topology: &str) -> Result<Vec<Value>> {
        let r = self.host.request(
            "GET",
            &format!(
                "/v1/modules/{}/topologies/{topology}/dead-letters",
                self.name
            ),
            "application/json",
            b"",
        )?;
        if !r.is_success() {
            return Err(Error::from_response(&r));
        }
        Ok(r.json()["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until every topology of the module processed everything appended so far (for
    /// appends made with `ack=none`/`append`, and microbatches); `Err` after `within`.
    pub fn wait_processed(&self, within: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let m = self.host.registry.get(&self.name).ok_or_else(|| {
                Error::local("unknown-module", format!("no module `{}`", self.name))
            })?;
            let lag: f64 = m
                .gauges()
                .iter()
                .filter(|g| g.name == "sluice_topology_lag_records")
                .map(|g| g.value)
                .sum();
            if lag == 0.0 {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(Error::local(
                    "timeout",
                    format!("{lag} records still unprocessed after {within:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A live subscription (from [`TestModule::subscribe`]): the path's value, kept current.
pub struct Subscription {
    stream: crate::client::sse::EventStream,
    watched: crate::client::sse::Watched,
}

impl Subscription {
    /// Waits for the next event and applies it; a final event (`dropped`, `error`,
    /// `closing`) is an error with its code.
    pub fn next_event(&mut self) -> Result<crate::client::sse::SseEvent> {
        let e = self
            .stream
            .next_event()
            .map_err(|e| Error::local("transport", e.to_string()))?
            .ok_or_else(|| Error::local("ended", "the subscription ended"))?;
        if e.is_final() {
            return Err(Error {
                status: 0,
                code: e.data["code"].as_str().unwrap_or(&e.event).to_string(),
                message: e.data["message"].as_str().unwrap_or("").to_string(),
            });
        }
        self.watched
            .apply(&e)
            .map_err(|m| Error::local("bad-diff", m))?;
        Ok(e)
    }

    /// The values as of the last event.
    pub fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        decode(
            Value::Array(self.watched.values.clone()),
            "subscribed values",
        )
    }

    /// The last event's id (for `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.watched.last_id.as_deref()
    }

    /// Applies events until `until` holds for the values, for at most `within`.
    pub fn wait_for<T: DeserializeOwned>(
        &mut self,
        within: Duration,
        until: impl Fn(&[T]) -> bool,
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + within;
        loop {
            let values: Vec<T> = self.values()?;
            if until(&values) {
                return Ok(values);
            }
            if Instant::now() > deadline {
                return Err(Error::local(
                    "timeout",
                    format!("the subscribed values did not get there within {within:?}"),
                ));
            }
            self.next_event()?;
        }
    }
}
