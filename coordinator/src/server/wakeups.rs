//! Wake-ups per cluster for the long-polls that wait on one stream (`/v1/frontiers/{stream}/history`): a consumer
//! waiting on a stream of cluster A sleeps through the advances of every other cluster instead of waking, taking
//! the state's read lock and going back to sleep hundreds of times a second. A task follows the applied records
//! and bumps the channel of each cluster an event touches ([`shared_model::Event::touches`]); an event it cannot
//! place, or records it cannot read, wake everyone.
//!
//! A watcher subscribes before it looks at the state, so a change applied between its look and its wait still
//! wakes it: the bump comes after the apply, and the subscription is older than the bump.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use raft_store::StateMachineStore;
use shared_model::{ClusterName, Touches};
use tokio::sync::watch;

/// The per-cluster channels, and one that every watcher also listens to for federation-wide changes.
pub struct Wakeups {
    clusters: Mutex<HashMap<ClusterName, watch::Sender<u64>>>,
    everyone: watch::Sender<u64>,
}

/// What a watcher waits on.
pub struct Subscription {
    cluster: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
}

impl Subscription {
    /// Returns when the cluster's state or the federation's changed since the subscription (or the last wake-up).
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.cluster.changed() => {}
            _ = self.everyone.changed() => {}
        }
    }
}

impl Wakeups {
    /// Starts following `sm`'s applied records.
    pub fn spawn(sm: StateMachineStore) -> Arc<Self> {
        let wakeups = Arc::new(Wakeups { clusters: Mutex::new(HashMap::new()), everyone: watch::channel(0).0 });
        let weak = Arc::downgrade(&wakeups);
        tokio::spawn(async move {
            let mut applied = sm.subscribe_applied();
            let mut seen = *applied.borrow_and_update();
            loop {
                if applied.changed().await.is_err() {
                    return;
                }
                let Some(w) = weak.upgrade() else { return };
                let now = *applied.borrow_and_update();
                seen = w.follow(&sm, seen, now);
            }
        });
        wakeups
    }

    /// Wakes the watchers of what entries `seen+1 ..= now` touched; returns the new `seen`.
    fn follow(&self, sm: &StateMachineStore, seen: u64, now: u64) -> u64 {
        // Nobody waits: nothing to read (a watcher that subscribes later looks at the state after subscribing).
        if self.everyone.receiver_count() == 0 {
            return now;
        }
        if now <= seen {
            // A snapshot installed underneath (or nothing new): anything may have changed.
            self.everyone.send_modify(|v| *v = now);
            return now;
        }
        let mut touched: Vec<ClusterName> = Vec::new();
        let mut everything = false;
        let mut next = seen;
        while next < now && !everything {
            match sm.records_after(next, 1024) {
                Ok(records) if records.first().is_some_and(|r| r.index == next + 1) => {
                    for record in &records {
                        next = record.index;
                        for event in record.result.iter().flat_map(|a| a.events.iter()) {
                            match event.touches() {
                                Touches::Cluster(c) => touched.push(c),
                                Touches::Everything => everything = true,
                            }
                        }
                    }
                }
                // Compacted, missing or unreadable: wake everyone rather than guess.
                _ => everything = true,
            }
        }
        if everything {
            self.everyone.send_modify(|v| *v = now);
            return now;
        }
        touched.sort();
        touched.dedup();
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        for c in touched {
            if let Some(tx) = clusters.get(&c) {
                tx.send_modify(|v| *v = now);
            }
        }
        now
    }

    /// A subscription to `cluster`'s changes (and the federation's).
    pub fn subscribe(&self, cluster: &ClusterName) -> Subscription {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        // Channels nobody listens to any more are dropped on the way, so the map stays as large as what is watched.
        if clusters.len() > 64 {
            clusters.retain(|_, tx| tx.receiver_count() > 0);
        }
        let cluster = clusters.entry(cluster.clone()).or_insert_with(|| watch::channel(0).0).subscribe();
        Subscription { cluster, everyone: self.everyone.subscribe() }
    }
}
