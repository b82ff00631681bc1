//! A three-node `pgtrickle-coordinator` cluster for tests, from the binary cargo built next to the test
//! (`target/<profile>/pgtrickle-coordinator`; set `PGTRICKLE_COORDINATOR_BIN` to use another).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, HarnessError, Result};

/// The token the test coordinators require for writes.
pub const TOKEN: &str = "testkit-token";

fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PGTRICKLE_COORDINATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    // target/<profile>/deps/<test binary> or target/<profile>/<binary> → target/<profile>/pgtrickle-coordinator
    let exe = std::env::current_exe()?;
    let here = exe.parent().map(|dir| dir.join("pgtrickle-coordinator"));
    let above = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("pgtrickle-coordinator"));
    match [here, above].into_iter().flatten().find(|path| path.exists()) {
        Some(path) => Ok(path),
        None => Err(HarnessError::Command {
            program: "pgtrickle-coordinator".into(),
            status: "missing".into(),
            stderr: "build it first: cargo build -p coordinator".into(),
        }),
    }
}

/// Running coordinator nodes; dropping this kills them and removes their data.
pub struct Coordinators {
    nodes: Vec<(u16, Option<Child>)>,
    base: tempfile::TempDir,
    binary: PathBuf,
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Coordinators {
    /// Starts `count` nodes on free ports, forms the cluster and waits for a leader.
    pub fn start(count: usize) -> Result<Coordinators> {
        let binary = binary()?;
        let base = tempfile::Builder::new().prefix("pgtrickle-coordinators-").tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push((free_port()?, None));
        }
        let mut cluster = Coordinators { nodes, base, binary };
        for index in 0..count {
            cluster.spawn(index)?;
        }
        let output = Command::new(&cluster.binary)
            .args(["--endpoints", &cluster.endpoints(), "--token", TOKEN, "--timeout-secs", "20", "init"])
            .output()?;
        if !output.status.success() {
            return Err(HarnessError::Command {
                program: "pgtrickle-coordinator init".into(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into(),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(0..count).all(|i| http_get_status(&cluster.addr(i), "/readyz") == Some(200)) {
            if Instant::now() > deadline {
                return Err(HarnessError::Command {
                    program: "pgtrickle-coordinator".into(),
                    status: "no leader within 20 s".into(),
                    stderr: cluster.log(0),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    fn addr(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[index].0)
    }

    fn peers(&self) -> String {
        (0..self.nodes.len()).map(|i| format!("{}={}", i + 1, self.addr(i))).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let dir = self.base.path().join(format!("n{}", index + 1));
        let log = std::fs::File::create(self.base.path().join(format!("n{}.log", index + 1)))?;
        let child = Command::new(&self.binary)
            .args(["serve", "--id", &(index + 1).to_string(), "--listen", &self.addr(index), "--data-dir"])
            .arg(&dir)
            .args(["--peers", &self.peers(), "--token", TOKEN])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.nodes[index].1 = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr(index)).is_err() {
            if Instant::now() > deadline {
                return Err(HarnessError::Command {
                    program: "pgtrickle-coordinator serve".into(),
                    status: "not listening after 10 s".into(),
                    stderr: self.log(index),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `http://127.0.0.1:p1,127.0.0.1:p2,…` — what `register_federation` takes.
    pub fn endpoints(&self) -> String {
        let hosts: Vec<String> = (0..self.nodes.len()).map(|i| self.addr(i)).collect();
        format!("http://{}", hosts.join(","))
    }

    /// Runs the coordinator CLI against the cluster; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        self.cli_with_env(args, &[])
    }

    /// [`Coordinators::cli`] with extra environment (object store credentials…).
    pub fn cli_with_env(&self, args: &[&str], env: &[(String, String)]) -> Result<String> {
        let output = Command::new(&self.binary)
            .args(["--endpoints", &self.endpoints(), "--token", TOKEN, "--timeout-secs", "20"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        if !output.status.success() {
            return Err(HarnessError::Command {
                program: format!("pgtrickle-coordinator {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into())
    }

    /// SIGKILLs every node (they stay down).
    pub fn kill_all(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// SIGKILLs node `index` (it stays down until [`Coordinators::restart`]).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again on its data directory.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.kill(index);
        self.spawn(index)
    }

    /// The index of the node a running node names as leader, if any.
    pub fn leader(&self) -> Option<usize> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].1.is_none() {
                continue;
            }
            let Ok(mut stream) = TcpStream::connect(self.addr(index)) else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request =
                format!("GET /readyz HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n", self.addr(index));
            if stream.write_all(request.as_bytes()).is_err() {
                continue;
            }
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            let leader = answer.split("\"leader\":").nth(1).and_then(|rest| {
                rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse::<usize>().ok()
            });
            if let Some(id) = leader {
                return Some(id - 1);
            }
        }
        None
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.base.path().join(format!("n{}.log", index + 1))).unwrap_or_default()
    }
}

impl Drop for Coordinators {
    fn drop(&mut self) {
        self.kill_all();
    }
}
