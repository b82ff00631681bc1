//! Frontier algebra: per-stream committed frontiers with their global timestamps, and consistent cuts.
//!
//! The global timestamp of batch `seq` of a stream is the log index `T` at which its `FrontierAdvanced` committed.
//! A cut at `T` assigns each source the highest seq whose timestamp is `<= T`; every such cut is consistent because
//! the log orders all streams on one timeline. Each stream keeps a bounded history of (seq, T) points so that cuts
//! at past times and lag can be answered by binary search; the newest cut of each federated table is maintained
//! incrementally by the state on every advance.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ids::StreamId;
use crate::model::{BatchKind, BrokerPosition, LogIndex};

/// How many (seq, T) points each stream keeps. Older points are folded into the stream's floor.
pub const FRONTIER_HISTORY: usize = 1024;

/// One committed batch of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FrontierPoint {
    /// The batch seq.
    pub seq: u64,
    /// Its global timestamp: the log index of its `FrontierAdvanced`.
    pub at: LogIndex,
    /// Delta or snapshot.
    pub kind: BatchKind,
    /// Where it sits in the broker.
    pub position: BrokerPosition,
    /// The leader's wall clock when it was proposed (ms since the Unix epoch).
    pub proposed_at_unix_ms: u64,
}

/// A stream's committed frontier and its recent history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    /// The seq (and time) below the retained history: the publication's base seq, or the newest evicted point.
    floor_seq: u64,
    floor_at: LogIndex,
    /// Whether points were evicted (then times before `floor_at` can no longer be answered).
    truncated: bool,
    points: VecDeque<FrontierPoint>,
}

/// Why a past time or seq cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("history before log index {oldest_at} (seq {oldest_seq}) is no longer kept")]
pub struct HistoryTruncated {
    /// The oldest time still answerable.
    pub oldest_at: LogIndex,
    /// The seq committed at that time.
    pub oldest_seq: u64,
}

impl Frontier {
    /// A frontier at `base_seq`, published at log index `at`.
    pub fn new(base_seq: u64, at: LogIndex) -> Self {
        Frontier { floor_seq: base_seq, floor_at: at, truncated: false, points: VecDeque::new() }
    }

    /// The committed seq (the newest batch recorded).
    pub fn seq(&self) -> u64 {
        self.points.back().map_or(self.floor_seq, |p| p.seq)
    }

    /// The newest point, if any batch was recorded since publication (or is still retained).
    pub fn last(&self) -> Option<&FrontierPoint> {
        self.points.back()
    }

    /// The oldest seq whose point is still retained (the next seq when none is).
    pub fn oldest_retained(&self) -> u64 {
        self.points.front().map_or(self.floor_seq + 1, |p| p.seq)
    }

    /// The timestamp of the current frontier (publication time if no batch yet).
    pub fn at(&self) -> LogIndex {
        self.points.back().map_or(self.floor_at, |p| p.at)
    }

    /// The retained point of `seq`, or why it is not there.
    pub fn point(&self, seq: u64) -> Result<Option<&FrontierPoint>, HistoryTruncated> {
        let first = match self.points.front() {
            Some(p) => p.seq,
            None => return if self.truncated && seq <= self.floor_seq { Err(self.truncation()) } else { Ok(None) },
        };
        if seq < first {
            return if self.truncated { Err(self.truncation()) } else { Ok(None) };
        }
        Ok(self.points.get((seq - first) as usize))
    }

    fn truncation(&self) -> HistoryTruncated {
        HistoryTruncated { oldest_at: self.floor_at, oldest_seq: self.floor_seq }
    }

    /// Records the next batch; the caller has checked that `point.seq == self.seq() + 1` and time moves forward.
    pub fn push(&mut self, point: FrontierPoint) {
        debug_assert_eq!(point.seq, self.seq() + 1);
        // Evict before pushing: a deque that briefly held FRONTIER_HISTORY + 1 points would double its capacity
        // and keep it, 2,048 points (98 KB) for every busy stream instead of 1,024.
        if self.points.len() >= FRONTIER_HISTORY {
            let old = self.points.pop_front().expect("non-empty");
            self.floor_seq = old.seq;
            self.floor_at = old.at;
            self.truncated = true;
        }
        self.points.push_back(point);
    }

