//! `pg_trickle`: stream tables for PostgreSQL. A stream table is a table defined by a query and kept
//! up to date from its sources' captured changes; every refresh also yields the exact delta (rows
//! inserted and deleted, keyed by row identity) as a numbered batch in the stream table's own change
//! buffer, which downstream stream tables and the federation publisher consume.
//!
//! Layout: `api/` (SQL functions), `catalog/` (catalog tables, SPI helpers), `cdc/` (change capture
//! and buffers), `query/` (query analysis and SQL generation, pure), `refresh/` (refresh), `scheduler/`
//! (background workers and the refresh queue), `checkpoint/` (the state to object storage), `federation/` (membership of a federation), `config/` (GUCs), `error`
//! (the error type).

pub mod api;
pub mod catalog;
pub mod cdc;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod federation;
pub mod query;
pub mod refresh;
pub mod scheduler;

::pgrx::pg_module_magic!();

/// The extension's schema (named in the control file), declared so `#[pg_extern(schema = …)]` resolves.
#[pgrx::pg_schema]
mod pgtrickle {}

pgrx::extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    config::register();
    // SAFETY: reading a flag postgres sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        scheduler::register_launcher();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_trickle'", "pg_trickle.scheduler_interval = '200ms'"]
    }
}
