//! The producer's side of the publish protocol as a pure state machine, in the style of raft-rs's `RawNode` /
//! `Ready`: the publisher worker feeds it [`Input`]s (what its catalog says at the start of a round, and the result
//! of every action it performed) and performs the [`Action`]s it returns, one at a time, in order. Every protocol
//! decision is taken here; the worker only does I/O. The deterministic simulation runs the same machine.
//!
//! Per stream, one round goes:
//! 1. publish the columns again if the defining query changed them;
//! 2. ask the log for the stream's committed frontier after `published_seq`:
//!    - a frontier recorded under a newer producer epoch than this server's stops the stream: another server took
//!      the cluster name over;
//!    - a frontier recorded under an older epoch than this server's restarts the stream (this server took the
//!      name over) unless it is this server's own history (same seq, recorded under the epoch this server last
//!      proposed under): a snapshot batch becomes the log's next seq;
//!    - a frontier ahead of the newest batch this server ever proposed, under its own epoch, stops the stream (a
//!      restored or promoted server must never adopt another history's position, even when it has made batches
//!      of its own up to and past that seq since: the simulation found a restored server that did so and applied
//!      another history); the repair is a takeover, which makes the previous case;
//!    - batches the log recorded but this server has not marked (a crash between proposal and local commit) are
//!      marked now;
//!    - a pending reinitialize request without an unpublished snapshot makes a snapshot batch;
//! 3. send the batches after what is published and already sent, one by one, each acknowledged by the broker;
//! 4. store locally that they are about to be proposed (`proposed_seq`), propose them all in one request, and
//!    only once the log accepted them mark them published.
//!
//! The order makes every crash repeat work instead of losing it: a batch sent but not recorded is sent again with
//! the same seq; a batch recorded but not marked is recognised in step 2. Batches the broker acknowledged stay
//! held between rounds until the log records them, so a failed proposal never sends them again — unless the
//! broker connection was lost meanwhile ([`Input::BrokerLost`]): what a restarted broker acknowledged last may be
//! gone, and recording a copy it lost would cost every consumer a snapshot. Streams are
//! independent: one stream's failure backs off that stream alone (200 ms doubling to 5 s, on the time the worker
//! passes in) and never stops the others.

use std::collections::{BTreeMap, VecDeque};

use crate::{BatchKind, BrokerPosition, FrontierAdvance, StreamId};

/// Batches sent per stream before they are proposed (one proposal per stream per round).
pub const BATCHES_PER_PROPOSAL: u64 = 64;
/// First retry delay of a failing stream.
pub const RETRY_MIN_MS: u64 = 200;
/// Longest retry delay of a failing stream.
pub const RETRY_MAX_MS: u64 = 5_000;

/// A published stream as the producer's catalog shows it at the start of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStream {
    pub stream: StreamId,
    /// The newest batch the broker acknowledged AND the log recorded AND this server marked.
    pub published_seq: u64,
    /// The newest batch this server ever proposed to the log (stored before each proposal): a log that recorded
    /// more holds another server's history (a backup restored here, a promoted standby).
    pub proposed_seq: u64,
    /// The producer epoch this server held when it last stored a proposal (or restarted the stream); 0 before
    /// any. The log's batches up to this server's own seq are this server's history only if they were recorded
    /// under this epoch too: a new server with a stream table of the same name, whose seqs merely happen to
    /// agree, does not pass for it.
    pub proposed_epoch: u64,
    /// The newest batch the stream table's refreshes wrote.
    pub last_batch_seq: u64,
    /// A snapshot batch after `published_seq` is waiting in the change buffer.
    pub unpublished_snapshot: bool,
    /// The defining query's columns differ from the published ones.
    pub columns_changed: bool,
}

/// What the log says about one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogView {
    /// The newest batch the log recorded.
    pub committed_seq: u64,
    /// The producer epoch it was recorded under (the cluster's epoch at publication when none was).
    pub committed_epoch: u64,
    /// A reinitialize request waits for a snapshot batch.
    pub pending_reinit: bool,
}

/// A batch copy the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentCopy {
    pub kind: BatchKind,
    /// Offset of the batch's last message.
    pub offset: i64,
}

