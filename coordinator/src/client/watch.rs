//! Following the event log over `/v1/events/stream`: one long response of JSON lines per watcher (as etcd streams a
//! watch), instead of a long poll per answer. When the node goes away, the stream ends or falls silent, the watcher
//! opens the stream on the next node and resumes where it stopped, so each record is delivered once and in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::Stream;
use reqwest::StatusCode;
use serde::Deserialize;
use shared_model::LogIndex;

use super::{Client, ClientError};
use crate::api::{ApiError, EventRecord, CLIENT_HEADER};

/// The server writes an empty line every 15 s on an idle stream: a stream silent for this long is dead (a node
/// frozen or cut off) and is reopened elsewhere.
const SILENT_STREAM: Duration = Duration::from_secs(45);

/// The last record delivered: its entry's index, and its position in the entry once one was delivered. Records up
/// to it are skipped when a reopened stream sends them again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cursor {
    index: LogIndex,
    position: Option<u32>,
}

impl Cursor {
    fn delivered(&self, r: &EventRecord) -> bool {
        r.index < self.index || (r.index == self.index && self.position.is_none_or(|p| r.position <= p))
    }

    /// The `after` to reopen the stream with: a stream cut inside an entry resends that entry whole.
    fn resume_after(&self) -> LogIndex {
        match self.position {
            Some(_) => self.index.saturating_sub(1),
            None => self.index,
        }
    }
}

/// The one line a stream ends with when it cannot go on (`compacted`, `store_error`).
#[derive(Deserialize)]
struct ErrorLine {
    error: ApiError,
}

struct Watch<'a> {
    client: &'a Client,
    cursor: Cursor,
    open: Option<reqwest::Response>,
    partial: Vec<u8>,
    ready: VecDeque<EventRecord>,
    /// Since when no node has served the stream (reset whenever one does).
    failing_since: Option<Instant>,
    last_failure: String,
    attempt: usize,
    /// The error that ends the watch, reported after the records received before it.
    ending: Option<ClientError>,
    done: bool,
}

impl Watch<'_> {
    /// The next record, or the error that ends the watch.
    async fn next(&mut self) -> Option<Result<EventRecord, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(record) = self.ready.pop_front() {
                self.cursor = Cursor { index: record.index, position: Some(record.position) };
                return Some(Ok(record));
            }
            if let Some(e) = self.ending.take() {
                self.done = true;
                return Some(Err(e));
            }
            if self.open.is_none() {
                if let Err(e) = self.reopen().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            let response = self.open.as_mut().expect("checked above");
            match tokio::time::timeout(SILENT_STREAM, response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    self.failing_since = None;
                    self.partial.extend_from_slice(&bytes);
                    if let Err(e) = self.take_lines() {
                        self.ending = Some(e);
                    }
                }
                Ok(Ok(None)) => self.lost("the node ended the stream".into()),
                Ok(Err(e)) => self.lost(e.to_string()),
                Err(_) => self.lost(format!("nothing received for {SILENT_STREAM:?}")),
            }
        }
    }

    fn lost(&mut self, why: String) {
        self.last_failure = why;
        self.open = None;
        self.partial.clear();
        self.attempt += 1;
    }

    /// Decodes the complete lines received so far into `ready`, skipping what was already delivered.
    fn take_lines(&mut self) -> Result<(), ClientError> {
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return Ok(()) };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            match serde_json::from_slice::<EventRecord>(line) {
                Ok(record) if self.cursor.delivered(&record) => {}
                Ok(record) => self.ready.push_back(record),
                Err(decode) => {
                    return Err(match serde_json::from_slice::<ErrorLine>(line) {
                        Ok(ErrorLine { error }) if error.code == "compacted" => ClientError::Api { status: 410, error },
                        Ok(ErrorLine { error }) => ClientError::Api { status: 500, error },
                        Err(_) => ClientError::Decode { url: "/v1/events/stream".into(), reason: decode.to_string() },
                    })
                }
            }
        }
        Ok(())
    }

    /// Opens the stream on the next node that serves it, trying the nodes in turn until the client's deadline
    /// has passed with none of them serving.
    async fn reopen(&mut self) -> Result<(), ClientError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        loop {
            let nodes = &self.client.nodes;
            let index = (self.client.preferred.load(std::sync::atomic::Ordering::Relaxed) + self.attempt) % nodes.len();
            let url = format!("{}/v1/events/stream?after={}", nodes[index], self.cursor.resume_after());
            let mut req = self.client.http.get(&url).header(CLIENT_HEADER, &self.client.options.client_id);
            if let Some(token) = &self.client.options.token {
                req = req.bearer_auth(token);
            }
            match tokio::time::timeout(self.client.options.attempt_timeout, req.send()).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.open = Some(resp);
                    return Ok(());
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        ApiError::new("http_error", String::from_utf8_lossy(&bytes).into_owned(), None)
                    });
                    if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::BAD_GATEWAY {
                        return Err(ClientError::Api { status: status.as_u16(), error });
                    }
                    self.last_failure = format!("{url}: {} ({})", error.message, error.code);
                }
                Ok(Err(e)) => self.last_failure = format!("{url}: {e}"),
                Err(_) => {
                    self.last_failure = format!("{url}: no answer within {:?}", self.client.options.attempt_timeout)
                }
            }
            self.attempt += 1;
            if since.elapsed() >= self.client.options.deadline {
                return Err(ClientError::Unavailable { waited: since.elapsed(), last: self.last_failure.clone() });
            }
            if self.attempt.is_multiple_of(nodes.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Client {
    /// Follows the event log from `after` (records with a greater index): every record once, in order, across
    /// node failures, until the stream reports an error (`410 compacted` when `after` is older than the retained
    /// records) or no node serves it within the client's deadline.
    pub fn watch_events(&self, after: LogIndex) -> impl Stream<Item = Result<EventRecord, ClientError>> + '_ {
        let watch = Watch {
            client: self,
            cursor: Cursor { index: after, position: None },
            open: None,
            partial: Vec::new(),
            ready: VecDeque::new(),
            failing_since: None,
            last_failure: String::new(),
            attempt: 0,
            ending: None,
            done: false,
        };
        futures::stream::unfold(watch, |mut watch| async move { watch.next().await.map(|item| (item, watch)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64, position: u32) -> EventRecord {
        EventRecord {
            index,
            position,
            proposed_at_unix_ms: 0,
            client: None,
            outcome: "internal".into(),
            events: vec![],
            error: None,
        }
    }

    #[test]
    fn a_reopened_stream_resends_the_cut_entry_and_skips_what_was_delivered() {
        let start = Cursor { index: 7, position: None };
        assert_eq!(start.resume_after(), 7);
        assert!(start.delivered(&record(7, 0)) && !start.delivered(&record(8, 0)));
        let inside = Cursor { index: 9, position: Some(1) };
        assert_eq!(inside.resume_after(), 8);
        assert!(inside.delivered(&record(9, 0)) && inside.delivered(&record(9, 1)));
        assert!(!inside.delivered(&record(9, 2)) && !inside.delivered(&record(10, 0)));
    }
}
