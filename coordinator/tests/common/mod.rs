//! A real coordinator cluster for tests: `pgtrickle-coordinator serve` processes on free 127.0.0.1 ports, formed
//! with the CLI's `init`, killed with SIGKILL and restarted from their data directories on demand.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coordinator::api::StatusView;
use coordinator::client::{Client, ClientOptions};

pub const TOKEN: &str = "test-token-0123456789";
pub const BIN: &str = env!("CARGO_BIN_EXE_pgtrickle-coordinator");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Node {
    pub id: u64,
    pub port: u16,
    pub dir: PathBuf,
    scheme: &'static str,
    child: Option<Child>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct TestCluster {
    pub nodes: BTreeMap<u64, Node>,
    pub base: tempfile::TempDir,
    peers: String,
    extra_args: Vec<String>,
    /// With TLS: the PEM file clients trust (the nodes' self-signed certificate).
    ca_file: Option<PathBuf>,
}

impl TestCluster {
    /// Starts `n` nodes and forms a cluster of them through the CLI.
    pub fn start(n: u64) -> Self {
        Self::start_with(n, &[])
    }

    /// The same, with extra `serve` flags for every node.
    pub fn start_with(n: u64, extra_args: &[&str]) -> Self {
        Self::start_inner(n, extra_args, false)
    }

    /// A cluster serving HTTPS (API and Raft RPC) with a self-signed certificate for 127.0.0.1.
    pub fn start_tls(n: u64) -> Self {
        Self::start_inner(n, &[], true)
    }

    fn start_inner(n: u64, extra_args: &[&str], tls: bool) -> Self {
        let base = tempfile::tempdir().unwrap();
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut ca_file = None;
        if tls {
            let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
            let cert_path = base.path().join("node.pem");
            let key_path = base.path().join("node.key");
            std::fs::write(&cert_path, cert.cert.pem()).unwrap();
            std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
            for a in ["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()] {
                extra_args.push(a.into());
            }
            ca_file = Some(cert_path);
        }
        let scheme = if tls { "https" } else { "http" };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(
                id,
                Node { id, port: free_port(), dir: base.path().join(format!("n{id}")), scheme, child: None },
            );
        }
        let peers = nodes.values().map(|n| format!("{}={}", n.id, n.addr())).collect::<Vec<_>>().join(",");
        let mut cluster = TestCluster { nodes, base, peers, extra_args, ca_file };
        for id in 1..=n {
            cluster.spawn(id);
        }
        for id in 1..=n {
            cluster.wait_http(id);
        }
        let out = cluster.cli(&["init"]);
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        cluster.wait_leader(Duration::from_secs(10));
        cluster
    }

    /// Adds a node that is not a member yet (for add-learner).
    pub fn add_node(&mut self, id: u64) {
        let scheme = if self.ca_file.is_some() { "https" } else { "http" };
        let node = Node { id, port: free_port(), dir: self.base.path().join(format!("n{id}")), scheme, child: None };
        self.nodes.insert(id, node);
        self.spawn(id);
        self.wait_http(id);
    }

    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} already runs");
        let log = std::fs::File::create(self.base.path().join(format!("n{id}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--id", &id.to_string(), "--listen", &node.addr(), "--data-dir"])
            .arg(&node.dir)
            .args(["--peers", &peers, "--token", TOKEN])
            .args(&self.extra_args)
            .args(self.ca_file.iter().flat_map(|c| [std::ffi::OsString::from("--ca-file"), c.clone().into_os_string()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    fn wait_http(&self, id: u64) {
        let addr = self.nodes[&id].addr();
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node {id} did not start listening; log: {}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.base.path().join(format!("n{id}.log"))).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_http(id);
    }

    pub fn endpoints(&self) -> String {
        self.nodes.values().filter(|n| n.running()).map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    pub fn all_endpoints(&self) -> String {
        self.nodes.values().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The CA clients must trust (TLS clusters).
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.ca_file.as_ref().map(|p| std::fs::read(p).unwrap())
    }

    pub fn client(&self) -> Client {
        self.client_as("test")
    }

    pub fn client_as(&self, name: &str) -> Client {
        let options = ClientOptions {
            token: Some(TOKEN.into()),
            client_id: name.into(),
            deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(3),
            ca_pem: self.ca_pem(),
        };
        Client::new(&self.all_endpoints(), options).unwrap()
    }

    pub fn node_client(&self, id: u64) -> Client {
        let options = ClientOptions {
            token: Some(TOKEN.into()),
            client_id: "probe".into(),
            deadline: Duration::from_millis(500),
            attempt_timeout: Duration::from_millis(500),
            ca_pem: self.ca_pem(),
        };
        Client::new(&self.nodes[&id].url(), options).unwrap()
    }

    /// Runs the CLI against the running nodes.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--endpoints", &self.endpoints(), "--token", TOKEN, "--timeout-secs", "20"])
            .args(self.ca_file.iter().flat_map(|c| [std::ffi::OsString::from("--ca-file"), c.clone().into_os_string()]))
            .args(args)
            .output()
            .unwrap()
    }

    /// Status of one node over HTTP (blocking).
    pub fn status(&self, id: u64) -> Option<StatusView> {
        let url = format!("{}/v1/admin/status", self.nodes[&id].url());
        let resp = match &self.ca_file {
            None => ureq_get(&url)?,
            Some(ca) => {
                let out = Command::new("curl")
                    .args(["-sf", "--max-time", "2", "-H", &format!("authorization: Bearer {TOKEN}"), "--cacert"])
                    .arg(ca)
                    .arg(&url)
                    .output()
                    .ok()?;
                String::from_utf8(out.stdout).ok().filter(|s| !s.is_empty())?
            }
        };
        serde_json::from_str(&resp).ok()
    }

    /// The leader all running nodes agree on.
    pub fn wait_leader(&self, within: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let leaders: Vec<Option<u64>> =
                self.nodes.values().filter(|n| n.running()).map(|n| self.status(n.id).and_then(|s| s.leader)).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| x == &Some(*l)) && self.nodes.get(l).is_some_and(|n| n.running()) {
                    return *l;
                }
            }
            assert!(started.elapsed() < within, "no agreed leader within {within:?}: {leaders:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A tiny blocking GET without a runtime (std only).
pub fn ureq_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect_timeout(&host.parse().ok()?, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(body.to_string())
}
