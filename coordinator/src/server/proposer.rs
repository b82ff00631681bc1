//! Batches concurrent writes into one Raft entry.
//!
//! openraft 0.9 appends and fsyncs one entry at a time on the leader, so one request per entry caps throughput at
//! one write per fsync. The proposer collects the requests that arrive while earlier batches are in flight and
//! proposes them as one entry (like etcd batching proposals): the state machine executes them in order at the
//! entry's index and each caller gets its own record back. A lone writer is proposed at once, unbatched.
//!
//! An entry is also bounded by bytes (`max_entry_bytes`, the Raft payload budget): entries are the unit of
//! replication, and one that is larger than an AppendEntries may carry could never reach a lagging follower
//! within its deadline.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use raft_store::{Batch, TypeConfig};
use shared_model::{Executed, Request};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most requests in one entry.
pub const MAX_BATCH: usize = 1024;
/// Batches proposed but not yet answered.
pub const MAX_IN_FLIGHT: usize = 4;

/// Why a request was not proposed.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This node is not (or no longer) the leader.
    NotLeader(Option<u64>),
    /// Raft failed (shutdown, storage…).
    Raft(String),
}

struct Pending {
    request: Request,
    /// Encoded size of the request, as it will be stored in the entry.
    bytes: usize,
    reply: oneshot::Sender<Result<Executed, ProposeError>>,
}

/// Handle to the batching task.
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the batching task for `raft`; entries hold at most `max_entry_bytes` of requests (or one request).
    pub fn spawn(raft: Raft<TypeConfig>, max_entry_bytes: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, max_entry_bytes));
        Proposer { queue }
    }

    /// Proposes one request and waits for its record.
    pub async fn propose(&self, request: Request) -> Result<Executed, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let bytes = shared_model::codec::encode(&request).len();
        self.queue
            .send(Pending { request, bytes, reply })
            .map_err(|_| ProposeError::Raft("the proposer stopped".into()))?;
        answer.await.unwrap_or_else(|_| Err(ProposeError::Raft("the proposal was dropped".into())))
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Pending>, max_entry_bytes: usize) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A request that did not fit the previous entry opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) if bytes + p.bytes > max_entry_bytes => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<Request>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let n = requests.len();
            let result = raft.client_write(Batch { requests }).await;
            drop(slot);
            match result {
                Ok(resp) if resp.data.len() == n => {
                    for (reply, executed) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(executed));
                    }
                }
                Ok(resp) => {
                    let e = ProposeError::Raft(format!("{} answers for {n} requests", resp.data.len()));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    replies.into_iter().for_each(|r| drop(r.send(Err(ProposeError::NotLeader(f.leader_id)))));
                }
                Err(e) => {
                    let e = ProposeError::Raft(e.to_string());
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
            }
        });
    }
}
