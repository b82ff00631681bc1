//! Three coordinator nodes: openraft over the simulated network and storage, the fold as state machine, and the
//! client side the workers use (writes with an idempotency key, retried on another node with the same key, as the
//! coordinator client does; linearizable reads on the leader). Every frontier operation is recorded in the
//! history for the linearizability checker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use raft_store::Batch;
use shared_model::{Command, CommandError, Executed, IdempotencyKey, Request, State, StreamId};

use crate::history::{Call, History, Return};
use crate::net::Net;
use crate::store::{Disk, SimLogStore, SimStateMachine};
use crate::{NodeId, SimRaft};

/// Node ids of the cluster.
pub const NODES: [NodeId; 3] = [1, 2, 3];
/// How long one attempt of a client call waits.
const ATTEMPT: Duration = Duration::from_millis(1_000);

struct Slot {
    disk: Disk,
    life: u32,
    up: Option<(SimRaft, SimStateMachine)>,
}

struct Inner {
    slots: BTreeMap<NodeId, Slot>,
    next_key: u64,
    leader_hint: NodeId,
}

/// The coordinator cluster of one run.
#[derive(Clone)]
pub struct Coordinators {
    inner: Arc<Mutex<Inner>>,
    net: Net,
    history: History,
    config: Arc<Config>,
    started: tokio::time::Instant,
}

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "simulated".into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        // Snapshots often, and few logs kept behind them: restarts start from snapshots, lagging nodes get theirs
        // installed (raft-store's snapshot codec both ways), and the log is purged.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 10,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().expect("a valid simulated config"))
}

