//! Starts independent PostgreSQL 15 clusters for tests: each initdb'd into its own directory, run as
//! the `postgres` user on a free 127.0.0.1 port with its own socket directory, with `pg_trickle` in
//! `shared_preload_libraries`. Dropping the [`Clusters`] stops every server and removes the files.
//!
//! [`coordinators::Coordinators`] starts a `pgtrickle-coordinator` cluster next to them.
//!
//! The extension must be installed into PostgreSQL first (`cargo pgrx install`); [`Clusters::start`]
//! says so when it is not.

pub mod broker;
pub mod changelog;
pub mod coordinators;
pub mod federation;
pub mod nats;
pub mod seed;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where PostgreSQL 15's programs live (Debian layout); override with `PG_BINDIR`.
pub fn pg_bindir() -> PathBuf {
    std::env::var_os("PG_BINDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{program} failed ({status}): {stderr}")]
    Command { program: String, status: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Postgres(#[from] postgres::Error),
    #[error("pg_trickle is not installed in PostgreSQL: run `cargo pgrx install` in pg-extension/ first")]
    ExtensionMissing,
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

fn is_root() -> bool {
    // The effective uid decides whether programs must be run as the postgres user.
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Runs a PostgreSQL program as the `postgres` user (directly when not root).
fn run_as_postgres(program: &Path, args: &[&str]) -> Result<Output> {
    run_as_postgres_with(program, args, &[])
}

/// The same with extra environment variables (a server started so inherits them).
fn run_as_postgres_with(program: &Path, args: &[&str], env: &[(String, String)]) -> Result<Output> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    // Servers inherit the environment: keep Rust backtraces out of their error DETAILs.
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let output = command.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0").args(args).output()?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            program: program.display().to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status()?;
        if !status.success() {
            return Err(HarnessError::Command {
                program: "chown".into(),
                status: status.to_string(),
                stderr: String::new(),
            });
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let output = Command::new("cp").arg("-a").arg(from).arg(to).output()?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            program: "cp".into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One running PostgreSQL server.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    settings: Vec<String>,
    /// Environment of the server from its next start on (e.g. libfaketime's, to skew its clock).
    env: Vec<(String, String)>,
    running: bool,
}

impl Cluster {
    /// A libpq connection string for `database`.
    pub fn conninfo(&self, database: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={database} connect_timeout=10", self.port)
    }

    pub fn connect(&self, database: &str) -> Result<postgres::Client> {
        Ok(postgres::Client::connect(&self.conninfo(database), postgres::NoTls)?)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Starts the (stopped) server with its settings and port.
    pub fn start(&mut self) -> Result<()> {
        let mut options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.socket_dir.display());
        for setting in &self.settings {
            options.push_str(&format!(" -c {setting}"));
        }
        let data = self.data_dir.display().to_string();
        let log = self.log_file.display().to_string();
        run_as_postgres_with(
            &pg_bindir().join("pg_ctl"),
            &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"],
            &self.env,
        )?;
        self.running = true;
        Ok(())
    }

    /// Environment for the server's next start (the caller restarts it).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            let data = self.data_dir.display().to_string();
            run_as_postgres(&pg_bindir().join("pg_ctl"), &["-D", &data, "-m", "fast", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Stops and starts the server again with the same settings and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Copies the stopped server's data directory to `to` (a cold backup, ownership kept).
    pub fn cold_copy(&self, to: &Path) -> Result<()> {
        assert!(!self.running, "a cold copy needs the server stopped");
        copy_dir(&self.data_dir, to)
    }

    /// Replaces the stopped server's data directory with the copy at `from` (a restore from a cold backup).
    pub fn restore_cold_copy(&self, from: &Path) -> Result<()> {
        assert!(!self.running, "a restore needs the server stopped");
        std::fs::remove_dir_all(&self.data_dir)?;
        copy_dir(from, &self.data_dir)
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// SIGKILLs the postmaster and leaves the server down (its children exit when they notice); `start` brings
    /// it back through crash recovery.
    pub fn kill(&mut self) -> Result<()> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))?;
        let pid: i32 = pid_file.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        if pid > 0 {
            Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        }
        self.running = false;
        Ok(())
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&mut self) -> Result<()> {
        let data = self.data_dir.display().to_string();
        run_as_postgres(&pg_bindir().join("pg_ctl"), &["-D", &data, "-w", "-t", "60", "promote"])?;
        Ok(())
    }

    /// SIGKILLs the postmaster (a crash: no shutdown checkpoint), waits until its children are gone, and starts
    /// the server again, which runs crash recovery.
    pub fn crash_and_restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start_after_crash()
    }

    /// Starts a server whose postmaster was killed, once its children are gone (within 30 s).
    pub fn start_after_crash(&mut self) -> Result<()> {
        // Children notice the postmaster's death and exit; the shared memory is free once they did.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.start() {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Err(error) => return Err(error),
            }
        }
    }

    /// SIGKILLs the backend or worker whose `backend_type` (pg_stat_activity) is `backend_type`; returns its pid.
    pub fn kill_backend(&self, backend_type: &str) -> Result<Option<i32>> {
        let mut client = self.connect("postgres")?;
        let pid: Option<i32> = client
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = $1 LIMIT 1", &[&backend_type])?
            .map(|row| row.get(0));
        if let Some(pid) = pid {
            Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        }
        Ok(pid)
    }
}

