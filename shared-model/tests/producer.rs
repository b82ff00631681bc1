//! The producer machine against a simulated world: the real coordinator state (the fold) as the log, a broker
//! topic, the local catalog and change buffer, and a fault tape that fails frontier requests, sends, proposals
//! (also with the reply lost after the log recorded them) and marks, raises reinitialize requests and restarts
//! the worker (a fresh machine; the catalog survives, as a committed transaction does).
//!
//! Checked after every step: the log records only copies the broker acknowledged, at their offsets, with their
//! kind; nothing is marked published that the log has not recorded; within one worker's life no batch is
//! acknowledged twice while the broker connection holds (a failed proposal does not resend); and once the faults stop, a few rounds publish
//! everything and answer every reinitialize request with a recorded snapshot.

use std::collections::{BTreeMap, BTreeSet};

mod common;

use common::{FaultTape, Harness};
use proptest::prelude::*;
use shared_model::protocol::producer::{Action, Input, LocalStream, LogView, Producer, SentCopy};
use shared_model::*;

struct World {
    /// The coordinators' log: the real fold.
    log: Harness,
    stream: StreamId,
    /// Local change buffer: seq → kind; the catalog's published seq.
    buffer: BTreeMap<u64, BatchKind>,
    published_seq: u64,
    /// The catalog's newest seq stored as about to be proposed.
    proposed_seq: u64,
    /// The topic: (seq, kind) per offset.
    topic: Vec<(u64, BatchKind)>,
    /// Seqs acknowledged by the broker during the current worker's life.
    acked_this_life: BTreeSet<u64>,
    tape: FaultTape,
    now_ms: u64,
    /// The server was restored from a backup older than the log (its buffer lacks recorded batches).
    restored: bool,
    /// The last send lost the broker connection.
    broker_lost: bool,
    /// The producer epoch this server holds.
    epoch: u64,
    /// The catalog's epoch of the last stored proposal.
    proposed_epoch: u64,
}

impl World {
    fn new(tape: Vec<u8>) -> Self {
        let mut world = World {
            log: Harness::new(),
            stream: StreamId::parse("cluster_a/public.t").unwrap(),
            buffer: BTreeMap::new(),
            published_seq: 0,
            proposed_seq: 0,
            topic: Vec::new(),
            acked_this_life: BTreeSet::new(),
            tape: FaultTape::new(tape),
            now_ms: 0,
            restored: false,
            broker_lost: false,
            epoch: 0,
            proposed_epoch: 0,
        };
        world
            .log
            .run(Command::RegisterCluster {
                name: ClusterName::parse("cluster_a").unwrap(),
                endpoint: "a".into(),
                capabilities: BTreeSet::new(),
                system_identifier: SystemIdentifier(1),
                known_epoch: None,
                takeover: false,
            })
            .unwrap();
        world
            .log
            .run(Command::PublishStream {
                stream: world.stream.clone(),
                columns: vec![ColumnDef::new("k", "int")],
                upstream: BTreeSet::new(),
                base_seq: 0,
            })
            .unwrap();
        world.epoch = world.log.fence("cluster_a").producer_epoch;
        world
    }

    fn committed(&self) -> u64 {
        self.log.state.frontier(&self.stream).map_or(0, |f| f.seq())
    }

    fn local(&self) -> LocalStream {
        LocalStream {
            stream: self.stream.clone(),
            published_seq: self.published_seq,
            proposed_seq: self.proposed_seq,
            proposed_epoch: self.proposed_epoch,
            last_batch_seq: self.buffer.keys().next_back().copied().unwrap_or(0),
            unpublished_snapshot: self.buffer.range(self.published_seq + 1..).any(|(_, k)| *k == BatchKind::Snapshot),
            columns_changed: false,
        }
    }

    fn refresh(&mut self, kind: BatchKind) -> u64 {
        let seq = self.buffer.keys().next_back().copied().unwrap_or(0) + 1;
        self.buffer.insert(seq, kind);
        seq
    }

