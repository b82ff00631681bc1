//! Which due refresh runs next: a pure ordering, so that a server-wide governor can later take the
//! same candidates from every database and decide across them. Within one database, a stream table
//! never runs before a due stream table it reads (topological order); among the ready ones, the most
//! overdue goes first, then the one that has failed least, then the oldest.

use std::collections::{BTreeSet, HashMap};

/// A stream table that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pgt_id: i64,
    /// How long past its due time, in milliseconds.
    pub overdue_ms: i64,
    pub consecutive_failures: i32,
    /// Stream tables this one reads (only those also due matter for ordering).
    pub upstream: Vec<i64>,
}

/// Decides whether a refresh may start now. The local scheduler admits everything; a governor
/// shares a worker budget across databases behind the same interface.
pub trait Admission {
    fn admit(&mut self, candidate: &Candidate) -> bool;
}

/// Admits every refresh.
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&mut self, _candidate: &Candidate) -> bool {
        true
    }
}

/// Orders the candidates for execution (Kahn's algorithm with a priority among ready nodes).
/// A cycle among candidates (the catalog forbids one) cannot stall the queue: its members run last,
/// by priority.
pub fn order(candidates: &[Candidate]) -> Vec<i64> {
    let by_id: HashMap<i64, &Candidate> = candidates.iter().map(|c| (c.pgt_id, c)).collect();
    let mut waiting_on: HashMap<i64, usize> = HashMap::new();
    let mut downstream: HashMap<i64, Vec<i64>> = HashMap::new();
    for candidate in candidates {
        let due_upstream: Vec<i64> =
            candidate.upstream.iter().copied().filter(|u| by_id.contains_key(u) && *u != candidate.pgt_id).collect();
        waiting_on.insert(candidate.pgt_id, due_upstream.len());
        for upstream in due_upstream {
            downstream.entry(upstream).or_default().push(candidate.pgt_id);
        }
    }
    let priority = |id: i64| {
        let c = by_id[&id];
        (-c.overdue_ms, c.consecutive_failures, c.pgt_id)
    };
    let mut ready: BTreeSet<(i64, i32, i64)> =
        waiting_on.iter().filter(|(_, n)| **n == 0).map(|(id, _)| priority(*id)).collect();
    let mut ordered = Vec::with_capacity(candidates.len());
    loop {
        let Some(next) = ready.pop_first() else {
            // Whatever is left waits on a cycle: release the highest-priority member.
            let Some(stuck) = waiting_on.iter().filter(|(_, n)| **n > 0).map(|(id, _)| priority(*id)).min() else {
                break;
            };
            waiting_on.insert(stuck.2, 0);
            ready.insert(stuck);
            continue;
        };
        let id = next.2;
        if waiting_on.remove(&id).is_none() {
            continue;
        }
        ordered.push(id);
        for child in downstream.get(&id).cloned().unwrap_or_default() {
            if let Some(count) = waiting_on.get_mut(&child) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    ready.insert(priority(child));
                }
            }
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: i64, overdue_ms: i64, upstream: &[i64]) -> Candidate {
        Candidate { pgt_id: id, overdue_ms, consecutive_failures: 0, upstream: upstream.to_vec() }
    }

    #[test]
    fn upstream_runs_first_even_when_less_overdue() {
        let order = order(&[candidate(2, 9_000, &[1]), candidate(1, 10, &[]), candidate(3, 50, &[])]);
        assert_eq!(order, vec![3, 1, 2]);
    }

    #[test]
    fn diamonds_run_each_node_once_after_all_its_inputs() {
        let order =
            order(&[candidate(4, 0, &[2, 3]), candidate(3, 5, &[1]), candidate(2, 1, &[1]), candidate(1, 0, &[])]);
        assert_eq!(order, vec![1, 3, 2, 4]);
    }

    #[test]
    fn upstream_that_is_not_due_does_not_block() {
        assert_eq!(order(&[candidate(2, 0, &[1])]), vec![2]);
    }

    #[test]
    fn a_cycle_still_drains() {
        let mut order = order(&[candidate(1, 0, &[2]), candidate(2, 0, &[1])]);
        order.sort();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn failing_tables_yield_to_healthy_ones_of_equal_lateness() {
        let mut failing = candidate(1, 100, &[]);
        failing.consecutive_failures = 3;
        assert_eq!(order(&[failing, candidate(2, 100, &[])]), vec![2, 1]);
    }
}
