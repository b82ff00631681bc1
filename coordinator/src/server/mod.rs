//! The coordinator service: one openraft node over `raft-store`, reachable over HTTP (admin API, Raft RPC,
//! metrics). [`start`] wires Config + store + network + Raft and serves until [`RunningServer::shutdown`].

pub mod config;
pub mod export;
pub mod http;
pub mod metrics;
pub mod network;
pub mod proposer;
pub mod wakeups;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use raft_store::{LogStore, StateMachineStore, StoreOptions, TypeConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{RaftSettings, ServeConfig};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory is unusable or damaged.
    #[error(transparent)]
    Store(#[from] raft_store::StoreError),
    /// The Raft settings are inconsistent.
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The bootstrap snapshot could not be used.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

/// Everything a request handler needs.
pub struct Coordinator {
    /// This node's id.
    pub id: u64,
    /// The address peers and clients reach this node at (`host:port`).
    pub addr: String,
    /// The Raft node.
    pub raft: Raft<TypeConfig>,
    /// Batches concurrent writes into one entry.
    pub proposer: proposer::Proposer,
    /// The state machine (reads, watches).
    pub sm: StateMachineStore,
    /// The log (status).
    pub log: LogStore,
    /// Pooled client for forwarding to the leader.
    pub http: reqwest::Client,
    /// Bearer token guarding writes and Raft RPC (it may read too).
    pub token: Option<String>,
    /// Bearer token that may only read (`GET`): for dashboards, monitoring and operators' read-only tools.
    pub read_token: Option<String>,
    /// `/healthz`, `/readyz` and `/metrics` answer without a token (for probes and scrapers that cannot send one).
    pub open_health: bool,
    /// Configured peers (used by `init` without members).
    pub peers: BTreeMap<u64, String>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Largest accepted request body.
    pub body_limit: usize,
    /// A snapshot to restore into a fresh cluster once this node leads it.
    pub bootstrap: tokio::sync::Mutex<Option<shared_model::State>>,
    /// `http` or `https`: how this node and its peers are reached.
    pub scheme: &'static str,
    /// How Raft RPCs to each peer have gone (for status and metrics).
    pub peers_health: network::PeersHealth,
    /// Entries a member may trail the leader by before status calls it behind.
    pub lag_threshold: u64,
    /// Per-cluster wake-ups of the long-polls on one stream.
    pub wakeups: Arc<wakeups::Wakeups>,
    /// Each applied entry's event lines, encoded once for every open `/v1/events/stream`.
    pub fanout: Arc<http::event_stream::Fanout>,
}

/// A started server.
pub struct RunningServer {
    /// The shared state.
    pub coordinator: Arc<Coordinator>,
    /// The bound address.
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
        let _ = self.coordinator.raft.shutdown().await;
    }

    /// Waits until the server stops (by a signal or shutdown).
    pub async fn wait(self) {
        let _ = (&mut { self.serving }).await;
    }
}

/// Reads the token file in the data dir, or creates it with a random token (mode 0600).
pub fn load_or_create_token(data_dir: &Path) -> Result<String, ServeError> {
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Io { what: format!("reading {}", path.display()), source: e }),
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| ServeError::Io { what: format!("creating {}", path.display()), source: e })?;
    file.write_all(token.as_bytes())
        .map_err(|e| ServeError::Io { what: format!("writing {}", path.display()), source: e })?;
    tracing::warn!(path = %path.display(), "no token configured: generated one; clients and peers must send it as a bearer token");
    Ok(token)
}

fn raft_config(resolved: &config::ResolvedRaft) -> Result<Config, ServeError> {
    let settings = &resolved.settings;
    let config = Config {
        cluster_name: "pgtrickle-coordinator".into(),
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.election_timeout_min_ms,
        election_timeout_max: settings.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        max_payload_entries: settings.max_payload_entries,
        snapshot_max_chunk_size: resolved.snapshot_chunk_bytes,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: settings.logs_kept_after_snapshot,
        ..Default::default()
    };
    config.validate().map_err(|e| ServeError::Config(e.to_string()))
}