    /// Performs one action as the worker would, with faults from the tape.
    fn perform(&mut self, action: &Action) -> Option<Input> {
        let stream = self.stream.clone();
        Some(match action {
            Action::Republish { .. } => Input::Republished { stream, result: Ok(()) },
            Action::FetchFrontier { after_seq, .. } => {
                assert_eq!(*after_seq, self.published_seq);
                let result = if self.tape.fails(5) {
                    Err("coordinator unreachable".to_string())
                } else {
                    let pending = self.log.state.streams()[&self.stream].pending_reinit.is_some();
                    let committed_epoch = self.log.state.streams()[&self.stream].producer_epoch;
                    Ok(LogView { committed_seq: self.committed(), committed_epoch, pending_reinit: pending })
                };
                Input::Frontier { stream, result }
            }
            Action::MarkPublished { seq, .. } => {
                assert!(*seq <= self.committed(), "marked {seq}, the log recorded only {}", self.committed());
                let result = if self.tape.fails(9) {
                    Err("could not commit".to_string())
                } else {
                    self.published_seq = self.published_seq.max(*seq);
                    Ok(())
                };
                Input::Marked { stream, seq: *seq, result }
            }
            Action::Restart { committed_seq, .. } => {
                // The worker renumbers: the snapshot is batch committed + 1, everything before counts published.
                assert!(self.restored, "a restart without a takeover");
                self.buffer.retain(|seq, _| *seq <= *committed_seq);
                self.buffer.insert(committed_seq + 1, BatchKind::Snapshot);
                self.published_seq = *committed_seq;
                self.proposed_seq = *committed_seq;
                self.proposed_epoch = self.epoch;
                Input::Restarted { stream, committed_seq: *committed_seq, result: Ok(()) }
            }
            Action::WriteSnapshot { .. } => {
                let last = self.refresh(BatchKind::Snapshot);
                Input::SnapshotWritten { stream, result: Ok(last) }
            }
            Action::Send { seq, .. } => {
                let kind = *self.buffer.get(seq).unwrap_or_else(|| panic!("send of {seq}, not in the buffer"));
                let result = if self.tape.fails(6) {
                    // The worker drops its producer on every send error and tells the machine; what that broker
                    // acknowledged may be sent again from now on.
                    self.broker_lost = true;
                    self.acked_this_life.clear();
                    Err("broker connection lost".to_string())
                } else {
                    assert!(self.acked_this_life.insert(*seq), "batch {seq} acknowledged twice in one worker's life");
                    self.topic.push((*seq, kind));
                    Ok(SentCopy { kind, offset: self.topic.len() as i64 - 1 })
                };
                Input::Sent { stream, seq: *seq, result }
            }
            Action::RecordProposal { seq, producer_epoch, .. } => {
                let result = if self.tape.fails(9) {
                    Err("could not commit".to_string())
                } else {
                    self.proposed_seq = self.proposed_seq.max(*seq);
                    self.proposed_epoch = *producer_epoch;
                    Ok(())
                };
                Input::ProposalRecorded { stream, seq: *seq, result }
            }
            Action::Propose { advances, .. } => {
                let last = advances.last().map_or(0, |a| a.seq);
                assert!(
                    last <= self.proposed_seq,
                    "proposed up to {last} before storing the intent ({})",
                    self.proposed_seq
                );
                for a in advances {
                    let (seq, kind) = self.topic[a.position.offset as usize];
                    assert_eq!((seq, kind), (a.seq, a.kind), "proposed a copy the broker does not hold there");
                }
                let result = if self.tape.fails(5) {
                    Err("no coordinator answered".to_string())
                } else {
                    let mut producer = self.log.fence("cluster_a");
                    producer.producer_epoch = self.epoch;
                    let applied = self.log.run(Command::AdvanceFrontier { producer, advances: advances.clone() });
                    // The reply may be lost after the log recorded it.
                    match applied {
                        Ok(_) if self.tape.fails(4) => Err("reply lost".to_string()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                Input::Proposed { stream, result }
            }
            Action::ReportError { .. } => return None,
        })
    }

    /// One worker round: the catalog in, then every action performed until none is left.
    fn round(&mut self, machine: &mut Producer) {
        self.now_ms += 150;
        machine.step(Input::Round { now_ms: self.now_ms, producer_epoch: self.epoch, streams: vec![self.local()] });
        let mut steps = 0;
        while let Some(action) = machine.next_action() {
            steps += 1;
            assert!(steps < 1_000, "a round does not end");
            if let Some(result) = self.perform(&action) {
                if std::mem::take(&mut self.broker_lost) {
                    machine.step(Input::BrokerLost);
                }
                machine.step(result);
            }
            self.check();
        }
    }

    fn check(&self) {
        assert!(self.published_seq <= self.committed());
        let frontier = self.log.state.frontier(&self.stream).unwrap();
        for seq in frontier.oldest_retained()..=frontier.seq() {
            let point = frontier.point(seq).unwrap().unwrap();
            let (copy_seq, kind) = self.topic[point.position.offset as usize];
            assert_eq!((copy_seq, kind), (seq, point.kind), "the log records a copy the broker does not hold");
            if !self.restored {
                assert_eq!(self.buffer[&seq], point.kind, "the log records a batch this server never made");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_producer_publishes_everything_once_whatever_fails(
        tape in prop::collection::vec(any::<u8>(), 0..400),
        events in prop::collection::vec(0u8..10, 1..60),
    ) {
        let mut world = World::new(tape);
        let mut machine = Producer::new();
        for event in events {
            match event {
                0..=4 => {
                    world.refresh(BatchKind::Delta);
                }
                5 => {
                    let _ = world.log.run(Command::RequestReinitialize { stream: world.stream.clone(), reason: "test".into() });
                }
                6 => {
                    // The worker restarts: a fresh machine, the catalog as committed.
                    machine = Producer::new();
                    world.acked_this_life.clear();
                }
                _ => {}
            }
            world.round(&mut machine);
        }
        // The faults stop: everything is published and every request answered, within a few rounds (after the
        // longest backoff).
        world.tape.on = false;
        world.now_ms += 5_000;
        for _ in 0..5 {
            world.round(&mut machine);
        }
        let last = world.buffer.keys().next_back().copied().unwrap_or(0);
        prop_assert_eq!(world.committed(), last);
        prop_assert_eq!(world.published_seq, last);
        prop_assert!(world.log.state.streams()[&world.stream].pending_reinit.is_none(), "a reinitialize request is unanswered");
    }
}

/// A server that published batches 1-3 is restored from a backup taken after batch 1 was proposed, then makes
/// `own_batches` of its own before its publisher reaches the coordinators (whose log holds the old 2 and 3). Its
/// publisher must stop the stream, never adopting the log's position.
fn restored_server_stops(own_batches: usize) {
    let mut world = World::new(Vec::new());
    world.tape.on = false;
    let mut machine = Producer::new();
    for _ in 0..3 {
        world.refresh(BatchKind::Delta);
    }
    world.round(&mut machine);
    assert_eq!(world.published_seq, 3);
    world.buffer.retain(|seq, _| *seq <= 1);
    world.restored = true;
    world.published_seq = 1;
    world.proposed_seq = 1;
    for _ in 0..own_batches {
        world.refresh(BatchKind::Delta);
    }
    let mut machine = Producer::new();
    world.now_ms += 1_000;
    machine.step(Input::Round { now_ms: world.now_ms, producer_epoch: world.epoch, streams: vec![world.local()] });
    let fetch = machine.next_action().unwrap();
    machine.step(world.perform(&fetch).unwrap());
    match machine.next_action() {
        Some(Action::ReportError { error, .. }) => assert!(error.contains("behind the log"), "{error}"),
        other => panic!("expected the stream to stop, got {other:?}"),
    }
    assert_eq!(world.published_seq, 1, "the restored server adopted the log's position");

    // The repair: the operator takes the cluster name over; the stream restarts with a snapshot as batch 4, the
    // log's next seq, recorded under the new epoch.
    let taken = world.log.run(Command::RegisterCluster {
        name: ClusterName::parse("cluster_a").unwrap(),
        endpoint: "a".into(),
        capabilities: BTreeSet::new(),
        system_identifier: SystemIdentifier(1),
        known_epoch: Some(world.epoch),
        takeover: true,
    });
    let Ok(Applied { events, .. }) = taken else { panic!("{taken:?}") };
    let Event::ClusterTakenOver { producer_epoch, .. } = events[0] else { panic!("{events:?}") };
    world.epoch = producer_epoch;
    for _ in 0..3 {
        world.now_ms += 5_000;
        world.round(&mut machine);
    }
    assert_eq!(world.committed(), 4);
    let point = world.log.state.frontier(&world.stream).unwrap().point(4).unwrap().unwrap();
    assert_eq!(point.kind, BatchKind::Snapshot);
    assert_eq!(world.log.state.streams()[&world.stream].producer_epoch, producer_epoch);
    assert_eq!(world.published_seq, 4);
    // Later batches follow under the new epoch.
    world.refresh(BatchKind::Delta);
    world.round(&mut machine);
    assert_eq!(world.committed(), 5);
}

#[test]
fn a_log_ahead_of_the_server_is_never_adopted() {
    restored_server_stops(0);
}

#[test]
fn a_restored_server_with_newer_batches_of_its_own_does_not_adopt_the_log_either() {
    // Its own newest batch (5) is past the log's 3, but the log's 2 and 3 are not its batches.
    restored_server_stops(4);
}
