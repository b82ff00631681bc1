//! The `pgtrickle-coordinator` command line: `serve` runs a node; the other subcommands are clients of a running
//! cluster (like `etcdctl`), printing tables for people and JSON with `--json`. Errors are one line on stderr with
//! exit status 1 (the coordinator refused), 2 (bad usage or settings) or 3 (no coordinator reachable).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use reqwest::Method;
use serde::Serialize;

use crate::api::*;
use crate::client::{Client, ClientError, ClientOptions};
use crate::server::config::{file_peers, parse_peers, FileConfig, RaftSettings, ServeConfig, TlsFiles};
use shared_model::CheckpointRecord;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(
    name = "pgtrickle-coordinator",
    version,
    about = "The coordinator of pg_trickle federation: a three-node Raft service and its CLI."
)]
pub struct Cli {
    /// Coordinator nodes to talk to (client subcommands): http://HOST:PORT[,HOST:PORT…]
    #[arg(long, env = "PGTRICKLE_COORDINATOR", default_value = "http://127.0.0.1:7071", global = true)]
    pub endpoints: String,
    /// Bearer token (writes, management, Raft RPC).
    #[arg(long, env = "PGTRICKLE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM file of the CA that signed the coordinators' TLS certificates (https:// endpoints, and peers for serve).
    #[arg(long, env = "PGTRICKLE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Give up after this many seconds without an answer.
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout_secs: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator node.
    Serve(Box<ServeArgs>),
    /// Form a new cluster (run once, against one node).
    Init {
        /// Initial voters ID=HOST:PORT,…; default: the node's --peers.
        #[arg(long)]
        members: Option<String>,
    },
    /// Add a non-voting node; returns when it has caught up.
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
    },
    /// Set the voters (e.g. 1,2,3,4).
    ChangeMembership {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
    },
    /// Raft status of every endpoint.
    Status,
    /// Cluster members.
    Members,
    /// Registered PostgreSQL clusters.
    Clusters,
    /// The newest checkpoint each cluster recorded (pgtrickle.checkpoint on that cluster).
    Checkpoints,
    /// The federation's name and change-log settings; with any option, changes them.
    Federation {
        /// The federation's name (the host part of source URLs).
        #[arg(long)]
        name: Option<String>,
        /// Change-log backend: kafka or nats.
        #[arg(long)]
        backend: Option<String>,
        /// Broker addresses handed to clusters at registration (host:port,…): Kafka bootstrap servers, or NATS
        /// servers (host:4222, nats://host:4222, tls://host:4222).
        #[arg(long, visible_alias = "servers")]
        bootstrap_servers: Option<String>,
        /// Prefix of per-stream topics.
        #[arg(long)]
        topic_prefix: Option<String>,
    },
    /// Published streams.
    Streams,
    /// Federated tables and their newest cuts.
    Tables,
    /// The global DAG (text, or Graphviz with --dot).
    Dag {
        #[arg(long)]
        dot: bool,
    },
    /// Committed frontiers (all streams, or one: cluster/schema.table).
    Frontier { stream: Option<String> },
    /// The event log after an index; --follow keeps watching.
    Events {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        follow: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Write the coordinator's state snapshot to object storage (file:///…, s3://bucket/key).
    Snapshot {
        #[arg(long)]
        to: String,
    },
}

