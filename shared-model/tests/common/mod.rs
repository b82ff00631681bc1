//! Helpers shared by the shared-model integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;

use shared_model::*;

pub struct Harness {
    pub state: State,
    pub index: LogIndex,
    pub next_request: u64,
}

impl Harness {
    pub fn new() -> Self {
        Harness { state: State::default(), index: 0, next_request: 0 }
    }

    /// Executes a command under a fresh key.
    pub fn run(&mut self, command: Command) -> Result<Applied, CommandError> {
        self.next_request += 1;
        let key = IdempotencyKey::new("test", &self.next_request.to_string()).unwrap();
        self.run_keyed(key, command)
    }

    pub fn run_keyed(&mut self, key: IdempotencyKey, command: Command) -> Result<Applied, CommandError> {
        self.index += 1;
        let request = Request { key, command, proposed_at_unix_ms: 1_000 * self.index };
        self.state.execute(self.index, &request).result
    }

    /// The fence of `cluster`'s current server and epoch, as its publisher would present it.
    pub fn fence(&self, cluster_name: &str) -> ProducerFence {
        let name = cluster(cluster_name);
        let info = self.state.clusters().get(&name);
        ProducerFence {
            cluster: name,
            system_identifier: info.map_or(system_identifier(cluster_name), |c| c.system_identifier),
            producer_epoch: info.map_or(0, |c| c.producer_epoch),
        }
    }

    /// Advances of one cluster's streams under its current fence.
    pub fn advances(&self, list: &[(&str, u64)]) -> Command {
        let cluster = stream(list.first().map_or("cluster_a/x", |(s, _)| s)).cluster().to_string();
        self.advances_as(self.fence(&cluster), list)
    }

    /// Advances under a given fence.
    pub fn advances_as(&self, producer: ProducerFence, list: &[(&str, u64)]) -> Command {
        Command::AdvanceFrontier { producer, advances: list.iter().map(|(s, q)| advance(s, *q)).collect() }
    }

    /// Executes and asserts that the data (not the idempotency cache) did not change and the error is returned.
    pub fn rejected(&mut self, command: Command) -> CommandError {
        let before = snapshot_without_cache(&self.state);
        let err = self.run(command).expect_err("command should be rejected");
        assert_eq!(snapshot_without_cache(&self.state), before, "a rejected command changed the state");
        err
    }
}

/// The state's serialized data with the idempotency cache and last index stripped, for "unchanged" checks.
pub fn snapshot_without_cache(state: &State) -> String {
    format!("{:?}|{:?}|{:?}|{:?}", state.federation(), state.clusters(), state.streams(), state.federated_tables())
}

pub fn cluster(name: &str) -> ClusterName {
    ClusterName::parse(name).unwrap()
}
pub fn stream(id: &str) -> StreamId {
    StreamId::parse(id).unwrap()
}
pub fn table(id: &str) -> FederatedTableId {
    FederatedTableId::parse(id).unwrap()
}
pub fn url(stream_id: &str) -> SourceUrl {
    let s = stream(stream_id);
    SourceUrl::parse(&format!("kafka://coordinator/{}/{}", s.cluster(), s.0.qualified_name())).unwrap()
}

/// A stable made-up system identifier per cluster name (each test cluster is its own server).
pub fn system_identifier(name: &str) -> SystemIdentifier {
    SystemIdentifier(name.bytes().fold(7_000_000_000_000_000_000u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)))
}

pub fn register(name: &str) -> Command {
    Command::RegisterCluster {
        name: cluster(name),
        endpoint: format!("postgres://{name}:5432"),
        capabilities: BTreeSet::new(),
        system_identifier: system_identifier(name),
        known_epoch: None,
        takeover: false,
    }
}

pub fn publish(id: &str, upstream: &[NodeKey]) -> Command {
    Command::PublishStream {
        stream: stream(id),
        columns: vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "numeric")],
        upstream: upstream.iter().cloned().collect(),
        base_seq: 0,
    }
}

pub fn federate(id: &str, sources: &[&str]) -> Command {
    Command::CreateFederatedTable {
        table: table(id),
        sources: sources.iter().map(|s| url(s)).collect(),
        consistency: Consistency::Eventual,
    }
}

pub fn advance(id: &str, seq: u64) -> FrontierAdvance {
    FrontierAdvance {
        stream: stream(id),
        seq,
        kind: BatchKind::Delta,
        position: BrokerPosition { partition: 0, offset: seq as i64 * 10 },
    }
}

/// The seed scenario: A publishes order_agg, B publishes user_stats, C federates both into dashboard.
pub fn seed() -> Harness {
    let mut h = Harness::new();
    for c in ["cluster_a", "cluster_b", "cluster_c"] {
        h.run(register(c)).unwrap();
    }
    h.run(publish("cluster_a/order_agg", &[])).unwrap();
    h.run(publish("cluster_b/user_stats", &[])).unwrap();
    h.run(federate("cluster_c/dashboard", &["cluster_a/order_agg", "cluster_b/user_stats"])).unwrap();
    h
}

/// A fault tape for simulations driven by proptest: one byte per decision, a fault when the byte is a non-zero
/// multiple of the decision's divisor; no faults once the tape is used up or switched off (so that shrinking
/// towards zeros and short tapes means fewer faults).
pub struct FaultTape {
    bytes: Vec<u8>,
    at: usize,
    pub on: bool,
}

impl FaultTape {
    pub fn new(bytes: Vec<u8>) -> Self {
        FaultTape { bytes, at: 0, on: true }
    }

    /// Whether this decision fails (about one time in `one_in`).
    pub fn fails(&mut self, one_in: u8) -> bool {
        if !self.on {
            return false;
        }
        let byte = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte != 0 && byte.is_multiple_of(one_in)
    }
}