/// What the worker tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A new round, with the catalog as read now (this server's producer epoch included) and the worker's
    /// monotonic clock.
    Round { now_ms: u64, producer_epoch: u64, streams: Vec<LocalStream> },
    /// [`Action::Republish`] done.
    Republished { stream: StreamId, result: Result<(), String> },
    /// [`Action::FetchFrontier`] answered.
    Frontier { stream: StreamId, result: Result<LogView, String> },
    /// [`Action::Restart`] done.
    Restarted { stream: StreamId, committed_seq: u64, result: Result<(), String> },
    /// [`Action::WriteSnapshot`] done: the stream's newest batch seq afterwards.
    SnapshotWritten { stream: StreamId, result: Result<u64, String> },
    /// [`Action::Send`] acknowledged (or refused) by the broker.
    Sent { stream: StreamId, seq: u64, result: Result<SentCopy, String> },
    /// [`Action::RecordProposal`] committed locally.
    ProposalRecorded { stream: StreamId, seq: u64, result: Result<(), String> },
    /// [`Action::Propose`] accepted (or refused) by the log.
    Proposed { stream: StreamId, result: Result<(), String> },
    /// [`Action::MarkPublished`] committed locally.
    Marked { stream: StreamId, seq: u64, result: Result<(), String> },
    /// The worker lost its broker connection (and made a new producer): copies that broker acknowledged but the
    /// log has not recorded are no longer trusted (a broker that restarted may not have kept what it acknowledged
    /// last), so they are sent again.
    BrokerLost,
}

/// What the machine asks the worker to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish the stream's (changed) columns again.
    Republish { stream: StreamId },
    /// Ask the log for the stream's committed frontier after `after_seq`.
    FetchFrontier { stream: StreamId, after_seq: u64 },
    /// Record locally that batches up to `seq` are published (the change buffer may then be pruned).
    MarkPublished { stream: StreamId, seq: u64 },
    /// Write a snapshot batch (REINITIALIZE refresh) for a pending reinitialize request.
    WriteSnapshot { stream: StreamId },
    /// Restart the stream under this server's (newer) producer epoch: in one local transaction, write a snapshot
    /// batch and renumber so that it is batch `committed_seq + 1`, with everything before it published, and store
    /// the epoch as the one proposals are made under. Unsent local batches are dropped; the snapshot covers them.
    Restart { stream: StreamId, committed_seq: u64 },
    /// Send batch `seq` to the broker and wait for its acknowledgement.
    Send { stream: StreamId, seq: u64 },
    /// Store locally, durably, that batches up to `seq` are about to be proposed under `producer_epoch` (before
    /// [`Action::Propose`]).
    RecordProposal { stream: StreamId, seq: u64, producer_epoch: u64 },
    /// Record these batches in the log.
    Propose { stream: StreamId, advances: Vec<FrontierAdvance> },
    /// The stream failed this round (it is retried after its backoff); show the error.
    ReportError { stream: StreamId, error: String },
}

impl Action {
    /// The stream the action is about.
    pub fn stream(&self) -> &StreamId {
        match self {
            Action::Republish { stream }
            | Action::FetchFrontier { stream, .. }
            | Action::MarkPublished { stream, .. }
            | Action::WriteSnapshot { stream }
            | Action::Restart { stream, .. }
            | Action::Send { stream, .. }
            | Action::RecordProposal { stream, .. }
            | Action::Propose { stream, .. }
            | Action::ReportError { stream, .. } => stream,
        }
    }
}

/// What one stream learned in the current round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RoundFacts {
    active: bool,
    republished: bool,
    view: Option<LogView>,
    /// This server's own newest seq (proposed or published) when the view arrived: the view is compared with
    /// it, not with what this round proposes afterwards.
    own_at_view: u64,
    snapshot_written: bool,
    proposed: bool,
}

/// One stream's state, kept between rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamState {
    local: LocalStream,
    /// Acknowledged by the broker, not yet known to be recorded: kept so that a failed proposal is retried
    /// without sending them again.
    sent: BTreeMap<u64, SentCopy>,
    round: RoundFacts,
    retry_at_ms: u64,
    backoff_ms: u64,
}

/// The producer state machine.
#[derive(Debug, Clone, Default)]
pub struct Producer {
    streams: BTreeMap<StreamId, StreamState>,
    ready: VecDeque<Action>,
    now_ms: u64,
    producer_epoch: u64,
    sent_this_round: bool,
}

impl Producer {
    /// A producer that holds nothing (a worker that just started).
    pub fn new() -> Self {
        Producer::default()
    }

