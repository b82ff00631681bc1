//! Raft RPC between coordinator nodes: HTTP POSTs of the binary codec (`shared-model::codec`) over one pooled,
//! keep-alive `reqwest` client per node, so every peer is reached over a persistent connection. openraft batches
//! entries into AppendEntries (`max_payload_entries`) and streams snapshots in chunks (`snapshot_max_chunk_size`).
//! The bearer token, when configured, guards these routes like every mutating one.
//!
//! Every RPC's outcome is recorded per peer in [`PeerHealth`], including the ones openraft abandons at its
//! deadline (the future is dropped, so a guard notices), so that `status` and `/metrics` can say which member is
//! failing to keep up and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use raft_store::{Node, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shared_model::codec;

/// Paths of the Raft RPC routes.
pub const APPEND_PATH: &str = "/raft/append";
/// Vote RPC path.
pub const VOTE_PATH: &str = "/raft/vote";
/// Snapshot chunk RPC path.
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// How RPCs to one peer have gone lately.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    /// When an RPC last got an answer.
    pub last_ok: Option<Instant>,
    /// The newest failure: when, and what (timeout with payload size, refusal, connection error…).
    pub last_error: Option<(Instant, String)>,
    /// Failures since the last answer.
    pub consecutive_failures: u64,
    /// Failures since this node started.
    pub errors_total: u64,
}

/// Shared record of every peer's RPC outcomes.
#[derive(Clone, Default)]
pub struct PeersHealth(Arc<Mutex<BTreeMap<NodeId, PeerHealth>>>);

impl PeersHealth {
    /// A copy of the current record.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerHealth> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, peer: NodeId, outcome: Result<(), String>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let health = all.entry(peer).or_default();
        match outcome {
            Ok(()) => {
                health.last_ok = Some(Instant::now());
                health.consecutive_failures = 0;
            }
            Err(what) => {
                health.last_error = Some((Instant::now(), what));
                health.consecutive_failures += 1;
                health.errors_total += 1;
            }
        }
    }
}

/// Records an RPC that openraft dropped at its deadline: the future never finished, so `finish` never ran.
struct Outcome<'a> {
    health: &'a PeersHealth,
    peer: NodeId,
    what: &'a str,
    bytes: usize,
    started: Instant,
    finished: bool,
}

impl Outcome<'_> {
    fn finish(&mut self, outcome: Result<(), String>) {
        self.finished = true;
        self.health.record(self.peer, outcome);
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let what = format!(
                "{} of {} bytes got no answer within {} ms",
                self.what,
                self.bytes,
                self.started.elapsed().as_millis()
            );
            self.health.record(self.peer, Err(what));
        }
    }
}

/// Creates one network client per peer, sharing the connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: Option<String>,
    scheme: &'static str,
    health: PeersHealth,
}

impl Network {
    /// A network over `http`, sending `token` as bearer token and recording outcomes in `health`.
    pub fn new(http: reqwest::Client, token: Option<String>, tls: bool, health: PeersHealth) -> Self {
        Network { http, token, scheme: if tls { "https" } else { "http" }, health }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    net: Network,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerClient {
    async fn send<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, E>> {
        let url = format!("{}://{}{}", self.net.scheme, self.addr, path);
        let body = codec::encode(req);
        let mut outcome = Outcome {
            health: &self.net.health,
            peer: self.target,
            what: path.trim_start_matches("/raft/"),
            bytes: body.len(),
            started: Instant::now(),
            finished: false,
        };
        let result = self.exchange(&url, body, option).await;
        outcome.finish(match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => Ok(()),
            Err(e) => Err(format!("{} of {} bytes: {e}", outcome.what, outcome.bytes)),
        });
        result
    }

    async fn exchange<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        url: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, E>> {
        let mut request = self
            .net
            .http
            .post(url)
            .timeout(option.hard_ttl().max(Duration::from_millis(50)))
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(token) = &self.net.token {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let msg = Message(format!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(RPCError::Network(NetworkError::new(&msg)));
        }
        let result: Result<Resp, E> = codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient { net: self.clone(), target, addr: node.addr.clone() }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(APPEND_PATH, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(SNAPSHOT_PATH, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(VOTE_PATH, &rpc, &option).await
    }
}
