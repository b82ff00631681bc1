//! The consumer machine against a simulated world: the real coordinator state (the fold) as the log, one topic
//! per source with unrecorded copies (a producer that resent), late records and broker data loss, a fault tape
//! that fails frontier requests, applies, reinitialize requests and polls (also delivering partial reads and
//! duplicates), and worker restarts (a fresh machine; the catalog keeps what committed applies stored).
//!
//! Checked at every apply, against the real log (not the answers the machine saw): every applied batch is
//! committed, each seq once and in order (or a jump to a committed snapshot), the applied copy is the one the
//! log recorded (offset and kind) even when the producer sent several, and in causal mode every applied state is
//! a cut; no forged message (same stream, seq and offset as a real one, signed with another key) is ever
//! applied. Once the faults stop, a few rounds apply everything the log recorded.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use common::{FaultTape, Harness};
use proptest::prelude::*;
use shared_model::apply::is_consistent;
use shared_model::envelope::{Batch, RowAction, RowChange};
use shared_model::protocol::consumer::{
    Action, AnswerError, ApplyFailure, Consumer, FrontierAnswer, Input, Message, SourceConfig,
};
use shared_model::*;

const TABLE: i64 = 7;

fn federation_key() -> MessageKey {
    MessageKey::from_bytes([3; 32])
}

struct Source {
    id: StreamId,
    /// The topic: (seq, kind) per offset; `None` where the broker lost the message.
    topic: Vec<Option<(u64, BatchKind)>>,
    /// The producer's batches: seq → kind.
    made: BTreeMap<u64, BatchKind>,
    /// Batches sent but not recorded yet: seq → offset.
    unrecorded: BTreeMap<u64, i64>,
    /// The consumer's catalog row.
    applied_seq: u64,
    applied_offset: Option<i64>,
    incarnation: Option<u64>,
    /// The consumer's read position (next offset), as assigned.
    read_next: usize,
}

struct World {
    /// The coordinators' log: the real fold.
    log: Harness,
    sources: Vec<Source>,
    consistency: Consistency,
    tape: FaultTape,
    now_ms: u64,
    applies: usize,
}

impl World {
    fn new(tape: Vec<u8>, causal: bool) -> Self {
        let ids: Vec<StreamId> =
            ["cluster_a/public.s", "cluster_b/public.t"].iter().map(|s| StreamId::parse(s).unwrap()).collect();
        let mut world = World {
            log: Harness::new(),
            sources: ids
                .iter()
                .map(|id| Source {
                    id: id.clone(),
                    topic: Vec::new(),
                    made: BTreeMap::new(),
                    unrecorded: BTreeMap::new(),
                    applied_seq: 0,
                    applied_offset: None,
                    incarnation: None,
                    read_next: 0,
                })
                .collect(),
            consistency: if causal { Consistency::Causal } else { Consistency::Eventual },
            tape: FaultTape::new(tape),
            now_ms: 0,
            applies: 0,
        };
        for cluster in ["cluster_a", "cluster_b", "cluster_c"] {
            world
                .log
                .run(Command::RegisterCluster {
                    name: ClusterName::parse(cluster).unwrap(),
                    endpoint: cluster.into(),
                    capabilities: BTreeSet::new(),
                    system_identifier: SystemIdentifier(cluster.len() as u64),
                    known_epoch: None,
                    takeover: false,
                })
                .unwrap();
        }
        for id in &ids {
            world
                .log
                .run(Command::PublishStream {
                    stream: id.clone(),
                    columns: vec![ColumnDef::new("k", "int")],
                    upstream: BTreeSet::new(),
                    base_seq: 0,
                })
                .unwrap();
        }
        let sources = ids
            .iter()
            .map(|id| {
                let url = format!("kafka://coordinator/{}/{}", id.cluster(), id.0.qualified_name());
                SourceUrl::parse(&url).unwrap()
            })
            .collect();
        world
            .log
            .run(Command::CreateFederatedTable {
                table: FederatedTableId::parse("cluster_c/public.dash").unwrap(),
                sources,
                consistency: world.consistency,
            })
            .unwrap();
        // Bootstrap: each source's first batch is a snapshot.
        for i in 0..2 {
            world.produce(i, BatchKind::Snapshot, true);
        }
        world
    }