    /// Feeds one input; the actions it leads to are queued for [`Producer::next_action`].
    pub fn step(&mut self, input: Input) {
        match input {
            Input::Round { now_ms, producer_epoch, streams } => {
                self.producer_epoch = producer_epoch;
                self.start_round(now_ms, streams)
            }
            Input::Restarted { stream, committed_seq, result } => {
                let Some(state) = self.streams.get_mut(&stream) else { return };
                if !state.round.active {
                    return;
                }
                match result {
                    Ok(()) => {
                        // Everything up to the log's seq counts as published; the snapshot goes next round.
                        state.local.published_seq = committed_seq;
                        state.local.proposed_seq = committed_seq;
                        state.local.proposed_epoch = self.producer_epoch;
                        state.local.last_batch_seq = committed_seq + 1;
                        state.local.unpublished_snapshot = true;
                        state.sent.clear();
                        state.round.active = false;
                        state.backoff_ms = 0;
                    }
                    Err(error) => self.fail(&stream, error),
                }
            }
            Input::Republished { stream, result } => {
                self.on_result(&stream, result.map(|()| |s: &mut StreamState| s.round.republished = true))
            }
            Input::Frontier { stream, result } => self.on_result(
                &stream,
                result.map(|view| {
                    move |s: &mut StreamState| {
                        s.round.view = Some(view);
                        s.round.own_at_view = s.local.proposed_seq.max(s.local.published_seq);
                    }
                }),
            ),
            Input::SnapshotWritten { stream, result } => self.on_result(
                &stream,
                result.map(|last| {
                    move |s: &mut StreamState| {
                        s.round.snapshot_written = true;
                        s.local.unpublished_snapshot = true;
                        s.local.last_batch_seq = s.local.last_batch_seq.max(last);
                    }
                }),
            ),
            Input::Sent { stream, seq, result } => {
                // A copy whose position is unknown cannot be recorded (consumers find batches by it): sent again.
                let result = result.and_then(|copy| match copy.offset {
                    offset if offset < 0 => Err(format!("the broker acknowledged batch {seq} without an offset")),
                    _ => Ok(copy),
                });
                let ok = result.is_ok();
                self.on_result(
                    &stream,
                    result.map(|copy| {
                        move |s: &mut StreamState| {
                            s.sent.insert(seq, copy);
                        }
                    }),
                );
                self.sent_this_round |= ok;
            }
            Input::ProposalRecorded { stream, seq, result } => {
                let epoch = self.producer_epoch;
                self.on_result(
                    &stream,
                    result.map(|()| {
                        move |s: &mut StreamState| {
                            s.local.proposed_seq = s.local.proposed_seq.max(seq);
                            s.local.proposed_epoch = epoch;
                        }
                    }),
                )
            }
            Input::Proposed { stream, result } => {
                self.on_result(&stream, result.map(|()| |s: &mut StreamState| s.round.proposed = true))
            }
            Input::BrokerLost => {
                for state in self.streams.values_mut() {
                    state.sent.clear();
                }
            }
            Input::Marked { stream, seq, result } => self.on_result(
                &stream,
                result.map(|()| {
                    move |s: &mut StreamState| {
                        s.local.published_seq = s.local.published_seq.max(seq);
                        s.sent.retain(|held, _| *held > seq);
                        s.backoff_ms = 0;
                    }
                }),
            ),
        }
    }

    /// The next action to perform, if any; the round is over when there is none.
    pub fn next_action(&mut self) -> Option<Action> {
        self.ready.pop_front()
    }

    /// Whether any batch was sent in the current round.
    pub fn sent_this_round(&self) -> bool {
        self.sent_this_round
    }

    fn start_round(&mut self, now_ms: u64, streams: Vec<LocalStream>) {
        self.now_ms = now_ms;
        self.sent_this_round = false;
        self.ready.clear();
        let mut next = BTreeMap::new();
        for local in streams {
            let mut state = self.streams.remove(&local.stream).unwrap_or_else(|| StreamState {
                local: local.clone(),
                sent: BTreeMap::new(),
                round: RoundFacts::default(),
                retry_at_ms: 0,
                backoff_ms: 0,
            });
            // Copies at or below what is now marked are recorded: drop them.
            state.sent.retain(|seq, _| *seq > local.published_seq);
            // A proposal recorded in this worker's life committed, whatever the catalog read shows.
            let proposed_seq = local.proposed_seq.max(state.local.proposed_seq);
            let proposed_epoch = local.proposed_epoch.max(state.local.proposed_epoch);
            state.local = LocalStream { proposed_seq, proposed_epoch, ..local };
            state.round = RoundFacts { active: now_ms >= state.retry_at_ms, ..RoundFacts::default() };
            next.insert(state.local.stream.clone(), state);
        }
        self.streams = next; // streams no longer published are forgotten
        let ids: Vec<StreamId> = self.streams.keys().cloned().collect();
        for id in ids {
            self.advance(&id);
        }
    }

    /// Applies a result to its stream and queues the stream's next action; an error ends the stream's round.
    fn on_result<F: FnOnce(&mut StreamState)>(&mut self, stream: &StreamId, result: Result<F, String>) {
        let Some(state) = self.streams.get_mut(stream) else { return };
        if !state.round.active {
            return;
        }
        match result {
            Ok(update) => {
                update(state);
                self.advance(stream);
            }
            Err(error) => self.fail(stream, error),
        }
    }

