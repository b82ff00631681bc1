//! The subscriber: a background worker per database with federated stream tables. Each round it reads the
//! sources' topics (assign mode, from the positions stored with the last apply), reassembles batches, asks the
//! coordinator for each source's committed frontier after what it applied, and applies only what the log has
//! recorded ([`shared_model::apply`] decides):
//! - eventual: each source up to its own frontier, one transaction per source, then a refresh of the federated
//!   stream table (its schedule remains the bound when nothing arrives);
//! - causal: every source up to the newest common cut, in ONE transaction that also refreshes the federated
//!   stream table, so readers never see one source ahead of another.
//!
//! Each apply stores the applied seq and broker position of its sources and appends to `pgt_apply_log` in the
//! same transaction; a batch with seq ≤ applied is skipped. A batch the log records but the broker no longer has
//! makes it ask the coordinator for a REINITIALIZE (the producer answers with a snapshot batch). Every wait and
//! stall is visible, with its reason, in `pgtrickle.federation_sources`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use coordinator::client::Client;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use shared_model::apply::{plan_causal, plan_source, Loss, SourceProgress, SourceStep, Waiting};
use shared_model::envelope::{decode_envelope, Assembler, Batch};
use shared_model::{BatchKind, ColumnDef, Consistency, Frontier, StreamId};

use super::broker::{KafkaConsumer, Topics};
use super::runtime::{new_runtime, run_worker_loop};
use super::{client_id, client_with_id, coordinator_error, mirror};
use crate::catalog::{self, RowLock};
use crate::config;
use crate::error::{PgTrickleError, Result};
use crate::refresh::{self, Request, Trigger};
use crate::scheduler::transaction::run_in_transaction;

/// How long a committed batch may fail to arrive while the consumer reads without errors before it counts as lost
/// (then a snapshot is requested and the source is read again from the start of its topic).
const LOSS_TIMEOUT: Duration = Duration::from_secs(10);

/// A mirrored source as the catalog stores it.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    stream: StreamId,
    pgt_id: i64,
    mirror: pg_sys::Oid,
    topic: String,
    columns: Vec<ColumnDef>,
    applied_seq: u64,
    applied_offset: Option<i64>,
}

struct Settings {
    coordinator_url: String,
    bootstrap_servers: String,
    client_id: String,
}

/// What a round works on: settings, federated tables (by stream table id) and their sources.
struct Loaded {
    settings: Settings,
    tables: BTreeMap<i64, Consistency>,
    sources: Vec<Source>,
}

fn load() -> Result<Option<Loaded>> {
    let Some(member) = super::membership()? else { return Ok(None) };
    let servers =
        catalog::scalar::<String>("SELECT bootstrap_servers FROM pgtrickle.pgt_federation", &[])?.unwrap_or_default();
    let settings =
        Settings { coordinator_url: member.coordinator_url, bootstrap_servers: servers, client_id: client_id()? };
    let (tables, sources) = Spi::connect(|client| {
        let mut tables = BTreeMap::new();
        for row in client.select("SELECT pgt_id, consistency FROM pgtrickle.pgt_federated_tables", None, &[])? {
            let consistency: String = row.get(2)?.unwrap_or_default();
            tables.insert(row.get::<i64>(1)?.unwrap_or_default(), consistency.parse().unwrap_or(Consistency::Eventual));
        }
        let sql = "SELECT stream_id, pgt_id, mirror_relid, topic, columns, applied_seq, applied_offset \
                   FROM pgtrickle.pgt_federation_sources ORDER BY stream_id";
        let mut sources = Vec::new();
        for row in client.select(sql, None, &[])? {
            let id: String = row.get(1)?.unwrap_or_default();
            let columns: pgrx::JsonB = row.get(5)?.unwrap_or(pgrx::JsonB(serde_json::Value::Null));
            sources.push(Source {
                stream: StreamId::parse(&id).map_err(|e| PgTrickleError::Internal(format!("stream id {id}: {e}")))?,
                pgt_id: row.get(2)?.unwrap_or_default(),
                mirror: row.get(3)?.unwrap_or(pg_sys::InvalidOid),
                topic: row.get(4)?.unwrap_or_default(),
                columns: serde_json::from_value(columns.0)
                    .map_err(|e| PgTrickleError::Internal(format!("columns of {id}: {e}")))?,
                applied_seq: row.get::<i64>(6)?.unwrap_or_default() as u64,
                applied_offset: row.get::<i64>(7)?,
            });
        }
        Ok::<_, PgTrickleError>((tables, sources))
    })?;
    Ok(Some(Loaded { settings, tables, sources }))
}