    fn frontier(&self, i: usize) -> &Frontier {
        self.log.state.frontier(&self.sources[i].id).unwrap()
    }

    /// The producer makes a batch and sends it; it is recorded now, or later (`record_pending`).
    fn produce(&mut self, i: usize, kind: BatchKind, record_now: bool) {
        let source = &mut self.sources[i];
        let seq = source.made.keys().next_back().copied().unwrap_or(0) + 1;
        source.made.insert(seq, kind);
        source.topic.push(Some((seq, kind)));
        source.unrecorded.insert(seq, source.topic.len() as i64 - 1);
        if record_now {
            self.record_pending(i);
        }
    }

    /// A producer that dies between the broker's ack and the record resends the batch: another copy.
    fn resend(&mut self, i: usize) {
        let source = &mut self.sources[i];
        if let Some((&seq, _)) = source.unrecorded.iter().next() {
            let kind = source.made[&seq];
            source.topic.push(Some((seq, kind)));
            source.unrecorded.insert(seq, source.topic.len() as i64 - 1);
        }
    }

    fn record_pending(&mut self, i: usize) {
        let pending: Vec<(u64, i64)> = self.sources[i].unrecorded.iter().map(|(s, o)| (*s, *o)).collect();
        if pending.is_empty() {
            return;
        }
        let advances = pending
            .iter()
            .map(|(seq, offset)| FrontierAdvance {
                stream: self.sources[i].id.clone(),
                seq: *seq,
                kind: self.sources[i].made[seq],
                position: BrokerPosition { partition: 0, offset: *offset },
            })
            .collect();
        let producer = self.log.fence(self.sources[i].id.cluster().as_str());
        self.log.run(Command::AdvanceFrontier { producer, advances }).expect("the producer's advances are valid");
        self.sources[i].unrecorded.clear();
    }

    /// The broker restarts empty: everything it held is gone (offsets continue, as a new log would not; the
    /// messages are just missing).
    fn lose_broker_data(&mut self) {
        for source in &mut self.sources {
            for slot in &mut source.topic {
                *slot = None;
            }
        }
    }

    /// Answers pending reinitialize requests with a snapshot batch, as the producer does.
    fn answer_reinit(&mut self) {
        for i in 0..2 {
            if self.log.state.streams()[&self.sources[i].id].pending_reinit.is_some()
                && self.sources[i].unrecorded.is_empty()
            {
                self.produce(i, BatchKind::Snapshot, true);
            }
        }
    }

    fn configs(&self) -> Vec<SourceConfig> {
        self.sources
            .iter()
            .map(|s| SourceConfig {
                stream: s.id.clone(),
                table: TABLE,
                consistency: self.consistency,
                applied_seq: s.applied_seq,
                applied_offset: s.applied_offset,
                incarnation: s.incarnation,
            })
            .collect()
    }

    fn source_index(&self, id: &StreamId) -> usize {
        self.sources.iter().position(|s| &s.id == id).unwrap()
    }

