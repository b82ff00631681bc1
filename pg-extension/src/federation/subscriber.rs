//! The subscriber: a background worker per database with federated stream tables, executing the consumer state
//! machine ([`shared_model::protocol::consumer`]), which takes every protocol decision: each round it feeds the
//! machine the catalog (per mirrored source: table, consistency, applied seq and broker offset) and performs the
//! actions it returns — assign broker positions, poll the topics, ask the coordinator for frontiers, apply held
//! batches into mirrors (eventual: one transaction per source, then a refresh of the federated stream table;
//! causal: every source up to one cut in ONE transaction that also refreshes it), ask for a REINITIALIZE, show a
//! source's status — feeding each result back.
//!
//! Each apply stores the applied seq and broker position of its sources and appends to `pgt_apply_log` in the
//! same transaction; the guard on `applied_seq` makes a second apply of the same seqs fail instead of applying
//! twice. Every wait and stall is visible, with its reason, in `pgtrickle.federation_sources`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coordinator::client::Client;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use shared_model::protocol::consumer::{
    Action, AnswerError, ApplyFailure, Consumer, FrontierAnswer, Input, Message, SourceConfig, Status,
};
use shared_model::{BatchKind, ColumnDef, Consistency, MessageKey, StreamId};

use super::broker_config::{BrokerConfig, FileProperties};
use super::changelog::{connect_consumer, LogConsumer};
use super::runtime::{new_runtime, run_worker_loop};
use super::{client_id, client_with_id, coordinator_error, mirror};
use crate::catalog::{self, RowLock};
use crate::config;
use crate::error::{PgTrickleError, Result};
use crate::refresh::{self, Request, Trigger};
use crate::scheduler::transaction::run_in_transaction;

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
    incarnation: Option<u64>,
}

struct Settings {
    coordinator_url: String,
    /// The broker configuration in force, or why there is none (a broken properties file, a conflict).
    broker: std::result::Result<BrokerConfig, String>,
    client_id: String,
    /// Every message must be authenticated by it.
    message_key: MessageKey,
}

/// What a round works on: settings, federated tables (by stream table id) and their sources.
struct Loaded {
    settings: Settings,
    tables: BTreeMap<i64, Consistency>,
    sources: Vec<Source>,
}

/// The catalog at the start of a round; `client_id` is read once per worker, `file` is the broker properties
/// file as last read.
fn load(client_id: &str, file: &mut FileProperties) -> Result<Option<Loaded>> {
    let Some(member) = super::membership()? else { return Ok(None) };
    let settings = Settings {
        coordinator_url: member.coordinator_url.clone(),
        broker: file.current().and_then(|file| member.broker_config(file)).map_err(|e| e.to_string()),
        client_id: client_id.to_string(),
        message_key: member.message_key()?,
    };
    let (tables, sources) = Spi::connect(|client| {
        let mut tables = BTreeMap::new();
        for row in client.select("SELECT pgt_id, consistency FROM pgtrickle.pgt_federated_tables", None, &[])? {
            let consistency: String = row.get(2)?.unwrap_or_default();
            tables.insert(row.get::<i64>(1)?.unwrap_or_default(), consistency.parse().unwrap_or(Consistency::Eventual));
        }
        let sql = "SELECT stream_id, pgt_id, mirror_relid, topic, columns, applied_seq, applied_offset, incarnation \
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
                incarnation: row.get::<i64>(8)?.map(|i| i.max(0) as u64),
            });
        }
        Ok::<_, PgTrickleError>((tables, sources))
    })?;
    Ok(Some(Loaded { settings, tables, sources }))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Applies `seqs` of one source (held batches) inside the caller's transaction.
