//! The publisher: a background worker per database with published stream tables, executing the producer state
//! machine ([`shared_model::protocol::producer`]), which takes every protocol decision: each round it feeds the
//! machine the catalog (per stream: published seq, newest batch, an unpublished snapshot waiting, changed
//! columns) and performs the actions it returns — publish columns again, ask the coordinator for a frontier,
//! write a snapshot batch, send a batch from the change buffer to the stream's channel of the change log (envelopes chunked under
//! the broker's message limit, acknowledged by the broker), propose frontier advances, mark batches published (which lets the
//! change buffer be pruned), record a stream's error — feeding each result back. Streams are independent: one
//! stream's failure is recorded on its own row and retried after its own backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use coordinator::api::AdvanceFrontiers;
use coordinator::client::Client;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use shared_model::envelope::{Batch, RowAction, RowChange};
use shared_model::protocol::producer::{Action, Input, LocalStream, LogView, Producer, SentCopy};
use shared_model::{BatchKind, ColumnDef, MessageKey, ProducerFence, StreamId, SystemIdentifier};

use super::broker_config::{BrokerConfig, FileProperties};
use super::changelog::{channel_name, connect_producer, BatchCopy, LogProducer};
use super::runtime::{new_runtime, run_worker_loop};
use super::{client_id_of, client_with_id, coordinator_error, membership, system_identifier};
use crate::catalog::{self, RowLock};
use crate::config;
use crate::error::{PgTrickleError, Result};
use crate::refresh::{self, Request, Trigger};
use crate::scheduler::transaction::run_in_transaction;

/// A publication as the catalog holds it: seqs are local batch seqs (the change buffer's numbering); the stream's
/// seqs in the log are `local + seq_shift` ([`Publication::to_stream`]).
struct Publication {
    pgt_id: i64,
    relid: pg_sys::Oid,
    stream: StreamId,
    published_seq: i64,
    proposed_seq: i64,
    proposed_epoch: i64,
    seq_shift: i64,
    incarnation: i64,
    last_batch_seq: i64,
    columns_changed: bool,
}

impl Publication {
    fn to_stream(&self, local: i64) -> u64 {
        (local + self.seq_shift).max(0) as u64
    }
    fn to_local(&self, stream_seq: u64) -> i64 {
        stream_seq as i64 - self.seq_shift
    }
}

struct Settings {
    coordinator_url: String,
    /// The broker configuration in force, or why there is none (a broken properties file, a conflict).
    broker: std::result::Result<BrokerConfig, String>,
    topic_prefix: String,
    client_id: String,
    /// Presented with every frontier advance.
    fence: ProducerFence,
    /// Authenticates every envelope.
    message_key: MessageKey,
}

/// The catalog at the start of a round; `me` is this server's system identifier (read once per worker), `file`
/// the broker properties file as last read.
fn load(me: SystemIdentifier, file: &mut FileProperties) -> Result<Option<(Settings, Vec<Publication>)>> {
    let Some(member) = membership()? else { return Ok(None) };
    let settings = Settings {
        coordinator_url: member.coordinator_url.clone(),
        broker: file.current().and_then(|file| member.broker_config(file)).map_err(|e| e.to_string()),
        topic_prefix: member.topic_prefix.clone(),
        client_id: client_id_of(me),
        fence: member.producer_fence(me)?,
        message_key: member.message_key()?,
    };
    let publications = Spi::connect(|client| {
        // columns_changed: the defining query's columns differ from the published ones (a new query).
        let sql = "SELECT p.pgt_id, st.pgt_relid, p.stream_id, p.published_seq, st.last_batch_seq, p.proposed_seq, \
                     p.proposed_epoch, p.seq_shift, p.incarnation, \
                     p.columns IS DISTINCT FROM (SELECT coalesce(jsonb_agg(jsonb_build_object('name', attname::text, \
                       'type_name', format_type(atttypid, atttypmod)) ORDER BY attnum), '[]') FROM pg_attribute \
                       WHERE attrelid = st.pgt_relid AND attnum > 0 AND NOT attisdropped \
                         AND attname::text NOT LIKE '\\_\\_pgt\\_%') \
                   FROM pgtrickle.pgt_publications p JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                   ORDER BY p.pgt_id";
        let mut found = Vec::new();
        for row in client.select(sql, None, &[])? {
            let id: String = row.get(3)?.unwrap_or_default();
            found.push(Publication {
                pgt_id: row.get(1)?.unwrap_or_default(),
                relid: row.get(2)?.unwrap_or(pg_sys::InvalidOid),
                stream: StreamId::parse(&id).map_err(|e| PgTrickleError::Internal(format!("stream id {id}: {e}")))?,
                published_seq: row.get(4)?.unwrap_or_default(),
                last_batch_seq: row.get(5)?.unwrap_or_default(),
                proposed_seq: row.get(6)?.unwrap_or_default(),
                proposed_epoch: row.get(7)?.unwrap_or_default(),
                seq_shift: row.get(8)?.unwrap_or_default(),
                incarnation: row.get(9)?.unwrap_or_default(),
                columns_changed: row.get(10)?.unwrap_or(false),
            });
        }
        Ok::<_, PgTrickleError>(found)
    })?;
    Ok(Some((settings, publications)))
}

