//! Prometheus metrics (`GET /metrics`): Raft term, leader, log/apply/snapshot indexes (kept current by a task
//! that watches openraft's metrics), write latency histograms per command kind, write outcomes, HTTP requests and
//! open watchers; on the leader, replication lag and RPC errors per follower.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Coordinator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub command: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// All metrics of one node.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub term: Gauge,
    pub leader: Gauge,
    pub is_leader: Gauge,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub write_seconds: Family<CommandLabel, Histogram>,
    pub writes: Family<OutcomeLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub watchers: Gauge,
    pub watch_wakeups: Counter,
    pub replication_lag: Family<PeerLabel, Gauge>,
    pub replication_errors: Family<PeerLabel, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgtrickle");
        let term = Gauge::default();
        let leader = Gauge::default();
        let is_leader = Gauge::default();
        let last_log_index = Gauge::default();
        let applied_index = Gauge::default();
        let snapshot_index = Gauge::default();
        let write_seconds = Family::<CommandLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        let writes = Family::<OutcomeLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let watchers = Gauge::default();
        let watch_wakeups = Counter::default();
        let replication_lag = Family::<PeerLabel, Gauge>::default();
        let replication_errors = Family::<PeerLabel, Counter>::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register("raft_leader_id", "Id of the known leader (0: none)", leader.clone());
        registry.register("raft_is_leader", "1 when this node leads", is_leader.clone());
        registry.register("raft_last_log_index", "Index of the last log entry", last_log_index.clone());
        registry.register("raft_applied_index", "Index of the last applied entry", applied_index.clone());
        registry.register("raft_snapshot_index", "Index covered by the newest snapshot", snapshot_index.clone());
        registry.register("write_duration_seconds", "Latency of committed writes, by command", write_seconds.clone());
        registry.register("writes", "Writes by command and outcome", writes.clone());
        registry.register("http_requests", "HTTP requests by method and status", http_requests.clone());
        registry.register("watchers", "Open long-poll watchers", watchers.clone());
        registry.register(
            "watch_wakeups",
            "Times a long-poll woke up to look at the state again before answering",
            watch_wakeups.clone(),
        );
        registry.register(
            "raft_replication_lag_entries",
            "On the leader: entries each member trails the leader's log by (-1: nothing matched yet)",
            replication_lag.clone(),
        );
        registry.register(
            "raft_replication_errors",
            "Raft RPCs to each peer that failed or got no answer within their deadline",
            replication_errors.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            term,
            leader,
            is_leader,
            last_log_index,
            applied_index,
            snapshot_index,
            write_seconds,
            writes,
            http_requests,
            watchers,
            watch_wakeups,
            replication_lag,
            replication_errors,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps the Raft gauges current.
pub fn spawn_raft_watcher(coordinator: Arc<Coordinator>) {
    let mut rx = coordinator.raft.metrics();
    let weak = Arc::downgrade(&coordinator);
    drop(coordinator);
    tokio::spawn(async move {
        loop {
            {
                let Some(c) = weak.upgrade() else { return };
                let m = rx.borrow_and_update().clone();
                c.metrics.term.set(m.current_term as i64);
                c.metrics.leader.set(m.current_leader.unwrap_or(0) as i64);
                c.metrics.is_leader.set(i64::from(m.current_leader == Some(m.id)));
                c.metrics.last_log_index.set(m.last_log_index.map_or(-1, |i| i as i64));
                c.metrics.applied_index.set(m.last_applied.map_or(-1, |l| l.index as i64));
                c.metrics.snapshot_index.set(m.snapshot.map_or(-1, |l| l.index as i64));
                c.metrics.replication_lag.clear();
                let last = m.last_log_index.unwrap_or(0);
                for (peer, matched) in m.replication.iter().flatten() {
                    let lag = matched.map_or(-1, |l| last.saturating_sub(l.index) as i64);
                    c.metrics.replication_lag.get_or_create(&PeerLabel { peer: peer.to_string() }).set(lag);
                }
                for (peer, health) in c.peers_health.snapshot() {
                    let counter = c.metrics.replication_errors.get_or_create(&PeerLabel { peer: peer.to_string() });
                    counter.inc_by(health.errors_total.saturating_sub(counter.get()));
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Warns when a member starts failing or falls behind, and says when it is back, so that a cluster running on a
/// bare quorum does not go unnoticed in the log.
pub fn spawn_replication_monitor(coordinator: Arc<Coordinator>) {
    let weak = Arc::downgrade(&coordinator);
    drop(coordinator);
    tokio::spawn(async move {
        let mut reported = std::collections::BTreeMap::<u64, crate::api::ReplicationState>::new();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Some(c) = weak.upgrade() else { return };
            let m = c.raft.metrics().borrow().clone();
            let Some(progress) = m.replication.as_ref() else {
                reported.clear();
                continue;
            };
            let health = c.peers_health.snapshot();
            let last = m.last_log_index.unwrap_or(0);
            for (peer, matched) in progress {
                let view = super::http::admin::replication_view(
                    matched.map(|l| l.index),
                    last,
                    health.get(peer),
                    c.lag_threshold,
                );
                let before = reported.insert(*peer, view.state);
                if before == Some(view.state) || (before.is_none() && view.state == crate::api::ReplicationState::Ok) {
                    continue;
                }
                match view.state {
                    crate::api::ReplicationState::Ok => {
                        tracing::info!(peer, matched = ?view.matched_index, "member caught up")
                    }
                    state => tracing::warn!(
                        peer,
                        %state,
                        lag_entries = view.lag_entries,
                        last_error = view.last_error.as_deref().unwrap_or("none"),
                        "member is not keeping up with the leader"
                    ),
                }
            }
        }
    });
}

/// Snapshots by size and age, beside openraft's policy by entry count: a few large entries fill a disk (and make a
/// restarted member replay for long) as surely as many small ones, and a cluster that writes rarely should still
/// not keep a week of log. Builds a snapshot when the log appended since the last one this process saw is at
/// least `bytes_since_last` bytes and at least the size of that snapshot, or when it is `max_age` old and entries
/// were applied since. The second floor keeps compaction's cost proportional to the writes (as Redis rewrites
/// its AOF when it doubled): a 100 MB state rebuilt every 64 MB of log spent more CPU on snapshots than on writes.
pub fn spawn_snapshot_trigger(coordinator: Arc<Coordinator>, bytes_since_last: u64, max_age: Option<Duration>) {
    let weak = Arc::downgrade(&coordinator);
    drop(coordinator);
    tokio::spawn(async move {
        let mut seen_snapshot = None;
        let mut bytes_at_snapshot = 0u64;
        let mut snapshot_at = tokio::time::Instant::now();
        let mut triggered_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(c) = weak.upgrade() else { return };
            let m = c.raft.metrics().borrow().clone();
            let bytes = c.log.appended_bytes();
            if m.snapshot != seen_snapshot {
                seen_snapshot = m.snapshot;
                bytes_at_snapshot = bytes;
                snapshot_at = tokio::time::Instant::now();
                triggered_at = None;
            }
            // One request at a time: a snapshot of a large state takes a while to build.
            if triggered_at.is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
                continue;
            }
            let applied_since = m.last_applied.map(|l| l.index) > m.snapshot.map(|l| l.index);
            let snapshot_bytes = c.sm.snapshot_bytes();
            let by_size = bytes.saturating_sub(bytes_at_snapshot) >= bytes_since_last.max(snapshot_bytes);
            let by_age = max_age.is_some_and(|age| snapshot_at.elapsed() >= age);
            if applied_since && (by_size || by_age) {
                tracing::info!(by_size, by_age, "building a snapshot");
                if let Err(e) = c.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "could not start a snapshot");
                }
                triggered_at = Some(tokio::time::Instant::now());
            }
        }
    });
}