/// What the subscriber holds in memory for one source between rounds.
#[derive(Default)]
struct Held {
    /// Complete batches not applied yet, with the offset of their last message.
    batches: BTreeMap<u64, (Batch, i64)>,
    read_offset: Option<i64>,
}

/// Status of one source, written to the catalog when it changes.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    committed_seq: u64,
    lag_batches: u64,
    lag_seconds: f64,
    state: &'static str,
    detail: Option<String>,
}

struct Subscriber {
    runtime: tokio::runtime::Runtime,
    client: Option<(String, Client)>,
    consumer: Option<(String, KafkaConsumer, Topics)>,
    /// The assignment the consumer was given: (topic, next offset) per source, and when.
    assigned: Vec<(String, Option<i64>)>,
    assigned_at: Instant,
    /// Sources to read from the start of their topic at the next assignment (a batch went missing).
    rewind: BTreeSet<StreamId>,
    /// The last poll found nothing more to read.
    caught_up: bool,
    held: BTreeMap<StreamId, Held>,
    assembler: Assembler,
    written: BTreeMap<StreamId, Status>,
    broker_error: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn loss_text(loss: &Loss) -> String {
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

/// Applies `seqs` of one source (held batches) inside the caller's transaction.
fn apply_source(source: &Source, held: &Held, seqs: &[u64], cut_at: Option<u64>) -> Result<()> {
    let mut last_offset = source.applied_offset;
    let (mut mirror_oid, mut columns) = (source.mirror, source.columns.clone());
    for seq in seqs {
        let (batch, offset) = held
            .batches
            .get(seq)
            .ok_or_else(|| PgTrickleError::Internal(format!("batch {seq} of {} is not held", source.stream)))?;
        if batch.kind == BatchKind::Snapshot && batch.columns != columns {
            // The source's columns changed (a new defining query there): REINITIALIZE the mirror.
            mirror_oid = super::federated::rebuild_mirror(&source.stream, &batch.columns)?;
            columns = batch.columns.clone();
        }
        let started = Instant::now();
        let rows = mirror::apply(mirror_oid, &columns, batch)?;
        let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
        let kind = if batch.kind == BatchKind::Snapshot { "snapshot" } else { "delta" };
        catalog::exec_with(
            "INSERT INTO pgtrickle.pgt_apply_log (stream_id, seq, kind, rows_written, broker_offset, cut_at, apply_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                source.stream.to_string().into(),
                (*seq as i64).into(),
                kind.into(),
                rows.into(),
                (*offset).into(),
                cut_at.map(|t| t as i64).into(),
                apply_ms.into(),
            ],
        )?;
        last_offset = Some(last_offset.map_or(*offset, |o| o.max(*offset)));
    }
    let applied = *seqs.last().expect("a non-empty path") as i64;
    // The guard on applied_seq makes a second apply of the same seqs (two subscribers racing) fail instead of
    // applying twice.
    let updated = catalog::exec_with(
        "UPDATE pgtrickle.pgt_federation_sources SET applied_seq = $2, applied_offset = $3, applied_at = now(), \
         committed_seq = greatest(committed_seq, $2), lag_batches = greatest(committed_seq - $2, 0), \
         state = 'streaming', detail = NULL WHERE stream_id = $1 AND applied_seq = $4",
        &[source.stream.to_string().into(), applied.into(), last_offset.into(), (source.applied_seq as i64).into()],
    )?;
    if updated != 1 {
        return Err(PgTrickleError::Internal(format!("{} was applied by someone else meanwhile", source.stream)));
    }
    Ok(())
}

/// Refreshes the federated stream table `source` belongs to, in the caller's transaction; returns its id. The id
/// is looked up by the source because rebuilding a mirror for new columns creates the stream table anew.
fn refresh_federated(source: &Source, known_id: i64, lock: RowLock) -> Result<i64> {
    let pgt_id = catalog::scalar::<i64>(
        "SELECT pgt_id FROM pgtrickle.pgt_federation_sources WHERE stream_id = $1",
        &[source.stream.to_string().into()],
    )?
    .unwrap_or(known_id);
    if let Some(st) = catalog::load(pgt_id, lock)? {
        refresh::refresh(&st, Trigger::Subscriber, Request::UpToDate)?;
    }
    Ok(pgt_id)
}

impl Subscriber {
    fn client(&mut self, settings: &Settings) -> Result<Client> {
        if self.client.as_ref().is_none_or(|(url, _)| *url != settings.coordinator_url) {
            let client = client_with_id(&settings.coordinator_url, Duration::from_secs(5), settings.client_id.clone())?;
            self.client = Some((settings.coordinator_url.clone(), client));
        }
        Ok(self.client.as_ref().expect("set above").1.clone())
    }

