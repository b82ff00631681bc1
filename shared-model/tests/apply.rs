//! The consumer's apply decisions against random logs: only committed batches, each once and in order (or a jump
//! to a committed snapshot), every causal step lands on a cut of the log, nothing waits forever when everything
//! has arrived, and a batch the broker lost is reported instead of waited for — exactly when it is lost (the
//! loss generator reaches low watermarks, read offsets past a batch and histories longer than the log keeps).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shared_model::apply::{is_consistent, plan_causal, plan_source, Loss, SourceProgress, SourceStep, Waiting};
use shared_model::frontier::{Frontier, FrontierPoint, FRONTIER_HISTORY};
use shared_model::{BatchKind, BrokerPosition, StreamId};

fn streams(n: usize) -> Vec<StreamId> {
    (0..n).map(|i| StreamId::parse(&format!("cluster_{i}/public.st")).unwrap()).collect()
}

/// A log: (stream index, snapshot?) per committed advance; the first batch of each stream is a snapshot.
fn log_strategy() -> impl Strategy<Value = (usize, Vec<(usize, bool)>)> {
    (2usize..4).prop_flat_map(|n| (Just(n), prop::collection::vec((0..n, prop::bool::weighted(0.1)), 1..40)))
}

fn build(n: usize, events: &[(usize, bool)]) -> BTreeMap<StreamId, Frontier> {
    let ids = streams(n);
    let mut frontiers: BTreeMap<StreamId, Frontier> = ids.iter().map(|s| (s.clone(), Frontier::new(0, 0))).collect();
    for (index, (stream, snapshot)) in events.iter().enumerate() {
        let frontier = frontiers.get_mut(&ids[*stream]).unwrap();
        let seq = frontier.seq() + 1;
        frontier.push(FrontierPoint {
            seq,
            at: index as u64 + 1,
            kind: if seq == 1 || *snapshot { BatchKind::Snapshot } else { BatchKind::Delta },
            position: BrokerPosition { partition: 0, offset: seq as i64 * 3 },
            proposed_at_unix_ms: 0,
        });
    }
    frontiers
}

fn kind_of(frontier: &Frontier, seq: u64) -> BatchKind {
    frontier.point(seq).ok().flatten().map(|p| p.kind).unwrap_or(BatchKind::Delta)
}

/// Batches held by the consumer: each committed one with some probability, plus uncommitted ones past the frontier.
fn received(frontier: &Frontier, mask: &[bool], extra: u64) -> BTreeMap<u64, BatchKind> {
    let mut held = BTreeMap::new();
    for seq in 1..=frontier.seq() {
        if mask[(seq as usize) % mask.len()] {
            held.insert(seq, kind_of(frontier, seq));
        }
    }
    for seq in frontier.seq() + 1..=frontier.seq() + extra {
        held.insert(seq, BatchKind::Delta);
    }
    held
}

