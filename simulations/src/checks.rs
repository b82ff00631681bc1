//! The invariants, checked over what the run did:
//! - every node applies the same records in the same order (any two node lives agree on every index both applied);
//! - every request takes effect once (an idempotency key is decided fresh at one log index at most);
//! - each consumer applies each committed batch exactly once and in order (or jumps to a committed snapshot), never
//!   past the committed frontier, and the copy it applies holds the content recorded at the log's position;
//! - in causal mode every applied state is one global cut;
//! - the coordinator's frontier operations are linearizable ([`crate::linearizability`]);
//! - once the faults stop, the consumer catches up and its mirrors equal the producers' tables.
//!
//! "Committed" is read from the most advanced node state of the run: a node applies only committed entries, so
//! any state a node reached is a prefix of the committed log (which the agreement check holds it to).

use std::collections::BTreeMap;

use shared_model::apply::is_consistent;
use shared_model::protocol::consumer::HeldBatch;
use shared_model::{BatchKind, Frontier, LogIndex, StreamId};

use crate::history::History;
use crate::world::{SentArchive, Table};

/// Checks applies as they happen.
#[derive(Clone)]
pub struct Checker {
    pub history: History,
    pub archive: SentArchive,
}

impl Checker {
    /// One batch about to be applied on top of `applied`.
    pub fn check_apply(&self, stream: &StreamId, applied: u64, held: &HeldBatch, first_of_path: bool) {
        let seq = held.batch.seq;
        let Some(frontier) = self.history.committed_frontier(stream) else {
            self.history.violation(format!("{stream}: applied {seq} of a stream the log does not know"));
            return;
        };
        if seq > frontier.seq() {
            self.history
                .violation(format!("{stream}: applied batch {seq} past the committed frontier {}", frontier.seq()));
            return;
        }
        let point = match frontier.point(seq) {
            Ok(Some(point)) => *point,
            _ => {
                self.history.violation(format!("{stream}: applied batch {seq}, which the log has no point for"));
                return;
            }
        };
        let jump = first_of_path && seq > applied && point.kind == BatchKind::Snapshot;
        if seq != applied + 1 && !jump {
            self.history.violation(format!("{stream}: applied batch {seq} after {applied} (twice, or out of order)"));
        }
        if held.batch.kind != point.kind {
            self.history.violation(format!(
                "{stream}: applied a {:?} copy of {seq}; the log recorded a {:?}",
                held.batch.kind, point.kind
            ));
        }
    }

    /// The mirror after applying up to `seq` must hold the content the log's recorded copy of `seq` carries.
    pub fn check_content(&self, stream: &StreamId, seq: u64, mirror: &Table) {
        let Some(point) = self.history.committed_frontier(stream).and_then(|f| f.point(seq).ok().flatten().copied())
        else {
            return; // reported by check_apply
        };
        let candidates = self.archive.tables(stream, seq, point.position.offset);
        if candidates.is_empty() {
            self.history.violation(format!(
                "{stream}: the log recorded batch {seq} at offset {}, where no copy of it was ever acknowledged",
                point.position.offset
            ));
        } else if !candidates.iter().any(|t| **t == *mirror) {
            self.history.violation(format!(
                "{stream}: after applying batch {seq} the mirror differs from the recorded copy's content \
                 (offset {}): {} rows, expected {}",
                point.position.offset,
                mirror.len(),
                candidates[0].len()
            ));
        }
    }

    /// A causal apply must leave a global cut.
    pub fn check_cut(&self, applied: &BTreeMap<StreamId, u64>, at: LogIndex) {
        let frontiers: BTreeMap<StreamId, Frontier> =
            applied.keys().filter_map(|s| self.history.committed_frontier(s).map(|f| (s.clone(), f))).collect();
        if !is_consistent(applied, &frontiers) {
            self.history.violation(format!("causal apply at {at} left {applied:?}, which is not a cut"));
        }
    }
}

/// Every two node lives agree on each index both applied.
pub fn check_agreement(history: &History) {
    let mut by_index: BTreeMap<u64, (String, Vec<shared_model::Executed>)> = BTreeMap::new();
    for ((node, life), entries) in history.applied_by_node() {
        let mut last = 0;
        for (index, executed) in entries {
            if index <= last && last != 0 {
                history.violation(format!("node {node} (life {life}) applied index {index} after {last}"));
            }
            last = index;
            match by_index.get(&index) {
                None => {
                    by_index.insert(index, (format!("node {node} (life {life})"), executed));
                }
                Some((who, first)) if *first != executed => {
                    history.violation(format!(
                        "node {node} (life {life}) applied at index {index} {:?}; {who} applied {:?}",
                        executed.iter().map(|e| e.key.as_ref().map(|k| k.to_string())).collect::<Vec<_>>(),
                        first.iter().map(|e| e.key.as_ref().map(|k| k.to_string())).collect::<Vec<_>>()
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

/// Every request takes effect once: no idempotency key is decided fresh at two log indexes (a retry that reached
/// the log twice must be answered from the cache the second time).
pub fn check_once(history: &History) {
    let mut fresh_at: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for entries in history.applied_by_node().values() {
        for (index, executed) in entries {
            for record in executed.iter().filter(|r| r.fresh) {
                if let Some(key) = &record.key {
                    fresh_at.entry(key.to_string()).or_default().insert(*index);
                }
            }
        }
    }
    for (key, indexes) in fresh_at {
        if indexes.len() > 1 {
            history.violation(format!("request {key} took effect at log indexes {indexes:?}"));
        }
    }
}
