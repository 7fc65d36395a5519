//! Real `nats-server` processes for the cluster suite and the cluster benchmark: clustered,
//! JetStream on, loopback ports, temporary store dirs, stopped by pid when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::cluster::jetstream::{JetStreamLog, Nats};

/// Three clustered `nats-server`s on free loopback ports, stopped (by pid) when dropped.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    route_ports: Vec<u16>,
    servers: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// `SLUICE_NATS_SYNC=always` (servers ≥ 2.10 only) makes the servers fsync before they
/// acknowledge: the setting README recommends for OS-crash durability.
fn sync_interval() -> String {
    match std::env::var("SLUICE_NATS_SYNC") {
        Ok(v) if !v.is_empty() => format!(", sync_interval: {v}"),
        _ => String::new(),
    }
}

impl NatsCluster {
    /// Starts `n` servers, or answers `None` (after saying why) when there is no
    /// `nats-server` and this is not CI.
    pub fn start(n: usize) -> Option<Self> {
        let found = Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").is_err(),
                "nats-server is not installed (CI must install it: apt-get install nats-server)"
            );
            eprintln!("skipped: no nats-server on PATH (apt-get install nats-server)");
            return None;
        }
        let mut cluster = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            client_ports: (0..n).map(|_| free_port()).collect(),
            route_ports: (0..n).map(|_| free_port()).collect(),
            servers: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            cluster.launch(i);
        }
        Some(cluster)
    }

    fn launch(&mut self, i: usize) {
        let routes: Vec<String> = (0..self.servers.len())
            .filter(|&j| j != i)
            .map(|j| format!("nats-route://127.0.0.1:{}", self.route_ports[j]))
            .collect();
        let store = self.dir.path().join(format!("n{i}"));
        let config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\nmax_payload: 8MB\n\
             jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB{} }}\n\
             cluster {{ name: c1, listen: 127.0.0.1:{}, routes: [ {} ] }}\n",
            self.client_ports[i],
            store.display(),
            sync_interval(),
            self.route_ports[i],
            routes.join(", ")
        );
        let conf = self.dir.path().join(format!("n{i}.conf"));
        std::fs::write(&conf, config).expect("writing the server config");
        let log = std::fs::File::create(self.dir.path().join(format!("n{i}.log"))).expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.servers[i] = Some(child);
    }

    /// The client port of server `n<i>`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.client_ports[i]
    }

    pub fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sends `sig` (`-STOP`, `-CONT`, …) to server `n<i>`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.servers[i].as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// `kill -9` of server `n<i>`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.launch(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}

/// A runtime for the NATS client and a connection, once JetStream answers (a meta leader is
/// elected about a second after the servers start).
pub fn connect(cluster: &NatsCluster) -> (tokio::runtime::Runtime, Nats) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nats = rt
        .block_on(Nats::connect(
            &cluster.urls(),
            "cluster-test",
            3,
            Duration::from_secs(20),
        ))
        .expect("connecting to NATS");
    (rt, nats)
}

/// Opens a partition's stream, retrying while the cluster elects its leaders.
pub fn open_log(rt: &tokio::runtime::Runtime, nats: &Nats, module: &str, p: u32) -> JetStreamLog {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rt.block_on(JetStreamLog::open(nats, module, 1, p)) {
            Ok(log) => return log,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stream not ready yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("opening the stream: {e}"),
        }
    }
}

/// A TCP proxy to one NATS server that a test can cut (every connection closed, new ones
/// refused) and heal: a host cut off from NATS without touching the network stack.
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            cut: Default::default(),
            stop: Default::default(),
            conns: Default::default(),
        };
        let (cut, stop, conns) = (proxy.cut.clone(), proxy.stop.clone(), proxy.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if cut.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let mut kept = conns.lock().unwrap();
                // Checked again under the lock `cut` drains: a connection accepted as the
                // cut began is refused, not kept past it.
                if cut.load(Ordering::Acquire) {
                    continue;
                }
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        kept.push(s);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// Closes every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.cut();
        // Wakes the accept loop so it sees the stop flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
