//! `GET /v1/events/stream?after=N`: the event log as one long response of JSON lines (`application/x-ndjson`),
//! the way etcd streams a watch over one gRPC stream. A long-poll watcher sends a new request after every answer;
//! with 10,000 watchers that is 10,000 request/response cycles per write. Here each watcher keeps one response
//! open, and each entry's lines are encoded once (by [`Fanout`]) and written to every open stream.
//!
//! A stream first sends what the store holds after `after` (encoded for that stream), then the live lines. A
//! watcher that falls behind the live channel (it holds 4,096 entries) is served from the store again until it is
//! back: nothing is skipped or repeated, records come in log order. If `after` is older than the retained
//! records the stream ends with one line `{"error": {"code": "compacted", …}}`, as `/v1/events` answers 410. An
//! empty line every 15 s keeps idle streams alive through proxies; readers skip empty lines.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use raft_store::StateMachineStore;
use serde::Deserialize;
use shared_model::Executed;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use super::app::query;
use super::{AppState, Failure};
use crate::api::{ApiError, EventRecord};

/// `?after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Send records with a log index above this (default 0: from the oldest retained).
    pub after: Option<u64>,
}

/// One entry's records as JSON lines.
pub struct EncodedEntry {
    pub index: u64,
    pub lines: Bytes,
}

/// Encodes records as JSON lines, numbering the records of one entry 0, 1, 2…
fn encode(records: &[Executed]) -> Vec<EncodedEntry> {
    let mut out: Vec<EncodedEntry> = Vec::new();
    let mut current: Option<(u64, Vec<u8>, u32)> = None;
    for record in records {
        let mut view = EventRecord::from(record);
        match &mut current {
            Some((index, _, next)) if *index == record.index => {
                view.position = *next;
                *next += 1;
            }
            _ => {
                if let Some((index, lines, _)) = current.take() {
                    out.push(EncodedEntry { index, lines: Bytes::from(lines) });
                }
                current = Some((record.index, Vec::new(), 1));
            }
        }
        let (_, lines, _) = current.as_mut().expect("set above");
        serde_json::to_writer(&mut *lines, &view).expect("records serialize");
        lines.push(b'\n');
    }
    if let Some((index, lines, _)) = current {
        out.push(EncodedEntry { index, lines: Bytes::from(lines) });
    }
    out
}

/// Follows the applied records and broadcasts each entry's lines, encoded once.
pub struct Fanout {
    live: broadcast::Sender<Arc<EncodedEntry>>,
}

impl Fanout {
    /// Starts following `sm`.
    pub fn spawn(sm: StateMachineStore) -> Arc<Self> {
        let (live, _) = broadcast::channel(4096);
        let fanout = Arc::new(Fanout { live: live.clone() });
        tokio::spawn(async move {
            let mut applied = sm.subscribe_applied();
            let mut seen = *applied.borrow_and_update();
            loop {
                if applied.changed().await.is_err() {
                    return;
                }
                let now = *applied.borrow_and_update();
                while seen < now {
                    if live.receiver_count() == 0 {
                        seen = now;
                        break;
                    }
                    let Ok(records) = sm.records_after(seen, 256) else { break };
                    let Some(last) = records.last().map(|r| r.index) else {
                        seen = now;
                        break;
                    };
                    for entry in encode(&records) {
                        let _ = live.send(Arc::new(entry));
                    }
                    seen = last;
                }
                // A snapshot installed underneath moves the applied index back or past records never written
                // here; streams notice the gap by index and read the store.
                seen = seen.max(now);
            }
        });
        fanout
    }
}

/// The event log as a stream of JSON lines.
#[utoipa::path(get, path = "/v1/events/stream", tag = "watch", params(StreamQuery),
    responses((status = 200, description = "JSON lines, one EventRecord each (application/x-ndjson)", content_type = "application/x-ndjson"),
              (status = 401, body = ApiError), (status = 400, body = ApiError)))]
pub async fn event_stream(
    State(app): State<AppState>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let after = query(q)?.after.unwrap_or(0);
    // Subscribed before the backlog is read, so nothing applied meanwhile is missed.
    let live = app.fanout.live.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let sm = app.sm.clone();
    let app_for_task = app.clone();
    tokio::spawn(async move {
        app_for_task.metrics.watchers.inc();
        serve(sm, after, live, tx).await;
        app_for_task.metrics.watchers.dec();
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|b| (b, rx)) }));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-store")], body).into_response())
}

type Out = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends what the store holds after `after`, at least up to `until` when the store has it; returns the new
/// `after`, or None when the stream must end (compacted, store error, reader gone).
async fn from_store(sm: &StateMachineStore, mut after: u64, until: u64, tx: &Out) -> Option<u64> {
    while after < until {
        let records = match sm.records_after(after, 256) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Ok(error_line("store_error", &e.to_string()))).await;
                return None;
            }
        };
        let Some(first) = records.first() else { return Some(after) };
        if first.index > after + 1 {
            let message = format!("records after {after} are compacted; the oldest retained is {}", first.index);
            let _ = tx.send(Ok(error_line("compacted", &message))).await;
            return None;
        }
        for entry in encode(&records) {
            after = entry.index;
            tx.send(Ok(entry.lines)).await.ok()?;
        }
    }
    Some(after)
}

fn error_line(code: &str, message: &str) -> Bytes {
    let line = serde_json::json!({ "error": ApiError::new(code, message.to_string(), None) });
    Bytes::from(format!("{line}\n"))
}

async fn serve(sm: StateMachineStore, mut after: u64, mut live: broadcast::Receiver<Arc<EncodedEntry>>, tx: Out) {
    let applied = sm.applied().map_or(0, |l| l.index);
    match from_store(&sm, after, applied, &tx).await {
        Some(a) => after = a,
        None => return,
    }
    loop {
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                if tx.send(Ok(Bytes::from_static(b"\n"))).await.is_err() { return }
                continue;
            }
            _ = tx.closed() => return,
        };
        match received {
            Ok(entry) if entry.index <= after => {}
            Ok(entry) if entry.index == after + 1 => {
                if tx.send(Ok(entry.lines.clone())).await.is_err() {
                    return;
                }
                after = entry.index;
            }
            // A gap (fell behind, or entries the fan-out read in a later batch): the store has them.
            Ok(entry) => match from_store(&sm, after, entry.index, &tx).await {
                Some(a) => after = a,
                None => return,
            },
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let applied = sm.applied().map_or(0, |l| l.index);
                match from_store(&sm, after, applied, &tx).await {
                    Some(a) => after = a,
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
