//! The consumer's side of the apply protocol as a pure state machine (raft-rs's `RawNode` / `Ready` shape): the
//! subscriber worker feeds it [`Input`]s — the catalog at the start of a round, what the broker delivered, what the
//! coordinators' log says, how each apply ended — and performs the [`Action`]s it returns, in order. Every
//! protocol decision is taken here ([`crate::apply`] plans which batches may be applied); the worker only does I/O.
//!
//! One round: (re)assign the broker positions when the sources changed or one must be read again from the start;
//! poll the broker and reassemble batches; ask the log for each source's frontier after what it applied; then per
//! federated table:
//! - eventual: each source up to its own committed frontier, one apply (transaction) per source, then one refresh
//!   of the federated stream table if anything was applied;
//! - causal: every source up to the newest cut whose batches are all at hand, in ONE apply that also refreshes
//!   the table; frontiers read at different log indexes are first cut back to the oldest (`as_of`).
//!
//! Every message must carry the federation's authentication tag ([`crate::message_key`]) and the incarnation
//! of the stream the consumer follows: a forged or foreign message is refused and counted, a message of another
//! incarnation (the stream was unpublished and published again, or dropped and re-created) is never applied.
//! When the log names a new incarnation, the source is reset (its mirror emptied, its position forgotten) and
//! bootstraps again like a new one. A source the coordinators refuse to answer about (the stream is gone) shows
//! the error on its own row; the other sources go on.
//!
//! A batch the log recorded and the broker lost (read past, or not delivered for [`LOSS_TIMEOUT_MS`] on the
//! consumer's OWN monotonic clock while it reads without errors) makes it ask for a REINITIALIZE and read that
//! source's topic again from its start. Every wait and stall becomes a status (state and reason) per source.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::apply::{blocking_batch, plan_causal, plan_source, Loss, SourceProgress, SourceStep, Waiting};
use crate::envelope::{decode_envelope, Assembler, Batch};
use crate::frontier::Frontier;
use crate::message_key::MessageKey;
use crate::planted::{planted, Bug};
use crate::{Consistency, LogIndex, StreamId};

/// How long a committed batch may fail to arrive, while the consumer reads without errors, before it counts as
/// lost (measured on the consumer's own clock from when it first learned that the batch was committed).
pub const LOSS_TIMEOUT_MS: u64 = 10_000;

/// How long a blocked source waits before its apply is tried again (the worker's check is cheap, but an apply
/// that cannot succeed must not be attempted every round).
pub const BLOCKED_RECHECK_MS: u64 = 5_000;

/// The consumer's local id of a federated table (opaque to the machine).
pub type TableKey = i64;

/// A mirrored source as the consumer's catalog shows it at the start of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub stream: StreamId,
    pub table: TableKey,
    pub consistency: Consistency,
    /// The newest batch applied (stored with the apply).
    pub applied_seq: u64,
    /// The broker offset of the newest applied batch's last message.
    pub applied_offset: Option<i64>,
    /// The stream incarnation the mirror holds (None: not bound yet, a source created before incarnations).
    pub incarnation: Option<u64>,
}

/// One message the broker delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub stream: StreamId,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// The log's answer about one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontierAnswer {
    /// The committed frontier after what the consumer applied.
    pub frontier: Frontier,
    /// A reinitialize request waits for a snapshot batch.
    pub pending_reinit: bool,
    /// The log index the answer reflects.
    pub as_of: LogIndex,
    /// The stream's current incarnation.
    pub incarnation: u64,
}

/// Why the log could not say anything about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The coordinators could not be reached (or failed): nothing is applied anywhere this round.
    Unreachable(String),
    /// The coordinators answered and refused (the stream is no longer published, …): this source shows the
    /// error and waits; the others go on.
    Refused(String),
}

/// A source's state as users see it (`pgtrickle.federation_sources.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceState {
    Bootstrapping,
    Streaming,
    Waiting,
    Reinitializing,
    Stalled,
    Error,
    /// The source cannot go on until the operator acts (the detail says what to do); nothing is retried meanwhile
    /// but a cheap check every [`BLOCKED_RECHECK_MS`].
    Blocked,
}

