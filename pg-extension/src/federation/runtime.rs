//! Where the extension's network I/O runs: a current-thread tokio runtime on the calling backend's (or worker's)
//! own thread, and threads of other libraries, all with every signal blocked so that PostgreSQL's signal handlers
//! only ever run on the backend's thread. Nothing started here calls into PostgreSQL.

use crate::error::{PgTrickleError, Result};

fn block_all_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on the current thread with valid, initialised sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        previous
    }
}

/// Runs `f` with every signal blocked on this thread, so that threads it starts (librdkafka's) inherit a full
/// mask; the previous mask is restored after.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let previous = block_all_signals();
    let out = f();
    // SAFETY: restores the mask saved above on the same thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    out
}

/// A current-thread runtime whose helper threads have every signal blocked.
pub fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(|| {
            block_all_signals();
        })
        .build()
        .map_err(|e| PgTrickleError::Internal(format!("cannot start an I/O runtime: {e}")))
}

/// Runs a future to completion on a runtime confined to this call.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    Ok(new_runtime()?.block_on(future))
}