/// Independent clusters under one temporary directory.
pub struct Clusters {
    pub clusters: Vec<Cluster>,
    base: tempfile::TempDir,
}

impl Clusters {
    /// initdb's and starts `count` clusters named a, b, c… with pg_trickle preloaded plus `settings`
    /// (each `name=value`).
    pub fn start(count: usize, settings: &[&str]) -> Result<Clusters> {
        let base = tempfile::Builder::new().prefix("pgtrickle-clusters-").tempdir()?;
        chown_postgres(base.path())?;
        let mut clusters = Clusters { clusters: Vec::new(), base };
        let mut all_settings = vec!["shared_preload_libraries=pg_trickle".to_string()];
        all_settings.extend(settings.iter().map(|s| s.to_string()));
        for index in 0..count {
            let name = ((b'a' + index as u8) as char).to_string();
            clusters.add(name, all_settings.clone(), |data| {
                run_as_postgres(
                    &pg_bindir().join("initdb"),
                    &["-D", data, "-A", "trust", "-U", "postgres", "--locale=C.UTF-8", "-E", "UTF8"],
                )
            })?;
        }
        if let Some(first) = clusters.clusters.first() {
            let mut client = first.connect("postgres")?;
            let available = client.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trickle'", &[])?;
            if available.is_none() {
                return Err(HarnessError::ExtensionMissing);
            }
        }
        Ok(clusters)
    }

    /// One cluster with the scheduler off and the extension created in `postgres`, plus a connection to it:
    /// the set-up most tests of SQL behaviour need.
    pub fn one_with_extension() -> Result<(Clusters, postgres::Client)> {
        let clusters = Clusters::start(1, &["pg_trickle.enabled=off"])?;
        let mut client = clusters[0].connect("postgres")?;
        client.batch_execute("CREATE EXTENSION pg_trickle")?;
        Ok((clusters, client))
    }

    /// Adds a streaming standby of cluster `primary` (pg_basebackup -R over a replication connection, WAL
    /// streamed during the copy), started with the same settings on its own port; returns its index. It keeps the
    /// primary's system identifier, as every physical copy does.
    pub fn add_standby(&mut self, primary: usize) -> Result<usize> {
        let name = format!("{}-standby", self.clusters[primary].name);
        let port = self.clusters[primary].port.to_string();
        let settings = self.clusters[primary].settings.clone();
        self.add(name, settings, |data| {
            run_as_postgres(
                &pg_bindir().join("pg_basebackup"),
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", data, "-R", "-X", "stream", "-c", "fast"],
            )
        })
    }

    /// Adds and starts cluster `name` on a free port, its data directory made by `make_data_dir(path)`; returns
    /// its index.
    fn add(
        &mut self,
        name: String,
        settings: Vec<String>,
        make_data_dir: impl FnOnce(&str) -> Result<Output>,
    ) -> Result<usize> {
        let data_dir = self.base.path().join(format!("pg-{name}"));
        let socket_dir = self.base.path().join(format!("sock-{name}"));
        std::fs::create_dir_all(&socket_dir)?;
        chown_postgres(&socket_dir)?;
        make_data_dir(&data_dir.display().to_string())?;
        let mut cluster = Cluster {
            log_file: self.base.path().join(format!("pg-{name}.log")),
            name,
            port: free_port()?,
            data_dir,
            socket_dir,
            settings,
            env: Vec::new(),
            running: false,
        };
        cluster.start()?;
        self.clusters.push(cluster);
        Ok(self.clusters.len() - 1)
    }

    pub fn base_dir(&self) -> &Path {
        self.base.path()
    }
}

impl std::ops::Index<usize> for Clusters {
    type Output = Cluster;
    fn index(&self, index: usize) -> &Cluster {
        &self.clusters[index]
    }
}

impl std::ops::IndexMut<usize> for Clusters {
    fn index_mut(&mut self, index: usize) -> &mut Cluster {
        &mut self.clusters[index]
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for cluster in &mut self.clusters {
            if cluster.running {
                let data = cluster.data_dir.display().to_string();
                let _ = run_as_postgres(&pg_bindir().join("pg_ctl"), &["-D", &data, "-m", "immediate", "-w", "stop"]);
                cluster.running = false;
            }
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