    /// (Re)creates and (re)assigns the consumer when there is none, the broker changed, or the sources did;
    /// topics are created first, so the consumer never asks the broker about a topic it does not have.
    fn ensure_consumer(&mut self, settings: &Settings, sources: &[Source]) -> std::result::Result<(), String> {
        if self.consumer.as_ref().is_none_or(|(servers, _, _)| *servers != settings.bootstrap_servers) {
            self.consumer = None;
            let mut topics = Topics::connect(&settings.bootstrap_servers)?;
            let names: Vec<&str> = sources.iter().map(|s| s.topic.as_str()).collect();
            topics.ensure(&self.runtime, &names)?;
            let consumer =
                KafkaConsumer::connect(&settings.bootstrap_servers, &format!("{}-subscriber", settings.client_id))?;
            self.consumer = Some((settings.bootstrap_servers.clone(), consumer, topics));
            self.assigned.clear();
        }
        let wanted: Vec<(String, Option<i64>)> = sources
            .iter()
            .map(|s| {
                let next = if self.rewind.contains(&s.stream) { None } else { s.applied_offset.map(|o| o + 1) };
                (s.topic.clone(), next)
            })
            .collect();
        let topics = |a: &[(String, Option<i64>)]| a.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>();
        if self.assigned.is_empty() || topics(&wanted) != topics(&self.assigned) {
            let (_, consumer, admin) = self.consumer.as_mut().expect("set above");
            let names: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
            admin.ensure(&self.runtime, &names)?;
            consumer.assign(&wanted)?;
            self.assigned = wanted;
            self.assigned_at = Instant::now();
            self.held.clear();
            self.assembler = Assembler::default();
        }
        Ok(())
    }

    /// Reads what the broker has, assembling complete batches per source.
    fn receive(&mut self, sources: &[Source], wait: Duration) {
        let Some((_, consumer, _)) = &self.consumer else { return };
        let polled = consumer.poll(wait, 10_000);
        self.broker_error = polled.error;
        self.caught_up = polled.messages.is_empty();
        if polled.disconnected {
            // Dropped before librdkafka reconnects and asks about topics the broker may have lost.
            self.consumer = None;
            self.assigned.clear();
        }
        for message in polled.messages {
            let Some(source) = sources.iter().find(|s| s.topic == message.topic) else { continue };
            let held = self.held.entry(source.stream.clone()).or_default();
            held.read_offset = Some(held.read_offset.map_or(message.offset, |o| o.max(message.offset)));
            let envelope = match decode_envelope(&message.payload) {
                Ok(envelope) => envelope,
                Err(error) => {
                    pgrx::log!("pg_trickle subscriber: {} offset {}: {error}", message.topic, message.offset);
                    continue;
                }
            };
            if envelope.stream != source.stream || envelope.seq <= source.applied_seq {
                continue;
            }
            match self.assembler.add(envelope) {
                Ok(Some(batch)) => {
                    held.batches.entry(batch.seq).or_insert((batch, message.offset));
                }
                Ok(None) => {}
                Err(error) => pgrx::log!("pg_trickle subscriber: {}: {error}", message.topic),
            }
        }
    }

