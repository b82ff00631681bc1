//! The broker envelope: how one batch of a published stream travels through Kafka or NATS.
//!
//! A batch (the delta of one refresh, or a snapshot) is split into chunks that each fit the broker's message limit;
//! every chunk is one message, framed like [`crate::codec`] but with magic `PGTE` (so a state record and an
//! envelope can never be mistaken for each other), version, length and xxh3 checksum, then bincode 2:
//! stream id, its incarnation, the producer epoch it was written under, seq, kind, chunk i of n, column names and
//! types, rows (action, row identity, values as PostgreSQL text, NULL as none) — and after the frame a 32-byte
//! HMAC-SHA256 tag under the federation's [`MessageKey`]: a message without a valid tag is refused before it is
//! decoded. [`Assembler`] puts chunks back together, tolerating redelivered chunks (at-least-once brokers) and
//! refusing ones that contradict what it already holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, HEADER_LEN};
use crate::message_key::{MessageKey, TAG_LEN};
use crate::{BatchKind, ColumnDef, StreamId};

/// Magic of broker envelopes.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"PGTE";

/// What a row change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RowAction {
    Insert,
    Delete,
}

/// One row of a batch: its identity (`__pgt_row_id`) and its values in the columns' order, as PostgreSQL prints
/// them (`None` is SQL NULL). Deletes carry the old values too, so a consumer can check or log them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowChange {
    pub action: RowAction,
    pub row_id: i64,
    pub values: Vec<Option<String>>,
}

/// One message on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub stream: StreamId,
    /// The stream's incarnation (the log index of the publication that created it): a stream unpublished and
    /// published again, or dropped and re-created, is another incarnation, whose seqs start over.
    pub incarnation: u64,
    /// The producer epoch of the server that wrote it.
    pub producer_epoch: u64,
    pub seq: u64,
    pub kind: BatchKind,
    /// 0-based index of this chunk …
    pub chunk: u32,
    /// … of this many (at least 1, also for an empty batch).
    pub chunks: u32,
    pub columns: Vec<ColumnDef>,
    pub rows: Vec<RowChange>,
}

