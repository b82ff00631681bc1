//! The publisher: a background worker per database with published stream tables. Each round it
//! 1. asks the coordinator for each stream's committed frontier: a batch the log recorded that this cluster has
//!    not marked published (a crash between the proposal and the local commit) is marked now, and a pending
//!    reinitialize request (a new subscriber, or a consumer that lost data) is answered with a snapshot batch;
//! 2. sends every batch after `published_seq` from the stream table's change buffer to the stream's topic as
//!    envelopes (chunked under the message limit) and waits for the broker's acknowledgement;
//! 3. proposes `FrontierAdvanced` for all of them in one request, and only after the log accepted it marks them
//!    published (in `pgt_publications`), which lets the change buffer be pruned.
//!
//! A crash anywhere repeats work, never loses it: a batch sent but not recorded is sent again with the same seq
//! (consumers apply each seq once), and a batch recorded but not marked is recognised in step 1.

use std::time::Duration;

use coordinator::api::AdvanceFrontiers;
use coordinator::client::Client;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use shared_model::envelope::{Batch, RowAction, RowChange};
use shared_model::{BatchKind, BrokerPosition, ColumnDef, FrontierAdvance, StreamId};

use super::broker::{topic_name, KafkaProducer, MAX_MESSAGE_BYTES};
use super::runtime::{new_runtime, run_worker_loop};
use super::{client_id, client_with_id, coordinator_error, membership};
use crate::catalog::{self, RowLock};
use crate::config;
use crate::error::{PgTrickleError, Result};
use crate::refresh::{self, Request, Trigger};
use crate::scheduler::transaction::run_in_transaction;

/// Batches sent per stream per round (a round ends with one frontier proposal for all of them).
const BATCHES_PER_ROUND: i64 = 64;

struct Publication {
    pgt_id: i64,
    relid: pg_sys::Oid,
    stream: StreamId,
    published_seq: i64,
    last_batch_seq: i64,
}

struct Settings {
    coordinator_url: String,
    bootstrap_servers: String,
    topic_prefix: String,
    client_id: String,
}

fn load() -> Result<Option<(Settings, Vec<Publication>)>> {
    let Some(member) = membership()? else { return Ok(None) };
    let broker = catalog::scalar::<pgrx::JsonB>(
        "SELECT jsonb_build_object('servers', bootstrap_servers, 'prefix', topic_prefix) FROM pgtrickle.pgt_federation",
        &[],
    )?
    .map(|j| j.0)
    .unwrap_or_default();
    let settings = Settings {
        coordinator_url: member.coordinator_url,
        bootstrap_servers: broker["servers"].as_str().unwrap_or_default().to_string(),
        topic_prefix: broker["prefix"].as_str().unwrap_or("pgtrickle").to_string(),
        client_id: client_id()?,
    };
    let publications = Spi::connect(|client| {
        let sql = "SELECT p.pgt_id, st.pgt_relid, p.stream_id, p.published_seq, st.last_batch_seq \
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
            });
        }
        Ok::<_, PgTrickleError>(found)
    })?;
    Ok(Some((settings, publications)))
}

