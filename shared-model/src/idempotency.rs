//! The idempotency cache: the first result of every recent write, by key, so that a retry after a lost reply is
//! answered with that result instead of being applied again.
//!
//! It is part of the replicated state (every node holds the same cache, in snapshots too) and bounded by count:
//! the oldest keys are forgotten first, deterministically, so memory stays flat under a steady write load.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::CommandError;
use crate::event::Applied;
use crate::ids::IdempotencyKey;
use crate::model::LogIndex;

/// How many keys are remembered by default.
pub const DEFAULT_IDEMPOTENCY_CAPACITY: usize = 16_384;

/// The remembered first result of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Log index of the first attempt.
    pub index: LogIndex,
    /// Fingerprint of the command, to tell a retry from a different command that reuses the key.
    pub fingerprint: u64,
    /// What the first attempt returned.
    pub result: Result<Applied, CommandError>,
}

/// Bounded key → first result map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyCache {
    capacity: usize,
    entries: BTreeMap<IdempotencyKey, Remembered>,
    order: VecDeque<IdempotencyKey>,
}

impl Default for IdempotencyCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_IDEMPOTENCY_CAPACITY)
    }
}

impl IdempotencyCache {
    /// A cache that remembers `capacity` keys (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        IdempotencyCache { capacity: capacity.max(1), entries: BTreeMap::new(), order: VecDeque::new() }
    }

    /// The remembered result of `key`.
    pub fn get(&self, key: &IdempotencyKey) -> Option<&Remembered> {
        self.entries.get(key)
    }

    /// Remembers the first result of `key`, forgetting the oldest key when full.
    pub fn remember(&mut self, key: IdempotencyKey, remembered: Remembered) {
        if self.entries.insert(key.clone(), remembered).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A stable fingerprint of a command (xxh3 of its canonical binary form), equal on every node and every run.
pub fn fingerprint(command: &Command) -> u64 {
    let bytes = bincode::serde::encode_to_vec(command, bincode::config::standard()).expect("commands always encode");
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_keys_are_forgotten_first() {
        let mut c = IdempotencyCache::with_capacity(2);
        for i in 0..3 {
            let key = IdempotencyKey::new("c", &i.to_string()).unwrap();
            c.remember(key, Remembered { index: i, fingerprint: 0, result: Ok(Applied { index: i, events: vec![] }) });
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&IdempotencyKey::new("c", "0").unwrap()).is_none());
        assert!(c.get(&IdempotencyKey::new("c", "2").unwrap()).is_some());
    }
}
