//! A linearizability checker in the style of Porcupine (Wing & Gong's search with Lowe's memoisation): the
//! history of coordinator operations is split per stream (linearizability is compositional), and for each stream
//! the checker searches for an order of the operations that respects real time (an operation that returned
//! before another was called comes first) and in which each result is what the sequential model gives. Calls
//! whose outcome is unknown (timeouts) may take effect at any point after their call, or never.
//!
//! The model is the frontier as the fold keeps it (which batch, at which broker offset, of which kind, per seq): an
//! advance records each seq that is the frontier + 1, accepts an identical repeat of a recorded seq as a no-op,
//! and is refused whole on a gap or a conflicting repeat; a read returns the frontier's seq. A read that never
//! returned says nothing and is left out; so is an advance refused for a stale producer epoch, which must have had
//! no effect (the fence itself is checked against the pure model by shared-model's property tests).

use std::collections::{BTreeMap, HashSet};

use shared_model::BatchKind;

use crate::history::{Call, Operation, Return};

/// One stream's operations found not linearizable, with a short account.
#[derive(Debug)]
pub struct NotLinearizable {
    pub stream: String,
    pub operations: usize,
    pub detail: String,
}

/// One stream's recorded batches: (offset, kind) of seq 1, 2, …
type Recorded = Vec<(i64, BatchKind)>;

/// The fold's rule for one stream: each advance must be the next seq, or repeat a recorded one identically (a
/// no-op); a gap or a conflicting repeat refuses the whole command.
fn step(state: &Recorded, call: &Call) -> (Recorded, Return) {
    match call {
        Call::Read => (state.clone(), Return::Read(state.len() as u64)),
        Call::Advance(advances) => {
            let mut next = state.clone();
            for (seq, offset, kind) in advances {
                let current = next.len() as u64;
                if *seq == current + 1 {
                    next.push((*offset, *kind));
                } else if *seq > current + 1 || *seq == 0 || next[*seq as usize - 1] != (*offset, *kind) {
                    return (state.clone(), Return::Advanced(false));
                }
            }
            (next, Return::Advanced(true))
        }
    }
}

/// Checks every stream's history; `initial` is each stream's frontier before the first operation.
pub fn check(operations: &[Operation]) -> Result<(), NotLinearizable> {
    let mut by_stream: BTreeMap<String, Vec<&Operation>> = BTreeMap::new();
    let fenced = |op: &&Operation| op.returned.as_ref().is_some_and(|r| r.1 == Return::Fenced);
    for op in operations.iter().filter(|op| op.returned.is_some() || op.call != Call::Read).filter(|op| !fenced(op)) {
        by_stream.entry(op.stream.to_string()).or_default().push(op);
    }
    for (stream, ops) in by_stream {
        if let Err(stuck) = linearizable(&ops) {
            // The operations around the one no order could place.
            let show = |op: &Operation| {
                let returned = op.returned.as_ref().map_or("never".to_string(), |r| r.0.to_string());
                format!(
                    "[{}..{returned}] {:?} -> {:?} ({})",
                    op.called,
                    op.call,
                    op.returned.as_ref().map(|r| &r.1),
                    op.answered_by
                )
            };
            let around: Vec<String> = ops
                .iter()
                .filter(|op| {
                    let end = op.returned.as_ref().map_or(u64::MAX, |r| r.0);
                    end.saturating_add(40) >= stuck.op.called
                        && op.called <= stuck.op.returned.as_ref().map_or(u64::MAX, |r| r.0)
                })
                .take(30)
                .map(|op| show(op))
                .collect();
            let detail = format!(
                "the furthest order placed {} operations (frontier {}) and then none explains {}; operations around it:\n    {}",
                stuck.placed,
                stuck.state,
                show(stuck.op),
                around.join("\n    ")
            );
            return Err(NotLinearizable { stream, operations: ops.len(), detail });
        }
    }
    Ok(())
}

/// Where the search got furthest.
struct Stuck<'a> {
    placed: usize,
    state: usize,
    op: &'a Operation,
}

