//! Starting the real `sluice` binary and talking HTTP/1.1 to it (with the host crate's small
//! blocking client, `sluice::client`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The example and fixture modules, built by `make modules`.
pub fn module_wasm(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the modules first with `make modules`",
            path.display()
        )
    })
}

/// A running host process on a free loopback port.
pub struct Host {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

/// An HTTP answer (the host crate's client type: `status`, `headers`, `body`, `json()`,
/// `header()`, `error_code()`).
pub use sluice::client::Response;

impl Host {
    pub fn start(data_dir: &Path, args: &[&str]) -> Host {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Self::spawn(data_dir, args)
    }

    fn spawn(data_dir: &Path, args: Vec<String>) -> Host {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        // A free port, unless the arguments name one (to restart on the same address).
        let listen: &[&str] = if args.iter().any(|a| a == "--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting sluice");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the listen line");
        let addr = line
            .trim()
            .strip_prefix("sluice listening on http://")
            .unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!("unexpected first line {line:?}; host log:\n{log}")
            })
            .to_string();
        Host {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            args,
        }
    }

    /// A free loopback address for `--listen`, so a host can be restarted on the same one.
    pub fn free_address() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address").to_string()
    }

    /// `kill -9`, then start again on the same data dir.
    pub fn kill9_and_restart(mut self) -> Host {
        let _ = self.child.kill();
        self.child.wait().expect("wait");
        let (dir, args) = (self.data_dir.clone(), std::mem::take(&mut self.args));
        Self::spawn(&dir, args)
    }

    /// Runs `clients` threads that call `request(host, client, n)` — `n` counting up from
    /// `next`, shared across calls — until, after `kill_after`, the host is killed with
    /// `kill -9`; then starts it again on the same data dir. `request` answers `None` when the
    /// host did not answer (that client stops), or `Some` of what to keep.
    pub fn load_then_kill9_and_restart<T: Send>(
        self,
        clients: u64,
        kill_after: Duration,
        next: &std::sync::atomic::AtomicU64,
        request: impl Fn(&Host, u64, u64) -> Option<Option<T>> + Sync,
    ) -> (Host, Vec<T>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = AtomicBool::new(false);
        let kept = std::thread::scope(|s| {
            let threads: Vec<_> = (0..clients)
                .map(|c| {
                    let (stop, request, host) = (&stop, &request, &self);
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            match request(host, c, n) {
                                None => break,
                                Some(k) => kept.extend(k),
                            }
                        }
                        kept
                    })
                })
                .collect();
            std::thread::sleep(kill_after);
            let status = Command::new("kill")
                .args(["-9", &self.pid().to_string()])
                .status()
                .expect("kill -9");
            assert!(status.success());
            stop.store(true, Ordering::Relaxed);
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("client"))
                .collect()
        });
        (self.kill9_and_restart(), kept)
    }

    /// SIGTERM (graceful), then start again on the same data dir.
    pub fn terminate_and_restart(self) -> Host {
        Self::restart(self.stop())
    }

    /// SIGTERM (graceful) and wait for the exit; answers the data dir and arguments, for a
    /// later [`Host::start`] (after a test changed the files).
    pub fn stop(mut self) -> (PathBuf, Vec<String>) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "graceful shutdown exited with {exit}");
        (self.data_dir.clone(), std::mem::take(&mut self.args))
    }

    /// `kill -9` and wait; answers the data dir and arguments, as [`Host::stop`] does.
    pub fn stop_by_kill9(mut self) -> (PathBuf, Vec<String>) {
        let _ = self.child.kill();
        self.child.wait().expect("wait");
        (self.data_dir.clone(), std::mem::take(&mut self.args))
    }

    /// Starts again on `stopped` (what [`Host::stop`] answered).
    pub fn restart(stopped: (PathBuf, Vec<String>)) -> Host {
        Self::spawn(&stopped.0, stopped.1)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Response {
        self.try_request(method, path, content_type, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer from the host"))
    }

    /// Like `request`, but `None` when the host does not answer (e.g. it was killed).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Option<Response> {
        // A fresh connection per request: a test may kill the host between two requests.
        sluice::client::Client::new(&self.addr)
            .ok()?
            .request(method, path, content_type, body)
            .ok()
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, "application/json", b"")
    }

    /// `GET path` with an `Accept` header.
    pub fn request_with_accept(&self, path: &str, accept: &str) -> Response {
        sluice::client::Client::new(&self.addr)
            .unwrap()
            .request_with_headers("GET", path, "application/json", b"", &[("Accept", accept)])
            .unwrap()
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    pub fn deploy(&self, name: &str, wasm: &[u8], query: &str) -> Response {
        self.request(
            "PUT",
            &format!("/v1/modules/{name}{query}"),
            "application/wasm",
            wasm,
        )
    }

    /// Deploys the built module `wasm` (see [`module_wasm`]) as `name`; panics unless created.
    pub fn deploy_ok(&self, name: &str, wasm: &str, query: &str) {
        let r = self.deploy(name, &module_wasm(wasm), query);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    pub fn append(&self, module: &str, depot: &str, record: &serde_json::Value) -> Response {
        self.post_json(
            &format!("/v1/modules/{module}/depots/{depot}/append"),
            record,
        )
    }

    /// Appends `records` as one NDJSON batch (`query`: "" or e.g. "?ack=append"); panics
    /// unless the batch and every line succeeded. Returns each line's result.
    pub fn append_all(
        &self,
        module: &str,
        depot: &str,
        query: &str,
        records: &[serde_json::Value],
    ) -> Vec<serde_json::Value> {
        let body: String = records.iter().map(|l| l.to_string() + "\n").collect();
        let r = self.request(
            "POST",
            &format!("/v1/modules/{module}/depots/{depot}/append{query}"),
            "application/x-ndjson",
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let results = r.json()["results"].as_array().expect("results").clone();
        assert_eq!(results.len(), records.len());
        for (i, res) in results.iter().enumerate() {
            assert!(res.get("error").is_none(), "line {i}: {res}");
        }
        results
    }

    /// The subscription URL of `path` (URL-encoded) on `pstate`, with extra query text.
    pub fn subscribe_url(
        module: &str,
        pstate: &str,
        path: &serde_json::Value,
        extra: &str,
    ) -> String {
        sluice::client::subscribe_path(module, pstate, &path.to_string(), None) + extra
    }

    /// Opens a subscription (each on a connection of its own; a read waits at most 20 s);
    /// an error answer is returned whole.
    pub fn try_subscribe(
        &self,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Result<sluice::client::sse::EventStream, Response> {
        sluice::client::sse::EventStream::open(
            &self.addr,
            url,
            None,
            last_event_id,
            Some(Duration::from_secs(20)),
        )
        .expect("connecting")
    }

    /// Opens a subscription of `path`; panics on an error answer.
    pub fn subscribe(
        &self,
        module: &str,
        pstate: &str,
        path: serde_json::Value,
        extra: &str,
        last_event_id: Option<&str>,
    ) -> sluice::client::sse::EventStream {
        let url = Self::subscribe_url(module, pstate, &path, extra);
        self.try_subscribe(&url, last_event_id).unwrap_or_else(|r| {
            panic!(
                "subscribe {url}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        })
    }

    /// The sum of every series of the metric `name` (a counter's labels added up).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let m = String::from_utf8(self.get("/metrics").body).unwrap();
        m.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends `n` records (`line(i)` each) to the append route `path` as NDJSON bodies of
    /// `batch` lines from `clients` keep-alive connections, asserting every line was accepted;
    /// answers records/s. (Used by the benchmarks, which include this file.)
    #[allow(dead_code)]
    pub fn drive_ndjson(
        &self,
        path: &str,
        n: usize,
        batch: usize,
        clients: usize,
        line: &(dyn Fn(usize) -> String + Sync),
    ) -> f64 {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for c in 0..clients {
                s.spawn(move || {
                    let mut conn = Conn::open(&self.addr);
                    let mut b = c;
                    while b * batch < n {
                        let body: String = (b * batch..((b + 1) * batch).min(n))
                            .map(|i| line(i) + "\n")
                            .collect();
                        let r = conn.request("POST", path, "application/x-ndjson", body.as_bytes());
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                        assert!(
                            !r.body.windows(8).any(|w| w == b"\"error\":"),
                            "{}",
                            String::from_utf8_lossy(&r.body)
                        );
                        b += clients;
                    }
                });
            }
        });
        n as f64 / start.elapsed().as_secs_f64()
    }

    /// The values a select returns; panics on an error.
    pub fn select(
        &self,
        module: &str,
        pstate: &str,
        path: serde_json::Value,
    ) -> Vec<serde_json::Value> {
        let r = self.post_json(
            &format!("/v1/modules/{module}/pstates/{pstate}/select"),
            &serde_json::json!({ "path": path }),
        );
        assert_eq!(
            r.status,
            200,
            "select failed: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["values"].as_array().expect("values").clone()
    }

    /// Every stored record of a depot, per partition in offset order, read back page by page
    /// (checking that offsets are dense).
    pub fn read_depot(&self, module: &str, depot: &str) -> Vec<Vec<serde_json::Value>> {
        let info = self
            .get(&format!("/v1/modules/{module}/depots/{depot}"))
            .json();
        let partitions = info["partitions"].as_array().expect("partitions").len();
        (0..partitions)
            .map(|p| {
                let mut records = Vec::new();
                let mut from = 0;
                loop {
                    let page = self
                        .get(&format!("/v1/modules/{module}/depots/{depot}/partitions/{p}?from={from}&limit=1000"))
                        .json();
                    let batch = page["records"].as_array().expect("records").clone();
                    if batch.is_empty() {
                        break;
                    }
                    for r in &batch {
                        assert_eq!(r["offset"], records.len() as u64, "offsets are dense in {depot} partition {p}");
                        records.push(r["record"].clone());
                    }
                    from = page["next"].as_u64().expect("next");
                }
                records
            })
            .collect()
    }

    /// The sum of the end offsets of a depot over all partitions.
    pub fn depot_records(&self, module: &str, depot: &str) -> u64 {
        let r = self.get(&format!("/v1/modules/{module}/depots/{depot}"));
        assert_eq!(r.status, 200);
        r.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["end"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 connection, for load generators.
pub struct Conn(sluice::client::Client);

impl Conn {
    pub fn open(addr: &str) -> Conn {
        Conn(sluice::client::Client::new(addr).expect("a host:port address"))
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Response {
        self.0
            .request(method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// Polls `f` until it answers `Some`, for up to 30 s; panics naming `what` after that.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