fn apply_path(progress: &mut SourceProgress, frontier: &Frontier, path: &[u64]) -> Result<(), TestCaseError> {
    prop_assert!(!path.is_empty());
    for (i, &seq) in path.iter().enumerate() {
        prop_assert!(seq <= frontier.seq(), "seq {} beyond the committed frontier {}", seq, frontier.seq());
        prop_assert!(progress.received.contains_key(&seq), "seq {} applied without being received", seq);
        let contiguous = seq == progress.applied + 1;
        let jump = i == 0 && seq > progress.applied && kind_of(frontier, seq) == BatchKind::Snapshot;
        prop_assert!(contiguous || jump, "seq {} after {} is neither next nor a snapshot", seq, progress.applied);
        progress.applied = seq;
    }
    let applied = progress.applied;
    progress.received.retain(|s, _| *s > applied);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn eventual_applies_committed_batches_once_in_order(
        (n, events) in log_strategy(),
        mask in prop::collection::vec(prop::bool::weighted(0.75), 1..7),
        extra in 0u64..3,
    ) {
        let frontiers = build(n, &events);
        for frontier in frontiers.values() {
            let mut progress = SourceProgress { received: received(frontier, &mask, extra), ..Default::default() };
            let everything = (1..=frontier.seq()).all(|s| progress.received.contains_key(&s));
            let mut rounds = 0;
            loop {
                rounds += 1;
                prop_assert!(rounds < 100);
                match plan_source(&progress, frontier) {
                    SourceStep::Apply(path) => apply_path(&mut progress, frontier, &path)?,
                    SourceStep::Wait(Waiting::UpToDate) => {
                        prop_assert_eq!(progress.applied, frontier.seq());
                        break;
                    }
                    SourceStep::Wait(Waiting::ForBroker { seq }) => {
                        prop_assert!(!everything, "waited for {} although everything arrived", seq);
                        prop_assert!(seq > progress.applied && seq <= frontier.seq());
                        prop_assert!(!progress.received.contains_key(&seq));
                        break;
                    }
                    SourceStep::Reinitialize(loss) => prop_assert!(false, "no loss was simulated: {:?}", loss),
                }
            }
        }
    }

    #[test]
    fn causal_steps_land_on_cuts_and_reach_the_newest_one(
        (n, events) in log_strategy(),
        mask in prop::collection::vec(prop::bool::weighted(0.8), 1..7),
    ) {
        let frontiers = build(n, &events);
        let mut sources: BTreeMap<StreamId, (SourceProgress, Frontier)> = frontiers
            .iter()
            .map(|(s, f)| (s.clone(), (SourceProgress { received: received(f, &mask, 1), ..Default::default() }, f.clone())))
            .collect();
        let everything = sources.values().all(|(p, f)| (1..=f.seq()).all(|s| p.received.contains_key(&s)));
        let mut last_t = 0;
        while let Some((t, plan)) = plan_causal(&sources) {
            prop_assert!(t > last_t, "cut time went from {} to {}", last_t, t);
            last_t = t;
            for (stream, path) in &plan {
                let (progress, frontier) = sources.get_mut(stream).unwrap();
                if !path.is_empty() {
                    apply_path(progress, frontier, path)?;
                }
                prop_assert_eq!(frontier.seq_at(t).unwrap(), progress.applied);
            }
            let applied: BTreeMap<StreamId, u64> = sources.iter().map(|(s, (p, _))| (s.clone(), p.applied)).collect();
            prop_assert!(is_consistent(&applied, &frontiers), "applied {:?} is not a cut", applied);
        }
        if everything {
            for (progress, frontier) in sources.values() {
                prop_assert_eq!(progress.applied, frontier.seq(), "the newest cut was not reached");
            }
        }
    }
}

fn one_stream(kinds: &[BatchKind]) -> Frontier {
    let mut frontier = Frontier::new(0, 0);
    for (i, kind) in kinds.iter().enumerate() {
        let seq = i as u64 + 1;
        frontier.push(FrontierPoint {
            seq,
            at: seq * 10,
            kind: *kind,
            position: BrokerPosition { partition: 0, offset: seq as i64 * 3 },
            proposed_at_unix_ms: 0,
        });
    }
    frontier
}

#[test]
fn a_batch_the_broker_no_longer_has_asks_for_a_snapshot() {
    use BatchKind::*;
    let frontier = one_stream(&[Snapshot, Delta, Delta, Delta]);
    let received: BTreeMap<u64, BatchKind> = [(4, Delta)].into_iter().collect();
    // Offset of seq 2 is 6; the broker now starts at 9.
    let evicted = SourceProgress { applied: 1, received: received.clone(), read_offset: None, low_watermark: Some(9) };
    assert_eq!(
        plan_source(&evicted, &frontier),
        SourceStep::Reinitialize(Loss::Evicted { seq: 2, offset: 6, low_watermark: 9 })
    );
    // The consumer already read offset 12 (seq 4) but never saw seq 2: the broker lost it.
    let skipped =
        SourceProgress { applied: 1, received: received.clone(), read_offset: Some(12), low_watermark: Some(0) };
    assert_eq!(
        plan_source(&skipped, &frontier),
        SourceStep::Reinitialize(Loss::Skipped { seq: 2, offset: 6, read_offset: 12 })
    );
    // Still on its way: wait.
    let pending = SourceProgress { applied: 1, received, read_offset: Some(3), low_watermark: Some(0) };
    assert_eq!(plan_source(&pending, &frontier), SourceStep::Wait(Waiting::ForBroker { seq: 2 }));
}

#[test]
fn a_committed_snapshot_ends_the_wait_for_lost_deltas() {
    use BatchKind::*;
    let frontier = one_stream(&[Snapshot, Delta, Delta, Snapshot, Delta]);
    let received: BTreeMap<u64, BatchKind> = [(4, Snapshot), (5, Delta)].into_iter().collect();
    let progress = SourceProgress { applied: 1, received, read_offset: Some(15), low_watermark: Some(9) };
    assert_eq!(plan_source(&progress, &frontier), SourceStep::Apply(vec![4, 5]));
}

