//! The idempotency cache: the first result of every recent write, by key, so that a retry after a lost reply is
//! answered with that result instead of being applied again.
//!
//! It is part of the replicated state (every node holds the same cache, in snapshots too) and bounded by time: a
//! key is remembered for a window (default 5 minutes, twenty times the clients' 15 s retry deadline) measured on
//! the proposing leaders' clocks as recorded in the log entries, so every node forgets the same keys at the same
//! entry. The window's clock is the newest time seen, so a new leader whose clock is behind cannot shorten it. A
//! very large safety bound on the number of keys (far above what the window holds at the write rates measured)
//! keeps memory finite under a runaway client.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::CommandError;
use crate::event::Applied;
use crate::ids::IdempotencyKey;
use crate::model::LogIndex;

/// How long a key is remembered by default: well beyond any client's retry window.
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Safety bound on remembered keys (about 2,000 writes/s for the whole window).
pub const IDEMPOTENCY_MAX_KEYS: usize = 600_000;

/// The remembered first result of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Log index of the first attempt.
    pub index: LogIndex,
    /// Fingerprint of the command, to tell a retry from a different command that reuses the key.
    pub fingerprint: u64,
    /// What the first attempt returned.
    pub result: StoredResult,
}

/// A remembered result, held encoded. The answer of a 100-advance request takes 3.3 KB of heap encoded but 16.3 KB
/// as values (every event's stream id is three heap strings; `benches/src/bin/idempotency_memory.rs`), and under batched load the cache holds five minutes of
/// such answers — most of a node's memory — while only a retry, which is rare, ever reads one. It serializes
/// exactly as the decoded `Result<Applied, CommandError>` did, so snapshots keep their format.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResult(Box<[u8]>);

type PlainResult = Result<Applied, CommandError>;

impl StoredResult {
    /// Holds `result` encoded.
    pub fn new(result: &PlainResult) -> Self {
        let bytes = bincode::serde::encode_to_vec(result, bincode::config::standard()).expect("results always encode");
        StoredResult(bytes.into_boxed_slice())
    }

    /// The result, decoded.
    pub fn get(&self) -> PlainResult {
        bincode::serde::decode_from_slice(&self.0, bincode::config::standard())
            .expect("bytes encoded by StoredResult::new decode")
            .0
    }

    /// Bytes held.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for StoredResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for StoredResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoredResult {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PlainResult::deserialize(deserializer).map(|result| StoredResult::new(&result))
    }
}

/// Key → first result, for a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyCache {
    window_ms: u64,
    /// The newest proposal time seen (the window's clock).
    newest_ms: u64,
    entries: BTreeMap<IdempotencyKey, Remembered>,
    /// Keys in the order they were first seen, with the time they were.
    order: VecDeque<(u64, IdempotencyKey)>,
}

impl Default for IdempotencyCache {
    fn default() -> Self {
        Self::with_window_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS)
    }
}

impl IdempotencyCache {
    /// A cache that remembers keys for `window_ms` milliseconds of proposal time.
    pub fn with_window_ms(window_ms: u64) -> Self {
        IdempotencyCache { window_ms, newest_ms: 0, entries: BTreeMap::new(), order: VecDeque::new() }
    }

    /// The remembered result of `key`.
    pub fn get(&self, key: &IdempotencyKey) -> Option<&Remembered> {
        self.entries.get(key)
    }

    /// Remembers the first result of `key`, proposed at `at_ms`; forgets keys older than the window.
    pub fn remember(&mut self, key: IdempotencyKey, remembered: Remembered, at_ms: u64) {
        self.newest_ms = self.newest_ms.max(at_ms);
        if self.entries.insert(key.clone(), remembered).is_none() {
            self.order.push_back((self.newest_ms, key));
        }
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some((first_ms, _)) = self.order.front() {
            if *first_ms >= horizon && self.order.len() <= IDEMPOTENCY_MAX_KEYS {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.entries.remove(&old);
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

    /// How long keys are remembered.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
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

    fn remembered(i: u64) -> Remembered {
        Remembered { index: i, fingerprint: 0, result: StoredResult::new(&Ok(Applied { index: i, events: vec![] })) }
    }

    fn key(i: u64) -> IdempotencyKey {
        IdempotencyKey::new("c", &i.to_string()).unwrap()
    }

    /// The form `Remembered` had when it held its result decoded: snapshots written then must still read.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct RememberedAsValues {
        index: LogIndex,
        fingerprint: u64,
        result: PlainResult,
    }

    fn advances(n: u64) -> PlainResult {
        let events = (0..n)
            .map(|s| crate::event::Event::FrontierAdvanced {
                stream: crate::ids::StreamId::parse(&format!("site{s}/public.t{s}")).unwrap(),
                seq: s + 1,
                kind: crate::model::BatchKind::Delta,
                position: crate::model::BrokerPosition { partition: 0, offset: s as i64 * 1000 },
                producer_epoch: 3,
            })
            .collect();
        Ok(Applied { index: 42, events })
    }

    #[test]
    fn an_encoded_result_serializes_as_the_decoded_one_did() {
        let results = [
            advances(100),
            advances(0),
            Err(CommandError::FrontierGap { stream: "a/public.t".into(), current: 3, proposed: 9 }),
        ];
        for result in results {
            let stored = Remembered { index: 7, fingerprint: 99, result: StoredResult::new(&result) };
            let plain = RememberedAsValues { index: 7, fingerprint: 99, result: result.clone() };
            let stored_bytes = crate::codec::encode(&stored);
            assert_eq!(stored_bytes, crate::codec::encode(&plain), "the serialized form changed");
            let back: Remembered = crate::codec::decode(&crate::codec::encode(&plain)).unwrap();
            assert_eq!(back, stored);
            assert_eq!(back.result.get(), result);
        }
    }

    #[test]
    fn keys_are_remembered_for_the_window_whatever_their_number() {
        let mut c = IdempotencyCache::with_window_ms(1_000);
        // Many keys within the window: all remembered (no count bound below the safety limit).
        for i in 0..50_000 {
            c.remember(key(i), remembered(i), 10_000 + i / 100);
        }
        assert_eq!(c.len(), 50_000);
        // Time moves past the window of the first ones.
        c.remember(key(60_000), remembered(60_000), 10_000 + 1_200);
        assert!(c.get(&key(0)).is_none(), "a key older than the window is forgotten");
        assert!(c.get(&key(49_999)).is_some(), "a key within the window is kept");
    }

    #[test]
    fn a_leader_with_a_slow_clock_cannot_shorten_the_window() {
        let mut c = IdempotencyCache::with_window_ms(1_000);
        c.remember(key(1), remembered(1), 50_000);
        // The next leader's clock is 10 s behind: the window's clock stays at the newest time seen.
        c.remember(key(2), remembered(2), 40_000);
        c.remember(key(3), remembered(3), 50_900);
        assert!(c.get(&key(1)).is_some() && c.get(&key(2)).is_some());
        c.remember(key(4), remembered(4), 51_001);
        assert!(c.get(&key(1)).is_none() && c.get(&key(2)).is_none() && c.get(&key(3)).is_some());
    }
}
