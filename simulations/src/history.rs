//! What a run records: a readable trace (one line per notable step, stamped with the simulated time), every
//! entry each node life applied, and every coordinator operation with its call and return on one logical clock
//! (for the linearizability checker). Shared by every part of a run; a run is one thread, so the lock is never
//! contended and the order of records is the run's order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shared_model::{BatchKind, Executed, Frontier, State, StreamId};

/// A coordinator operation on one stream's frontier, as the checker models it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Propose batches: (seq, broker offset, kind) each, in order.
    Advance(Vec<(u64, i64, BatchKind)>),
    /// A linearizable read of the frontier.
    Read,
}

/// What an operation returned; `None` while it has not (or never did: a timeout, an unreachable leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Return {
    /// An advance: recorded or rejected.
    Advanced(bool),
    /// A read: the frontier seq.
    Read(u64),
    /// An advance refused for its fence (a superseded producer epoch): it must have had no effect, so the
    /// checker leaves it out — a frontier it changed anyway is then explained by no operation.
    Fenced,
}

/// One operation on one stream's frontier.
#[derive(Debug, Clone)]
pub struct Operation {
    pub stream: StreamId,
    pub call: Call,
    pub called: u64,
    /// The logical time and result of the return; `None` for an operation whose outcome is unknown.
    pub returned: Option<(u64, Return)>,
    /// Who answered, and from which state (for the report).
    pub answered_by: String,
}

/// Each node life's applied entries: (node, life) → (index, records) in apply order.
pub type AppliedByNode = BTreeMap<(u64, u32), Vec<(u64, Vec<Executed>)>>;

#[derive(Default)]
struct Inner {
    trace: Vec<String>,
    started: Option<tokio::time::Instant>,
    clock: u64,
    applied: AppliedByNode,
    installs: Vec<(u64, u32, u64)>,
    operations: Vec<Operation>,
    violations: Vec<String>,
}

/// The shared record of one run.
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
    /// The most advanced state any node reached: a node applies only committed entries, so this is a prefix of
    /// the committed log (the agreement check holds every node to it).
    committed: Arc<Mutex<Option<State>>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the clock the trace lines are stamped with (the run's simulated time).
    pub fn start_clock(&self) {
        self.lock().started = Some(tokio::time::Instant::now());
    }

    /// Adds a line to the trace.
    pub fn note(&self, line: impl AsRef<str>) {
        let mut inner = self.lock();
        let now_ms = inner.started.map_or(0, |s| s.elapsed().as_millis());
        let line = format!("{now_ms:>7} ms  {}", line.as_ref());
        if std::env::var_os("SIMULATION_LIVE_TRACE").is_some() {
            eprintln!("{line}"); // for a run that never ends
        }
        inner.trace.push(line);
    }

    /// Records an invariant violation (also in the trace).
    pub fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        self.note(format!("VIOLATION {what}"));
        self.lock().violations.push(what);
    }

    pub(crate) fn applied(&self, node: u64, life: u32, index: u64, executed: &[Executed]) {
        self.lock().applied.entry((node, life)).or_default().push((index, executed.to_vec()));
    }

    /// Offers a node's state after an apply; kept when it is the furthest along.
    pub(crate) fn offer_state(&self, state: &State) {
        let mut best = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if best.as_ref().is_none_or(|b| b.last_applied() < state.last_applied()) {
            *best = Some(state.clone());
        }
    }

    /// The committed frontier of a stream (as far as any node applied).
    pub fn committed_frontier(&self, stream: &StreamId) -> Option<Frontier> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).as_ref()?.frontier(stream).cloned()
    }

    /// Reads the most advanced state.
    pub fn committed_state<T>(&self, f: impl FnOnce(Option<&State>) -> T) -> T {
        f(self.committed.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
    }

    pub(crate) fn installed(&self, node: u64, life: u32, upto: u64) {
        self.note(format!("node {node} installs the leader's snapshot up to index {upto}"));
        self.lock().installs.push((node, life, upto));
    }

    /// Starts an operation; returns its handle.
    pub fn call(&self, stream: &StreamId, call: Call) -> usize {
        let mut inner = self.lock();
        inner.clock += 1;
        let called = inner.clock;
        inner.operations.push(Operation {
            stream: stream.clone(),
            call,
            called,
            returned: None,
            answered_by: String::new(),
        });
        inner.operations.len() - 1
    }

    /// Ends an operation with a known result.
    pub fn ret(&self, handle: usize, result: Return, answered_by: String) {
        let mut inner = self.lock();
        inner.clock += 1;
        let at = inner.clock;
        inner.operations[handle].returned = Some((at, result));
        inner.operations[handle].answered_by = answered_by;
    }

    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.clone()
    }

    /// Every node life's applied entries, by (node, life).
    pub fn applied_by_node(&self) -> AppliedByNode {
        self.lock().applied.clone()
    }

    /// Snapshot installs: (node, life, last index included).
    pub fn installs(&self) -> Vec<(u64, u32, u64)> {
        self.lock().installs.clone()
    }
}
