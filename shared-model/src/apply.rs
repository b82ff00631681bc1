//! The consumer's side of the publish/apply protocol, as pure decisions: given what the replicated log has
//! committed for each source ([`Frontier`]), what the consumer has applied, and which batches it holds from the
//! broker, which batches may be applied now — or why not, or that a batch is lost and the source needs a
//! snapshot (REINITIALIZE).
//!
//! Rules (DESIGN.md "Time, frontiers and consistency"):
//! - only batches the log has committed are applied, in seq order, each once (seq ≤ applied is never applied
//!   again);
//! - a committed *snapshot* batch replaces everything before it, so the consumer may jump to it (bootstrap, or
//!   after a REINITIALIZE) instead of waiting for deltas it will never need;
//! - eventual mode: each source independently up to its own frontier;
//! - causal mode: all sources together up to the newest cut whose batches are all at hand;
//! - a batch is lost when the log records it at a broker position the broker no longer has (below the
//!   partition's low watermark) or that the consumer has already read past without receiving it; a caller that
//!   waited too long for a batch reports it [`Loss::Overdue`].

use std::collections::{BTreeMap, BTreeSet};

use crate::frontier::{consistent_window, Frontier};
use crate::{BatchKind, LogIndex, StreamId};

/// What the consumer knows about one source, besides the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceProgress {
    /// Highest seq applied (0: nothing yet).
    pub applied: u64,
    /// Complete batches held, not yet applied (seq → kind as received).
    pub received: BTreeMap<u64, BatchKind>,
    /// Offset of the last message read from the source's partition, if any.
    pub read_offset: Option<i64>,
    /// The partition's earliest retained offset, as the broker reports it.
    pub low_watermark: Option<i64>,
}

/// Why nothing is applied for a source now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Everything committed is applied.
    UpToDate,
    /// The log has committed `seq`, the broker has not delivered it yet.
    ForBroker { seq: u64 },
}

/// Why a source needs a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The broker no longer holds the batch (its offset is below the low watermark).
    Evicted { seq: u64, offset: i64, low_watermark: i64 },
    /// The consumer read past the batch's offset without receiving it (a broker that lost data and started over).
    Skipped { seq: u64, offset: i64, read_offset: i64 },
    /// The log recorded the batch `waited_s` seconds ago and the broker has not delivered it since, though the
    /// consumer is connected and reading (a broker that lost data and started over below the consumer's position
    /// looks like this; the caller decides how long is too long).
    Overdue { seq: u64, waited_s: u64 },
    /// The log no longer retains the batches after `applied` and no snapshot is committed to jump to.
    Compacted { applied: u64 },
}

/// The decision for one source (eventual mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStep {
    /// Apply these seqs, in this order (the first may be a snapshot jump).
    Apply(Vec<u64>),
    Wait(Waiting),
    /// Ask for REINITIALIZE of the source; apply nothing until its snapshot arrives.
    Reinitialize(Loss),
}

/// The seqs that bring a source from `progress.applied` towards `target` (≤ the frontier) with what is at hand:
/// a jump to the newest committed snapshot in (applied, target] that was received, then contiguous batches. Also
/// returns the first seq that is missing before `target`, if any.
fn path_to(progress: &SourceProgress, frontier: &Frontier, target: u64) -> (Vec<u64>, Option<u64>) {
    let committed_snapshot = |seq: u64| {
        matches!(frontier.point(seq), Ok(Some(p)) if p.kind == BatchKind::Snapshot)
            && progress.received.get(&seq) == Some(&BatchKind::Snapshot)
    };
    let mut path = Vec::new();
    let mut start = progress.applied;
    if target <= start {
        return (path, None);
    }
    if let Some(jump) =
        progress.received.range(start + 1..=target).rev().map(|(s, _)| *s).find(|s| committed_snapshot(*s))
    {
        path.push(jump);
        start = jump;
    }
    for seq in start + 1..=target {
        if !progress.received.contains_key(&seq) {
            return (path, Some(seq));
        }
        path.push(seq);
    }
    (path, None)
}

