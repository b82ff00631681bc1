//! Tests that run inside PostgreSQL (`cargo pgrx test`), one module per area.
mod api;