#[test]
fn uncommitted_and_already_applied_batches_are_never_applied() {
    use BatchKind::*;
    let frontier = one_stream(&[Snapshot, Delta]);
    let received: BTreeMap<u64, BatchKind> = [(1, Snapshot), (2, Delta), (3, Delta), (4, Delta)].into_iter().collect();
    let progress = SourceProgress { applied: 1, received, ..Default::default() };
    assert_eq!(plan_source(&progress, &frontier), SourceStep::Apply(vec![2]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A consumer is sent only the tail of each frontier after what it applied: every decision it takes from
    /// the tails is the one it would take from the whole frontiers, and the tails survive the trip as parts.
    #[test]
    fn tails_decide_like_whole_frontiers(
        (n, events) in log_strategy(),
        applied_cut in 0usize..40,
        mask in prop::collection::vec(prop::bool::weighted(0.75), 1..7),
    ) {
        let frontiers = build(n, &events);
        // What the consumer applied: a cut of the log at some earlier time.
        let t = (applied_cut.min(events.len())) as u64;
        let mut whole = BTreeMap::new();
        let mut tails = BTreeMap::new();
        for (id, frontier) in &frontiers {
            let applied = frontier.seq_at(t).unwrap();
            let progress = SourceProgress { applied, received: received(frontier, &mask, 1), ..Default::default() };
            let tail = frontier.tail_after(applied);
            let (floor_seq, floor_at, truncated, points) = tail.parts();
            let rebuilt = Frontier::from_parts(floor_seq, floor_at, truncated, points).unwrap();
            prop_assert_eq!(&rebuilt, &tail);
            prop_assert_eq!(tail.seq(), frontier.seq());
            prop_assert_eq!(plan_source(&progress, &tail), plan_source(&progress, frontier));
            whole.insert(id.clone(), (progress.clone(), frontier.clone()));
            tails.insert(id.clone(), (progress, tail));
        }
        prop_assert_eq!(plan_causal(&tails), plan_causal(&whole));
    }
}

#[test]
fn parts_out_of_order_are_refused() {
    let point = |seq, at| FrontierPoint {
        seq,
        at,
        kind: BatchKind::Delta,
        position: BrokerPosition { partition: 0, offset: 0 },
        proposed_at_unix_ms: 0,
    };
    assert!(Frontier::from_parts(3, 10, true, vec![point(4, 11), point(5, 11)]).is_ok());
    assert!(Frontier::from_parts(3, 10, true, vec![point(5, 11)]).is_err());
    assert!(Frontier::from_parts(3, 10, true, vec![point(4, 9)]).is_err());
}

/// Frontiers of two streams read at different moments: the causal plan over them as read can pair a newer batch
/// of one with an older state of the other; cut back to the older moment (`as_of`), every plan is a cut.
#[test]
fn frontiers_read_at_different_moments_are_cut_back_before_planning() {
    let ids = streams(2);
    // Log: A1@1, B1@2, A2@3, B2@4.
    let whole = build(2, &[(0, false), (1, false), (0, false), (1, false)]);
    // A's frontier read when the log stood at 2, B's at 4.
    let mut read: BTreeMap<StreamId, (SourceProgress, Frontier)> = BTreeMap::new();
    for (id, frontier) in &whole {
        let moment = if *id == ids[0] { 2 } else { 4 };
        let progress = SourceProgress { received: received(frontier, &[true], 0), ..Default::default() };
        read.insert(id.clone(), (progress, frontier.as_of(moment)));
    }
    let frontiers_of = |plan_at: &BTreeMap<StreamId, u64>| is_consistent(plan_at, &whole);
    // As read: the newest time is 4, A looks like seq 1 there (A2@3 is missing from its read) — not a cut.
    let (_, naive) = plan_causal(&read).unwrap();
    let naive_seqs: BTreeMap<StreamId, u64> =
        naive.iter().map(|(s, path)| (s.clone(), path.last().copied().unwrap_or(0))).collect();
    assert!(!frontiers_of(&naive_seqs), "the hazard this guards against did not show: {naive_seqs:?}");
    // Cut back to the older moment: a real cut.
    let aligned: BTreeMap<StreamId, (SourceProgress, Frontier)> =
        read.into_iter().map(|(id, (p, f))| (id, (p, f.as_of(2)))).collect();
    let (_, plan) = plan_causal(&aligned).unwrap();
    let seqs: BTreeMap<StreamId, u64> = plan.iter().map(|(s, p)| (s.clone(), p.last().copied().unwrap_or(0))).collect();
    assert!(frontiers_of(&seqs), "{seqs:?}");
}

// ----- losses, offsets and long histories ---------------------------------------------------------------------

/// Sources drawn so that every branch of the planner is reached: offsets with gaps between recorded batches (the
/// unrecorded copies a resending producer leaves), snapshots mid-stream, histories longer than the log retains
/// (so the oldest points are gone), an applied seq anywhere (also below the retained history), holes in what was
/// received, and a read offset and low watermark placed around the batch the consumer needs next.
#[derive(Debug, Clone)]
struct LossCase {
    sources: Vec<(SourceProgress, Frontier)>,
}

/// Per source: batches committed, offset gaps, snapshot pattern, applied pick, received mask, extra batches past
/// the frontier, read offset and low watermark picks (relative to the applied seq).
type SourceParams = (u64, Vec<i64>, Vec<bool>, (u8, u64, f64), Vec<bool>, u64, Option<(u64, i64)>, Option<(u64, i64)>);

fn source_params() -> impl Strategy<Value = SourceParams> {
    let history = FRONTIER_HISTORY as u64;
    (
        prop_oneof![3 => 1u64..24, 1 => history - 8..history + 24],
        prop::collection::vec(1i64..4, 1..6),
        prop::collection::vec(prop::bool::weighted(0.08), 1..9),
        (0u8..3, 0u64..40, 0.0f64..=1.0),
        prop::collection::vec(prop::bool::weighted(0.8), 1..7),
        0u64..3,
        prop::option::weighted(0.6, (0u64..4, -1i64..=1)),
        prop::option::weighted(0.6, (0u64..4, -1i64..=1)),
    )
}

fn loss_case() -> impl Strategy<Value = LossCase> {
    prop::collection::vec(source_params(), 1..4).prop_map(|params| {
        let n = params.len() as u64;
        let sources = params
            .into_iter()
            .enumerate()
            .map(|(i, (len, gaps, snapshots, (mode, k, frac), mask, extra, read, low))| {
                let mut frontier = Frontier::new(0, 0);
                let mut offsets = vec![0i64];
                let mut kinds = vec![BatchKind::Delta];
                for seq in 1..=len {
                    let offset = offsets[seq as usize - 1] + gaps[seq as usize % gaps.len()];
                    offsets.push(offset);
                    let snapshot = seq == 1 || snapshots[seq as usize % snapshots.len()];
                    kinds.push(if snapshot { BatchKind::Snapshot } else { BatchKind::Delta });
                    frontier.push(FrontierPoint {
                        seq,
                        // Times interleave the sources on one log.
                        at: seq * n + i as u64 + 1,
                        kind: kinds[seq as usize],
                        position: BrokerPosition { partition: 0, offset },
                        proposed_at_unix_ms: 0,
                    });
                }
                let applied = match mode {
                    0 => len.saturating_sub(k),
                    1 => k.min(len),
                    _ => (frac * len as f64) as u64,
                };
                let mut received = BTreeMap::new();
                for seq in applied + 1..=len {
                    if mask[seq as usize % mask.len()] {
                        received.insert(seq, kinds[seq as usize]);
                    }
                }
                for seq in len + 1..=len + extra {
                    received.insert(seq, BatchKind::Delta);
                }
                let offset_near =
                    |(ahead, delta): (u64, i64)| offsets[((applied + ahead) as usize).min(offsets.len() - 1)] + delta;
                let progress = SourceProgress {
                    applied,
                    received,
                    read_offset: read.map(offset_near),
                    low_watermark: low.map(offset_near),
                };
                (progress, frontier)
            })
            .collect();
        LossCase { sources }
    })
}

/// The batch a source cannot move without: the next one after `applied` when it was not received and no received
/// snapshot that the log committed as one lies ahead to jump to.
fn needed_batch(progress: &SourceProgress, frontier: &Frontier) -> Option<u64> {
    let next = progress.applied + 1;
    if next > frontier.seq() || progress.received.contains_key(&next) {
        return None;
    }
    let jump = progress.received.iter().any(|(&seq, &kind)| {
        seq <= frontier.seq()
            && kind == BatchKind::Snapshot
            && matches!(frontier.point(seq), Ok(Some(p)) if p.kind == BatchKind::Snapshot)
    });
    (!jump).then_some(next)
}

/// What the planner did for one source, as a label for the coverage guard.
fn eventual_outcome(progress: &SourceProgress, frontier: &Frontier, step: &SourceStep) -> &'static str {
    match step {
        SourceStep::Apply(path) if path[0] != progress.applied + 1 => "apply_snapshot_jump",
        SourceStep::Apply(_) => "apply",
        SourceStep::Wait(Waiting::UpToDate) => "up_to_date",
        SourceStep::Wait(Waiting::ForBroker { seq }) if frontier.point(*seq).is_err() => "for_broker_truncated",
        SourceStep::Wait(Waiting::ForBroker { .. }) => "for_broker",
        SourceStep::Reinitialize(Loss::Evicted { .. }) => "evicted",
        SourceStep::Reinitialize(Loss::Skipped { .. }) => "skipped",
        SourceStep::Reinitialize(Loss::Compacted { .. }) => "compacted",
        SourceStep::Reinitialize(Loss::Overdue { .. }) => "overdue",
    }
}

/// Checks one source's eventual decision against the rules, stated independently of the planner: REINITIALIZE
/// exactly when the needed batch is gone (below the low watermark, read past, or no longer in the log with no
/// snapshot ahead), a wait exactly when it can still come, an apply exactly when something can move.
fn check_eventual(progress: &SourceProgress, frontier: &Frontier) -> Result<&'static str, TestCaseError> {
    let step = plan_source(progress, frontier);
    let needed = needed_batch(progress, frontier);
    let point = needed.map(|seq| frontier.point(seq));
    let below_low =
        matches!((&point, progress.low_watermark), (Some(Ok(Some(p))), Some(low)) if p.position.offset < low);
    let read_past =
        matches!((&point, progress.read_offset), (Some(Ok(Some(p))), Some(read)) if read > p.position.offset);
    let gone_from_log = matches!(point, Some(Err(_)) | Some(Ok(None)));
    let snapshot_ahead = needed.is_some_and(|seq| {
        (seq..=frontier.seq()).any(|s| matches!(frontier.point(s), Ok(Some(p)) if p.kind == BatchKind::Snapshot))
    });
    let evicted = matches!(step, SourceStep::Reinitialize(Loss::Evicted { .. }));
    prop_assert_eq!(evicted, needed.is_some() && below_low, "step {:?}, needed {:?}", &step, needed);
    let skipped = matches!(step, SourceStep::Reinitialize(Loss::Skipped { .. }));
    prop_assert_eq!(skipped, needed.is_some() && !below_low && read_past, "step {:?}", &step);
    let compacted = matches!(step, SourceStep::Reinitialize(Loss::Compacted { .. }));
    prop_assert_eq!(compacted, gone_from_log && !snapshot_ahead, "step {:?}", &step);
    match &step {
        SourceStep::Reinitialize(Loss::Evicted { seq, .. }) | SourceStep::Reinitialize(Loss::Skipped { seq, .. }) => {
            prop_assert_eq!(Some(*seq), needed)
        }
        SourceStep::Wait(Waiting::ForBroker { seq }) => {
            prop_assert_eq!(Some(*seq), needed);
            prop_assert!(!below_low && !read_past && (!gone_from_log || snapshot_ahead));
        }
        SourceStep::Wait(Waiting::UpToDate) => prop_assert!(progress.applied >= frontier.seq()),
        SourceStep::Apply(path) => {
            prop_assert!(needed.is_none());
            let mut copy = progress.clone();
            apply_path(&mut copy, frontier, path)?;
        }
        SourceStep::Reinitialize(_) => {}
    }
    if progress.applied < frontier.seq() && needed.is_none() {
        prop_assert!(matches!(step, SourceStep::Apply(_)), "something can move but the step is {:?}", &step);
    }
    Ok(eventual_outcome(progress, frontier, &step))
}