/// Whether the batch `seq` can still arrive, from what the log says about its position.
fn loss_of(progress: &SourceProgress, frontier: &Frontier, seq: u64) -> Option<Loss> {
    let point = match frontier.point(seq) {
        Ok(Some(point)) => point,
        // Not retained by the log: only a committed snapshot later on can help.
        Ok(None) | Err(_) => {
            let snapshot_ahead = (seq..=frontier.seq())
                .any(|s| matches!(frontier.point(s), Ok(Some(p)) if p.kind == BatchKind::Snapshot));
            return (!snapshot_ahead).then_some(Loss::Compacted { applied: progress.applied });
        }
    };
    let offset = point.position.offset;
    if let Some(low) = progress.low_watermark {
        if offset < low {
            return Some(Loss::Evicted { seq, offset, low_watermark: low });
        }
    }
    if let Some(read) = progress.read_offset {
        if read > offset {
            return Some(Loss::Skipped { seq, offset, read_offset: read });
        }
    }
    None
}

/// Eventual mode: what to do for one source.
pub fn plan_source(progress: &SourceProgress, frontier: &Frontier) -> SourceStep {
    if progress.applied >= frontier.seq() {
        return SourceStep::Wait(Waiting::UpToDate);
    }
    match path_to(progress, frontier, frontier.seq()) {
        (path, _) if !path.is_empty() => SourceStep::Apply(path),
        (_, Some(missing)) => match loss_of(progress, frontier, missing) {
            Some(loss) => SourceStep::Reinitialize(loss),
            None => SourceStep::Wait(Waiting::ForBroker { seq: missing }),
        },
        (_, None) => SourceStep::Wait(Waiting::UpToDate),
    }
}

/// The first committed batch a source cannot go past with what it holds (after the best snapshot jump), and
/// whether it is lost. Causal mode asks this when no cut can be reached: a source may be able to apply a few
/// batches on its own while a lost one further on blocks every cut, and that loss must be found too.
pub fn blocking_batch(progress: &SourceProgress, frontier: &Frontier) -> Option<(u64, Option<Loss>)> {
    if progress.applied >= frontier.seq() {
        return None;
    }
    let (_, missing) = path_to(progress, frontier, frontier.seq());
    missing.map(|seq| (seq, loss_of(progress, frontier, seq)))
}

/// Causal mode: the newest cut (log index and seq per source) whose batches are all at hand, with the seqs to apply
/// per source; `None` when no cut newer than what is applied can be reached now.
pub fn plan_causal(
    sources: &BTreeMap<StreamId, (SourceProgress, Frontier)>,
) -> Option<(LogIndex, BTreeMap<StreamId, Vec<u64>>)> {
    // Candidate times: the commit times of every batch beyond what is applied, newest first — and the commit time
    // of each source's applied batch: when the applied seqs are not themselves a cut (one source ahead of the
    // others, say after a snapshot jump), the first time every source reaches what it applied is such a time, and
    // it may be the only reachable one.
    let mut times = BTreeSet::new();
    for (progress, frontier) in sources.values() {
        if let Ok(Some(at)) = frontier.timestamp_of(progress.applied) {
            times.insert(at);
        }
        for seq in progress.applied + 1..=frontier.seq() {
            if let Ok(Some(point)) = frontier.point(seq) {
                times.insert(point.at);
            }
        }
    }
    for &t in times.iter().rev() {
        let mut plan = BTreeMap::new();
        let mut reachable = true;
        for (stream, (progress, frontier)) in sources {
            let Ok(target) = frontier.seq_at(t) else {
                reachable = false;
                break;
            };
            if target < progress.applied {
                reachable = false; // a cut behind what is applied can never be shown
                break;
            }
            match path_to(progress, frontier, target) {
                (path, None) => {
                    plan.insert(stream.clone(), path);
                }
                (_, Some(_)) => {
                    reachable = false;
                    break;
                }
            }
        }
        if reachable && plan.values().any(|p| !p.is_empty()) {
            return Some((t, plan));
        }
    }
    None
}

/// Whether per-source applied seqs form a cut of the log (the causal-mode invariant checker).
pub fn is_consistent(applied: &BTreeMap<StreamId, u64>, frontiers: &BTreeMap<StreamId, Frontier>) -> bool {
    matches!(consistent_window(applied, |s| frontiers.get(s)), Ok(Some(_)))
}