/// Porcupine's search over one object's history.
fn linearizable<'a>(ops: &[&'a Operation]) -> Result<(), Stuck<'a>> {
    // Events in time order: (time, is_return, op). Unknown outcomes never return (they may linearize anywhere
    // after their call, or not at all: such an operation is optional).
    let n = ops.len();
    let returns: Vec<u64> = ops.iter().map(|o| o.returned.as_ref().map_or(u64::MAX, |r| r.0)).collect();
    let mut done = vec![false; n];
    let mut state: Recorded = Vec::new();
    let mut stack: Vec<(usize, Recorded)> = Vec::new(); // (op linearized, state before it)
    let mut seen: HashSet<(Vec<u64>, Recorded)> = HashSet::new();
    let words = n.div_ceil(64);
    let bits = |done: &[bool]| {
        let mut v = vec![0u64; words];
        for (i, d) in done.iter().enumerate() {
            if *d {
                v[i / 64] |= 1 << (i % 64);
            }
        }
        v
    };
    // The candidate ops at a point: not done, called before the earliest return among the not-done ops.
    let mut next_candidate = 0usize; // resumes the scan after a backtrack
    let mut furthest = (0usize, 0usize, 0usize);
    loop {
        let pending_known = (0..n).filter(|&i| !done[i] && returns[i] != u64::MAX).count();
        if pending_known == 0 {
            return Ok(()); // every completed op is placed; the unknown ones may simply not have happened
        }
        let horizon = (0..n).filter(|&i| !done[i]).map(|i| returns[i]).min().unwrap_or(u64::MAX);
        if stack.len() >= furthest.0 {
            let first = (0..n).filter(|&i| !done[i]).min_by_key(|&i| returns[i]).expect("one is pending");
            furthest = (stack.len(), state.len(), first);
        }
        let mut advanced = false;
        for i in next_candidate..n {
            if done[i] || ops[i].called > horizon {
                continue;
            }
            let (after, result) = step(&state, &ops[i].call);
            let matches = match &ops[i].returned {
                Some((_, r)) => *r == result,
                // An operation whose outcome is unknown matters only where it changes the state: placing it
                // where it does not would only multiply the orders searched.
                None => after != state,
            };
            if !matches {
                continue;
            }
            done[i] = true;
            let key = (bits(&done), after.clone());
            if seen.insert(key) {
                stack.push((i, std::mem::replace(&mut state, after)));
                advanced = true;
                next_candidate = 0;
                break;
            }
            done[i] = false;
        }
        if !advanced {
            // Backtrack.
            let Some((i, before)) = stack.pop() else {
                let (placed, state, op) = furthest;
                return Err(Stuck { placed, state, op: ops[op] });
            };
            done[i] = false;
            state = before;
            next_candidate = i + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_model::StreamId;

    fn op(call: Call, called: u64, returned: Option<(u64, Return)>) -> Operation {
        Operation { stream: StreamId::parse("a/public.s").unwrap(), call, called, returned, answered_by: String::new() }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta)]),
                1,
                Some((2, Return::Advanced(true))),
            ),
            op(Call::Read, 3, Some((4, Return::Read(2)))),
            op(Call::Advance(vec![(1, 15, BatchKind::Delta)]), 5, Some((6, Return::Advanced(false)))),
        ];
        assert!(check(&ops).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_advance_is_not() {
        let ops = vec![
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta)]),
                1,
                Some((2, Return::Advanced(true))),
            ),
            op(Call::Read, 3, Some((4, Return::Read(0)))),
        ];
        assert!(check(&ops).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let ops = vec![
            op(Call::Advance(vec![(1, 10, BatchKind::Delta)]), 1, Some((4, Return::Advanced(true)))),
            op(Call::Read, 2, Some((3, Return::Read(1)))),
            op(Call::Read, 5, Some((6, Return::Read(1)))),
        ];
        assert!(check(&ops).is_ok());
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let happened = vec![
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta), (3, 30, BatchKind::Delta)]),
                1,
                None,
            ),
            op(Call::Read, 5, Some((6, Return::Read(3)))),
        ];
        assert!(check(&happened).is_ok());
        let not = vec![
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta), (3, 30, BatchKind::Delta)]),
                1,
                None,
            ),
            op(Call::Read, 5, Some((6, Return::Read(0)))),
        ];
        assert!(check(&not).is_ok());
        // But it cannot take effect before it was called.
        let early = vec![
            op(Call::Read, 1, Some((2, Return::Read(3)))),
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta), (3, 30, BatchKind::Delta)]),
                5,
                None,
            ),
        ];
        assert!(check(&early).is_err());
    }

    #[test]
    fn an_identical_repeat_is_a_no_op_and_a_conflicting_one_is_refused() {
        let ops = vec![
            op(Call::Advance(vec![(1, 10, BatchKind::Delta)]), 1, Some((2, Return::Advanced(true)))),
            op(
                Call::Advance(vec![(1, 10, BatchKind::Delta), (2, 20, BatchKind::Delta)]),
                3,
                Some((4, Return::Advanced(true))),
            ),
            op(Call::Advance(vec![(2, 25, BatchKind::Delta)]), 5, Some((6, Return::Advanced(false)))),
            op(Call::Read, 7, Some((8, Return::Read(2)))),
        ];
        assert!(check(&ops).is_ok());
        let wrong = vec![
            op(Call::Advance(vec![(1, 10, BatchKind::Delta)]), 1, Some((2, Return::Advanced(true)))),
            op(
                Call::Advance(vec![(1, 11, BatchKind::Delta), (2, 20, BatchKind::Delta)]),
                3,
                Some((4, Return::Advanced(true))),
            ),
        ];
        assert!(check(&wrong).is_err());
    }

    #[test]
    fn an_advance_reported_rejected_that_took_effect_is_caught() {
        // The duplicate-apply shape: the client is told "rejected" yet the frontier moved.
        let ops = vec![
            op(Call::Advance(vec![(1, 10, BatchKind::Delta)]), 1, Some((2, Return::Advanced(false)))),
            op(Call::Read, 3, Some((4, Return::Read(1)))),
        ];
        assert!(check(&ops).is_err());
    }
}
