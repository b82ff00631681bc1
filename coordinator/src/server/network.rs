//! Raft RPC between coordinator nodes: HTTP POSTs of the binary codec (`shared-model::codec`) over one pooled,
//! keep-alive `reqwest` client per node, so every peer is reached over a persistent connection. openraft batches
//! entries into AppendEntries (`max_payload_entries`) and streams snapshots in chunks (`snapshot_max_chunk_size`).
//! The bearer token, when configured, guards these routes like every mutating one.

use std::time::Duration;

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

/// Creates one network client per peer, sharing the connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: Option<String>,
    scheme: &'static str,
}

impl Network {
    /// A network over `http`, sending `token` as bearer token.
    pub fn new(http: reqwest::Client, token: Option<String>, tls: bool) -> Self {
        Network { http, token, scheme: if tls { "https" } else { "http" } }
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
        let mut request = self
            .net
            .http
            .post(&url)
            .timeout(option.hard_ttl().max(Duration::from_millis(50)))
            .header("content-type", "application/octet-stream")
            .body(codec::encode(req));
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
