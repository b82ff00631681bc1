//! Periodic checkpoints by the scheduler: one every `pg_trickle.checkpoint_interval`, counted from the newest
//! checkpoint the database's folder holds (so a restart does not write one at once, nor skip one that is due),
//! each followed by pruning past `pg_trickle.checkpoint_retention_days`. A failure (the store unreachable) is
//! logged and retried after a minute; refreshing goes on regardless.

use std::time::{SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;

use super::transaction::run_in_transaction;
use crate::{checkpoint, config};

/// Retry delay after a failed checkpoint.
const RETRY_MS: i64 = 60_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// When the next checkpoint is due.
#[derive(Default)]
pub struct Periodic {
    next_at_ms: Option<i64>,
}

impl Periodic {
    /// Writes a checkpoint when one is due.
    pub fn tick(&mut self) {
        let interval_ms = i64::from(config::CHECKPOINT_INTERVAL_S.get()) * 1000;
        if interval_ms <= 0 {
            self.next_at_ms = None;
            return;
        }
        let now = now_ms();
        let next = *self.next_at_ms.get_or_insert_with(|| {
            match run_in_transaction(|| checkpoint::list(None)).map(|l| l.first().map(|c| c.taken_at_ms)) {
                Ok(Some(newest)) => newest + interval_ms,
                Ok(None) | Err(_) => now,
            }
        });
        if now < next {
            return;
        }
        let retention = i64::from(config::CHECKPOINT_RETENTION_DAYS.get());
        match run_in_transaction(|| {
            let written = checkpoint::write(None)?;
            let pruned = checkpoint::prune(None, retention, now)?;
            Ok((written, pruned))
        }) {
            Ok((written, pruned)) => {
                log!(
                    "pg_trickle: checkpoint written to {} ({} bytes), {} pruned",
                    written.url,
                    written.bytes,
                    pruned.len()
                );
                self.next_at_ms = Some(now + interval_ms);
            }
            Err(e) => {
                warning!("pg_trickle: periodic checkpoint failed, retrying in a minute: {e}");
                self.next_at_ms = Some(now + RETRY_MS.min(interval_ms));
            }
        }
    }
}
