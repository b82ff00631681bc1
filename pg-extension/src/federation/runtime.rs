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

/// How many reloads (SIGHUP) this worker has processed: what reads files named by settings compares it.
static RELOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The number of reloads this process has processed.
pub fn reloads() -> u64 {
    RELOADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The main loop the publisher and the subscriber share: reload configuration on SIGHUP, run a round, then wait —
/// briefly after work, `idle` when there was none, with doubling backoff (200 ms … 5 s) after a failure, which
/// `on_error` records. Returns when SIGTERM arrives, or when `nothing_to_do` has held for 10 s (the database's
/// scheduler starts the worker again when needed).
pub fn run_worker_loop(
    name: &str,
    idle: impl Fn() -> std::time::Duration,
    nothing_to_do: impl Fn() -> bool,
    mut round: impl FnMut() -> std::result::Result<bool, String>,
    on_error: impl Fn(&str),
) {
    use pgrx::bgworkers::BackgroundWorker;
    use std::time::{Duration, Instant};
    const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
    let mut backoff = Duration::ZERO;
    let mut idle_since = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, outside any transaction.
            unsafe { pgrx::pg_sys::ProcessConfigFile(pgrx::pg_sys::GucContext::PGC_SIGHUP) };
            RELOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let wait = match round() {
            Ok(true) => {
                backoff = Duration::ZERO;
                idle_since = Instant::now();
                Duration::from_millis(1)
            }
            Ok(false) => {
                backoff = Duration::ZERO;
                if idle_since.elapsed() > Duration::from_secs(10) && nothing_to_do() {
                    return;
                }
                idle()
            }
            Err(message) => {
                pgrx::log!("pg_trickle {name}: {message}");
                on_error(&message);
                backoff = (backoff * 2).clamp(Duration::from_millis(200), RETRY_BACKOFF_MAX);
                backoff
            }
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            return;
        }
    }
}