/// Reads local batch `seq` of a stream table's change buffer, as the stream's batch `stream_seq`.
fn read_batch(publication: &Publication, seq: i64, stream_seq: u64, producer_epoch: u64) -> Result<Batch> {
    let columns: Vec<ColumnDef> =
        crate::cdc::user_columns(publication.relid)?.iter().map(|(n, t)| ColumnDef::new(n, t)).collect();
    let values = if columns.is_empty() {
        "ARRAY[]::text[]".to_string()
    } else {
        let casts: Vec<String> =
            columns.iter().map(|c| format!("{}::text", crate::query::render::quote_ident(&c.name))).collect();
        format!("ARRAY[{}]", casts.join(", "))
    };
    let buffer = crate::cdc::buffer_name(publication.relid);
    let sql =
        format!("SELECT action::text, __pgt_row_id, {values} FROM {buffer} WHERE batch_seq = $1 ORDER BY change_id");
    let mut kind = BatchKind::Delta;
    let mut rows = Vec::new();
    let mut found = false;
    Spi::connect(|client| {
        for row in client.select(&sql, None, &[seq.into()])? {
            found = true;
            let action: String = row.get(1)?.unwrap_or_default();
            let action = match action.as_str() {
                "T" => {
                    kind = BatchKind::Snapshot;
                    continue;
                }
                "I" => RowAction::Insert,
                "D" => RowAction::Delete,
                other => return Err(PgTrickleError::Internal(format!("unknown action {other:?} in {buffer}"))),
            };
            rows.push(RowChange {
                action,
                row_id: row.get::<i64>(2)?.unwrap_or_default(),
                values: row.get::<Vec<Option<String>>>(3)?.unwrap_or_default(),
            });
        }
        Ok::<_, PgTrickleError>(())
    })?;
    if !found {
        return Err(PgTrickleError::Internal(format!(
            "batch {seq} of {} is no longer in its change buffer",
            publication.stream
        )));
    }
    Ok(Batch {
        stream: publication.stream.clone(),
        incarnation: publication.incarnation.max(0) as u64,
        producer_epoch,
        seq: stream_seq,
        kind,
        columns,
        rows,
    })
}

/// Whether an unpublished snapshot batch is already waiting in the buffer.
fn unpublished_snapshot(publication: &Publication) -> Result<bool> {
    let buffer = crate::cdc::buffer_name(publication.relid);
    Ok(catalog::scalar::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {buffer} WHERE action = 'T' AND batch_seq > $1)"),
        &[publication.published_seq.into()],
    )?
    .unwrap_or(false))
}

fn mark_published(pgt_id: i64, relid: pg_sys::Oid, seq: i64) -> Result<()> {
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_publications SET published_seq = greatest(published_seq, $2), last_sent_at = now(), \
         last_error = NULL WHERE pgt_id = $1",
        &[pgt_id.into(), seq.into()],
    )?;
    let last = catalog::scalar::<i64>(
        "SELECT last_batch_seq FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1",
        &[pgt_id.into()],
    )?;
    crate::cdc::prune(relid, last)
}