/// `serve` flags; each can also come from the environment or the TOML file given with --config.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This node's id (>= 1).
    #[arg(long, env = "PGTRICKLE_NODE_ID")]
    pub id: Option<u64>,
    /// Listen address.
    #[arg(long, env = "PGTRICKLE_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Address others dial (default: the listen address).
    #[arg(long, env = "PGTRICKLE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory.
    #[arg(long, env = "PGTRICKLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial cluster ID=HOST:PORT,… (used by `init` without --members).
    #[arg(long, env = "PGTRICKLE_PEERS")]
    pub peers: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "PGTRICKLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run without a token (local tests only).
    #[arg(long)]
    pub insecure_no_token: bool,
    /// A bearer token that may only read (GET); the write token reads too.
    #[arg(long, env = "PGTRICKLE_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Let /healthz, /readyz and /metrics answer without a token (probes, Prometheus scrapers).
    #[arg(long)]
    pub open_health: bool,
    /// Start a new cluster from this coordinator snapshot URL.
    #[arg(long)]
    pub bootstrap_from: Option<String>,
    /// Heartbeat interval (ms).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout lower bound (ms).
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Election timeout upper bound (ms).
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Snapshot after this many entries.
    #[arg(long)]
    pub snapshot_logs_since_last: Option<u64>,
    /// Snapshot after this many bytes of log.
    #[arg(long)]
    pub snapshot_bytes_since_last: Option<u64>,
    /// Snapshot at least this often while writes arrive (seconds; 0: never by age).
    #[arg(long)]
    pub snapshot_max_age_secs: Option<u64>,
    /// Entries kept in the log behind a snapshot.
    #[arg(long)]
    pub logs_kept_after_snapshot: Option<u64>,
    /// Most bytes of log entries per AppendEntries RPC (default: half the body limit).
    #[arg(long)]
    pub max_payload_bytes: Option<u64>,
    /// Size of snapshot chunks sent to members (default: half the body limit).
    #[arg(long)]
    pub snapshot_chunk_bytes: Option<u64>,
    /// Largest request body (bytes).
    #[arg(long)]
    pub body_limit: Option<usize>,
    /// Log lines as text (colours only on a terminal) or as JSON objects, one per line.
    #[arg(long, env = "PGTRICKLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "PGTRICKLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "PGTRICKLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// How `serve` writes its log to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// A failure of the CLI with its exit status.
pub struct Exit {
    pub status: i32,
    pub message: String,
}

impl From<ClientError> for Exit {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Api { error, .. } => Exit {
                status: 1,
                message: format!(
                    "{} ({}){}",
                    error.message,
                    error.code,
                    error.hint.as_ref().map(|h| format!(" — hint: {h}")).unwrap_or_default()
                ),
            },
            ClientError::Unavailable { .. } => Exit { status: 3, message: e.to_string() },
            ClientError::BadUrl(_) => Exit { status: 2, message: e.to_string() },
            ClientError::Decode { .. } => Exit { status: 1, message: e.to_string() },
        }
    }
}

fn usage(message: impl Into<String>) -> Exit {
    Exit { status: 2, message: message.into() }
}

/// Builds the serve configuration: flags/env over file over defaults.
pub fn serve_config(args: &ServeArgs, token: Option<String>, ca_file: Option<PathBuf>) -> Result<ServeConfig, Exit> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(usage)?,
        None => FileConfig::default(),
    };
    let id = args.id.or(file.id).ok_or_else(|| usage("serve needs --id (or PGTRICKLE_NODE_ID, or id in --config)"))?;
    if id == 0 {
        return Err(usage("--id must be >= 1"));
    }
    let peers = match (&args.peers, &file.peers) {
        (Some(spec), _) => parse_peers(spec).map_err(usage)?,
        (None, Some(p)) => file_peers(p).map_err(usage)?,
        (None, None) => Default::default(),
    };
    let mut raft = file.raft.unwrap_or_default();
    let defaults = RaftSettings::default();
    raft.heartbeat_ms = args.heartbeat_ms.unwrap_or(raft.heartbeat_ms);
    raft.election_timeout_min_ms = args.election_timeout_min_ms.unwrap_or(raft.election_timeout_min_ms);
    raft.election_timeout_max_ms = args.election_timeout_max_ms.unwrap_or(raft.election_timeout_max_ms);
    raft.snapshot_logs_since_last = args.snapshot_logs_since_last.unwrap_or(raft.snapshot_logs_since_last);
    raft.snapshot_bytes_since_last = args.snapshot_bytes_since_last.unwrap_or(raft.snapshot_bytes_since_last);
    raft.snapshot_max_age_secs = args.snapshot_max_age_secs.unwrap_or(raft.snapshot_max_age_secs);
    raft.logs_kept_after_snapshot = args.logs_kept_after_snapshot.unwrap_or(raft.logs_kept_after_snapshot);
    raft.max_payload_bytes = args.max_payload_bytes.or(raft.max_payload_bytes);
    raft.snapshot_chunk_bytes = args.snapshot_chunk_bytes.or(raft.snapshot_chunk_bytes);
    if raft.max_payload_entries == 0 {
        raft.max_payload_entries = defaults.max_payload_entries;
    }
    Ok(ServeConfig {
        id,
        listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7071".parse().expect("valid")),
        advertise: args.advertise.clone().or(file.advertise),
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("pgtrickle-coordinator-{id}"))),
        peers,
        token: token.or(file.token),
        insecure_no_token: args.insecure_no_token,
        read_token: args.read_token.clone().or(file.read_token),
        open_health: args.open_health || file.open_health.unwrap_or(false),
        body_limit: args.body_limit.or(file.body_limit).unwrap_or(1024 * 1024),
        raft,
        bootstrap_from: args.bootstrap_from.clone().or(file.bootstrap_from),
        tls: match (args.tls_cert.clone().or(file.tls_cert), args.tls_key.clone().or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(usage("TLS needs both a certificate and a key (--tls-cert and --tls-key)")),
        },
        ca_file: ca_file.or(file.ca_file),
    })
}

fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("views serialize"));
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// Runs a client subcommand.
pub async fn run_client(cli: &Cli) -> Result<(), Exit> {
    let ca_pem = match &cli.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?),
        None => None,
    };
    let options = ClientOptions {
        ca_pem,
        token: cli.token.clone(),
        client_id: format!("cli@{}", std::process::id()),
        deadline: Duration::from_secs(cli.timeout_secs),
        ..Default::default()
    };
    let client = Client::new(&cli.endpoints, options)?;
    match &cli.command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Init { members } => {
            let members = match members {
                Some(spec) => parse_peers(spec).map_err(usage)?,
                None => Default::default(),
            };
            let out: Vec<MemberView> = client
                .call(
                    Method::POST,
                    "/v1/admin/init",
                    Some(&InitCluster { members }),
                    Some(&Client::new_request_id()),
                    Duration::ZERO,
                )
                .await?;
            print_members(cli, &out);
        }
        Command::AddLearner { id, addr } => {
            let body = AddLearner { id: *id, addr: addr.clone() };
            let out: Vec<MemberView> = client
                .call(
                    Method::POST,
                    "/v1/admin/learners",
                    Some(&body),
                    Some(&Client::new_request_id()),
                    Duration::from_secs(60),
                )
                .await?;
            print_members(cli, &out);
        }
        Command::ChangeMembership { voters } => {
            let body = ChangeMembership { voters: voters.iter().copied().collect() };
            let out: Vec<MemberView> = client
                .call(
                    Method::POST,
                    "/v1/admin/membership",
                    Some(&body),
                    Some(&Client::new_request_id()),
                    Duration::from_secs(60),
                )
                .await?;
            print_members(cli, &out);
        }
        Command::Status => {
            let mut all = Vec::new();
            for i in 0..client.nodes().len() {
                all.push((client.nodes()[i].clone(), client.node_status(i).await));
            }
            if cli.json {
                let ok: Vec<_> = all.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
                print_json(&ok);
            } else {
                // The leader alone knows how replication to every member goes, the unreachable ones included.
                let leader_view = all
                    .iter()
                    .filter_map(|(_, s)| s.as_ref().ok())
                    .find(|s| s.leader == Some(s.node_id))
                    .map(|s| s.members.clone());
                let rows = all
                    .into_iter()
                    .map(|(url, s)| match s {
                        Ok(s) => vec![
                            url,
                            s.node_id.to_string(),
                            s.state,
                            opt(s.leader),
                            s.term.to_string(),
                            opt(s.last_log_index),
                            opt(s.applied_index),
                        ],
                        Err(e) => vec![
                            url,
                            "-".into(),
                            format!("unreachable: {}", one_line(&e.to_string())),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ],
                    })
                    .collect();
                table(&["ENDPOINT", "ID", "STATE", "LEADER", "TERM", "LAST LOG", "APPLIED"], rows);
                if let Some(members) = leader_view {
                    println!("\nmembers, as the leader sees them:");
                    print_members(cli, &members);
                }
            }
        }
        Command::Members => {
            let status = client.status().await?;
            print_members(cli, &status.members);
        }
        Command::Clusters => {
            let clusters = client.clusters().await?;
            if cli.json {
                print_json(&clusters);
                return Ok(());
            }
            let rows = clusters
                .into_iter()
                .map(|c| {
                    vec![
                        c.name.to_string(),
                        c.endpoint,
                        c.system_identifier.to_string(),
                        c.producer_epoch.to_string(),
                        c.registered_at.to_string(),
                        opt(c.last_checkpoint.map(|k| k.url)),
                    ]
                })
                .collect();
            table(&["NAME", "ENDPOINT", "SYSTEM IDENTIFIER", "EPOCH", "REGISTERED AT", "LAST CHECKPOINT"], rows);
        }
        Command::Checkpoints => {
            let newest: Vec<(String, CheckpointRecord)> = client
                .clusters()
                .await?
                .into_iter()
                .filter_map(|c| c.last_checkpoint.map(|k| (c.name.to_string(), k)))
                .collect();
            if cli.json {
                let listed: Vec<serde_json::Value> = newest
                    .iter()
                    .map(|(cluster, k)| serde_json::json!({"cluster": cluster, "checkpoint": k}))
                    .collect();
                print_json(&listed);
                return Ok(());
            }
            let rows = newest
                .into_iter()
                .map(|(cluster, k)| {
                    vec![cluster, k.url, k.size_bytes.to_string(), k.taken_at_unix_ms.to_string(), k.checksum]
                })
                .collect();
            table(&["CLUSTER", "URL", "BYTES", "TAKEN AT (UNIX MS)", "SHA-256"], rows);
        }
        Command::Federation { name, backend, bootstrap_servers, topic_prefix } => {
            let mut view = client.federation().await?;
            let changing = name.is_some() || backend.is_some() || bootstrap_servers.is_some() || topic_prefix.is_some();
            if changing {
                let usage = |e: shared_model::ids::ParseError| Exit { status: 2, message: e.to_string() };
                if let Some(name) = name {
                    view.name = shared_model::FederationName::parse(name).map_err(usage)?;
                }
                if let Some(backend) = backend {
                    view.changelog.backend = backend.parse().map_err(usage)?;
                }
                if let Some(servers) = bootstrap_servers {
                    view.changelog.bootstrap_servers = servers.clone();
                }
                if let Some(prefix) = topic_prefix {
                    view.changelog.topic_prefix = prefix.clone();
                }
                client.configure_federation(&view).await?;
            }
            if cli.json {
                print_json(&view);
            } else {
                println!(
                    "federation {}: backend {}, servers {}, topic prefix {}",
                    view.name, view.changelog.backend, view.changelog.bootstrap_servers, view.changelog.topic_prefix
                );
            }
        }
        Command::Streams => {
            let streams = client.streams().await?;
            if cli.json {
                print_json(&streams);
                return Ok(());
            }
            let rows = streams
                .into_iter()
                .map(|s| {
                    vec![
                        s.stream.to_string(),
                        s.columns.len().to_string(),
                        s.schema_version.to_string(),
                        s.frontier.seq.to_string(),
                        s.subscribers.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
                    ]
                })
                .collect();
            table(&["STREAM", "COLUMNS", "SCHEMA", "FRONTIER", "SUBSCRIBERS"], rows);
        }
        Command::Tables => {
            let tables = client.federated_tables().await?;
            if cli.json {
                print_json(&tables);
                return Ok(());
            }
            let rows = tables
                .into_iter()
                .map(|t| {
                    let cut = t.newest_cut.seqs.iter().map(|(s, q)| format!("{s}@{q}")).collect::<Vec<_>>().join(" ");
                    vec![t.table.to_string(), t.consistency.to_string(), t.newest_cut.at.to_string(), cut]
                })
                .collect();
            table(&["TABLE", "CONSISTENCY", "CUT AT", "CUT"], rows);
        }
        Command::Dag { dot } => {
            if *dot {
                print!("{}", client.dag_dot().await?);
            } else {
                let dag = client.dag().await?;
                if cli.json {
                    print_json(&dag);
                    return Ok(());
                }
                println!("nodes (topological order):");
                for n in &dag.topological_order {
                    println!("  {n}");
                }
                println!("edges:");
                for e in &dag.edges {
                    println!("  {} -> {}", e.from, e.to);
                }
                for d in &dag.diamond_groups {
                    let shared: Vec<String> = d.shared_upstream.iter().map(|n| n.to_string()).collect();
                    println!(
                        "diamond: {} (shared upstream: {}) — consider consistency => 'causal'",
                        d.table,
                        shared.join(", ")
                    );
                }
            }
        }
        Command::Frontier { stream } => {
            let mut frontiers = client.frontiers().await?;
            if let Some(s) = stream {
                let id: shared_model::StreamId =
                    s.parse().map_err(|e: shared_model::ParseError| usage(e.to_string()))?;
                frontiers.retain(|f| f.stream == id);
                if frontiers.is_empty() {
                    return Err(Exit { status: 1, message: format!("stream {id} is not published (unknown_stream)") });
                }
            }
            if cli.json {
                print_json(&frontiers);
                return Ok(());
            }
            let rows = frontiers
                .into_iter()
                .map(|f| {
                    vec![
                        f.stream.to_string(),
                        f.seq.to_string(),
                        f.at.to_string(),
                        opt(f.position.map(|p| format!("{}:{}", p.partition, p.offset))),
                        opt(f.pending_reinit),
                    ]
                })
                .collect();
            table(&["STREAM", "SEQ", "AT", "POSITION", "PENDING REINIT"], rows);
        }
        Command::Events { after, follow, limit } => {
            if *follow {
                let mut stream = Box::pin(client.watch_events(*after));
                while let Some(record) = stream.next().await {
                    print_record(cli, &record?);
                }
            } else {
                let page = client.events(*after, Duration::ZERO, *limit).await?;
                for r in &page.records {
                    print_record(cli, r);
                }
            }
        }
        Command::Snapshot { to } => {
            let bytes = client.get_bytes("/v1/admin/snapshot").await?;
            let size = bytes.len();
            crate::server::export::save(to, bytes).await.map_err(|e| Exit { status: 1, message: e.to_string() })?;
            println!("wrote a {size}-byte coordinator snapshot to {to}");
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn print_members(cli: &Cli, members: &[MemberView]) {
    if cli.json {
        return print_json(&members);
    }
    let rows = members
        .iter()
        .map(|m| {
            let mut row = vec![m.id.to_string(), m.addr.clone(), if m.voter { "voter" } else { "learner" }.into()];
            match &m.replication {
                Some(r) => {
                    row.push(r.state.to_string());
                    row.push(r.lag_entries.to_string());
                    row.push(match (&r.last_error, r.last_error_age_secs) {
                        (Some(e), Some(age)) if r.state != ReplicationState::Ok || age < 60 => {
                            format!("{e} ({age} s ago)")
                        }
                        _ => String::new(),
                    });
                }
                None => row.extend(["-".into(), "-".into(), String::new()]),
            }
            row
        })
        .collect();
    table(&["ID", "ADDRESS", "ROLE", "REPLICATION", "LAG", "LAST ERROR"], rows);
}

fn print_record(cli: &Cli, r: &EventRecord) {
    if cli.json {
        println!("{}", serde_json::to_string(r).expect("records serialize"));
        return;
    }
    let what = match (&r.error, r.events.is_empty()) {
        (Some(e), _) => format!("{} {}: {}", r.outcome, e.code, e.message),
        (None, true) => r.outcome.clone(),
        (None, false) => r.events.iter().map(|e| e.kind()).collect::<Vec<_>>().join(", "),
    };
    println!("{:>8}  {:<16}  {}", r.index, r.client.as_deref().unwrap_or("-"), what);
}