    /// A batch the log committed long ago that the broker still has not delivered, with the consumer reading
    /// without errors for as long: lost (e.g. a broker restarted with empty storage below our position).
    fn overdue(&self, frontier: &Frontier, seq: u64) -> Option<Loss> {
        let reading = self.consumer.is_some() && self.broker_error.is_none() && self.caught_up;
        if !reading || self.assigned_at.elapsed() < LOSS_TIMEOUT {
            return None;
        }
        let proposed = frontier.point(seq).ok().flatten()?.proposed_at_unix_ms;
        let waited = Duration::from_millis(now_ms().saturating_sub(proposed));
        (waited >= LOSS_TIMEOUT).then_some(Loss::Overdue { seq, waited_s: waited.as_secs() })
    }

    /// The plan for one source, with lost batches found by waiting too long.
    fn plan(&self, source: &Source, frontier: &Frontier) -> SourceStep {
        match plan_source(&self.progress(source), frontier) {
            SourceStep::Wait(Waiting::ForBroker { seq }) => match self.overdue(frontier, seq) {
                Some(loss) => SourceStep::Reinitialize(loss),
                None => SourceStep::Wait(Waiting::ForBroker { seq }),
            },
            step => step,
        }
    }

    fn progress(&self, source: &Source) -> SourceProgress {
        let held = self.held.get(&source.stream);
        SourceProgress {
            applied: source.applied_seq,
            received: held
                .map(|h| h.batches.iter().map(|(seq, (batch, _))| (*seq, batch.kind)).collect())
                .unwrap_or_default(),
            read_offset: held.and_then(|h| h.read_offset),
            // Not asked of the broker: tansu reports watermarks that do not match its offsets.
            low_watermark: None,
        }
    }

    /// One round; returns whether anything was applied.
    fn round(&mut self) -> std::result::Result<bool, String> {
        let Some(Loaded { settings, tables, sources }) = run_in_transaction(load)? else { return Ok(false) };
        if sources.is_empty() {
            return Ok(false);
        }
        self.ensure_consumer(&settings, &sources)?;
        let poll = Duration::from_millis(config::FEDERATION_POLL_MS.get().max(1) as u64);
        self.receive(&sources, poll);

        // The committed frontier after what each source applied.
        let client = self.client(&settings).map_err(|e| e.to_string())?;
        let mut frontiers: BTreeMap<StreamId, (Frontier, bool)> = BTreeMap::new();
        // Each answer reflects the log at its own index; causal cuts are taken as of the oldest of them.
        let mut as_of: BTreeMap<StreamId, u64> = BTreeMap::new();
        for source in &sources {
            let answer =
                self.runtime.block_on(client.frontier_history(&source.stream, source.applied_seq, Duration::ZERO));
            match answer.map_err(coordinator_error).and_then(|view| {
                let pending = view.pending_reinit.is_some();
                as_of.insert(source.stream.clone(), view.as_of);
                view.frontier().map(|f| (f, pending)).map_err(PgTrickleError::Internal)
            }) {
                Ok(found) => {
                    frontiers.insert(source.stream.clone(), found);
                }
                Err(error) => {
                    let reason = format!("coordinator unreachable, applying nothing: {error}");
                    self.set_status_all(&sources, "stalled", &reason);
                    return Err(reason);
                }
            }
        }

        let mut applied_any = false;
        for (pgt_id, consistency) in &tables {
            let mine: Vec<&Source> = sources.iter().filter(|s| s.pgt_id == *pgt_id).collect();
            if mine.is_empty() {
                continue;
            }
            applied_any |= match consistency {
                Consistency::Eventual => self.advance_eventual(&client, *pgt_id, &mine, &frontiers)?,
                Consistency::Causal => {
                    let horizon = mine.iter().filter_map(|s| as_of.get(&s.stream)).min().copied().unwrap_or(0);
                    let aligned: BTreeMap<StreamId, (Frontier, bool)> = mine
                        .iter()
                        .map(|s| {
                            let (frontier, pending) = &frontiers[&s.stream];
                            (s.stream.clone(), (frontier.as_of(horizon), *pending))
                        })
                        .collect();
                    self.advance_causal(&client, *pgt_id, &mine, &aligned)?
                }
            };
        }
        Ok(applied_any)
    }