/// Restarts a stream under a new producer epoch, in the caller's transaction: a REINITIALIZE refresh writes a
/// snapshot batch (local seq L), and the shift makes it the stream's batch `committed_seq + 1`; everything before
/// it counts as published (unsent local batches are dropped: the snapshot covers them). Returns L.
fn restart(publication: &Publication, committed_seq: u64, epoch: u64) -> Result<i64> {
    let st = catalog::load(publication.pgt_id, RowLock::Wait)?
        .ok_or_else(|| PgTrickleError::Internal(format!("{} is no longer a stream table", publication.stream)))?;
    let before = st.last_batch_seq;
    refresh::refresh(&st, Trigger::Publisher, Request::Reinitialize)?;
    let snapshot = catalog::scalar::<i64>(
        "SELECT last_batch_seq FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1",
        &[publication.pgt_id.into()],
    )?
    .unwrap_or_default();
    if snapshot <= before {
        return Err(PgTrickleError::Internal(format!(
            "the REINITIALIZE refresh of {} wrote no snapshot batch",
            publication.stream
        )));
    }
    let shift = committed_seq as i64 + 1 - snapshot;
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_publications SET seq_shift = $2, published_seq = $3, proposed_seq = $3, \
         proposed_epoch = $4, last_error = NULL WHERE pgt_id = $1",
        &[publication.pgt_id.into(), shift.into(), (snapshot - 1).into(), (epoch as i64).into()],
    )?;
    crate::cdc::prune(publication.relid, Some(snapshot))?;
    Ok(snapshot)
}

struct Publisher {
    runtime: tokio::runtime::Runtime,
    client: Option<(String, Client)>,
    /// The producer, and the configuration it was built from.
    producer: Option<(BrokerConfig, Box<dyn LogProducer>)>,
    /// The broker properties file as last read (again after each reload).
    file: FileProperties,
    /// Channels known to exist on the broker the producer is connected to.
    channels: BTreeSet<String>,
    machine: Producer,
    /// The worker's monotonic clock (backoffs are times on it).
    started: Instant,
    /// This server's system identifier.
    me: SystemIdentifier,
}

impl Publisher {
    fn client(&mut self, settings: &Settings) -> Result<Client> {
        if self.client.as_ref().is_none_or(|(url, _)| *url != settings.coordinator_url) {
            let client =
                client_with_id(&settings.coordinator_url, Duration::from_secs(10), settings.client_id.clone())?;
            self.client = Some((settings.coordinator_url.clone(), client));
        }
        Ok(self.client.as_ref().expect("set above").1.clone())
    }

    fn producer(&mut self, settings: &Settings) -> std::result::Result<&mut dyn LogProducer, String> {
        let config = settings.broker.as_ref().map_err(Clone::clone)?;
        if self.producer.as_ref().is_none_or(|(built_from, _)| built_from != config) {
            self.channels.clear();
            self.producer = Some((config.clone(), connect_producer(config)?));
        }
        Ok(self.producer.as_mut().expect("set above").1.as_mut())
    }

    /// A fresh idempotent producer next time: after a broker restart the old producer id may be unknown to it,
    /// which librdkafka treats as fatal, and librdkafka must not ask about topics the broker lost. The machine is
    /// told, so that copies the lost broker acknowledged are sent again.
    fn drop_producer(&mut self) {
        self.producer = None;
        self.channels.clear();
        self.machine.step(Input::BrokerLost);
    }

