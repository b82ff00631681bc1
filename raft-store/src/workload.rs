//! A deterministic workload: the request of log index `i` is a pure function of `i`, so a test that crashed the
//! writer anywhere can recompute exactly what the store must hold, and benchmarks append realistic entries.
//!
//! Index 1–5 set up two clusters, two published streams and one federated table; every later index advances one
//! of the two streams' frontiers by one batch (with every seventh entry a retry of its predecessor's key carrying
//! another command, which the state machine must reject).

use std::collections::BTreeSet;

use openraft::{CommittedLeaderId, EntryPayload, LogId};
use shared_model::{
    BatchKind, BrokerPosition, ClusterName, ColumnDef, Command, Consistency, FederatedTableId, FrontierAdvance,
    IdempotencyKey, ProducerFence, Request, SourceUrl, State, StreamId, SystemIdentifier,
};

use crate::LogEntry;

fn stream(n: u64) -> StreamId {
    StreamId::parse(&format!("c{n}/public.s")).expect("valid")
}

/// The request at log index `index` (>= 1).
pub fn request(index: u64) -> Request {
    let command = match index {
        1 | 2 => Command::RegisterCluster {
            name: ClusterName::parse(&format!("c{}", index - 1)).expect("valid"),
            endpoint: format!("postgres://127.0.0.1:{}", 5432 + index),
            capabilities: BTreeSet::new(),
            system_identifier: SystemIdentifier(7_000_000_000 + index),
            known_epoch: None,
            takeover: false,
        },
        3 | 4 => Command::PublishStream {
            stream: stream(index - 3),
            columns: vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "numeric")],
            upstream: BTreeSet::new(),
            base_seq: 0,
        },
        5 => Command::CreateFederatedTable {
            table: FederatedTableId::parse("c1/public.f").expect("valid"),
            sources: vec![SourceUrl::parse("kafka://coordinator/c0/s").expect("valid")],
            consistency: Consistency::Causal,
        },
        _ => {
            // Streams alternate; each advance is that stream's next seq.
            let k = index - 6;
            let which = k % 2;
            let seq = k / 2 + 1;
            // Cluster c{which} registered at index which + 1, which is its producer epoch.
            let producer = ProducerFence {
                cluster: ClusterName::parse(&format!("c{which}")).expect("valid"),
                system_identifier: SystemIdentifier(7_000_000_000 + which + 1),
                producer_epoch: which + 1,
            };
            Command::AdvanceFrontier {
                producer,
                advances: vec![FrontierAdvance {
                    stream: stream(which),
                    seq,
                    kind: BatchKind::Delta,
                    position: BrokerPosition { partition: which as i32, offset: seq as i64 * 3 },
                }],
            }
        }
    };
    let key_index = if index > 6 && index.is_multiple_of(7) { index - 1 } else { index };
    Request {
        key: IdempotencyKey::new("workload", &key_index.to_string()).expect("valid"),
        command,
        proposed_at_unix_ms: 1_700_000_000_000 + index,
    }
}

/// The log entry at `index`, written in term 1 by node 1.
pub fn entry(index: u64) -> LogEntry {
    LogEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(crate::Batch { requests: vec![request(index)] }),
    }
}

/// The state after applying entries `1..=last` to a fresh state.
pub fn expected_state(last: u64) -> State {
    let mut state = State::default();
    for i in 1..=last {
        state.execute(i, &request(i));
    }
    state
}
