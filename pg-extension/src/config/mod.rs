//! The extension's GUCs. All live under the reserved `pg_trickle.` prefix.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Master switch for the background scheduler (refreshes by hand still work when off).
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
/// How many per-database scheduler workers may run at once, server-wide.
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// How often (milliseconds) a scheduler wakes to look for due stream tables.
pub static SCHEDULER_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Batches kept in a stream table's change buffer when nothing consumes it.
pub static UNCONSUMED_BATCH_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Bearer token for the coordinators' write API (readable by superusers only).
pub static COORDINATOR_TOKEN: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
/// A librdkafka properties file (`key=value` lines) with this server's broker credentials.
pub static BROKER_PROPERTIES_FILE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);
/// Upper bound (seconds) of the retry backoff of a failing stream table.
pub static MAX_BACKOFF_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(300);
/// Fault injection for tests: the publisher exits right after the broker acknowledged a round's batches, before
/// it records them in the coordinators' log (a crash at the worst moment, on demand).
pub static DEBUG_EXIT_AFTER_SEND: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Where checkpoints go (a URL prefix); unset: `file://<data directory>/pg_trickle/checkpoints`.
pub static CHECKPOINT_URL: GucSetting<Option<std::ffi::CString>> = GucSetting::<Option<std::ffi::CString>>::new(None);
/// Seconds between periodic checkpoints written by the scheduler (0: none).
pub static CHECKPOINT_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// Days a checkpoint is kept before the scheduler prunes it (the newest is always kept).
pub static CHECKPOINT_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(7);
/// How often (milliseconds) the publisher and the subscriber look for new batches when idle.
pub static FEDERATION_POLL_MS: GucSetting<i32> = GucSetting::<i32>::new(100);

/// Registers the GUCs; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_bool_guc(
        c"pg_trickle.enabled",
        c"Whether the background scheduler refreshes stream tables.",
        c"When off, schedulers stay idle; pgtrickle.refresh_stream_table() still works.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_workers",
        c"Maximum number of per-database scheduler workers running at once.",
        c"Each database with the extension gets one scheduler worker while this budget allows.",
        &MAX_WORKERS,
        1,
        128,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.scheduler_interval",
        c"How often a scheduler looks for due stream tables.",
        c"Also bounds how late a refresh can start after it becomes due.",
        &SCHEDULER_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.unconsumed_batch_retention",
        c"Batches kept in a stream table's change buffer when nothing consumes it.",
        c"Buffers with consumers are pruned as soon as every consumer has read a batch.",
        &UNCONSUMED_BATCH_RETENTION,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.max_backoff",
        c"Longest wait before retrying a stream table whose refresh failed.",
        c"Retries back off exponentially from the schedule up to this bound.",
        &MAX_BACKOFF_SECONDS,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.federation_poll_interval",
        c"How often the publisher and the subscriber look for new batches when idle.",
        c"Bounds the added latency between a refresh and its batch reaching the broker and a mirror.",
        &FEDERATION_POLL_MS,
        1,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"pg_trickle.debug_exit_after_send",
        c"Fault injection: the publisher exits after the broker acknowledged, before the frontier advance.",
        c"For tests of the publish protocol only; never set it in production.",
        &DEBUG_EXIT_AFTER_SEND,
        GucContext::Sighup,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"pg_trickle.coordinator_token",
        c"Bearer token sent to the federation's coordinators.",
        c"Only superusers can read it. Empty: no token (coordinators started with --insecure-no-token).",
        &COORDINATOR_TOKEN,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"pg_trickle.broker_properties_file",
        c"librdkafka properties file (key=value lines) with this server's broker credentials.",
        c"Read by the federation workers at start and on every reload (SIGHUP); keys must not repeat \
          pgtrickle.pgt_federation.broker_settings. Relative paths are relative to the data directory.",
        &BROKER_PROPERTIES_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_trickle.checkpoint_url",
        c"Where checkpoints are written: a URL prefix (file://, s3://, gs://, az://).",
        c"Each database writes under <prefix>/<database>/. Unset: file://<data directory>/pg_trickle/checkpoints. \
          Cloud credentials come from the server's environment, never from the URL.",
        &CHECKPOINT_URL,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.checkpoint_interval",
        c"How often the scheduler writes a checkpoint of each database (0: never).",
        c"Checkpoints go to pg_trickle.checkpoint_url; pgtrickle.checkpoint() writes one on demand.",
        &CHECKPOINT_INTERVAL_S,
        0,
        7 * 86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_trickle.checkpoint_retention_days",
        c"Days a checkpoint is kept before the scheduler prunes it.",
        c"The newest checkpoint of a database is kept whatever its age; files that are not checkpoints are never touched.",
        &CHECKPOINT_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: called once from _PG_init with a static NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_trickle".as_ptr()) };
}

/// The coordinator token, if set.
pub fn coordinator_token() -> Option<String> {
    COORDINATOR_TOKEN.get().and_then(|t| t.into_string().ok()).filter(|t| !t.is_empty())
}

/// The broker properties file, if one is set.
pub fn broker_properties_file() -> Option<String> {
    BROKER_PROPERTIES_FILE.get().and_then(|t| t.into_string().ok()).filter(|t| !t.trim().is_empty())
}

/// The checkpoint URL prefix, if one is set.
pub fn checkpoint_url() -> Option<String> {
    CHECKPOINT_URL.get().and_then(|t| t.into_string().ok()).filter(|t| !t.trim().is_empty())
}
