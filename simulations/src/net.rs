//! The simulated network between coordinator nodes: openraft's RPCs are calls on the target node's `Raft`
//! handle, each passing through the fault table — links cut one way or both (asymmetric partitions), messages
//! lost, delayed (so they also overtake each other) and duplicated (the copy is delivered later and its answer
//! dropped). A node that crashed is unreachable; messages from a node's previous life are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand08::rngs::StdRng;
use rand08::{Rng, SeedableRng};

use crate::{Node, NodeId, SimConfig, SimRaft};

/// Network faults in force.
#[derive(Debug, Clone, Default)]
pub struct LinkFaults {
    /// Directed links that deliver nothing: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Percent of messages lost.
    pub loss_pct: u32,
    /// Percent of requests delivered twice.
    pub duplicate_pct: u32,
    /// Each message waits 0..=this many ms (so later messages may overtake earlier ones).
    pub max_delay_ms: u64,
}

struct Inner {
    nodes: BTreeMap<NodeId, (u32, SimRaft)>,
    faults: LinkFaults,
    rng: StdRng,
}

/// The network of one run.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Why(&'static str);

impl Net {
    pub fn new(seed: u64) -> Self {
        Net {
            inner: Arc::new(Mutex::new(Inner {
                nodes: BTreeMap::new(),
                faults: LinkFaults::default(),
                rng: StdRng::seed_from_u64(seed ^ 0x0e7_0e7),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node (life) is up and reachable.
    pub fn attach(&self, node: NodeId, life: u32, raft: SimRaft) {
        self.lock().nodes.insert(node, (life, raft));
    }

    /// A node went down.
    pub fn detach(&self, node: NodeId) {
        self.lock().nodes.remove(&node);
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> LinkFaults {
        self.lock().faults.clone()
    }

    /// The factory a node life hands to openraft.
    pub fn factory(&self, node: NodeId, life: u32) -> NetFactory {
        NetFactory { net: self.clone(), from: node, life }
    }

    fn sender_alive(&self, from: NodeId, life: u32) -> bool {
        self.lock().nodes.get(&from).is_some_and(|(l, _)| *l == life)
    }

    /// Decides one message's fate: `None` when lost, else its delay and whether it is duplicated.
    fn fate(&self, from: NodeId, to: NodeId) -> Option<(Duration, bool)> {
        let mut inner = self.lock();
        let faults = inner.faults.clone();
        if faults.cut.contains(&(from, to)) || inner.rng.gen_range(0..100) < faults.loss_pct {
            return None;
        }
        let delay = Duration::from_millis(inner.rng.gen_range(0..=faults.max_delay_ms.max(1)));
        let duplicate = inner.rng.gen_range(0..100) < faults.duplicate_pct;
        Some((delay, duplicate))
    }

    fn target(&self, to: NodeId) -> Option<(u32, SimRaft)> {
        self.lock().nodes.get(&to).map(|(l, r)| (*l, r.clone()))
    }

    /// Delivers a request and brings back its answer, through the faults both ways.
    async fn rpc<Req, Resp, E, F, Fut>(
        &self,
        from: NodeId,
        life: u32,
        to: NodeId,
        ttl: Duration,
        request: Req,
        deliver: F,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(SimRaft, Req) -> Fut + Send + Sync + 'static + Clone,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let lost = || async move {
            tokio::time::sleep(ttl.min(Duration::from_millis(100))).await;
            Err(RPCError::Unreachable(Unreachable::new(&Why("the simulated network lost the message"))))
        };
        if !self.sender_alive(from, life) {
            return lost().await;
        }
        let Some((delay, duplicate)) = self.fate(from, to) else { return lost().await };
        if duplicate {
            let (net, copy, deliver) = (self.clone(), request.clone(), deliver.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay * 2 + Duration::from_millis(3)).await;
                if let Some((_, raft)) = net.target(to) {
                    let _ = deliver(raft, copy).await;
                }
            });
        }
        tokio::time::sleep(delay).await;
        // Faults may have changed while the message travelled.
        if !self.sender_alive(from, life) || self.lock().faults.cut.contains(&(from, to)) {
            return lost().await;
        }
        let Some((target_life, raft)) = self.target(to) else { return lost().await };
        let answer = deliver(raft, request).await;
        if self.target(to).map(|(l, _)| l) != Some(target_life) {
            return lost().await; // the target crashed while handling it: its answer never leaves
        }
        let Some((back, _)) = self.fate(to, from) else {
            return Err(RPCError::Network(NetworkError::new(&Why("the simulated network lost the answer"))));
        };
        tokio::time::sleep(back).await;
        answer.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(to, e)))
    }
}

/// Creates connections for one node life.
pub struct NetFactory {
    net: Net,
    from: NodeId,
    life: u32,
}

/// A connection from one node life to a peer.
pub struct Connection {
    net: Net,
    from: NodeId,
    life: u32,
    to: NodeId,
}

impl RaftNetworkFactory<SimConfig> for NetFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        Connection { net: self.net.clone(), from: self.from, life: self.life, to: target }
    }
}

impl RaftNetwork<SimConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.net
            .rpc(self.from, self.life, self.to, option.hard_ttl(), rpc, |raft: SimRaft, rpc| async move {
                raft.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.net
            .rpc(self.from, self.life, self.to, option.hard_ttl(), rpc, |raft: SimRaft, rpc| async move {
                raft.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.net
            .rpc(self.from, self.life, self.to, option.hard_ttl(), rpc, |raft: SimRaft, rpc| async move {
                raft.vote(rpc).await
            })
            .await
    }
}