    /// One round: the catalog in, every action the machine asks for performed; returns whether anything was sent.
    fn round(&mut self) -> std::result::Result<bool, String> {
        let me = self.me;
        let Some((settings, publications)) = run_in_transaction(|| load(me, &mut self.file))? else { return Ok(false) };
        if self.producer.as_mut().is_some_and(|(_, producer)| !producer.healthy() || producer.refused().is_some()) {
            // The broker connection was lost, or the broker refused it: sends reconnect with a fresh producer
            // (built from the settings in force then).
            self.drop_producer();
        }
        // Whether a snapshot waits unsent, for every stream in one transaction (not one transaction per stream).
        let streams = run_in_transaction(|| {
            publications
                .iter()
                .map(|publication| {
                    Ok(LocalStream {
                        stream: publication.stream.clone(),
                        published_seq: publication.to_stream(publication.published_seq),
                        proposed_seq: publication.to_stream(publication.proposed_seq),
                        proposed_epoch: publication.proposed_epoch.max(0) as u64,
                        last_batch_seq: publication.to_stream(publication.last_batch_seq),
                        unpublished_snapshot: unpublished_snapshot(publication)?,
                        columns_changed: publication.columns_changed,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let by_stream: BTreeMap<StreamId, &Publication> = publications.iter().map(|p| (p.stream.clone(), p)).collect();
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.machine.step(Input::Round { now_ms, producer_epoch: settings.fence.producer_epoch, streams });
        while let Some(action) = self.machine.next_action() {
            let publication = by_stream[action.stream()];
            if let Some(result) = self.perform(&settings, publication, action) {
                self.machine.step(result);
            }
        }
        Ok(self.machine.sent_this_round())
    }

    /// Performs one action of the machine; returns its result as the machine's next input.
    fn perform(&mut self, settings: &Settings, publication: &Publication, action: Action) -> Option<Input> {
        let stream = publication.stream.clone();
        Some(match action {
            Action::Republish { .. } => {
                let result = run_in_transaction(|| {
                    let Some(st) = catalog::load(publication.pgt_id, RowLock::None)? else { return Ok(()) };
                    // Tells the coordinators the new columns (schema version + 1); the snapshot batch the new
                    // query wrote carries them to the consumers, which rebuild their mirrors.
                    super::publish(&st.qualified()).map(|_| ())
                });
                if result.is_ok() {
                    pgrx::log!("pg_trickle publisher: {stream} changed its columns; published again");
                }
                Input::Republished { stream, result }
            }
            Action::FetchFrontier { after_seq, .. } => {
                let result = self.client(settings).map_err(|e| e.to_string()).and_then(|client| {
                    let history = self
                        .runtime
                        .block_on(client.frontier_history(&stream, after_seq, Duration::ZERO))
                        .map_err(|e| not_published(&stream, coordinator_error(e)))?;
                    if history.incarnation != publication.incarnation.max(0) as u64 {
                        return Err(format!(
                            "the coordinators know {stream} as incarnation {}, this publication is incarnation {}: \
                             it was unpublished and published again behind this server's back; publish it again \
                             here: SELECT pgtrickle.publish_stream_table('{}')",
                            history.incarnation,
                            publication.incarnation,
                            stream.0.qualified_name()
                        ));
                    }
                    Ok(LogView {
                        committed_seq: history.points.last().map_or(history.floor_seq, |p| p.seq),
                        committed_epoch: history.producer_epoch,
                        pending_reinit: history.pending_reinit.is_some(),
                    })
                });
                Input::Frontier { stream, result }
            }
            Action::MarkPublished { seq, .. } => {
                let local = publication.to_local(seq);
                let result = run_in_transaction(|| mark_published(publication.pgt_id, publication.relid, local));
                Input::Marked { stream, seq, result }
            }
            Action::WriteSnapshot { .. } => {
                let result = run_in_transaction(|| {
                    if let Some(st) = catalog::load(publication.pgt_id, RowLock::Wait)? {
                        refresh::refresh(&st, Trigger::Publisher, Request::Reinitialize)?;
                    }
                    catalog::scalar::<i64>(
                        "SELECT last_batch_seq FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1",
                        &[publication.pgt_id.into()],
                    )
                    .map(|last| publication.to_stream(last.unwrap_or_default()))
                });
                Input::SnapshotWritten { stream, result }
            }
            Action::Restart { committed_seq, .. } => {
                let epoch = settings.fence.producer_epoch;
                let result = run_in_transaction(|| restart(publication, committed_seq, epoch));
                if let Ok(snapshot) = &result {
                    pgrx::log!(
                        "pg_trickle publisher: {stream} restarts under producer epoch {epoch}: its snapshot batch \
                         (local batch {snapshot}) is batch {} of the stream",
                        committed_seq + 1
                    );
                }
                Input::Restarted { stream, committed_seq, result: result.map(|_| ()) }
            }
            Action::Send { seq, .. } => {
                let result = self.send(settings, publication, seq);
                Input::Sent { stream, seq, result }
            }
            Action::RecordProposal { seq, producer_epoch, .. } => {
                let result = run_in_transaction(|| {
                    catalog::exec_with(
                        "UPDATE pgtrickle.pgt_publications SET proposed_seq = greatest(proposed_seq, $2), \
                         proposed_epoch = $3 WHERE pgt_id = $1",
                        &[publication.pgt_id.into(), publication.to_local(seq).into(), (producer_epoch as i64).into()],
                    )
                })
                .map(|_| ());
                Input::ProposalRecorded { stream, seq, result }
            }
            Action::Propose { advances, .. } => {
                if config::DEBUG_EXIT_AFTER_SEND.get() {
                    pgrx::log!(
                        "pg_trickle publisher: exiting after the broker acknowledged (pg_trickle.debug_exit_after_send)"
                    );
                    // SAFETY: ends this background worker the way PostgreSQL's own processes exit.
                    unsafe { pg_sys::proc_exit(1) };
                }
                let result = self.client(settings).map_err(|e| e.to_string()).and_then(|client| {
                    self.runtime
                        .block_on(
                            client.advance_frontiers(&AdvanceFrontiers { producer: settings.fence.clone(), advances }),
                        )
                        .map(|_| ())
                        .map_err(|e| format!("coordinator: {}", coordinator_error(e)))
                });
                Input::Proposed { stream, result }
            }
            Action::ReportError { error, .. } => {
                pgrx::log!("pg_trickle publisher: {stream}: {error}");
                let _ = run_in_transaction(|| {
                    catalog::exec_with(
                        "UPDATE pgtrickle.pgt_publications SET last_error = $2 WHERE pgt_id = $1",
                        &[publication.pgt_id.into(), error.clone().into()],
                    )
                });
                return None;
            }
        })
    }

    /// Sends batch `seq` of a publication and waits for the broker's acknowledgement.
    fn send(
        &mut self,
        settings: &Settings,
        publication: &Publication,
        seq: u64,
    ) -> std::result::Result<SentCopy, String> {
        let channel = channel_name(&settings.topic_prefix, &publication.stream);
        if !self.channels.contains(&channel) {
            if let Err(error) = self.producer(settings)?.ensure_channel(&channel) {
                self.drop_producer(); // the broker may have restarted
                return Err(error);
            }
            self.channels.insert(channel.clone());
        }
        let epoch = settings.fence.producer_epoch;
        let batch = run_in_transaction(|| {
            super::wire::with_wire_settings(|| read_batch(publication, publication.to_local(seq), seq, epoch))
        })?;
        let producer = self.producer(settings)?;
        let messages =
            batch.encode_chunks(producer.max_message_bytes(), &settings.message_key).map_err(|e| e.to_string())?;
        let copy = BatchCopy { stream: &batch.stream, incarnation: batch.incarnation, producer_epoch: epoch, seq };
        match producer.send_batch(&channel, copy, &messages) {
            Ok(offset) => Ok(SentCopy { kind: batch.kind, offset }),
            Err(error) => {
                self.drop_producer();
                Err(error)
            }
        }
    }
}

/// A failed frontier request as the stream's error; "no such stream" names the repair.
fn not_published(stream: &StreamId, error: PgTrickleError) -> String {
    match &error {
        PgTrickleError::Coordinator { code, .. } if code == "unknown_stream" || code == "not_found" => format!(
            "{stream} is not published at the coordinators (its unpublish reached them, or they were restored \
             without it): publish it again with SELECT pgtrickle.publish_stream_table('{}'), or withdraw it here \
             with SELECT pgtrickle.unpublish_stream_table('{0}')",
            stream.0.qualified_name()
        ),
        _ => format!("coordinator: {error}"),
    }
}

fn record_error(message: &str) {
    let _ = run_in_transaction(|| {
        catalog::exec_with("UPDATE pgtrickle.pgt_publications SET last_error = $1", &[message.into()])
    });
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_trickle_publisher_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let runtime = match new_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            pgrx::warning!("pg_trickle publisher: {error}");
            return;
        }
    };
    let me = match run_in_transaction(system_identifier) {
        Ok(me) => me,
        Err(error) => {
            pgrx::warning!("pg_trickle publisher: {error}");
            return;
        }
    };
    let mut publisher = Publisher {
        runtime,
        client: None,
        producer: None,
        file: FileProperties::default(),
        channels: BTreeSet::new(),
        machine: Producer::new(),
        started: Instant::now(),
        me,
    };
    run_worker_loop(
        "publisher",
        || Duration::from_millis(config::FEDERATION_POLL_MS.get().max(1) as u64),
        // Nothing published here any more: stop.
        || {
            run_in_transaction(|| {
                Ok(catalog::scalar::<bool>("SELECT NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_publications)", &[])?
                    .unwrap_or(true))
            })
            .unwrap_or(false)
        },
        || publisher.round(),
        record_error,
    );
}
