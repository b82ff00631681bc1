//! Background scheduling. A launcher (a static background worker, registered when the library is in
//! `shared_preload_libraries`) starts one dynamic scheduler worker per database, up to
//! `pg_trickle.max_workers`. A scheduler exits when its database lacks the extension; the launcher
//! looks again later. Each scheduler refreshes its due stream tables in [`queue::order`], one
//! transaction per refresh: a failure rolls back that refresh only, marks the stream table ERROR
//! with the message, and schedules a retry with exponential backoff; the others go on. Between rounds it writes
//! the database's periodic checkpoints ([`checkpoints`]).

pub mod checkpoints;
pub mod queue;
pub mod transaction;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::catalog::{self, RowLock};
use crate::config;
use crate::error::Result;
use crate::refresh::{self, Request, Trigger};

use queue::{Admission, AdmitAll, Candidate};
use transaction::run_in_transaction;

/// Registers the launcher; called from `_PG_init` while shared_preload_libraries loads.
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("pg_trickle launcher")
        .set_type("pg_trickle launcher")
        .set_library("pg_trickle")
        .set_function("pg_trickle_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn interval() -> Duration {
    Duration::from_millis(config::SCHEDULER_INTERVAL_MS.get().max(10) as u64)
}

fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: called from the worker's main loop, outside any transaction, as postgres' own
        // background processes do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

struct Slot {
    handle: Option<DynamicBackgroundWorker>,
    started: Instant,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_trickle_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut slots: HashMap<u32, Slot> = HashMap::new();
    loop {
        reload_config_if_asked();
        // A database whose scheduler stopped (no extension there, or it failed) is looked at again
        // after a few intervals.
        let recheck = (interval() * 5).max(Duration::from_secs(1));
        slots.retain(|_, slot| {
            let running = slot.handle.as_ref().map(|h| h.pid().is_ok()).unwrap_or(false);
            running || slot.started.elapsed() < recheck
        });
        let databases = database_list();
        let budget = config::MAX_WORKERS.get().max(1) as usize;
        for (oid, name) in databases {
            if slots.contains_key(&oid) {
                continue;
            }
            let running =
                slots.values().filter(|s| s.handle.as_ref().map(|h| h.pid().is_ok()).unwrap_or(false)).count();
            if running >= budget {
                break;
            }
            let handle = launch_database_worker("scheduler", oid.into(), &name);
            if handle.is_none() {
                pgrx::log!("pg_trickle: no background worker slot for database {name}; raise max_worker_processes");
            }
            slots.insert(oid, Slot { handle, started: Instant::now() });
        }
        if !BackgroundWorker::wait_latch(Some(interval())) {
            break;
        }
    }
}

/// Starts the dynamic worker `pg_trickle <kind>` (entry point `pg_trickle_<kind>_main`) for one database; not
/// restarted by the postmaster (its starter watches it), and reporting to the starting process.
pub fn launch_database_worker(kind: &str, database: pg_sys::Oid, name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("pg_trickle {kind} {name}"))
        .set_type(&format!("pg_trickle {kind}"))
        .set_library("pg_trickle")
        .set_function(&format!("pg_trickle_{kind}_main"))
        .set_argument(Some(pg_sys::Datum::from(database)))
        .enable_spi_access()
        .set_restart_time(None)
        // SAFETY: MyProcPid is set for every backend before any user code runs.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// Databases that accept connections, read from pg_database directly: the launcher is connected to
/// no database, so it cannot run SQL (the same way postgres' autovacuum launcher lists them).
fn database_list() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    // SAFETY: a catalog heap scan inside a transaction of its own, as autovacuum's
    // get_database_list() does; tuples are copied out before the scan and transaction end.
    unsafe {
        pg_sys::StartTransactionCommand();
        let _ = pg_sys::GetTransactionSnapshot();
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if (*form).datallowconn && !(*form).datistemplate {
                let name = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
                found.push(((*form).oid.to_u32(), name));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::CommitTransactionCommand();
    }
    found
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_trickle_scheduler_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    let mut admission = AdmitAll;
    let mut federation = FederationWorkers::default();
    let mut checkpoints = checkpoints::Periodic::default();
    loop {
        reload_config_if_asked();
        let installed = BackgroundWorker::transaction(|| {
            catalog::scalar::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trickle')", &[])
                .ok()
                .flatten()
                .unwrap_or(false)
        });
        if !installed {
            return;
        }
        federation.keep_running(database);
        if config::ENABLED.get() {
            let candidates = BackgroundWorker::transaction(|| due_candidates().unwrap_or_default());
            for pgt_id in queue::order(&candidates) {
                if BackgroundWorker::sigterm_received() {
                    return;
                }
                let candidate = candidates.iter().find(|c| c.pgt_id == pgt_id).expect("ordered from candidates");
                if admission.admit(candidate) {
                    run_one(pgt_id);
                }
            }
            checkpoints.tick();
        }
        if !BackgroundWorker::wait_latch(Some(interval())) {
            return;
        }
    }
}

