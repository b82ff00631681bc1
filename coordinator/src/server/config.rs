//! `serve` settings from flags, environment and an optional TOML file (flags and environment win over the file,
//! the file over defaults), the way etcd takes `--config-file`.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7071"
//! advertise = "10.0.0.1:7071"     # what peers and clients dial; defaults to the bound address
//! data_dir = "/var/lib/pgtrickle-coordinator"
//! token = "…"                     # default: generated into DATA_DIR/token
//! read_token = "…"                # may only read (GET); default: none (reads need the token)
//! open_health = false             # true: /healthz, /readyz, /metrics answer without a token
//! peers = { 1 = "127.0.0.1:7071", 2 = "127.0.0.1:7072", 3 = "127.0.0.1:7073" }
//! body_limit = 1048576            # largest client request; Raft RPC bodies may be twice this
//! [raft]
//! heartbeat_ms = 50
//! election_timeout_min_ms = 250
//! election_timeout_max_ms = 500
//! snapshot_logs_since_last = 10000
//! snapshot_bytes_since_last = 67108864
//! snapshot_max_age_secs = 3600
//! logs_kept_after_snapshot = 1000
//! max_payload_entries = 512
//! max_payload_bytes = 524288       # default: half the body limit
//! snapshot_chunk_bytes = 524288    # default: half the body limit
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Raft timing and snapshot policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Build a snapshot after this many bytes of log since the last one (a few large entries fill a disk as
    /// surely as many small ones).
    pub snapshot_bytes_since_last: u64,
    /// Build a snapshot at least this often while anything is written (0: never by age).
    pub snapshot_max_age_secs: u64,
    /// Entries kept in the log behind a snapshot (lets a slightly lagging follower catch up without one).
    pub logs_kept_after_snapshot: u64,
    /// Most entries per AppendEntries RPC.
    pub max_payload_entries: u64,
    /// Most bytes of entries per AppendEntries RPC (at least one entry is always sent). Default: half the body
    /// limit. openraft 0.9 gives an AppendEntries RPC one heartbeat interval to complete, so this is what lets a
    /// lagging follower catch up instead of timing out on every batch.
    pub max_payload_bytes: Option<u64>,
    /// Size of the chunks a snapshot is sent to a new or far-behind member in. Default: half the body limit.
    pub snapshot_chunk_bytes: Option<u64>,
}

/// The Raft RPC routes accept bodies up to twice the client body limit: one AppendEntries carries up to
/// `max_payload_bytes` of entries, or a single entry batching client requests up to `max_payload_bytes`
/// (proposer) plus the one request that went over it, each of them at most a body.
pub fn raft_body_limit(body_limit: usize) -> usize {
    body_limit.saturating_mul(2).saturating_add(64 * 1024)
}

/// Raft settings with every default derived from the body limit, checked against each other.
#[derive(Debug, Clone)]
pub struct ResolvedRaft {
    pub settings: RaftSettings,
    pub max_payload_bytes: u64,
    pub snapshot_chunk_bytes: u64,
}

/// The smallest body limit that leaves room for a useful entry or chunk.
pub const MIN_BODY_LIMIT: usize = 64 * 1024;