fn apply_source(source: &Source, machine: &Consumer, seqs: &[u64], cut_at: Option<u64>) -> Result<()> {
    let mut last_offset = source.applied_offset;
    let (mut mirror_oid, mut columns) = (source.mirror, source.columns.clone());
    for seq in seqs {
        let held = machine
            .held(&source.stream, *seq)
            .ok_or_else(|| PgTrickleError::Internal(format!("batch {seq} of {} is not held", source.stream)))?;
        let (batch, offset) = (&held.batch, &held.offset);
        if batch.kind == BatchKind::Snapshot && batch.columns != columns {
            // The source's columns changed (a new defining query there): REINITIALIZE the mirror.
            mirror_oid = super::federated::rebuild_mirror(&source.stream, &batch.columns)?;
            columns = batch.columns.clone();
        }
        let started = Instant::now();
        let rows = super::wire::with_wire_settings(|| mirror::apply(mirror_oid, &columns, batch))?;
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

struct Subscriber {
    runtime: tokio::runtime::Runtime,
    client: Option<(String, Client)>,
    /// The consumer, and the configuration it was built from.
    consumer: Option<(BrokerConfig, Box<dyn LogConsumer>)>,
    /// The broker properties file as last read (again after each reload).
    file: FileProperties,
    machine: Consumer,
    /// The worker's monotonic clock (loss timeouts are times on it).
    started: Instant,
    /// This server's client id at the coordinators.
    client_id: String,
}

impl Subscriber {
    fn client(&mut self, settings: &Settings) -> Result<Client> {
        if self.client.as_ref().is_none_or(|(url, _)| *url != settings.coordinator_url) {
            let client = client_with_id(&settings.coordinator_url, Duration::from_secs(5), settings.client_id.clone())?;
            self.client = Some((settings.coordinator_url.clone(), client));
        }
        Ok(self.client.as_ref().expect("set above").1.clone())
    }

    /// One round: the catalog in, every action the machine asks for performed; returns whether anything was
    /// applied.
    fn round(&mut self) -> std::result::Result<bool, String> {
        let client_id = self.client_id.clone();
        let Some(Loaded { settings, tables, sources }) = run_in_transaction(|| load(&client_id, &mut self.file))?
        else {
            return Ok(false);
        };
        if sources.is_empty() {
            return Ok(false);
        }
        let connected = self
            .consumer
            .as_ref()
            .is_some_and(|(built_from, _)| settings.broker.as_ref().is_ok_and(|config| config == built_from));
        let configs = sources
            .iter()
            .map(|s| SourceConfig {
                stream: s.stream.clone(),
                table: s.pgt_id,
                consistency: tables.get(&s.pgt_id).copied().unwrap_or(Consistency::Eventual),
                applied_seq: s.applied_seq,
                applied_offset: s.applied_offset,
                incarnation: s.incarnation,
            })
            .collect();
        let now = self.started.elapsed().as_millis() as u64;
        let key = settings.message_key.clone();
        self.machine.step(Input::Round { now_ms: now, wall_ms: now_ms(), connected, key, sources: configs });
        let by_stream: BTreeMap<StreamId, &Source> = sources.iter().map(|s| (s.stream.clone(), s)).collect();
        while let Some(action) = self.machine.next_action() {
            if let Some(result) = self.perform(&settings, &by_stream, action) {
                self.machine.step(result);
            }
        }
        count_refused(&self.machine.rejected_messages);
        match self.machine.round_error() {
            Some(error) => Err(error.to_string()),
            None => Ok(self.machine.applied_this_round()),
        }
    }

    /// Performs one action of the machine; returns its result as the machine's next input.
    fn perform(&mut self, settings: &Settings, sources: &BTreeMap<StreamId, &Source>, action: Action) -> Option<Input> {
        Some(match action {
            Action::Assign { positions } => Input::Assigned { result: self.assign(settings, sources, &positions) },
            Action::Poll => {
                let Some((_, consumer)) = &mut self.consumer else {
                    return Some(Input::Polled { messages: Vec::new(), error: None, disconnected: true });
                };
                let wait = Duration::from_millis(config::FEDERATION_POLL_MS.get().max(1) as u64);
                let polled = consumer.poll(wait, 10_000);
                let topics: BTreeMap<&str, &StreamId> =
                    sources.values().map(|s| (s.topic.as_str(), &s.stream)).collect();
                let messages = polled
                    .messages
                    .into_iter()
                    .filter_map(|m| {
                        let stream = (*topics.get(m.channel.as_str())?).clone();
                        Some(Message { stream, offset: m.position, payload: m.payload })
                    })
                    .collect();
                if polled.disconnected {
                    // Dropped before librdkafka reconnects and asks about topics the broker may have lost.
                    self.consumer = None;
                }
                Input::Polled { messages, error: polled.error, disconnected: polled.disconnected }
            }
            Action::FetchFrontiers { after } => {
                let mut answers = Vec::new();
                match self.client(settings) {
                    Err(error) => answers.push((after[0].0.clone(), Err(AnswerError::Unreachable(error.to_string())))),
                    Ok(client) => {
                        for (stream, after_seq) in after {
                            let answer = self
                                .runtime
                                .block_on(client.frontier_history(&stream, after_seq, Duration::ZERO))
                                .map_err(|e| answer_error(&stream, coordinator_error(e)))
                                .and_then(|view| {
                                    let frontier = view.frontier().map_err(AnswerError::Unreachable)?;
                                    Ok(FrontierAnswer {
                                        frontier,
                                        pending_reinit: view.pending_reinit.is_some(),
                                        as_of: view.as_of,
                                        incarnation: view.incarnation,
                                    })
                                });
                            let unreachable = matches!(answer, Err(AnswerError::Unreachable(_)));
                            answers.push((stream, answer));
                            if unreachable {
                                break; // the round stalls: no need to wait for every other request to fail too
                            }
                        }
                    }
                }
                Input::Frontiers { answers }
            }
            Action::Apply { table, cut_at, seqs } => {
                let applied: Vec<(StreamId, u64)> =
                    seqs.iter().filter_map(|(s, q)| q.last().map(|last| (s.clone(), *last))).collect();
                let machine = &self.machine;
                // An apply that cannot succeed until the operator acts is told apart from one that failed.
                let blocked = std::cell::RefCell::new(None);
                let result = run_in_transaction(|| {
                    for (stream, seqs) in &seqs {
                        let source = sources[stream];
                        apply_source(source, machine, seqs, cut_at).inspect_err(|error| {
                            if matches!(error, PgTrickleError::ColumnChangeBlocked { .. }) {
                                let hint = error.hint().unwrap_or_default();
                                *blocked.borrow_mut() = Some(format!("{error} (HINT: {hint})"));
                            }
                        })?;
                    }
                    if let Some(cut_at) = cut_at {
                        let source = sources.values().find(|s| s.pgt_id == table).expect("a source of the table");
                        let pgt_id = refresh_federated(source, table, RowLock::Wait)?;
                        catalog::exec_with(
                            "UPDATE pgtrickle.pgt_federated_tables SET applied_cut_at = $2 WHERE pgt_id = $1",
                            &[pgt_id.into(), (cut_at as i64).into()],
                        )?;
                    }
                    Ok(())
                });
                let result = result.map_err(|error| match blocked.take() {
                    Some(reason) => ApplyFailure::Blocked(reason),
                    None => ApplyFailure::Failed(error),
                });
                Input::Applied { table, applied, result }
            }
            Action::RefreshFederated { table } => {
                // A failure here is the scheduler's to record and retry.
                if let Some(source) = sources.values().find(|s| s.pgt_id == table) {
                    let _ = run_in_transaction(|| refresh_federated(source, table, RowLock::SkipLocked).map(|_| ()));
                }
                return None;
            }
            Action::RequestReinitialize { stream, reason } => {
                // The server log says why a source is rebuilt from a snapshot (also shown in federation_sources).
                pgrx::log!("pg_trickle subscriber: {stream}: asking for a snapshot: {reason}");
                let result = self.client(settings).map_err(|e| e.to_string()).and_then(|client| {
                    self.runtime
                        .block_on(client.request_reinitialize(&stream, &reason))
                        .map(|_| ())
                        .map_err(|e| coordinator_error(e).to_string())
                });
                if result.is_ok() {
                    let _ = run_in_transaction(|| {
                        catalog::exec_with(
                            "UPDATE pgtrickle.pgt_federation_sources SET reinit_requests = reinit_requests + 1 \
                             WHERE stream_id = $1",
                            &[stream.to_string().into()],
                        )
                    });
                }
                Input::ReinitRequested { stream, result }
            }
            Action::SetStatus { stream, status } => {
                write_status(&stream, &status);
                return None;
            }
            Action::Reset { stream, incarnation, forget, reason } => {
                pgrx::log!("pg_trickle subscriber: {stream}: {reason}");
                let source = sources[&stream];
                let result = run_in_transaction(|| reset_source(source, incarnation, forget, &reason));
                Input::Reset { stream, result }
            }
        })
    }

    /// (Re)creates the consumer when there is none or the broker changed, and assigns it the positions (the
    /// backend makes the channels exist first).
    fn assign(
        &mut self,
        settings: &Settings,
        sources: &BTreeMap<StreamId, &Source>,
        positions: &[(StreamId, Option<i64>)],
    ) -> std::result::Result<(), String> {
        let wanted: Vec<(String, Option<i64>)> =
            positions.iter().map(|(stream, next)| (sources[stream].topic.clone(), *next)).collect();
        let config = settings.broker.as_ref().map_err(Clone::clone)?;
        if self.consumer.as_ref().is_none_or(|(built_from, _)| built_from != config) {
            self.consumer = None;
            let consumer = connect_consumer(config, &format!("{}-subscriber", settings.client_id))?;
            self.consumer = Some((config.clone(), consumer));
        }
        let result = self.consumer.as_mut().expect("set above").1.assign(&wanted);
        if result.is_err() {
            self.consumer = None; // rebuilt (from the settings in force then) next round
        }
        result
    }
}

/// The coordinators' answer about a source as the machine takes it: a refusal (the stream is gone) is the
/// source's own error; anything else means they cannot be asked.
fn answer_error(stream: &StreamId, error: PgTrickleError) -> AnswerError {
    match &error {
        PgTrickleError::Coordinator { code, .. } if code == "unknown_stream" || code == "not_found" => {
            AnswerError::Refused(format!(
                "{stream} is no longer published at the coordinators; this source waits for it to be published again \
             (then it starts over from a snapshot), or drop the federated stream table"
            ))
        }
        PgTrickleError::Coordinator { rejected: true, .. } => AnswerError::Refused(error.to_string()),
        _ => AnswerError::Unreachable(error.to_string()),
    }
}

/// Binds a source to the log's incarnation of its stream, in one transaction; with `forget`, the mirror held
/// another incarnation: it is emptied and the source starts over (applied seq 0, read from the topic's start).
fn reset_source(source: &Source, incarnation: u64, forget: bool, reason: &str) -> Result<()> {
    if forget {
        mirror::clear(source.mirror)?;
    }
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_federation_sources SET incarnation = $2, \
           applied_seq = CASE WHEN $3 THEN 0 ELSE applied_seq END, \
           applied_offset = CASE WHEN $3 THEN NULL ELSE applied_offset END, \
           committed_seq = CASE WHEN $3 THEN 0 ELSE committed_seq END, \
           lag_batches = CASE WHEN $3 THEN 0 ELSE lag_batches END, \
           state = CASE WHEN $3 THEN 'reinitializing' ELSE state END, \
           detail = CASE WHEN $3 THEN $4 ELSE detail END WHERE stream_id = $1",
        &[source.stream.to_string().into(), (incarnation as i64).into(), forget.into(), reason.into()],
    )?;
    Ok(())
}

/// Logs refused messages and adds them to their source's count.
fn count_refused(rejected: &[(StreamId, String)]) {
    let mut counts: BTreeMap<&StreamId, i64> = BTreeMap::new();
    for (stream, why) in rejected {
        pgrx::log!("pg_trickle subscriber: {stream}: refused a message: {why}");
        *counts.entry(stream).or_default() += 1;
    }
    for (stream, count) in counts {
        let _ = run_in_transaction(|| {
            catalog::exec_with(
                "UPDATE pgtrickle.pgt_federation_sources SET refused_messages = refused_messages + $2 \
                 WHERE stream_id = $1",
                &[stream.to_string().into(), count.into()],
            )
        });
    }
}

/// Writes a source's status (state, reason, and what the log said when it was asked).
fn write_status(stream: &StreamId, status: &Status) {
    let _ = run_in_transaction(|| match &status.log {
        Some(log) => catalog::exec_with(
            "UPDATE pgtrickle.pgt_federation_sources SET committed_seq = $2, lag_batches = $3, lag_seconds = $4, \
             state = $5, detail = $6, checked_at = now() WHERE stream_id = $1",
            &[
                stream.to_string().into(),
                (log.committed_seq as i64).into(),
                (log.lag_batches as i64).into(),
                log.lag_seconds.into(),
                status.state.as_str().into(),
                status.detail.clone().into(),
            ],
        ),
        None => catalog::exec_with(
            "UPDATE pgtrickle.pgt_federation_sources SET state = $2, detail = $3, checked_at = now() \
             WHERE stream_id = $1",
            &[stream.to_string().into(), status.state.as_str().into(), status.detail.clone().into()],
        ),
    });
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
    let client_id = match run_in_transaction(client_id) {
        Ok(id) => id,
        Err(error) => {
            pgrx::warning!("pg_trickle subscriber: {error}");
            return;
        }
    };
    let mut subscriber = Subscriber {
        runtime,
        client: None,
        consumer: None,
        file: FileProperties::default(),
        machine: Consumer::new(),
        started: Instant::now(),
        client_id,
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