    /// The highest seq whose timestamp is `<= t`.
    pub fn seq_at(&self, t: LogIndex) -> Result<u64, HistoryTruncated> {
        if self.truncated && t < self.floor_at {
            return Err(self.truncation());
        }
        // Points are sorted by `at`; count those at or before t.
        let n = self.points.partition_point(|p| p.at <= t);
        Ok(if n == 0 { self.floor_seq } else { self.points[n - 1].seq })
    }

    /// The timestamp of `seq`, when retained.
    pub fn timestamp_of(&self, seq: u64) -> Result<Option<LogIndex>, HistoryTruncated> {
        Ok(self.point(seq)?.map(|p| p.at))
    }

    /// What a consumer that applied `seq` needs: the points after it, with the point of `seq` as the floor.
    /// Times before that floor become unanswerable, so a cut computed from the tail is always one the whole
    /// frontier gives too (never a time at which the source was behind what the consumer applied).
    pub fn tail_after(&self, seq: u64) -> Frontier {
        let keep_from = self.points.partition_point(|p| p.seq <= seq);
        if keep_from == 0 {
            return self.clone();
        }
        let floor = self.points[keep_from - 1];
        Frontier {
            floor_seq: floor.seq,
            floor_at: floor.at,
            truncated: true,
            points: self.points.range(keep_from..).copied().collect(),
        }
    }

    /// The frontier as the log stood at index `t`: points committed after `t` dropped. Frontiers of several
    /// streams read at different moments must be cut back to the oldest of those moments before a cut is taken
    /// over them, or a newer batch of one stream could pair with an older state of another.
    pub fn as_of(&self, t: LogIndex) -> Frontier {
        let keep = self.points.partition_point(|p| p.at <= t);
        Frontier {
            floor_seq: self.floor_seq,
            floor_at: self.floor_at,
            truncated: self.truncated,
            points: self.points.range(..keep).copied().collect(),
        }
    }

    /// The parts a frontier travels as: floor seq, floor time, whether history before the floor was dropped,
    /// and the retained points.
    pub fn parts(&self) -> (u64, LogIndex, bool, Vec<FrontierPoint>) {
        (self.floor_seq, self.floor_at, self.truncated, self.points.iter().copied().collect())
    }

    /// Rebuilds a frontier from [`Frontier::parts`], checking that the points follow the floor gap-free with
    /// times that never go back.
    pub fn from_parts(
        floor_seq: u64,
        floor_at: LogIndex,
        truncated: bool,
        points: Vec<FrontierPoint>,
    ) -> Result<Frontier, String> {
        let (mut seq, mut at) = (floor_seq, floor_at);
        for p in &points {
            if p.seq != seq + 1 || p.at < at {
                return Err(format!("point seq {} at {} does not follow seq {seq} at {at}", p.seq, p.at));
            }
            (seq, at) = (p.seq, p.at);
        }
        Ok(Frontier { floor_seq, floor_at, truncated, points: points.into() })
    }

    /// How far a consumer that applied `applied_seq` is behind.
    pub fn lag(&self, applied_seq: u64, now_unix_ms: u64) -> Lag {
        let batches = self.seq().saturating_sub(applied_seq);
        let oldest_pending = if batches == 0 { None } else { self.point(applied_seq + 1).ok().flatten().copied() };
        Lag {
            batches,
            oldest_pending_at: oldest_pending.map(|p| p.at),
            seconds: oldest_pending
                .map(|p| now_unix_ms.saturating_sub(p.proposed_at_unix_ms) as f64 / 1000.0)
                .unwrap_or(0.0),
        }
    }
}

/// A consumer's lag on one source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lag {
    /// Committed batches not yet applied.
    pub batches: u64,
    /// Global timestamp of the oldest unapplied batch.
    pub oldest_pending_at: Option<LogIndex>,
    /// How long the oldest unapplied batch has been committed (0 when none is pending or it is no longer kept).
    pub seconds: f64,
}

/// A cut: for each source, the highest seq committed at or before `at`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cut {
    /// The global time of the cut.
    pub at: LogIndex,
    /// Seq per source.
    pub seqs: BTreeMap<StreamId, u64>,
}

/// Computes the cut at `t` over `sources`.
pub fn cut_at<'a>(
    t: LogIndex,
    sources: impl IntoIterator<Item = (&'a StreamId, &'a Frontier)>,
) -> Result<Cut, HistoryTruncated> {
    let mut seqs = BTreeMap::new();
    for (id, frontier) in sources {
        seqs.insert(id.clone(), frontier.seq_at(t)?);
    }
    Ok(Cut { at: t, seqs })
}