/// Starts a node: opens the store, starts Raft, binds the listener and serves.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    // Settings and a bootstrap snapshot are checked before anything is created or opened.
    let resolved = config.raft.resolve(config.body_limit).map_err(ServeError::Config)?;
    let bootstrap = match &config.bootstrap_from {
        Some(url) => Some(export::load_state(url).await.map_err(|e| ServeError::Bootstrap(e.to_string()))?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ServeError::Io { what: format!("creating {}", config.data_dir.display()), source: e })?;
    let token = match &config.token {
        Some(t) => Some(t.clone()),
        None if config.insecure_no_token => None,
        None => Some(load_or_create_token(&config.data_dir)?),
    };
    let tls = match &config.tls {
        Some(files) => {
            Some(axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key).await.map_err(|e| {
                ServeError::Io {
                    what: format!("loading TLS certificate {} and key {}", files.cert.display(), files.key.display()),
                    source: e,
                }
            })?)
        }
        None => None,
    };
    let mut builder = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| ServeError::Io { what: format!("reading CA file {}", ca.display()), source: e })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ServeError::Config(format!("CA file {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    let http_client = builder.build().map_err(|e| ServeError::Raft(e.to_string()))?;
    let options = StoreOptions { max_payload_bytes: resolved.max_payload_bytes, ..StoreOptions::default() };
    let (log, sm) = raft_store::open(&config.data_dir, options)?;
    let peers_health = network::PeersHealth::default();
    let network = network::Network::new(http_client.clone(), token.clone(), tls.is_some(), peers_health.clone());
    let raft = Raft::new(config.id, Arc::new(raft_config(&resolved)?), network, log.clone(), sm.clone())
        .await
        .map_err(|e| ServeError::Raft(e.to_string()))?;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| ServeError::Io { what: format!("binding {}", config.listen), source: e })?;
    let local_addr = listener.local_addr().map_err(|e| ServeError::Io { what: "local address".into(), source: e })?;
    let addr = config.advertise.clone().unwrap_or_else(|| local_addr.to_string());
    let coordinator = Arc::new(Coordinator {
        id: config.id,
        addr,
        proposer: proposer::Proposer::spawn(raft.clone(), resolved.max_payload_bytes as usize),
        raft,
        wakeups: wakeups::Wakeups::spawn(sm.clone()),
        fanout: http::event_stream::Fanout::spawn(sm.clone()),
        sm,
        log,
        http: http_client,
        token,
        read_token: config.read_token.clone(),
        open_health: config.open_health,
        peers: config.peers.clone(),
        metrics: metrics::Metrics::new(),
        body_limit: config.body_limit,
        bootstrap: tokio::sync::Mutex::new(bootstrap),
        scheme: if tls.is_some() { "https" } else { "http" },
        peers_health,
        lag_threshold: resolved.settings.max_payload_entries.max(1000),
    });
    metrics::spawn_raft_watcher(coordinator.clone());
    metrics::spawn_replication_monitor(coordinator.clone());
    let max_age = Some(resolved.settings.snapshot_max_age_secs).filter(|s| *s > 0).map(Duration::from_secs);
    metrics::spawn_snapshot_trigger(coordinator.clone(), resolved.settings.snapshot_bytes_since_last, max_age);
    export::spawn_bootstrapper(coordinator.clone());
    let (stop, mut stopped) = watch::channel(false);
    let router = http::router(coordinator.clone());
    let serving = match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = stopped.wait_for(|s| *s).await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            let server = axum_server::from_tcp_rustls(listener, tls)
                .map_err(|e| ServeError::Io { what: "serving TLS".into(), source: e })?
                .handle(handle);
            tokio::spawn(async move {
                if let Err(e) = server.serve(router.into_make_service()).await {
                    tracing::error!(error = %e, "HTTPS server stopped");
                }
            })
        }
        None => {
            listener.set_nonblocking(true).map_err(|e| ServeError::Io { what: "listener".into(), source: e })?;
            let listener =
                TcpListener::from_std(listener).map_err(|e| ServeError::Io { what: "listener".into(), source: e })?;
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            })
        }
    };
    tracing::info!(id = config.id, addr = %local_addr, data_dir = %config.data_dir.display(), "coordinator node serving");
    Ok(RunningServer { coordinator, local_addr, stop, serving })
}
