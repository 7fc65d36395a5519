//! Real `nats-server` processes for the cluster suite and the cluster benchmark: clustered,
//! JetStream on, loopback ports, temporary store dirs, stopped by pid when dropped.

use std::process::{Child, Command, Stdio};

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
             jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}\n\
             cluster {{ name: c1, listen: 127.0.0.1:{}, routes: [ {} ] }}\n",
            self.client_ports[i],
            store.display(),
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

    pub fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
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