    fn advance_eventual(
        &mut self,
        client: &Client,
        pgt_id: i64,
        sources: &[&Source],
        frontiers: &BTreeMap<StreamId, (Frontier, bool)>,
    ) -> std::result::Result<bool, String> {
        let mut applied_any = false;
        for source in sources {
            let (frontier, pending) = &frontiers[&source.stream];
            match self.plan(source, frontier) {
                SourceStep::Apply(seqs) => {
                    let held = self.held.get(&source.stream).expect("planned from held batches");
                    match run_in_transaction(|| apply_source(source, held, &seqs, None)) {
                        Ok(()) => {
                            self.forget_applied(&source.stream, *seqs.last().expect("non-empty"));
                            applied_any = true;
                        }
                        Err(error) => self.set_status(source, frontier, "error", Some(error)),
                    }
                }
                SourceStep::Wait(waiting) => self.note_wait(source, frontier, &waiting),
                SourceStep::Reinitialize(loss) => self.reinitialize(client, source, frontier, *pending, &loss),
            }
        }
        if applied_any {
            // Fresh data is refreshed into the federated stream table at once; its schedule stays as the bound
            // for the quiet times. (A failure here is the scheduler's to record and retry.)
            let _ = run_in_transaction(|| refresh_federated(sources[0], pgt_id, RowLock::SkipLocked).map(|_| ()));
        }
        Ok(applied_any)
    }

    fn advance_causal(
        &mut self,
        client: &Client,
        pgt_id: i64,
        sources: &[&Source],
        frontiers: &BTreeMap<StreamId, (Frontier, bool)>,
    ) -> std::result::Result<bool, String> {
        let inputs: BTreeMap<StreamId, (SourceProgress, Frontier)> =
            sources.iter().map(|s| (s.stream.clone(), (self.progress(s), frontiers[&s.stream].0.clone()))).collect();
        if let Some((cut_at, plan)) = plan_causal(&inputs) {
            let held = &self.held;
            let outcome = run_in_transaction(|| {
                for source in sources {
                    let seqs = &plan[&source.stream];
                    if !seqs.is_empty() {
                        let empty = Held::default();
                        apply_source(source, held.get(&source.stream).unwrap_or(&empty), seqs, Some(cut_at))?;
                    }
                }
                let pgt_id = refresh_federated(sources[0], pgt_id, RowLock::Wait)?;
                catalog::exec_with(
                    "UPDATE pgtrickle.pgt_federated_tables SET applied_cut_at = $2 WHERE pgt_id = $1",
                    &[pgt_id.into(), (cut_at as i64).into()],
                )?;
                Ok(())
            });
            return match outcome {
                Ok(()) => {
                    for (stream, seqs) in &plan {
                        if let Some(last) = seqs.last() {
                            self.forget_applied(stream, *last);
                        }
                    }
                    Ok(true)
                }
                Err(error) => {
                    for source in sources {
                        self.set_status(source, &frontiers[&source.stream].0, "error", Some(error.clone()));
                    }
                    Ok(false)
                }
            };
        }
        // No cut can be reached now: say why per source (and ask for snapshots of lost batches).
        for source in sources {
            let (frontier, pending) = &frontiers[&source.stream];
            match self.plan(source, frontier) {
                SourceStep::Reinitialize(loss) => self.reinitialize(client, source, frontier, *pending, &loss),
                SourceStep::Wait(waiting) => self.note_wait(source, frontier, &waiting),
                SourceStep::Apply(_) => {
                    self.set_status(source, frontier, "waiting", Some("for the other sources to reach a cut".into()))
                }
            }
        }
        Ok(false)
    }

    fn forget_applied(&mut self, stream: &StreamId, seq: u64) {
        self.rewind.remove(stream);
        if let Some(held) = self.held.get_mut(stream) {
            held.batches.retain(|s, _| *s > seq);
        }
        self.assembler.forget_through(stream, seq);
        self.written.remove(stream);
    }

