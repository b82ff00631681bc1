//! The simulated broker: one ordered log per topic (a stream), appends acknowledged with their offset, and the
//! ways a real broker misbehaves — an acknowledgement lost after the append (the producer sends again: two copies),
//! a poll that returns only part of what is there or delivers some messages twice, a restart that lost the
//! acknowledged tail (later appends reuse those offsets), and a restart with nothing at all (offsets continue, the
//! messages are gone). Each message also carries, outside its payload, the producer's table as of that batch, so
//! the checkers can tell which copy the consumer applied.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shared_model::StreamId;

use crate::world::Table;

/// One message in a topic.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payload: Vec<u8>,
    /// The producer's table after the batch (only on the batch's last message; for the checkers).
    pub table_after: Option<Arc<Table>>,
}

#[derive(Default)]
struct Inner {
    topics: BTreeMap<StreamId, Vec<Option<Stored>>>,
    /// Bumped when the broker restarts (connections made before are lost).
    generation: u64,
}

/// The broker of one run.
#[derive(Clone, Default)]
pub struct Broker {
    inner: Arc<Mutex<Inner>>,
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current generation (a connection is good while it matches).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Appends a batch's messages; returns the offset of the last one.
    pub fn append(&self, stream: &StreamId, messages: Vec<Vec<u8>>, table_after: Arc<Table>) -> i64 {
        let mut inner = self.lock();
        let topic = inner.topics.entry(stream.clone()).or_default();
        let count = messages.len();
        for (n, payload) in messages.into_iter().enumerate() {
            let last = n + 1 == count;
            topic.push(Some(Stored { payload, table_after: last.then(|| table_after.clone()) }));
        }
        topic.len() as i64 - 1
    }

    /// Messages from `from` on, at most `limit`, with their offsets.
    pub fn read(&self, stream: &StreamId, from: i64, limit: usize) -> Vec<(i64, Stored)> {
        let inner = self.lock();
        let Some(topic) = inner.topics.get(stream) else { return Vec::new() };
        let start = from.max(0) as usize;
        topic
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .filter_map(|(offset, m)| m.clone().map(|m| (offset as i64, m)))
            .collect()
    }

    /// How far a topic goes (the next offset).
    pub fn end(&self, stream: &StreamId) -> i64 {
        self.lock().topics.get(stream).map_or(0, |t| t.len() as i64)
    }

    /// The message at an offset, if the broker has it.
    pub fn at(&self, stream: &StreamId, offset: i64) -> Option<Stored> {
        self.lock().topics.get(stream)?.get(offset as usize)?.clone()
    }

    /// A restart that lost the last `count` acknowledged messages of every topic.
    pub fn lose_tail(&self, count: usize) -> usize {
        let mut inner = self.lock();
        inner.generation += 1;
        let mut lost = 0;
        for topic in inner.topics.values_mut() {
            let keep = topic.len().saturating_sub(count);
            lost += topic.len() - keep;
            topic.truncate(keep);
        }
        lost
    }

    /// A restart with empty storage: every message is gone, offsets continue.
    pub fn lose_everything(&self) -> usize {
        let mut inner = self.lock();
        inner.generation += 1;
        let mut lost = 0;
        for topic in inner.topics.values_mut() {
            for slot in topic.iter_mut() {
                if slot.take().is_some() {
                    lost += 1;
                }
            }
        }
        lost
    }

    /// A plain restart: nothing lost, connections dropped.
    pub fn restart(&self) {
        self.lock().generation += 1;
    }
}