/// Whether a source can be brought exactly to a target seq with what it holds (directly, or through a received
/// snapshot the log committed as one), answered by lookups so that every log time can be tried.
struct Reach {
    applied: u64,
    /// Committed seqs after `applied` that were not received.
    missing: BTreeSet<u64>,
    /// Received seqs after `applied` that the log committed as snapshots.
    snapshots: BTreeSet<u64>,
}

impl Reach {
    fn new(progress: &SourceProgress, frontier: &Frontier) -> Self {
        let missing = (progress.applied + 1..=frontier.seq()).filter(|s| !progress.received.contains_key(s)).collect();
        let snapshots = progress
            .received
            .range(progress.applied + 1..)
            .filter(|(&s, &kind)| {
                kind == BatchKind::Snapshot && matches!(frontier.point(s), Ok(Some(p)) if p.kind == BatchKind::Snapshot)
            })
            .map(|(&s, _)| s)
            .collect();
        Reach { applied: progress.applied, missing, snapshots }
    }

    fn can_reach(&self, target: u64) -> bool {
        let complete_from = |from: u64| from >= target || self.missing.range(from + 1..=target).next().is_none();
        target == self.applied
            || complete_from(self.applied)
            || (target > self.applied
                && self.snapshots.range(self.applied + 1..=target).next_back().is_some_and(|&s| complete_from(s)))
    }
}