/// A whole batch, before chunking or after reassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub stream: StreamId,
    pub incarnation: u64,
    pub producer_epoch: u64,
    pub seq: u64,
    pub kind: BatchKind,
    pub columns: Vec<ColumnDef>,
    pub rows: Vec<RowChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope: {0}")]
    Codec(#[from] CodecError),
    #[error("message is not authenticated by this federation's key (forged, damaged, or from another federation)")]
    Unauthenticated,
    #[error("row {row_id} alone needs {needed} bytes, over the {limit}-byte message limit")]
    RowTooLarge { row_id: i64, needed: usize, limit: usize },
    #[error("a {limit}-byte message limit cannot hold even the batch's header ({needed} bytes)")]
    LimitTooSmall { limit: usize, needed: usize },
    #[error("row {row_id} has {found} values for {expected} columns")]
    Arity { row_id: i64, expected: usize, found: usize },
    #[error("chunk {chunk} of {chunks} is out of range")]
    BadChunkIndex { chunk: u32, chunks: u32 },
    #[error("chunk {chunk} of {stream} seq {seq} contradicts the chunks already received ({what})")]
    Conflict { stream: StreamId, seq: u64, chunk: u32, what: &'static str },
}

/// Bytes that chunk/chunks varints and rounding may add beyond the measured size.
const SLACK: usize = 16;

fn encoded_len<T: Serialize>(value: &T) -> usize {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map(|v| v.len()).unwrap_or(usize::MAX)
}

impl Batch {
    /// Splits the batch into encoded messages of at most `max_message_bytes` each, rows kept in order, each
    /// authenticated with `key`.
    pub fn encode_chunks(&self, max_message_bytes: usize, key: &MessageKey) -> Result<Vec<Vec<u8>>, EnvelopeError> {
        for row in &self.rows {
            if row.values.len() != self.columns.len() {
                return Err(EnvelopeError::Arity {
                    row_id: row.row_id,
                    expected: self.columns.len(),
                    found: row.values.len(),
                });
            }
        }
        let empty = Envelope {
            stream: self.stream.clone(),
            incarnation: self.incarnation,
            producer_epoch: self.producer_epoch,
            seq: self.seq,
            kind: self.kind,
            chunk: u32::MAX,
            chunks: u32::MAX,
            columns: self.columns.clone(),
            rows: Vec::new(),
        };
        let fixed = HEADER_LEN + encoded_len(&empty) + TAG_LEN + SLACK;
        if fixed > max_message_bytes {
            return Err(EnvelopeError::LimitTooSmall { limit: max_message_bytes, needed: fixed });
        }
        let mut groups: Vec<(usize, usize)> = Vec::new(); // row ranges
        let (mut start, mut size) = (0usize, fixed);
        for (index, row) in self.rows.iter().enumerate() {
            let row_len = encoded_len(row);
            if fixed + row_len > max_message_bytes {
                return Err(EnvelopeError::RowTooLarge {
                    row_id: row.row_id,
                    needed: fixed + row_len,
                    limit: max_message_bytes,
                });
            }
            if size + row_len > max_message_bytes {
                groups.push((start, index));
                start = index;
                size = fixed;
            }
            size += row_len;
        }
        groups.push((start, self.rows.len()));
        let chunks = groups.len() as u32;
        Ok(groups
            .into_iter()
            .enumerate()
            .map(|(chunk, (from, to))| {
                let envelope = Envelope {
                    stream: self.stream.clone(),
                    incarnation: self.incarnation,
                    producer_epoch: self.producer_epoch,
                    seq: self.seq,
                    kind: self.kind,
                    chunk: chunk as u32,
                    chunks,
                    columns: self.columns.clone(),
                    rows: self.rows[from..to].to_vec(),
                };
                let mut message = codec::encode_framed(ENVELOPE_MAGIC, &envelope);
                let tag = key.tag(&message);
                message.extend_from_slice(&tag);
                message
            })
            .collect())
    }
}

/// Checks one message's tag under `key`, then decodes it. Nothing of an unauthenticated message is decoded.
pub fn decode_envelope(bytes: &[u8], key: &MessageKey) -> Result<Envelope, EnvelopeError> {
    if bytes.len() < TAG_LEN {
        return Err(EnvelopeError::Unauthenticated);
    }
    let (frame, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if !key.verify(frame, tag) {
        return Err(EnvelopeError::Unauthenticated);
    }
    let envelope: Envelope = codec::decode_framed(ENVELOPE_MAGIC, frame)?;
    if envelope.chunks == 0 || envelope.chunk >= envelope.chunks {
        return Err(EnvelopeError::BadChunkIndex { chunk: envelope.chunk, chunks: envelope.chunks });
    }
    Ok(envelope)
}

#[derive(Debug, Clone)]
struct Partial {
    kind: BatchKind,
    producer_epoch: u64,
    chunks: u32,
    columns: Vec<ColumnDef>,
    received: BTreeMap<u32, Vec<RowChange>>,
}

/// Reassembles batches from chunks arriving in any order, any number of times.
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    /// By (stream, incarnation, seq): two incarnations' batches of one seq never mix.
    partial: BTreeMap<(StreamId, u64, u64), Partial>,
}

impl Assembler {
    /// Adds a chunk; returns the batch once all its chunks are in. A chunk seen before with the same content is
    /// ignored; one that disagrees (kind, chunk count, columns or rows) is an error and changes nothing.
    pub fn add(&mut self, envelope: Envelope) -> Result<Option<Batch>, EnvelopeError> {
        let key = (envelope.stream.clone(), envelope.incarnation, envelope.seq);
        let conflict = |what| EnvelopeError::Conflict {
            stream: envelope.stream.clone(),
            seq: envelope.seq,
            chunk: envelope.chunk,
            what,
        };
        if envelope.chunk >= envelope.chunks {
            return Err(EnvelopeError::BadChunkIndex { chunk: envelope.chunk, chunks: envelope.chunks });
        }
        let partial = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            kind: envelope.kind,
            producer_epoch: envelope.producer_epoch,
            chunks: envelope.chunks,
            columns: envelope.columns.clone(),
            received: BTreeMap::new(),
        });
        if partial.kind != envelope.kind {
            return Err(conflict("batch kind"));
        }
        if partial.producer_epoch != envelope.producer_epoch {
            return Err(conflict("producer epoch"));
        }
        if partial.chunks != envelope.chunks {
            return Err(conflict("chunk count"));
        }
        if partial.columns != envelope.columns {
            return Err(conflict("columns"));
        }
        match partial.received.get(&envelope.chunk) {
            Some(rows) if *rows != envelope.rows => return Err(conflict("rows")),
            Some(_) => {}
            None => {
                partial.received.insert(envelope.chunk, envelope.rows);
            }
        }
        if partial.received.len() as u32 == partial.chunks {
            let done = self.partial.remove(&key).expect("present");
            return Ok(Some(Batch {
                stream: key.0,
                incarnation: key.1,
                producer_epoch: done.producer_epoch,
                seq: key.2,
                kind: done.kind,
                columns: done.columns,
                rows: done.received.into_values().flatten().collect(),
            }));
        }
        Ok(None)
    }

    /// Forgets incomplete batches of `stream` up to `seq` (already applied, or superseded by a snapshot).
    pub fn forget_through(&mut self, stream: &StreamId, seq: u64) {
        self.partial.retain(|(s, _, q), _| s != stream || *q > seq);
    }

    /// Incomplete batches held.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}