/// Reads batch `seq` of a stream table's change buffer.
fn read_batch(publication: &Publication, seq: i64) -> Result<Batch> {
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
    Ok(Batch { stream: publication.stream.clone(), seq: seq as u64, kind, columns, rows })
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

struct Publisher {
    runtime: tokio::runtime::Runtime,
    client: Option<(String, Client)>,
    producer: Option<(String, KafkaProducer)>,
}

impl Publisher {
    fn client(&mut self, settings: &Settings) -> Result<&Client> {
        if self.client.as_ref().is_none_or(|(url, _)| *url != settings.coordinator_url) {
            let client =
                client_with_id(&settings.coordinator_url, Duration::from_secs(10), settings.client_id.clone())?;
            self.client = Some((settings.coordinator_url.clone(), client));
        }
        Ok(&self.client.as_ref().expect("set above").1)
    }

    fn producer(&mut self, settings: &Settings) -> std::result::Result<&mut KafkaProducer, String> {
        if self.producer.as_ref().is_none_or(|(servers, _)| *servers != settings.bootstrap_servers) {
            self.producer =
                Some((settings.bootstrap_servers.clone(), KafkaProducer::connect(&settings.bootstrap_servers)?));
        }
        Ok(&mut self.producer.as_mut().expect("set above").1)
    }

    /// One round; returns whether anything was sent.
    fn round(&mut self) -> std::result::Result<bool, String> {
        let Some((settings, publications)) = run_in_transaction(load)? else { return Ok(false) };
        if self.producer.as_ref().is_some_and(|(_, producer)| !producer.healthy()) {
            self.producer = None; // the broker connection was lost: reconnect with a fresh producer
            return Err("lost the connection to the broker; reconnecting".into());
        }
        // 1. Changed columns (a new defining query), recorded-but-unmarked batches and reinitialize requests.
        for publication in &publications {
            let republished = run_in_transaction(|| {
                let changed = catalog::scalar::<bool>(
                    "SELECT p.columns IS DISTINCT FROM (SELECT coalesce(jsonb_agg(jsonb_build_object('name', attname::text, \
                       'type_name', format_type(atttypid, atttypmod)) ORDER BY attnum), '[]') FROM pg_attribute \
                       WHERE attrelid = st.pgt_relid AND attnum > 0 AND NOT attisdropped AND attname::text NOT LIKE '\\_\\_pgt\\_%') \
                     FROM pgtrickle.pgt_publications p JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) WHERE p.pgt_id = $1",
                    &[publication.pgt_id.into()],
                )?
                .unwrap_or(false);
                if !changed {
                    return Ok(false);
                }
                let Some(st) = catalog::load(publication.pgt_id, RowLock::None)? else { return Ok(false) };
                // Tells the coordinators the new columns (schema version + 1); the snapshot batch the new query
                // wrote carries them to the consumers, which rebuild their mirrors.
                super::publish(&st.qualified())?;
                Ok(true)
            })?;
            if republished {
                pgrx::log!("pg_trickle publisher: {} changed its columns; published again", publication.stream);
            }
            let client = self.client(&settings).map_err(|e| e.to_string())?.clone();
            let history = self
                .runtime
                .block_on(client.frontier_history(
                    &publication.stream,
                    publication.published_seq as u64,
                    Duration::ZERO,
                ))
                .map_err(|e| format!("coordinator: {}", coordinator_error(e)))?;
            let committed = history.points.last().map_or(history.floor_seq, |p| p.seq) as i64;
            if committed > publication.published_seq {
                run_in_transaction(|| mark_published(publication.pgt_id, publication.relid, committed))?;
            }
            if history.pending_reinit.is_some() {
                run_in_transaction(|| {
                    if unpublished_snapshot(publication)? {
                        return Ok(());
                    }
                    let Some(st) = catalog::load(publication.pgt_id, RowLock::Wait)? else { return Ok(()) };
                    refresh::refresh(&st, Trigger::Publisher, Request::Reinitialize).map(|_| ())
                })?;
            }
        }
        // 2. Send what is not published yet.
        let Some((settings, publications)) = run_in_transaction(load)? else { return Ok(false) };
        let mut advances = Vec::new();
        let mut marks = Vec::new();
        for publication in publications.iter().filter(|p| p.last_batch_seq > p.published_seq) {
            let topic = topic_name(&settings.topic_prefix, &publication.stream);
            self.producer(&settings)?;
            let (_, producer) = self.producer.as_mut().expect("connected above");
            if let Err(error) = producer.ensure_topic(&self.runtime, &topic) {
                self.producer = None; // reconnect next round: the broker may have restarted
                return Err(error);
            }
            let last = publication.last_batch_seq.min(publication.published_seq + BATCHES_PER_ROUND);
            for seq in publication.published_seq + 1..=last {
                let batch = run_in_transaction(|| read_batch(publication, seq))?;
                let messages = batch.encode_chunks(MAX_MESSAGE_BYTES).map_err(|e| e.to_string())?;
                let producer = self.producer(&settings)?;
                let offset = match producer.send_all(&topic, &publication.stream.to_string(), &messages) {
                    Ok(offset) => offset,
                    Err(error) => {
                        // A fresh idempotent producer next round: after a broker restart the old producer id
                        // may be unknown to it, which librdkafka treats as fatal.
                        self.producer = None;
                        return Err(error);
                    }
                };
                advances.push(FrontierAdvance {
                    stream: publication.stream.clone(),
                    seq: seq as u64,
                    kind: batch.kind,
                    position: BrokerPosition { partition: 0, offset },
                });
            }
            marks.push((publication.pgt_id, publication.relid, last));
        }
        if advances.is_empty() {
            return Ok(false);
        }
        if config::DEBUG_EXIT_AFTER_SEND.get() {
            pgrx::log!(
                "pg_trickle publisher: exiting after the broker acknowledged (pg_trickle.debug_exit_after_send)"
            );
            // SAFETY: ends this background worker the way PostgreSQL's own processes exit.
            unsafe { pg_sys::proc_exit(1) };
        }
        // 3. Record them in the log, then mark them published.
        let client = self.client(&settings).map_err(|e| e.to_string())?.clone();
        self.runtime
            .block_on(client.advance_frontiers(&AdvanceFrontiers { advances }))
            .map_err(|e| format!("coordinator: {}", coordinator_error(e)))?;
        run_in_transaction(|| {
            for (pgt_id, relid, seq) in &marks {
                mark_published(*pgt_id, *relid, *seq)?;
            }
            Ok(())
        })?;
        Ok(true)
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
    let mut publisher = Publisher { runtime, client: None, producer: None };
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