impl Coordinators {
    /// Starts the three nodes and initializes the cluster.
    pub async fn start(net: Net, history: History, ack_before_flush: bool) -> Self {
        let slots =
            NODES.iter().map(|id| (*id, Slot { disk: Disk::new(ack_before_flush), life: 0, up: None })).collect();
        let coordinators = Coordinators {
            inner: Arc::new(Mutex::new(Inner { slots, next_key: 0, leader_hint: 1 })),
            net,
            history,
            config: config(),
            started: tokio::time::Instant::now(),
        };
        for id in NODES {
            coordinators.boot(id).await;
        }
        let first = coordinators.raft(1).expect("node 1 is up");
        let members: BTreeMap<NodeId, BasicNode> =
            NODES.iter().map(|id| (*id, BasicNode { addr: format!("node-{id}") })).collect();
        first.initialize(members).await.expect("initialize the cluster");
        coordinators
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raft(&self, id: NodeId) -> Option<SimRaft> {
        self.lock().slots[&id].up.as_ref().map(|(r, _)| r.clone())
    }

    /// Which nodes are up.
    pub fn up(&self) -> BTreeSet<NodeId> {
        self.lock().slots.iter().filter(|(_, s)| s.up.is_some()).map(|(id, _)| *id).collect()
    }

    /// The disk of a node (for slow-disk faults).
    pub fn disk(&self, id: NodeId) -> Disk {
        self.lock().slots[&id].disk.clone()
    }

    async fn boot(&self, id: NodeId) {
        let (disk, life) = {
            let mut inner = self.lock();
            let slot = inner.slots.get_mut(&id).expect("a known node");
            slot.life += 1;
            (slot.disk.clone(), slot.life)
        };
        let sm = SimStateMachine::new(id, life, self.history.clone(), disk.clone());
        if let Some(from) = sm.restored_from() {
            self.history.note(format!("node {id} starts from its snapshot up to index {from}"));
        }
        let raft =
            SimRaft::new(id, self.config.clone(), self.net.factory(id, life), SimLogStore::new(disk), sm.clone())
                .await
                .expect("a node starts from its disk");
        self.net.attach(id, life, raft.clone());
        self.lock().slots.get_mut(&id).expect("a known node").up = Some((raft, sm));
    }

    /// Kills a node: it stops at once and loses every write its disk had not flushed.
    pub fn crash(&self, id: NodeId) -> Option<String> {
        let (raft, disk) = {
            let mut inner = self.lock();
            let slot = inner.slots.get_mut(&id).expect("a known node");
            let (raft, _) = slot.up.take()?;
            (raft, slot.disk.clone())
        };
        self.net.detach(id);
        let lost = disk.crash();
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
        Some(lost)
    }

    /// Starts a crashed node again from what its disk kept.
    pub async fn restart(&self, id: NodeId) {
        if self.lock().slots[&id].up.is_none() {
            self.boot(id).await;
        }
    }

    /// The node states of the nodes that are up (for checks: anything a node applied was committed).
    pub fn states<T>(&self, f: impl Fn(&State) -> T) -> Vec<T> {
        let machines: Vec<SimStateMachine> =
            self.lock().slots.values().filter_map(|s| s.up.as_ref().map(|(_, sm)| sm.clone())).collect();
        machines.iter().map(|sm| sm.read(&f)).collect()
    }

    /// The order in which a client tries the nodes: the last leader it heard of first.
    fn order(&self) -> Vec<NodeId> {
        let hint = self.lock().leader_hint;
        let mut order = vec![hint];
        order.extend(NODES.iter().filter(|id| **id != hint));
        order
    }

    fn heard_of_leader(&self, leader: Option<NodeId>) {
        if let Some(leader) = leader {
            self.lock().leader_hint = leader;
        }
    }

    /// Executes a command (retried on other nodes with the same idempotency key); `Err` when no node answered.
    pub async fn write(&self, client: &str, command: Command) -> Result<Executed, String> {
        let frontier_op = match &command {
            Command::AdvanceFrontier { advances, .. } if !advances.is_empty() => Some((
                advances[0].stream.clone(),
                Call::Advance(advances.iter().map(|a| (a.seq, a.position.offset, a.kind)).collect()),
            )),
            _ => None,
        };
        let handle = frontier_op.as_ref().map(|(stream, call)| self.history.call(stream, call.clone()));
        let key = {
            let mut inner = self.lock();
            inner.next_key += 1;
            IdempotencyKey::new(client, &inner.next_key.to_string()).expect("a valid key")
        };
        let now_ms = self.started.elapsed().as_millis() as u64;
        let request = Request { key, command, proposed_at_unix_ms: now_ms };
        let mut last_error = "no coordinator is up".to_string();
        for _attempt in 0..2 {
            for id in self.order() {
                let Some(raft) = self.raft(id) else { continue };
                let batch = Batch { requests: vec![request.clone()] };
                match tokio::time::timeout(ATTEMPT, raft.client_write(batch)).await {
                    Ok(Ok(mut response)) => {
                        self.heard_of_leader(Some(id));
                        let executed = response.data.pop().expect("one record per request");
                        if let Some(handle) = handle {
                            let by = format!("node {id}, log index {}", executed.index);
                            let fenced = matches!(
                                &executed.result,
                                Err(CommandError::StaleProducerEpoch { .. } | CommandError::ClusterNameTaken { .. })
                            );
                            let returned =
                                if fenced { Return::Fenced } else { Return::Advanced(executed.result.is_ok()) };
                            self.history.ret(handle, returned, by);
                        }
                        return Ok(executed);
                    }
                    Ok(Err(error)) => {
                        self.heard_of_leader(error.forward_to_leader().and_then(|f| f.leader_id));
                        last_error = format!("node {id}: {error}");
                    }
                    Err(_) => last_error = format!("node {id}: no answer within {ATTEMPT:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error)
    }

    /// A linearizable read on the leader.
    pub async fn read<T>(&self, f: impl Fn(&State) -> T) -> Result<T, String> {
        self.read_from(f).await.map(|(value, _)| value)
    }

    /// A linearizable read on the leader, with who answered and from which state.
    async fn read_from<T>(&self, f: impl Fn(&State) -> T) -> Result<(T, String), String> {
        let mut last_error = "no coordinator is up".to_string();
        for id in self.order() {
            let Some((raft, sm)) = self.lock().slots[&id].up.clone() else { continue };
            match tokio::time::timeout(ATTEMPT, raft.ensure_linearizable()).await {
                Ok(Ok(read_log_id)) => {
                    self.heard_of_leader(Some(id));
                    let (value, applied) = sm.read(|state| (f(state), state.last_applied()));
                    let (term, last_log) = {
                        let m = raft.metrics().borrow().clone();
                        (m.current_term, m.last_log_index)
                    };
                    let by = format!(
                        "node {id} at {} ms, term {term}, last log {last_log:?}, read index {:?}, applied {applied}",
                        self.started.elapsed().as_millis(),
                        read_log_id.map(|l| l.index)
                    );
                    return Ok((value, by));
                }
                Ok(Err(error)) => {
                    self.heard_of_leader(error.forward_to_leader().and_then(|f| f.leader_id));
                    last_error = format!("node {id}: {error}");
                }
                Err(_) => last_error = format!("node {id}: no answer within {ATTEMPT:?}"),
            }
        }
        Err(last_error)
    }

    /// A linearizable read of one stream's frontier seq, recorded for the checker.
    pub async fn read_frontier<T>(&self, stream: &StreamId, f: impl Fn(&State) -> T) -> Result<T, String> {
        let handle = self.history.call(stream, Call::Read);
        let stream_owned = stream.clone();
        let result = self.read_from(|state| (state.frontier(&stream_owned).map_or(0, |fr| fr.seq()), f(state))).await;
        match result {
            Ok(((seq, value), by)) => {
                self.history.ret(handle, Return::Read(seq), by);
                Ok(value)
            }
            Err(error) => Err(error),
        }
    }
}