impl RaftSettings {
    /// Fills the byte sizes from `body_limit` and refuses settings that contradict each other with a message that
    /// names both settings and what would happen.
    pub fn resolve(&self, body_limit: usize) -> Result<ResolvedRaft, String> {
        if body_limit < MIN_BODY_LIMIT {
            return Err(format!("body_limit ({body_limit}) is below {MIN_BODY_LIMIT} bytes: raise it"));
        }
        let half = body_limit as u64 / 2;
        let max_payload_bytes = self.max_payload_bytes.unwrap_or(half);
        let snapshot_chunk_bytes = self.snapshot_chunk_bytes.unwrap_or(half);
        for (name, value) in [("max_payload_bytes", max_payload_bytes), ("snapshot_chunk_bytes", snapshot_chunk_bytes)]
        {
            if value == 0 {
                return Err(format!("raft.{name} must be positive"));
            }
            if value > body_limit as u64 {
                return Err(format!(
                    "raft.{name} ({value}) exceeds body_limit ({body_limit}): peers would refuse every such request \
                     with 413 Payload Too Large and a member could never catch up; lower raft.{name} or raise \
                     body_limit (the same on every node)"
                ));
            }
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return Err(format!(
                "raft.heartbeat_ms ({}) must be positive and below raft.election_timeout_min_ms ({})",
                self.heartbeat_ms, self.election_timeout_min_ms
            ));
        }
        if self.snapshot_bytes_since_last == 0 || self.snapshot_logs_since_last == 0 {
            return Err("raft.snapshot_logs_since_last and raft.snapshot_bytes_since_last must be positive".into());
        }
        Ok(ResolvedRaft { settings: self.clone(), max_payload_bytes, snapshot_chunk_bytes })
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_logs_since_last: 10_000,
            snapshot_bytes_since_last: 64 * 1024 * 1024,
            snapshot_max_age_secs: 3600,
            logs_kept_after_snapshot: 1_000,
            max_payload_entries: 512,
            max_payload_bytes: None,
            snapshot_chunk_bytes: None,
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// This node's Raft id (> 0).
    pub id: u64,
    /// Where to listen.
    pub listen: SocketAddr,
    /// What peers and clients dial (default: the bound address).
    pub advertise: Option<String>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The initial cluster, used by `init` without explicit members.
    pub peers: BTreeMap<u64, String>,
    /// Bearer token; None generates one into the data dir unless `insecure_no_token`.
    pub token: Option<String>,
    /// Run without any token (tests and local demos only).
    pub insecure_no_token: bool,
    /// A token that may only read.
    pub read_token: Option<String>,
    /// Health and metrics endpoints without a token.
    pub open_health: bool,
    /// Largest request body accepted (413 above).
    pub body_limit: usize,
    /// Raft settings.
    pub raft: RaftSettings,
    /// Start a new cluster from this coordinator snapshot (file://, s3://).
    pub bootstrap_from: Option<String>,
    /// TLS: certificate chain and private key (PEM) to serve HTTPS; peers are then reached over HTTPS too.
    pub tls: Option<TlsFiles>,
    /// PEM file of the CA that signed the peers' certificates (default: the system roots).
    pub ca_file: Option<PathBuf>,
}

/// Certificate and key of a node.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub read_token: Option<String>,
    pub open_health: Option<bool>,
    pub peers: Option<BTreeMap<String, String>>,
    pub body_limit: Option<usize>,
    pub bootstrap_from: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub raft: Option<RaftSettings>,
}

impl FileConfig {
    /// Reads and parses a TOML file, naming the file in the error.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("peer {part:?}: expected ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("peer {part:?}: the id must be a positive integer"))?;
        if id == 0 {
            return Err(format!("peer {part:?}: node ids start at 1"));
        }
        let addr = addr.trim().trim_start_matches("http://").trim_end_matches('/');
        if !addr.contains(':') {
            return Err(format!("peer {part:?}: expected HOST:PORT"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    Ok(out)
}

/// File peers have string keys (TOML tables); convert them.
pub fn file_peers(peers: &BTreeMap<String, String>) -> Result<BTreeMap<u64, String>, String> {
    let spec: Vec<String> = peers.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parse_peers(&spec.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject() {
        let p = parse_peers("1=127.0.0.1:7071, 2=http://127.0.0.1:7072/").unwrap();
        assert_eq!(p[&2], "127.0.0.1:7072");
        assert!(parse_peers("0=a:1").unwrap_err().contains("start at 1"));
        assert!(parse_peers("x=a:1").unwrap_err().contains("positive integer"));
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("twice"));
    }

    #[test]
    fn byte_sizes_follow_the_body_limit_and_contradictions_are_refused() {
        let resolved = RaftSettings::default().resolve(1024 * 1024).unwrap();
        assert_eq!((resolved.max_payload_bytes, resolved.snapshot_chunk_bytes), (512 * 1024, 512 * 1024));
        let chunk = RaftSettings { snapshot_chunk_bytes: Some(3 * 1024 * 1024), ..Default::default() };
        let e = chunk.resolve(1024 * 1024).unwrap_err();
        assert!(e.contains("snapshot_chunk_bytes (3145728) exceeds body_limit (1048576)") && e.contains("413"), "{e}");
        let payload = RaftSettings { max_payload_bytes: Some(0), ..Default::default() };
        assert!(payload.resolve(1024 * 1024).unwrap_err().contains("positive"));
        assert!(RaftSettings::default().resolve(1000).unwrap_err().contains("below"));
        let slow = RaftSettings { heartbeat_ms: 300, ..Default::default() };
        assert!(slow.resolve(1024 * 1024).unwrap_err().contains("election_timeout_min_ms"));
        assert!(raft_body_limit(1024 * 1024) > 2 * 1024 * 1024);
    }

    #[test]
    fn file_config_parses_and_rejects_unknown_keys() {
        let c: FileConfig = toml::from_str("id = 2\nlisten = \"127.0.0.1:1\"\n[raft]\nheartbeat_ms = 50\n").unwrap();
        assert_eq!(c.raft.unwrap().heartbeat_ms, 50);
        assert!(toml::from_str::<FileConfig>("idd = 2").is_err());
    }
}
