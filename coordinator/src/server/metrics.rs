//! Prometheus metrics (`GET /metrics`): Raft term, leader, log/apply/snapshot indexes (kept current by a task
//! that watches openraft's metrics), write latency histograms per command kind, write outcomes, HTTP requests and
//! open watchers.

use std::sync::{Arc, Mutex};

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
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}