/// Checks the causal decision: a returned plan lands on the cut at its time and that time is the newest one at
/// which every source can be brought to the cut; no plan means no such time exists. Returns a label.
fn check_causal(case: &LossCase) -> Result<&'static str, TestCaseError> {
    let ids = streams(case.sources.len());
    let sources: BTreeMap<StreamId, (SourceProgress, Frontier)> =
        ids.iter().cloned().zip(case.sources.iter().cloned()).collect();
    // Every time at which the cut moves: the commit times of all retained points.
    let mut times: Vec<u64> = sources.values().flat_map(|(_, f)| f.parts().3.into_iter().map(|p| p.at)).collect();
    times.sort_unstable();
    let reach: Vec<Reach> = sources.values().map(|(p, f)| Reach::new(p, f)).collect();
    let mut newest = None;
    let mut truncation_blocked = false;
    for &t in &times {
        let mut moves = false;
        let mut ok = true;
        for ((progress, frontier), reach) in sources.values().zip(&reach) {
            match frontier.seq_at(t) {
                Ok(target) if target >= progress.applied && reach.can_reach(target) => {
                    moves |= target > progress.applied;
                }
                Ok(_) => ok = false,
                Err(_) => {
                    ok = false;
                    truncation_blocked = true;
                }
            }
        }
        if ok && moves {
            newest = Some(t);
        }
    }
    match plan_causal(&sources) {
        None => {
            prop_assert_eq!(newest, None, "a reachable cut exists but none was planned");
            Ok(if truncation_blocked { "causal_truncated" } else { "causal_none" })
        }
        Some((t, plan)) => {
            prop_assert_eq!(Some(t), newest, "planned cut is not the newest reachable one");
            let mut applied = BTreeMap::new();
            let mut frontiers = BTreeMap::new();
            for (id, (progress, frontier)) in &sources {
                let mut progress = progress.clone();
                let path = &plan[id];
                if !path.is_empty() {
                    apply_path(&mut progress, frontier, path)?;
                }
                prop_assert_eq!(progress.applied, frontier.seq_at(t).unwrap());
                applied.insert(id.clone(), progress.applied);
                frontiers.insert(id.clone(), frontier.clone());
            }
            prop_assert!(is_consistent(&applied, &frontiers), "{:?} is not a cut", applied);
            Ok("causal_cut")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn losses_are_reported_exactly_when_a_needed_batch_is_gone(case in loss_case()) {
        for (progress, frontier) in &case.sources {
            check_eventual(progress, frontier)?;
        }
        check_causal(&case)?;
    }
}

#[test]
fn the_loss_generator_reaches_every_outcome() {
    // Guards the property above against a generator that never reaches a branch (say, never puts the needed
    // batch below the low watermark, or never outruns the log's retained history).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..1000 {
        let case = loss_case().new_tree(&mut runner).unwrap().current();
        for (progress, frontier) in &case.sources {
            seen.insert(check_eventual(progress, frontier).unwrap());
            if frontier.point(progress.applied + 1).is_err() {
                seen.insert("history_truncated");
            }
        }
        seen.insert(check_causal(&case).unwrap());
    }
    for outcome in [
        "apply",
        "apply_snapshot_jump",
        "up_to_date",
        "for_broker",
        "for_broker_truncated",
        "evicted",
        "skipped",
        "compacted",
        "history_truncated",
        "causal_cut",
        "causal_none",
        "causal_truncated",
    ] {
        assert!(seen.contains(outcome), "never reached {outcome}: {seen:?}");
    }
}
