//! One unit of a background worker's work in a transaction of its own: committed when it succeeds, aborted when
//! it returns an error or raises one (a PostgreSQL ERROR or a Rust panic), so the worker goes on with a clean
//! state either way.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::error::Result;

/// The message of an error caught from PostgreSQL or a panic.
pub fn caught_message(caught: &CaughtError) -> String {
    match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// Runs `work` in a new transaction (with a snapshot); commits on `Ok`, aborts otherwise.
pub fn run_in_transaction<T>(work: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    PgTryBuilder::new(AssertUnwindSafe(|| {
        // SAFETY: the standard transaction bracket of a background worker; on error the catch arm below aborts
        // the transaction.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let outcome = work();
        // SAFETY: closes the bracket opened above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            match &outcome {
                Ok(_) => pg_sys::CommitTransactionCommand(),
                Err(_) => pg_sys::AbortCurrentTransaction(),
            }
        }
        outcome.map_err(|e| e.to_string())
    }))
    .catch_others(|caught| {
        // SAFETY: the work raised an ERROR inside the transaction opened above; abort it.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(caught_message(&caught))
    })
    .execute()
}
