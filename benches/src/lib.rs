//! Shared fixtures of the benchmarks: synthetic federations of a given size, built through real commands, and
//! the process helpers of the scale benchmarks ([`procs`]).

pub mod procs;

use std::collections::BTreeSet;

use shared_model::{
    ClusterName, ColumnDef, Command, Consistency, FederatedTableId, IdempotencyKey, LogIndex, NodeKey, ProducerFence,
    Request, SourceUrl, State, StreamId, SystemIdentifier,
};

/// A state built by executing commands, with the next free log index.
pub struct Federation {
    /// The state.
    pub state: State,
    /// Next log index to use.
    pub next_index: LogIndex,
    /// Every published stream.
    pub streams: Vec<StreamId>,
    /// Every federated table.
    pub tables: Vec<FederatedTableId>,
    requests: u64,
}

impl Federation {
    /// The fence `cluster`'s publisher presents with its advances.
    pub fn fence(&self, cluster: &ClusterName) -> ProducerFence {
        let info = &self.state.clusters()[cluster];
        ProducerFence {
            cluster: cluster.clone(),
            system_identifier: info.system_identifier,
            producer_epoch: info.producer_epoch,
        }
    }

    /// Executes a command that must succeed.
    pub fn must(&mut self, command: Command) {
        let request = self.request(command);
        let index = self.next_index;
        self.next_index += 1;
        if let Err(e) = self.state.execute(index, &request).result {
            panic!("fixture command failed: {e}");
        }
    }

    /// A request with a fresh key.
    pub fn request(&mut self, command: Command) -> Request {
        self.requests += 1;
        Request {
            key: IdempotencyKey::new("bench", &self.requests.to_string()).expect("valid"),
            command,
            proposed_at_unix_ms: 1_700_000_000_000 + self.requests,
        }
    }
}

/// `clusters` clusters with `streams_per_cluster` published streams each, and one federated table per cluster
/// over `sources` streams of other clusters. Every other stream of a cluster reads its cluster's federated table,
/// so the DAG has depth and cross-cluster paths (deterministic layout).
pub fn federation(clusters: usize, streams_per_cluster: usize, sources: usize) -> Federation {
    let mut f = Federation { state: State::default(), next_index: 1, streams: vec![], tables: vec![], requests: 0 };
    let name = |c: usize| ClusterName::parse(&format!("c{c}")).expect("valid");
    for c in 0..clusters {
        f.must(Command::RegisterCluster {
            name: name(c),
            endpoint: format!("pg-{c}:5432"),
            capabilities: BTreeSet::new(),
            system_identifier: SystemIdentifier(7_300_000_000_000_000_000 + c as u64),
            known_epoch: None,
            takeover: false,
        });
    }
    let columns = vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "numeric")];
    // Layer 1: the first half of each cluster's streams read nothing federated.
    let half = streams_per_cluster / 2;
    for c in 0..clusters {
        for s in 0..half {
            let stream = StreamId::parse(&format!("c{c}/s{s}")).expect("valid");
            f.must(Command::PublishStream {
                stream: stream.clone(),
                columns: columns.clone(),
                upstream: BTreeSet::new(),
                base_seq: 0,
            });
            f.streams.push(stream);
        }
    }
    // Federated tables over layer-1 streams of the next clusters.
    for c in 0..clusters {
        let table = FederatedTableId::parse(&format!("c{c}/fed")).expect("valid");
        let urls = (1..=sources)
            .map(|k| {
                let other = (c + k) % clusters;
                SourceUrl::parse(&format!("kafka://coordinator/c{other}/s{}", k % half.max(1))).expect("valid")
            })
            .collect();
        f.must(Command::CreateFederatedTable { table: table.clone(), sources: urls, consistency: Consistency::Causal });
        f.tables.push(table);
    }
    // Layer 2: the other half read their cluster's federated table.
    for c in 0..clusters {
        let fed = NodeKey::Federated(FederatedTableId::parse(&format!("c{c}/fed")).expect("valid"));
        for s in half..streams_per_cluster {
            let stream = StreamId::parse(&format!("c{c}/s{s}")).expect("valid");
            f.must(Command::PublishStream {
                stream: stream.clone(),
                columns: columns.clone(),
                upstream: BTreeSet::from([fed.clone()]),
                base_seq: 0,
            });
            f.streams.push(stream);
        }
    }
    f
}