/// The times at which an assignment of seqs is a cut: `Some((lo, hi))` when every `t` in `lo..=hi` gives exactly
/// these seqs, `None` when no time does (the assignment is inconsistent). `hi` is `u64::MAX` when open-ended.
pub fn consistent_window<'a>(
    assignment: &BTreeMap<StreamId, u64>,
    frontiers: impl Fn(&StreamId) -> Option<&'a Frontier>,
) -> Result<Option<(LogIndex, LogIndex)>, HistoryTruncated> {
    let mut lo = 0;
    let mut hi = u64::MAX;
    for (stream, &seq) in assignment {
        let Some(f) = frontiers(stream) else { return Ok(None) };
        if seq > f.seq() {
            return Ok(None);
        }
        // seq must be committed by t (t >= at(seq)) and seq + 1 must not be (t < at(seq + 1)).
        let committed_from = if seq < f.floor_seq {
            return if f.truncated { Err(f.truncation()) } else { Ok(None) };
        } else if seq == f.floor_seq {
            if f.truncated {
                f.floor_at
            } else {
                0
            }
        } else {
            f.point(seq)?.map_or(f.floor_at, |p| p.at)
        };
        lo = lo.max(committed_from);
        if let Some(next) = f.point(seq + 1)? {
            hi = hi.min(next.at.saturating_sub(1));
        }
    }
    Ok(if lo <= hi { Some((lo, hi)) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: u64, at: LogIndex) -> FrontierPoint {
        FrontierPoint {
            seq,
            at,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: seq as i64 },
            proposed_at_unix_ms: at * 10,
        }
    }

    #[test]
    fn seq_at_walks_history() {
        let mut f = Frontier::new(0, 1);
        for (seq, at) in [(1, 5), (2, 9), (3, 20)] {
            f.push(point(seq, at));
        }
        assert_eq!(f.seq_at(4).unwrap(), 0);
        assert_eq!(f.seq_at(5).unwrap(), 1);
        assert_eq!(f.seq_at(19).unwrap(), 2);
        assert_eq!(f.seq_at(1000).unwrap(), 3);
        assert_eq!(f.timestamp_of(2).unwrap(), Some(9));
        let lag = f.lag(1, 200);
        assert_eq!(lag.batches, 2);
        assert_eq!(lag.oldest_pending_at, Some(9));
        assert!((lag.seconds - 0.11).abs() < 1e-9);
    }

    #[test]
    fn history_is_bounded_and_says_so() {
        let mut f = Frontier::new(0, 0);
        for seq in 1..=(FRONTIER_HISTORY as u64 + 10) {
            f.push(point(seq, seq * 2));
        }
        assert_eq!(f.seq(), FRONTIER_HISTORY as u64 + 10);
        assert!(f.seq_at(3).is_err());
        assert!(f.point(1).is_err());
        assert_eq!(f.seq_at(30).unwrap(), 15);
        assert_eq!(f.oldest_retained(), 11);
        // A busy stream never holds room for more than the history.
        assert!(f.points.capacity() < 2 * FRONTIER_HISTORY, "capacity {}", f.points.capacity());
    }

    #[test]
    fn window_detects_inconsistent_pairs() {
        let a = StreamId::parse("a/x").unwrap();
        let b = StreamId::parse("b/y").unwrap();
        let mut fa = Frontier::new(0, 1);
        let mut fb = Frontier::new(0, 2);
        fa.push(point(1, 3)); // a1 at 3
        fb.push(point(1, 4)); // b1 at 4
        fa.push(point(2, 5)); // a2 at 5
        let get = |s: &StreamId| if s == &a { Some(&fa) } else { Some(&fb) };
        // (a1, b1) holds for t in 4..=4.
        let ok = BTreeMap::from([(a.clone(), 1), (b.clone(), 1)]);
        assert_eq!(consistent_window(&ok, get).unwrap(), Some((4, 4)));
        // (a0, b1) never: b1 committed after a1.
        let bad = BTreeMap::from([(a.clone(), 0), (b.clone(), 1)]);
        assert_eq!(consistent_window(&bad, get).unwrap(), None);
        let cut = cut_at(4, [(&a, &fa), (&b, &fb)]).unwrap();
        assert_eq!(consistent_window(&cut.seqs, get).unwrap(), Some((4, 4)));
    }
}
