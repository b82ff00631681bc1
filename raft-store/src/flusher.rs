//! Group commit: appends put their entries into sled and queue a waiter here; one thread flushes sled for every
//! waiter queued so far and then completes them in order. openraft's core never blocks on an fsync (it hands us
//! a `LogFlushed` callback), concurrent writes share one fsync, and acknowledgements keep their order.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use openraft::storage::LogFlushed;

use crate::high_water::HighWater;
use crate::TypeConfig;

/// Who waits for a flush.
pub enum Waiter {
    /// openraft's callback.
    Raft(LogFlushed<TypeConfig>),
    /// A direct caller of `append_durably`.
    Local(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// One queued append: its waiter and the high-water mark it reaches once flushed.
pub struct Pending {
    pub waiter: Waiter,
    pub mark: u64,
}

/// Handle to the flusher thread; dropping it stops the thread after the queue drains.
pub struct Flusher {
    queue: Sender<Pending>,
}

impl Flusher {
    /// Starts the flusher thread for `db`.
    pub fn start(db: sled::Db, high_water: Arc<HighWater>) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel();
        std::thread::Builder::new().name("raft-log-flush".into()).spawn(move || run(db, high_water, rx))?;
        Ok(Flusher { queue })
    }

    /// Queues a waiter; it is completed after the next flush.
    pub fn enqueue(&self, pending: Pending) {
        if let Err(mpsc::SendError(p)) = self.queue.send(pending) {
            complete(p.waiter, Err("the log flusher stopped".into()));
        }
    }
}

fn complete(waiter: Waiter, result: Result<(), String>) {
    match waiter {
        Waiter::Raft(cb) => cb.log_io_completed(result.map_err(std::io::Error::other)),
        Waiter::Local(tx) => {
            let _ = tx.send(result);
        }
    }
}

fn run(db: sled::Db, high_water: Arc<HighWater>, rx: Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        if result.is_ok() {
            if let Some(mark) = batch.iter().map(|p| p.mark).max() {
                high_water.advance(mark);
            }
        }
        for p in batch {
            complete(p.waiter, result.clone());
        }
    }
}