    fn note_wait(&mut self, source: &Source, frontier: &Frontier, waiting: &Waiting) {
        match waiting {
            Waiting::UpToDate => self.set_status(source, frontier, "streaming", None),
            Waiting::ForBroker { seq } => {
                let detail = match &self.broker_error {
                    Some(error) => format!("waiting for batch {seq} from the broker: {error}"),
                    None => format!("waiting for batch {seq} from the broker"),
                };
                let state = if source.applied_seq == 0 { "bootstrapping" } else { "waiting" };
                self.set_status(source, frontier, state, Some(detail))
            }
        }
    }

    fn reinitialize(&mut self, client: &Client, source: &Source, frontier: &Frontier, pending: bool, loss: &Loss) {
        let reason = loss_text(loss);
        // The snapshot may land below the consumer's position (a broker that started over): read this source
        // from the start of its topic until something is applied again.
        if self.rewind.insert(source.stream.clone()) {
            self.assigned.clear();
        }
        if !pending {
            let asked = self.runtime.block_on(client.request_reinitialize(&source.stream, &reason));
            if let Err(error) = asked {
                let detail = format!("{reason}; cannot ask for a snapshot: {}", coordinator_error(error));
                self.set_status(source, frontier, "stalled", Some(detail));
                return;
            }
            let _ = run_in_transaction(|| {
                catalog::exec_with(
                    "UPDATE pgtrickle.pgt_federation_sources SET reinit_requests = reinit_requests + 1 \
                     WHERE stream_id = $1",
                    &[source.stream.to_string().into()],
                )
            });
        }
        self.set_status(source, frontier, "reinitializing", Some(format!("{reason}; snapshot requested")));
    }

    fn set_status(&mut self, source: &Source, frontier: &Frontier, state: &'static str, detail: Option<String>) {
        let lag = frontier.lag(source.applied_seq, now_ms());
        let status =
            Status { committed_seq: frontier.seq(), lag_batches: lag.batches, lag_seconds: lag.seconds, state, detail };
        // Seconds of lag change continuously; rewrite at most when something else changed or every round with lag.
        if self.written.get(&source.stream) == Some(&status) {
            return;
        }
        let written = run_in_transaction(|| {
            catalog::exec_with(
                "UPDATE pgtrickle.pgt_federation_sources SET committed_seq = $2, lag_batches = $3, lag_seconds = $4, \
                 state = $5, detail = $6, checked_at = now() WHERE stream_id = $1",
                &[
                    source.stream.to_string().into(),
                    (status.committed_seq as i64).into(),
                    (status.lag_batches as i64).into(),
                    status.lag_seconds.into(),
                    status.state.into(),
                    status.detail.clone().into(),
                ],
            )
        });
        if written.is_ok() {
            self.written.insert(source.stream.clone(), status);
        }
    }

    fn set_status_all(&mut self, sources: &[Source], state: &'static str, detail: &str) {
        let _ = run_in_transaction(|| {
            for source in sources {
                catalog::exec_with(
                    "UPDATE pgtrickle.pgt_federation_sources SET state = $2, detail = $3, checked_at = now() \
                     WHERE stream_id = $1",
                    &[source.stream.to_string().into(), state.into(), detail.into()],
                )?;
            }
            Ok(())
        });
        self.written.clear();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_trickle_subscriber_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let runtime = match new_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            pgrx::warning!("pg_trickle subscriber: {error}");
            return;
        }
    };
    let mut subscriber = Subscriber {
        runtime,
        client: None,
        consumer: None,
        assigned: Vec::new(),
        assigned_at: Instant::now(),
        rewind: BTreeSet::new(),
        caught_up: false,
        held: BTreeMap::new(),
        assembler: Assembler::default(),
        written: BTreeMap::new(),
        broker_error: None,
    };
    run_worker_loop(
        "subscriber",
        // The broker poll inside the round already waited.
        || Duration::from_millis(1),
        || {
            run_in_transaction(|| {
                Ok(catalog::scalar::<bool>("SELECT NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_federation_sources)", &[])?
                    .unwrap_or(true))
            })
            .unwrap_or(false)
        },
        || subscriber.round(),
        |_| {},
    );
}