impl SourceState {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Bootstrapping => "bootstrapping",
            SourceState::Streaming => "streaming",
            SourceState::Waiting => "waiting",
            SourceState::Reinitializing => "reinitializing",
            SourceState::Stalled => "stalled",
            SourceState::Error => "error",
            SourceState::Blocked => "blocked",
        }
    }
}

/// What the status of a source shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: SourceState,
    pub detail: Option<String>,
    /// What the log said this round (None when it could not be asked: the columns shown stay as they were).
    pub log: Option<LogShown>,
}

/// The log's side of a status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogShown {
    pub committed_seq: u64,
    pub lag_batches: u64,
    /// Age of the oldest unapplied batch by the producer's wall clock (shown only, never decided on).
    pub lag_seconds: f64,
}

/// What the worker tells the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A new round: the catalog as read now, the worker's monotonic clock, the wall clock (for lag shown), and
    /// whether the worker still has the broker connection it was assigned on.
    /// `key` authenticates messages (the federation's message key, handed out at registration).
    Round { now_ms: u64, wall_ms: u64, connected: bool, key: MessageKey, sources: Vec<SourceConfig> },
    /// [`Action::Assign`] done (or the broker could not be reached).
    Assigned { result: Result<(), String> },
    /// [`Action::Poll`] done: messages in offset order per source, a broker error, a lost connection.
    Polled { messages: Vec<Message>, error: Option<String>, disconnected: bool },
    /// [`Action::FetchFrontiers`] answered, per source.
    Frontiers { answers: Vec<(StreamId, Result<FrontierAnswer, AnswerError>)> },
    /// [`Action::Apply`] committed (or rolled back): the table and the newest seq it applied per source.
    Applied { table: TableKey, applied: Vec<(StreamId, u64)>, result: Result<(), ApplyFailure> },
    /// [`Action::RequestReinitialize`] accepted (or not).
    ReinitRequested { stream: StreamId, result: Result<(), String> },
    /// [`Action::Reset`] done (or not).
    Reset { stream: StreamId, result: Result<(), String> },
}

/// Why an apply did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyFailure {
    /// It failed (a serialization failure, a damaged mirror, …): tried again next round.
    Failed(String),
    /// It cannot succeed until the operator acts (local stream tables read a federated table that must be rebuilt
    /// for a source's new columns): the sources show `blocked` with the reason, and the apply is tried again only
    /// every [`BLOCKED_RECHECK_MS`].
    Blocked(String),
}

impl std::fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyFailure::Failed(why) | ApplyFailure::Blocked(why) => f.write_str(why),
        }
    }
}

/// What the machine asks the worker to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read each source from this offset (None: from the start of its topic); drop what was read before.
    Assign { positions: Vec<(StreamId, Option<i64>)> },
    /// Read what the broker has.
    Poll,
    /// Ask the log for each source's frontier after the given seq.
    FetchFrontiers { after: Vec<(StreamId, u64)> },
    /// Apply, in ONE transaction, these held batches (per source, in this order), storing each source's applied
    /// seq and offset and an apply-log row per batch; `cut_at` is the causal cut's log index, and then the
    /// federated table is refreshed inside the same transaction.
    Apply { table: TableKey, cut_at: Option<LogIndex>, seqs: Vec<(StreamId, Vec<u64>)> },
    /// Refresh the federated table (eventual mode, after applies); a failure is the scheduler's to retry.
    RefreshFederated { table: TableKey },
    /// Ask the coordinators for a snapshot of the source.
    RequestReinitialize { stream: StreamId, reason: String },
    /// The log names another incarnation of the stream: store it, and (`forget`: the mirror held another one)
    /// empty the mirror and forget the applied seq and offset, in one transaction. The source then bootstraps
    /// like a new one.
    Reset { stream: StreamId, incarnation: u64, forget: bool, reason: String },
    /// Show a source's status.
    SetStatus { stream: StreamId, status: Status },
}

