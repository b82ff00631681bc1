//! Deterministic, seeded simulations of pg_trickle federation, with checkers over the recorded history.
//!
//! One run, from one seed: three coordinator nodes running openraft with the real state machine (the fold of
//! `shared-model`), over a simulated network and simulated disks ([`coordinators`], [`net`], [`store`]); a
//! simulated broker ([`broker`]); two producer clusters and one consumer cluster whose workers execute the real
//! protocol machines ([`world`]). A nemesis injects faults drawn from the seed — partitions (also one-way), node
//! crashes and restarts from what their disks kept, message loss, delay, reordering and duplication, slow disks,
//! lost broker acknowledgements, redelivery, broker data loss, producer and consumer crashes, a producer restored
//! from a backup (failover), clock skew — then heals everything and lets the system converge. The checkers
//! ([`checks`], [`linearizability`]) then judge the history.
//!
//! Everything runs on one thread under a paused tokio clock with seeded randomness ([`runtime`]), so a seed
//! replays the same run, trace line for trace line.

pub mod broker;
pub mod checks;
pub mod coordinators;
pub mod history;
pub mod linearizability;
pub mod nemesis;
pub mod net;
pub mod runtime;
pub mod store;
pub mod world;

use std::io::Cursor;

pub use nemesis::Bug;

openraft::declare_raft_types!(
    /// The simulated coordinator's Raft types: `raft-store`'s payload and records, the deterministic runtime.
    pub SimConfig:
        D = raft_store::Batch,
        R = Vec<shared_model::Executed>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<SimConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SimRuntime,
);

/// A node's id.
pub type NodeId = u64;
/// A node's address book entry.
pub type Node = openraft::BasicNode;
/// A simulated coordinator node.
pub type SimRaft = openraft::Raft<SimConfig>;

/// How one run goes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    /// Simulated time with faults.
    pub fault_ms: u64,
    /// Simulated time after the faults stop, for the system to converge.
    pub heal_ms: u64,
    /// A planted bug (the checkers must find it).
    pub bug: Option<Bug>,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Options { seed, fault_ms: 12_000, heal_ms: 25_000, bug: None }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// Counts for the summary: batches applied, coordinator operations checked, faults injected.
    pub applied_batches: u64,
    pub operations: usize,
    pub faults: usize,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations and the end of the trace, for a failing seed.
    pub fn report(&self, trace_lines: usize) -> String {
        let mut out = format!("seed {} failed:\n", self.seed);
        for v in &self.violations {
            out.push_str(&format!("  violation: {v}\n"));
        }
        let skip = self.trace.len().saturating_sub(trace_lines);
        out.push_str(&format!("last {} of {} trace lines:\n", self.trace.len() - skip, self.trace.len()));
        for line in &self.trace[skip..] {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!("replay: cargo run -p simulations --release --bin simulate -- --seed {}\n", self.seed));
        out
    }
}

/// Runs one seed to the end and checks it.
pub fn run(options: &Options) -> Outcome {
    let runtime = runtime::build(options.seed);
    runtime.block_on(nemesis::run(*options))
}