/// The publisher and subscriber of this database: started while there is something to publish or to mirror,
/// restarted when they stop (they stop by themselves when idle, or die with a crash).
#[derive(Default)]
struct FederationWorkers {
    publisher: Option<DynamicBackgroundWorker>,
    subscriber: Option<DynamicBackgroundWorker>,
}

impl FederationWorkers {
    fn keep_running(&mut self, database: pg_sys::Oid) {
        let needs = BackgroundWorker::transaction(|| {
            catalog::scalar::<pgrx::JsonB>(
                "SELECT jsonb_build_object('db', current_database(), \
                   'publish', EXISTS (SELECT 1 FROM pgtrickle.pgt_publications) \
                              AND EXISTS (SELECT 1 FROM pgtrickle.pgt_federation), \
                   'subscribe', EXISTS (SELECT 1 FROM pgtrickle.pgt_federation_sources) \
                              AND EXISTS (SELECT 1 FROM pgtrickle.pgt_federation))",
                &[],
            )
            .ok()
            .flatten()
            .map(|j| j.0)
            .unwrap_or_default()
        });
        let name = needs["db"].as_str().unwrap_or("?").to_string();
        let alive = |w: &Option<DynamicBackgroundWorker>| {
            w.as_ref().is_some_and(|h| matches!(h.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)))
        };
        if needs["publish"].as_bool().unwrap_or(false) && !alive(&self.publisher) {
            self.publisher = launch_database_worker("publisher", database, &name);
        }
        if needs["subscribe"].as_bool().unwrap_or(false) && !alive(&self.subscriber) {
            self.subscriber = launch_database_worker("subscriber", database, &name);
        }
    }
}

fn due_candidates() -> Result<Vec<Candidate>> {
    Spi::connect(|client| {
        let sql =
            "SELECT st.pgt_id, (extract(epoch FROM now() - st.next_due_at) * 1000)::int8, st.consecutive_failures, \
                          ARRAY(SELECT up.pgt_id FROM pgtrickle.pgt_dependencies d \
                                JOIN pgtrickle.pgt_stream_tables up ON up.pgt_relid = d.source_relid \
                                WHERE d.pgt_id = st.pgt_id) \
                   FROM pgtrickle.pgt_stream_tables st \
                   WHERE st.status <> 'SUSPENDED' AND st.schedule IS NOT NULL \
                     AND coalesce(st.next_due_at, '-infinity') <= now()";
        let mut found = Vec::new();
        for row in client.select(sql, None, &[])? {
            found.push(Candidate {
                pgt_id: row.get::<i64>(1)?.unwrap_or_default(),
                overdue_ms: row.get::<i64>(2)?.unwrap_or(0),
                consecutive_failures: row.get::<i32>(3)?.unwrap_or(0),
                upstream: row.get::<Vec<i64>>(4)?.unwrap_or_default(),
            });
        }
        Ok(found)
    })
}

/// Refreshes one stream table in a transaction of its own; records a failure in another.
fn run_one(pgt_id: i64) {
    let started_at = refresh::unix_now();
    if let Err(message) = run_in_transaction(|| refresh_if_still_due(pgt_id)) {
        pgrx::log!("pg_trickle: refresh of stream table {pgt_id} failed: {message}");
        BackgroundWorker::transaction(|| {
            if let Err(error) = refresh::record_failure(pgt_id, started_at, &message, Trigger::Scheduler) {
                pgrx::warning!("pg_trickle: could not record the failure of stream table {pgt_id}: {error}");
            }
        });
    }
}

fn refresh_if_still_due(pgt_id: i64) -> Result<()> {
    let Some(st) = catalog::load(pgt_id, RowLock::SkipLocked)? else {
        return Ok(()); // dropped, or being refreshed by another session right now
    };
    let still_due = catalog::scalar::<bool>(
        "SELECT status <> 'SUSPENDED' AND schedule IS NOT NULL AND coalesce(next_due_at, '-infinity') <= now() \
         FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1",
        &[pgt_id.into()],
    )?
    .unwrap_or(false);
    if still_due {
        refresh::refresh(&st, Trigger::Scheduler, Request::UpToDate)?;
    }
    Ok(())
}