    fn fail(&mut self, stream: &StreamId, error: String) {
        let Some(state) = self.streams.get_mut(stream) else { return };
        state.round.active = false;
        state.backoff_ms = (state.backoff_ms * 2).clamp(RETRY_MIN_MS, RETRY_MAX_MS);
        state.retry_at_ms = self.now_ms + state.backoff_ms;
        self.ready.push_back(Action::ReportError { stream: stream.clone(), error });
    }

    /// Queues what the stream does next this round, from what it learned so far.
    fn advance(&mut self, id: &StreamId) {
        let Some(state) = self.streams.get(id) else { return };
        if !state.round.active {
            return;
        }
        match next_step(state, self.producer_epoch) {
            Next::Do(action) => self.ready.push_back(action),
            Next::Fail(error) => self.fail(id, error),
            Next::Done => {
                let state = self.streams.get_mut(id).expect("present");
                state.round.active = false;
            }
        }
    }
}

enum Next {
    Do(Action),
    Fail(String),
    Done,
}

/// The protocol's order for one stream (see the module documentation).
fn next_step(state: &StreamState, producer_epoch: u64) -> Next {
    let local = &state.local;
    let round = &state.round;
    let stream = local.stream.clone();
    if local.columns_changed && !round.republished {
        return Next::Do(Action::Republish { stream });
    }
    let Some(view) = round.view else {
        return Next::Do(Action::FetchFrontier { stream, after_seq: local.published_seq });
    };
    let own = round.own_at_view;
    if view.committed_epoch > producer_epoch {
        return Next::Fail(format!(
            "the coordinators' log recorded batch {} of {stream} under producer epoch {}, newer than this server's \
             epoch {producer_epoch}: another server took this cluster name over, so this server must not publish \
             (if it is the rightful producer, take the name back with pgtrickle.register_federation(..., takeover => true))",
            view.committed_seq, view.committed_epoch
        ));
    }
    let mine = view.committed_seq == own && view.committed_epoch == local.proposed_epoch;
    if view.committed_epoch < producer_epoch && local.proposed_epoch < producer_epoch && !mine {
        // Taken over: the log's history of this stream is another server's (or an older copy of this one's).
        return Next::Do(Action::Restart { stream, committed_seq: view.committed_seq });
    }
    if view.committed_seq > own && !crate::planted::planted(crate::planted::Bug::AdoptLogAhead) {
        return Next::Fail(format!(
            "the coordinators' log records batch {} of {stream}, but this server never proposed past batch {own} \
             (its newest batch is {}): the log holds another server's history, so this server is behind the log \
             (restored from a backup, or a promoted standby?); publishing of this stream is stopped so that \
             consumers never apply another history. Repair: take the cluster name over with \
             SELECT pgtrickle.register_federation(url, name, takeover => true); under the new producer epoch the \
             stream restarts with a snapshot batch (a REINITIALIZE) that consumers apply in place of what they have",
            view.committed_seq, local.last_batch_seq
        ));
    }
    if view.committed_seq > local.published_seq && !round.proposed {
        // Recorded by the log before a crash, never marked here.
        return Next::Do(Action::MarkPublished { stream, seq: view.committed_seq });
    }
    if view.pending_reinit && !local.unpublished_snapshot && !round.snapshot_written && !round.proposed {
        return Next::Do(Action::WriteSnapshot { stream });
    }
    let last_sent = state.sent.keys().next_back().copied().unwrap_or(0).max(local.published_seq);
    let limit = local.last_batch_seq.min(local.published_seq + BATCHES_PER_PROPOSAL);
    if !round.proposed && last_sent < limit {
        return Next::Do(Action::Send { stream, seq: last_sent + 1 });
    }
    if !round.proposed && !state.sent.is_empty() {
        let last = *state.sent.keys().next_back().expect("not empty");
        if local.proposed_seq < last || local.proposed_epoch != producer_epoch {
            return Next::Do(Action::RecordProposal { stream, seq: last, producer_epoch });
        }
        let advances = state
            .sent
            .iter()
            .map(|(seq, copy)| FrontierAdvance {
                stream: stream.clone(),
                seq: *seq,
                kind: copy.kind,
                position: BrokerPosition { partition: 0, offset: copy.offset },
            })
            .collect();
        return Next::Do(Action::Propose { stream, advances });
    }
    if round.proposed {
        if let Some(last) = state.sent.keys().next_back() {
            return Next::Do(Action::MarkPublished { stream, seq: *last });
        }
    }
    Next::Done
}
