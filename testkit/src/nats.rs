//! A NATS server with JetStream for tests: Debian's `nats-server` (2.9) on a free 127.0.0.1 port, storing JetStream
//! in files under its own directory, so a SIGKILL and restart keeps every acknowledged message. The fixture can
//! also purge the federation's stream, the way an operator (or a retention limit) loses data behind the change
//! log's back.

use std::process::{Child, Command, Stdio};

use crate::broker::wait_listening;
use crate::{free_port, HarnessError, Result};

/// A running `nats-server -js`; dropping it kills it.
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: usize,
    /// TLS and a login the server requires.
    secure: Option<(String, String)>,
    /// Lines of a configuration file the server reads (limits, authorization), if any.
    config: Option<String>,
}

impl NatsServer {
    /// Starts a server with JetStream (file storage) on a free port.
    pub fn start() -> Result<NatsServer> {
        NatsServer::launch(None, None)
    }

    /// Makes the data directory (and certificates for a secure server), picks a port and starts the process.
    fn launch(secure: Option<(&str, &str)>, config: Option<&str>) -> Result<NatsServer> {
        let dir = tempfile::Builder::new().prefix("pgtrickle-nats-").tempdir()?;
        if secure.is_some() {
            crate::broker::make_certificates(dir.path())?;
        }
        let secure = secure.map(|(u, p)| (u.to_string(), p.to_string()));
        let config = config.map(str::to_string);
        let mut server = NatsServer { port: free_port()?, child: None, dir, starts: 0, secure, config };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server that takes messages of at most `bytes` (it announces the limit to its clients).
    pub fn start_with_max_payload(bytes: usize) -> Result<NatsServer> {
        NatsServer::start_with_config(&format!("max_payload: {bytes}"))
    }

    /// Starts a server with these configuration-file lines (e.g. an `authorization { … }` block).
    pub fn start_with_config(config: &str) -> Result<NatsServer> {
        NatsServer::launch(None, Some(config))
    }

    /// Starts a server that accepts only TLS connections (certificate signed by [`NatsServer::ca_file`]) that log
    /// in as `user` with `password`.
    pub fn start_secure(user: &str, password: &str) -> Result<NatsServer> {
        NatsServer::launch(Some((user, password)), None)
    }

    /// The CA certificate a secure server's clients must trust.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that did not sign the secure server's certificate.
    pub fn other_ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// `127.0.0.1:PORT`: what the federation's servers are set to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path())?;
        let store = self.dir.path().join("jetstream");
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(&store);
        if let Some(config) = &self.config {
            let file = self.dir.path().join("nats.conf");
            std::fs::write(&file, format!("{config}\n"))?;
            command.arg("-c").arg(file);
        }
        if let Some((user, password)) = &self.secure {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            command.args(["--tls", "--tlscert", &file("server.pem"), "--tlskey", &file("server.key")]);
            command.args(["--user", user, "--pass", password]);
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().map_err(|e| HarnessError::Command {
            program: "nats-server".into(),
            status: e.to_string(),
            stderr: "install it: apt-get install nats-server (scripts/install-deps.sh does)".into(),
        })?;
        self.child = Some(child);
        wait_listening(self.port, "nats-server", || self.log())
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("nats-{}.log", self.starts))
    }

    /// SIGKILLs the server (it stays down).
    pub fn kill(&mut self) {
        crate::broker::kill_child(&mut self.child);
    }

    /// Starts it again on the same port, with the JetStream data it had.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `f` with a JetStream context connected to this server.
    fn with_jetstream<T, F: std::future::Future<Output = Result<T, String>>>(
        &self,
        f: impl FnOnce(async_nats::jetstream::Context) -> F,
    ) -> Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Two crypto providers are linked (ring, aws-lc-rs): rustls must be told which one to use.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        runtime
            .block_on(async {
                let mut options = async_nats::ConnectOptions::new();
                if let Some((user, password)) = &self.secure {
                    options = async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
                        .require_tls(true)
                        .add_root_certificates(self.ca_file());
                }
                let client = options.connect(self.address()).await.map_err(|e| e.to_string())?;
                f(async_nats::jetstream::new(client)).await
            })
            .map_err(|stderr| HarnessError::Command { program: "nats".into(), status: "failed".into(), stderr })
    }

    /// Purges every message of the JetStream stream `name`; returns how many there were.
    pub fn purge(&self, name: &str) -> Result<u64> {
        let name = name.to_string();
        self.with_jetstream(|jetstream| async move {
            let stream = jetstream.get_stream(&name).await.map_err(|e| e.to_string())?;
            let purged = stream.purge().await.map_err(|e| e.to_string())?;
            Ok(purged.purged)
        })
    }

    /// The sequence of the newest message of the JetStream stream `name` (0: none yet).
    pub fn last_sequence(&self, name: &str) -> Result<u64> {
        let name = name.to_string();
        self.with_jetstream(|jetstream| async move {
            let mut stream = jetstream.get_stream(&name).await.map_err(|e| e.to_string())?;
            Ok(stream.info().await.map_err(|e| e.to_string())?.state.last_sequence)
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