    fn perform(&mut self, machine: &Consumer, action: Action) -> Option<Input> {
        Some(match action {
            Action::Assign { positions } => {
                if self.tape.fails(11) {
                    return Some(Input::Assigned { result: Err("broker unreachable".into()) });
                }
                for (id, next) in positions {
                    let i = self.source_index(&id);
                    self.sources[i].read_next = next.unwrap_or(0).max(0) as usize;
                }
                Input::Assigned { result: Ok(()) }
            }
            Action::Poll => {
                let mut messages = Vec::new();
                for i in 0..2 {
                    let limit = if self.tape.fails(3) { 1 } else { usize::MAX };
                    let source = &mut self.sources[i];
                    let mut taken = 0;
                    while source.read_next < source.topic.len() && taken < limit {
                        if let Some((seq, kind)) = source.topic[source.read_next] {
                            let mut batch = Batch {
                                stream: source.id.clone(),
                                incarnation: self.log.state.streams()[&source.id].incarnation,
                                producer_epoch: 1,
                                seq,
                                kind,
                                columns: vec![],
                                rows: vec![],
                            };
                            let payload = batch.encode_chunks(1 << 20, &federation_key()).unwrap().remove(0);
                            let offset = source.read_next as i64;
                            if self.tape.fails(4) {
                                // A forger's copy at the same place: a row the producer never wrote.
                                batch.rows.push(RowChange { action: RowAction::Insert, row_id: 666, values: vec![] });
                                let forged =
                                    batch.encode_chunks(1 << 20, &MessageKey::from_bytes([4; 32])).unwrap().remove(0);
                                messages.push(Message { stream: source.id.clone(), offset, payload: forged });
                            }
                            messages.push(Message { stream: source.id.clone(), offset, payload });
                        }
                        source.read_next += 1;
                        taken += 1;
                    }
                }
                Input::Polled { messages, error: None, disconnected: false }
            }
            Action::FetchFrontiers { after } => {
                let mut answers = Vec::new();
                for (id, after_seq) in after {
                    if self.tape.fails(7) {
                        answers.push((id, Err(AnswerError::Unreachable("no coordinator answered".to_string()))));
                        break;
                    }
                    let i = self.source_index(&id);
                    let view = FrontierAnswer {
                        frontier: self.frontier(i).tail_after(after_seq),
                        pending_reinit: self.log.state.streams()[&id].pending_reinit.is_some(),
                        as_of: self.log.state.last_applied(),
                        incarnation: self.log.state.streams()[&id].incarnation,
                    };
                    answers.push((id, Ok(view)));
                    // The next answers may reflect a later log: batches already sent are recorded meanwhile,
                    // this source's first (so that a cut over the answers as read would not be one).
                    if self.tape.fails(3) {
                        self.record_pending(i);
                        self.record_pending(1 - i);
                    }
                }
                Input::Frontiers { answers }
            }
            Action::Apply { table, cut_at, seqs } => {
                assert_eq!(table, TABLE);
                let applied: Vec<(StreamId, u64)> =
                    seqs.iter().filter_map(|(s, q)| q.last().map(|l| (s.clone(), *l))).collect();
                if self.tape.fails(8) {
                    return Some(Input::Applied {
                        table,
                        applied,
                        result: Err(ApplyFailure::Failed("could not serialize access".into())),
                    });
                }
                for (id, path) in &seqs {
                    let i = self.source_index(id);
                    let frontier = self.frontier(i).clone();
                    let mut current = self.sources[i].applied_seq;
                    let mut offset = self.sources[i].applied_offset;
                    for (n, seq) in path.iter().enumerate() {
                        assert!(
                            *seq <= frontier.seq(),
                            "{id}: applied {seq} beyond the committed frontier {}",
                            frontier.seq()
                        );
                        let point = *frontier.point(*seq).unwrap().expect("a retained point");
                        let jump = n == 0 && *seq > current && point.kind == BatchKind::Snapshot;
                        assert!(*seq == current + 1 || jump, "{id}: seq {seq} after {current}");
                        let held = machine.held(id, *seq).expect("applied from a held batch");
                        assert_eq!(held.batch.seq, *seq);
                        assert!(held.batch.rows.is_empty(), "{id}: applied a forged batch");
                        assert_eq!(held.batch.kind, point.kind, "{id}: applied a copy of another kind");
                        assert_eq!(
                            held.offset, point.position.offset,
                            "{id}: applied the copy of {seq} at offset {}; the log recorded the one at {}",
                            held.offset, point.position.offset
                        );
                        current = *seq;
                        offset = Some(offset.map_or(held.offset, |o| o.max(held.offset)));
                    }
                    self.sources[i].applied_seq = current;
                    self.sources[i].applied_offset = offset;
                }
                if let Some(t) = cut_at {
                    assert_eq!(self.consistency, Consistency::Causal);
                    let assignment: BTreeMap<StreamId, u64> =
                        self.sources.iter().map(|s| (s.id.clone(), s.applied_seq)).collect();
                    let frontiers: BTreeMap<StreamId, Frontier> =
                        (0..2).map(|i| (self.sources[i].id.clone(), self.frontier(i).clone())).collect();
                    assert!(
                        is_consistent(&assignment, &frontiers),
                        "applied {assignment:?} is not a cut (planned at {t})"
                    );
                } else {
                    assert_eq!(self.consistency, Consistency::Eventual);
                }
                self.applies += 1;
                Input::Applied { table, applied, result: Ok(()) }
            }
            Action::RequestReinitialize { stream, reason } => {
                let result = if self.tape.fails(5) {
                    Err("no coordinator answered".to_string())
                } else {
                    self.log
                        .run(Command::RequestReinitialize { stream: stream.clone(), reason })
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                Input::ReinitRequested { stream, result }
            }
            Action::Reset { stream, incarnation, forget, .. } => {
                let i = self.source_index(&stream);
                assert!(!forget, "{stream}: reset to {incarnation} although the incarnation never changed");
                self.sources[i].incarnation = Some(incarnation);
                Input::Reset { stream, result: Ok(()) }
            }
            Action::RefreshFederated { .. } | Action::SetStatus { .. } => return None,
        })
    }

    fn round(&mut self, machine: &mut Consumer) {
        self.now_ms += 700;
        machine.step(Input::Round {
            now_ms: self.now_ms,
            wall_ms: self.now_ms,
            connected: true,
            key: federation_key(),
            sources: self.configs(),
        });
        let mut steps = 0;
        while let Some(action) = machine.next_action() {
            steps += 1;
            assert!(steps < 1_000, "a round does not end");
            if let Some(input) = self.perform(machine, action) {
                machine.step(input);
            }
        }
    }
}

fn run(tape: Vec<u8>, events: Vec<u8>, causal: bool) -> Result<(), TestCaseError> {
    let mut world = World::new(tape, causal);
    let mut machine = Consumer::new();
    for event in events {
        match event {
            0..=3 => world.produce((event % 2) as usize, BatchKind::Delta, true),
            4 => world.produce(0, BatchKind::Delta, false),
            9 => world.produce(1, BatchKind::Delta, false),
            5 => world.resend(0),
            6 => {
                world.record_pending(0);
                world.record_pending(1);
            }
            7 => machine = Consumer::new(),
            8 => world.lose_broker_data(),
            _ => {}
        }
        world.answer_reinit();
        world.round(&mut machine);
    }
    // The faults stop (losses are answered by snapshots, which takes rounds and the loss timeout).
    world.tape.on = false;
    world.record_pending(0);
    world.record_pending(1);
    for _ in 0..40 {
        world.answer_reinit();
        world.round(&mut machine);
    }
    for i in 0..2 {
        prop_assert_eq!(world.sources[i].applied_seq, world.frontier(i).seq(), "source {} did not catch up", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_eventual_consumer_applies_what_the_log_recorded_once_in_order(
        tape in prop::collection::vec(any::<u8>(), 0..300),
        events in prop::collection::vec(0u8..12, 1..40),
    ) {
        run(tape, events, false)?;
    }

    #[test]
    fn the_causal_consumer_only_ever_shows_cuts(
        tape in prop::collection::vec(any::<u8>(), 0..300),
        events in prop::collection::vec(0u8..12, 1..40),
    ) {
        run(tape, events, true)?;
    }
}