/// A held batch: the copy read, and the offset of its last message.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldBatch {
    pub batch: Batch,
    pub offset: i64,
}

impl SourceMemory {
    /// For every held seq the log recorded, keeps the recorded copy (same offset and kind) and drops the others:
    /// another copy of the seq may hold other rows (a server restored from a backup sends its own batch under a
    /// seq the old server had sent too), and applying it would apply a history the log never recorded. A recorded
    /// copy not read yet is waited for (or found lost, like any missing batch).
    fn keep_recorded_copies(&mut self) {
        let Some(answer) = &self.answer else { return };
        let seqs: Vec<u64> = self.held.keys().copied().collect();
        for seq in seqs {
            let Ok(Some(point)) = answer.frontier.point(seq) else { continue };
            let recorded = (point.position.offset, point.kind);
            let held = &self.held[&seq];
            if (held.offset, held.batch.kind) == recorded {
                continue;
            }
            let displaced = self.held.remove(&seq).expect("held");
            self.other_copies.insert((seq, displaced.offset), displaced);
            if let Some(copy) = self.other_copies.remove(&(seq, recorded.0)) {
                if copy.batch.kind == recorded.1 {
                    self.held.insert(seq, copy);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SourceMemory {
    config: Option<SourceConfig>,
    held: BTreeMap<u64, HeldBatch>,
    /// Other copies of held seqs (a producer that sent a seq again, or another server's copy), by (seq, offset):
    /// the log's answer says which copy was recorded, and only that one is applied.
    other_copies: BTreeMap<(u64, i64), HeldBatch>,
    read_offset: Option<i64>,
    /// Read again from the start of the topic (a batch went missing) until something applies.
    rewind: bool,
    /// When (own clock) each committed seq was first seen in a frontier answer.
    first_committed_ms: BTreeMap<u64, u64>,
    /// The newest answer of this round.
    answer: Option<FrontierAnswer>,
    /// The status last asked for (to write only changes).
    shown: Option<Status>,
    /// The reason of a reinitialize request being sent this round.
    asking: Option<String>,
    /// The coordinators' refusal this round.
    refused: Option<String>,
    /// A reset is out this round: nothing else is planned for the source.
    resetting: bool,
    /// When (own clock) an apply of the source was last found blocked.
    blocked_at_ms: Option<u64>,
}

/// The consumer state machine.
#[derive(Debug, Default)]
pub struct Consumer {
    sources: BTreeMap<StreamId, SourceMemory>,
    assembler: Assembler,
    /// The positions the broker was assigned (None: not assigned, or the connection was dropped).
    assigned: Option<Vec<(StreamId, Option<i64>)>>,
    assigned_at_ms: u64,
    caught_up: bool,
    broker_error: Option<String>,
    now_ms: u64,
    wall_ms: u64,
    ready: VecDeque<Action>,
    /// Applies of a table still out this round, and whether an eventual one succeeded (then the table is
    /// refreshed once they are all in).
    applying: BTreeMap<TableKey, (usize, bool)>,
    round_error: Option<String>,
    applied_this_round: bool,
    /// Messages refused this round (not authenticated, not decodable, contradicting): per source, why. The worker
    /// logs them and adds them to the source's count.
    pub rejected_messages: Vec<(StreamId, String)>,
    key: Option<MessageKey>,
}

impl Consumer {
    /// A consumer that holds nothing (a worker that just started).
    pub fn new() -> Self {
        Consumer::default()
    }

    /// The next action to perform, if any; the round is over when there is none.
    pub fn next_action(&mut self) -> Option<Action> {
        self.ready.pop_front()
    }

    /// Why the round ended early (broker or coordinators unreachable), if it did.
    pub fn round_error(&self) -> Option<&str> {
        self.round_error.as_deref()
    }

    /// Whether anything was applied this round.
    pub fn applied_this_round(&self) -> bool {
        self.applied_this_round
    }

    /// A held batch (for [`Action::Apply`]).
    pub fn held(&self, stream: &StreamId, seq: u64) -> Option<&HeldBatch> {
        self.sources.get(stream)?.held.get(&seq)
    }

    /// Feeds one input; the actions it leads to are queued for [`Consumer::next_action`].
    pub fn step(&mut self, input: Input) {
        match input {
            Input::Round { now_ms, wall_ms, connected, key, sources } => {
                if !connected {
                    self.assigned = None;
                }
                self.key = Some(key);
                self.start_round(now_ms, wall_ms, sources)
            }
            Input::Assigned { result } => match result {
                Ok(()) => {
                    self.assembler = Assembler::default();
                    for memory in self.sources.values_mut() {
                        memory.held.clear();
                        memory.other_copies.clear();
                        memory.read_offset = None;
                    }
                    self.assigned_at_ms = self.now_ms;
                    self.ready.push_back(Action::Poll);
                }
                Err(error) => {
                    // The broker cannot be read this round (unreachable, or it refused the login): each source
                    // still shows where it waits, and why.
                    self.assigned = None;
                    self.round_error = Some(error.clone());
                    self.step(Input::Polled { messages: Vec::new(), error: Some(error), disconnected: true });
                }
            },
            Input::Polled { messages, error, disconnected } => {
                self.receive(messages);
                self.broker_error = error;
                if disconnected {
                    self.assigned = None; // reassigned on a fresh connection next round
                }
                let after = self
                    .sources
                    .iter()
                    .filter_map(|(id, m)| m.config.as_ref().map(|c| (id.clone(), c.applied_seq)))
                    .collect();
                self.ready.push_back(Action::FetchFrontiers { after });
            }
            Input::Frontiers { answers } => self.plan(answers),
            Input::Applied { table, applied, result } => self.on_applied(table, applied, result),
            Input::ReinitRequested { stream, result } => {
                let Some(memory) = self.sources.get_mut(&stream) else { return };
                let reason = memory.asking.take().unwrap_or_default();
                match result {
                    Ok(()) => {
                        self.show(&stream, SourceState::Reinitializing, Some(format!("{reason}; snapshot requested")))
                    }
                    Err(error) => self.show(
                        &stream,
                        SourceState::Stalled,
                        Some(format!("{reason}; cannot ask for a snapshot: {error}")),
                    ),
                }
            }
            Input::Reset { stream, result } => {
                if let Err(error) = result {
                    self.show(
                        &stream,
                        SourceState::Error,
                        Some(format!("cannot reset for the new incarnation: {error}")),
                    );
                }
            }
        }
    }

    fn start_round(&mut self, now_ms: u64, wall_ms: u64, sources: Vec<SourceConfig>) {
        self.now_ms = now_ms;
        self.wall_ms = wall_ms;
        self.ready.clear();
        self.applying.clear();
        self.round_error = None;
        self.applied_this_round = false;
        self.rejected_messages.clear();
        let mut next = BTreeMap::new();
        for config in sources {
            let mut memory = self.sources.remove(&config.stream).unwrap_or_default();
            memory.held.retain(|seq, _| *seq > config.applied_seq);
            memory.other_copies.retain(|(seq, _), _| *seq > config.applied_seq);
            memory.first_committed_ms.retain(|seq, _| *seq > config.applied_seq);
            memory.answer = None;
            memory.asking = None;
            memory.refused = None;
            memory.resetting = false;
            let id = config.stream.clone();
            memory.config = Some(config);
            next.insert(id, memory);
        }
        self.sources = next; // sources no longer mirrored are forgotten
        if self.sources.is_empty() {
            return;
        }
        let wanted: Vec<(StreamId, Option<i64>)> = self
            .sources
            .iter()
            .map(|(id, m)| {
                let applied = m.config.as_ref().and_then(|c| c.applied_offset);
                (id.clone(), if m.rewind { None } else { applied.map(|o| o + 1) })
            })
            .collect();
        let streams = |a: &[(StreamId, Option<i64>)]| a.iter().map(|(s, _)| s.clone()).collect::<BTreeSet<_>>();
        let reassign = match &self.assigned {
            None => true,
            Some(assigned) => streams(assigned) != streams(&wanted),
        };
        if reassign {
            self.assigned = Some(wanted.clone());
            self.ready.push_back(Action::Assign { positions: wanted });
        } else {
            self.ready.push_back(Action::Poll);
        }
    }

    fn receive(&mut self, messages: Vec<Message>) {
        self.caught_up = messages.is_empty();
        for message in messages {
            let Some(memory) = self.sources.get_mut(&message.stream) else { continue };
            memory.read_offset = Some(memory.read_offset.map_or(message.offset, |o| o.max(message.offset)));
            let applied = memory.config.as_ref().map_or(0, |c| c.applied_seq);
            let Some(key) = &self.key else { continue };
            let envelope = match decode_envelope(&message.payload, key) {
                Ok(envelope) => envelope,
                Err(error) => {
                    self.rejected_messages
                        .push((message.stream.clone(), format!("offset {}: {error}", message.offset)));
                    continue;
                }
            };
            if envelope.stream != message.stream {
                let found = envelope.stream.clone();
                self.rejected_messages
                    .push((message.stream.clone(), format!("offset {}: a message of {found}", message.offset)));
                continue;
            }
            let incarnation = memory.config.as_ref().and_then(|c| c.incarnation);
            if envelope.seq <= applied || incarnation.is_some_and(|i| i != envelope.incarnation) {
                continue; // applied already, or of another life of the stream
            }
            match self.assembler.add(envelope) {
                Ok(Some(batch)) => {
                    let copy = HeldBatch { batch, offset: message.offset };
                    match memory.held.get(&copy.batch.seq) {
                        None => {
                            memory.held.insert(copy.batch.seq, copy);
                        }
                        Some(held) if held.offset != copy.offset => {
                            memory.other_copies.insert((copy.batch.seq, copy.offset), copy);
                        }
                        Some(_) => {} // the same copy, delivered again
                    }
                }
                Ok(None) => {}
                Err(error) => self.rejected_messages.push((message.stream.clone(), error.to_string())),
            }
        }
    }

    fn progress(&self, stream: &StreamId) -> SourceProgress {
        let memory = &self.sources[stream];
        SourceProgress {
            applied: memory.config.as_ref().map_or(0, |c| c.applied_seq),
            received: memory.held.iter().map(|(seq, h)| (*seq, h.batch.kind)).collect(),
            read_offset: memory.read_offset,
            // Not asked of the broker: tansu reports watermarks that do not match its offsets.
            low_watermark: None,
        }
    }

    /// A batch the log committed long ago (by this consumer's clock) that the broker still has not delivered,
    /// with the consumer reading without errors for as long.
    fn overdue(&self, stream: &StreamId, seq: u64) -> Option<Loss> {
        let reading = self.assigned.is_some() && self.broker_error.is_none() && self.caught_up;
        if !reading || self.now_ms.saturating_sub(self.assigned_at_ms) < LOSS_TIMEOUT_MS {
            return None;
        }
        let first = *self.sources[stream].first_committed_ms.get(&seq)?;
        let waited = self.now_ms.saturating_sub(first);
        (waited >= LOSS_TIMEOUT_MS).then_some(Loss::Overdue { seq, waited_s: waited / 1000 })
    }

    fn plan_eventual_source(&self, stream: &StreamId, frontier: &Frontier) -> SourceStep {
        if planted(Bug::ApplyPastFrontier) {
            let memory = &self.sources[stream];
            let applied = memory.config.as_ref().map_or(0, |c| c.applied_seq);
            let seqs: Vec<u64> = (applied + 1..).take_while(|seq| memory.held.contains_key(seq)).collect();
            if !seqs.is_empty() {
                return SourceStep::Apply(seqs);
            }
        }
        match plan_source(&self.progress(stream), frontier) {
            SourceStep::Wait(Waiting::ForBroker { seq }) => match self.overdue(stream, seq) {
                Some(loss) => SourceStep::Reinitialize(loss),
                None => SourceStep::Wait(Waiting::ForBroker { seq }),
            },
            step => step,
        }
    }

    fn plan(&mut self, answers: Vec<(StreamId, Result<FrontierAnswer, AnswerError>)>) {
        let mut failure = None;
        for (stream, answer) in answers {
            match answer {
                Ok(answer) => {
                    let now = self.now_ms;
                    if let Some(memory) = self.sources.get_mut(&stream) {
                        let config = memory.config.as_ref().expect("configured this round");
                        if config.incarnation != Some(answer.incarnation) {
                            self.reset(&stream, answer.incarnation);
                            continue;
                        }
                        for seq in answer.frontier.oldest_retained()..=answer.frontier.seq() {
                            memory.first_committed_ms.entry(seq).or_insert(now);
                        }
                        memory.answer = Some(answer);
                        if !planted(Bug::ApplyOtherCopy) {
                            memory.keep_recorded_copies();
                        }
                    }
                }
                Err(AnswerError::Refused(error)) => {
                    if let Some(memory) = self.sources.get_mut(&stream) {
                        memory.refused = Some(error.clone());
                    }
                    self.show(&stream, SourceState::Error, Some(error));
                }
                Err(AnswerError::Unreachable(error)) => failure = Some(error),
            }
        }
        let missing = self.sources.values().any(|m| m.answer.is_none() && m.refused.is_none() && !m.resetting);
        if failure.is_some() || missing {
            let reason =
                format!("coordinator unreachable, applying nothing: {}", failure.unwrap_or_else(|| "no answer".into()));
            let streams: Vec<StreamId> = self.sources.keys().cloned().collect();
            for stream in streams {
                self.show(&stream, SourceState::Stalled, Some(reason.clone()));
            }
            self.round_error = Some(reason);
            return;
        }
        let mut tables: BTreeMap<TableKey, (Consistency, Vec<StreamId>)> = BTreeMap::new();
        for (id, memory) in &self.sources {
            let config = memory.config.as_ref().expect("configured this round");
            tables.entry(config.table).or_insert((config.consistency, Vec::new())).1.push(id.clone());
        }
        for (table, (consistency, streams)) in tables {
            // Sources without an answer (refused, or being reset) wait; an eventual table goes on without them,
            // a causal one cannot reach a cut over all its sources.
            let (answered, unanswered): (Vec<StreamId>, Vec<StreamId>) =
                streams.into_iter().partition(|s| self.sources[s].answer.is_some());
            match consistency {
                Consistency::Eventual => self.plan_eventual(table, &answered),
                // A cut applies every source at once: one blocked source holds the table.
                Consistency::Causal if answered.iter().any(|s| self.blocked_now(s)) => {}
                Consistency::Causal if unanswered.is_empty() => self.plan_causal(table, &answered),
                Consistency::Causal => {
                    let blocking: Vec<String> = unanswered.iter().map(|s| s.to_string()).collect();
                    let detail =
                        format!("for the other sources to reach a cut: {} cannot be read", blocking.join(", "));
                    for stream in answered {
                        self.show(&stream, SourceState::Waiting, Some(detail.clone()));
                    }
                }
            }
        }
    }

    /// The log names another incarnation than the mirror's: nothing held or read of this source counts any more.
    fn reset(&mut self, stream: &StreamId, incarnation: u64) {
        let memory = self.sources.get_mut(stream).expect("a source");
        let config = memory.config.as_ref().expect("configured this round");
        let (forget, reason) = match config.incarnation {
            Some(old) => (
                true,
                format!(
                    "the stream is a new incarnation ({old} -> {incarnation}: published again, or re-created); \
                         the mirror starts over from a snapshot"
                ),
            ),
            None => (false, format!("following incarnation {incarnation} of the stream")),
        };
        memory.held.clear();
        memory.other_copies.clear();
        memory.first_committed_ms.clear();
        memory.resetting = true;
        memory.rewind = true;
        memory.shown = None;
        self.assigned = None;
        self.assembler.forget_through(stream, u64::MAX);
        self.ready.push_back(Action::Reset { stream: stream.clone(), incarnation, forget, reason });
    }

    fn frontier_of(&self, stream: &StreamId) -> (Frontier, bool) {
        let answer = self.sources[stream].answer.as_ref().expect("answered this round");
        (answer.frontier.clone(), answer.pending_reinit)
    }

    /// Whether an apply of the source was found blocked a short while ago (it keeps showing why meanwhile).
    fn blocked_now(&self, stream: &StreamId) -> bool {
        let blocked_at = self.sources.get(stream).and_then(|m| m.blocked_at_ms);
        blocked_at.is_some_and(|at| self.now_ms.saturating_sub(at) < BLOCKED_RECHECK_MS)
    }

    fn plan_eventual(&mut self, table: TableKey, streams: &[StreamId]) {
        for stream in streams {
            if self.blocked_now(stream) {
                continue;
            }
            let (frontier, pending) = self.frontier_of(stream);
            match self.plan_eventual_source(stream, &frontier) {
                SourceStep::Apply(seqs) => {
                    self.applying.entry(table).or_default().0 += 1;
                    self.ready.push_back(Action::Apply { table, cut_at: None, seqs: vec![(stream.clone(), seqs)] });
                }
                SourceStep::Wait(waiting) => self.note_wait(stream, &waiting),
                SourceStep::Reinitialize(loss) => self.reinitialize(stream, pending, &loss),
            }
        }
    }

    fn plan_causal(&mut self, table: TableKey, streams: &[StreamId]) {
        // Answers reflect the log at their own indexes: cut every frontier back to the oldest before planning.
        let horizon = streams.iter().filter_map(|s| self.sources[s].answer.as_ref().map(|a| a.as_of)).min();
        let horizon = horizon.unwrap_or(0);
        let inputs: BTreeMap<StreamId, (SourceProgress, Frontier)> =
            streams.iter().map(|s| (s.clone(), (self.progress(s), self.frontier_of(s).0.as_of(horizon)))).collect();
        if let Some((cut_at, plan)) = plan_causal(&inputs) {
            self.applying.entry(table).or_default().0 += 1;
            let seqs = plan.into_iter().filter(|(_, seqs)| !seqs.is_empty()).collect();
            self.ready.push_back(Action::Apply { table, cut_at: Some(cut_at), seqs });
            return;
        }
        // No cut can be reached now: say why per source, and ask for snapshots of lost batches — including one
        // that lies beyond batches the source could apply on its own (it blocks every cut all the same).
        for stream in streams {
            let (_, pending) = self.frontier_of(stream);
            let frontier = &inputs[stream].1;
            match blocking_batch(&inputs[stream].0, frontier) {
                Some((_, Some(loss))) => self.reinitialize(stream, pending, &loss),
                Some((seq, None)) => match self.overdue(stream, seq) {
                    Some(loss) => self.reinitialize(stream, pending, &loss),
                    None => self.note_wait(stream, &Waiting::ForBroker { seq }),
                },
                None if inputs[stream].0.applied >= frontier.seq() => self.note_wait(stream, &Waiting::UpToDate),
                None => self.show(stream, SourceState::Waiting, Some("for the other sources to reach a cut".into())),
            }
        }
    }

    fn on_applied(&mut self, table: TableKey, seqs: Vec<(StreamId, u64)>, result: Result<(), ApplyFailure>) {
        let eventual = match &result {
            Ok(()) => {
                self.applied_this_round = true;
                let mut eventual = false;
                for (stream, last) in &seqs {
                    let Some(memory) = self.sources.get_mut(stream) else { continue };
                    memory.rewind = false;
                    memory.blocked_at_ms = None;
                    memory.held.retain(|seq, _| *seq > *last);
                    memory.first_committed_ms.retain(|seq, _| *seq > *last);
                    // The apply wrote the source's row (state, applied seq): what was shown is stale.
                    memory.shown = None;
                    if let Some(config) = memory.config.as_mut() {
                        config.applied_seq = config.applied_seq.max(*last);
                        eventual |= config.consistency == Consistency::Eventual;
                    }
                    self.assembler.forget_through(stream, *last);
                }
                eventual
            }
            Err(ApplyFailure::Failed(error)) => {
                for (stream, _) in &seqs {
                    self.show(stream, SourceState::Error, Some(error.clone()));
                }
                false
            }
            Err(ApplyFailure::Blocked(reason)) => {
                let now = self.now_ms;
                for (stream, _) in &seqs {
                    if let Some(memory) = self.sources.get_mut(stream) {
                        memory.blocked_at_ms = Some(now);
                    }
                    self.show(stream, SourceState::Blocked, Some(reason.clone()));
                }
                false
            }
        };
        let Some(entry) = self.applying.get_mut(&table) else { return };
        entry.0 = entry.0.saturating_sub(1);
        entry.1 |= eventual;
        if entry.0 == 0 && entry.1 {
            // Fresh data is refreshed into the federated table at once; its schedule stays the bound for quiet
            // times.
            self.ready.push_back(Action::RefreshFederated { table });
        }
    }

    fn note_wait(&mut self, stream: &StreamId, waiting: &Waiting) {
        match waiting {
            Waiting::UpToDate => self.show(stream, SourceState::Streaming, None),
            Waiting::ForBroker { seq } => {
                let detail = match &self.broker_error {
                    Some(error) => format!("waiting for batch {seq} from the broker: {error}"),
                    None => format!("waiting for batch {seq} from the broker"),
                };
                let applied = self.sources[stream].config.as_ref().map_or(0, |c| c.applied_seq);
                let state = if applied == 0 { SourceState::Bootstrapping } else { SourceState::Waiting };
                self.show(stream, state, Some(detail))
            }
        }
    }

    fn reinitialize(&mut self, stream: &StreamId, pending: bool, loss: &Loss) {
        let reason = loss_text(loss);
        // The snapshot may land below the consumer's position (a broker that started over): read this source
        // from the start of its topic until something is applied again.
        let memory = self.sources.get_mut(stream).expect("a source");
        if !memory.rewind {
            memory.rewind = true;
            self.assigned = None;
        }
        if pending {
            self.show(stream, SourceState::Reinitializing, Some(format!("{reason}; snapshot requested")));
        } else {
            memory.asking = Some(reason.clone());
            self.ready.push_back(Action::RequestReinitialize { stream: stream.clone(), reason });
        }
    }

    /// Queues a status for the source, unless it is the one shown already.
    fn show(&mut self, stream: &StreamId, state: SourceState, detail: Option<String>) {
        let Some(memory) = self.sources.get_mut(stream) else { return };
        let applied = memory.config.as_ref().map_or(0, |c| c.applied_seq);
        let log = memory.answer.as_ref().map(|answer| {
            let lag = answer.frontier.lag(applied, self.wall_ms);
            LogShown { committed_seq: answer.frontier.seq(), lag_batches: lag.batches, lag_seconds: lag.seconds }
        });
        let status = Status { state, detail, log };
        if memory.shown.as_ref() == Some(&status) {
            return;
        }
        memory.shown = Some(status.clone());
        self.ready.push_back(Action::SetStatus { stream: stream.clone(), status });
    }
}

/// The reason a source needs a snapshot, as users read it.
pub fn loss_text(loss: &Loss) -> String {
    match loss {
        Loss::Evicted { seq, offset, low_watermark } => {
            format!("batch {seq} (offset {offset}) was evicted by the broker (oldest kept offset {low_watermark})")
        }
        Loss::Skipped { seq, offset, read_offset } => {
            format!("batch {seq} (offset {offset}) is missing: the broker delivered offset {read_offset} without it")
        }
        Loss::Overdue { seq, waited_s } => {
            format!("batch {seq} was recorded {waited_s} s ago and the broker has not delivered it (lost data?)")
        }
        Loss::Compacted { applied } => {
            format!("the log no longer lists the batches after seq {applied} and no snapshot follows")
        }
    }
}
