//! SQL-level tests, run by `cargo pgrx test` inside PostgreSQL 15 (each test in its own transaction,
//! rolled back at the end).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Rows in the stream table but not in the query, plus rows in the query but not in the stream
    /// table (as multisets), over the stream table's visible columns.
    fn difference(st: &str, query: &str) -> i64 {
        let columns: String = one::<String>(&format!(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = '{st}'::regclass AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_\\_pgt\\_%'"
        ))
        .expect("columns");
        one::<i64>(&format!(
            "SELECT count(*) FROM ((SELECT {columns} FROM {st} EXCEPT ALL ({query})) \
             UNION ALL (({query}) EXCEPT ALL SELECT {columns} FROM {st})) d"
        ))
        .unwrap_or(0)
    }

    fn assert_same(st: &str, query: &str) {
        assert_eq!(difference(st, query), 0, "{st} differs from {query}");
    }

    /// Runs `sql` in a subtransaction expecting an ERROR with `sqlstate` (as a client would see it:
    /// the statement's effects rolled back); returns the message and hint.
    fn expect_error(sql: &str, sqlstate: PgSqlErrorCode) -> String {
        // SAFETY: the usual PL/pgSQL exception-block bracket: remember context and owner, open a
        // subtransaction, and release or roll it back before returning.
        let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
        unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
        let outcome = PgTryBuilder::new(|| {
            Spi::run(sql).expect("statement");
            unsafe { pg_sys::ReleaseCurrentSubTransaction() };
            None
        })
        .catch_others(|caught| {
            unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
            let report = match caught {
                pg_sys::panic::CaughtError::PostgresError(report) | pg_sys::panic::CaughtError::ErrorReport(report) => {
                    report
                }
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport,
            };
            Some((report.sql_error_code(), report.message().to_string(), report.hint().map(str::to_string)))
        })
        .execute();
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
        let (code, message, hint) = outcome.unwrap_or_else(|| panic!("{sql} succeeded; expected {sqlstate:?}"));
        assert_eq!(code, sqlstate, "{sql}: {message}");
        format!("{message} HINT: {}", hint.unwrap_or_default())
    }

    fn seed_orders() {
        run("CREATE TABLE orders (id int PRIMARY KEY, region text, amount numeric, qty int)");
        run("INSERT INTO orders SELECT g, 'r' || (g % 3), g * 1.5, g % 7 FROM generate_series(1, 30) g");
    }

    #[pg_test]
    fn create_filter_project_and_refresh_differentially() {
        seed_orders();
        let query = "SELECT id, amount * 2 AS doubled FROM orders WHERE qty > 2";
        run(&format!("SELECT pgtrickle.create_stream_table('big_orders', $${query}$$, schedule => '1m')"));
        assert_same("big_orders", query);
        let (mode, seq) = Spi::get_two::<String, i64>(
            "SELECT effective_mode, last_batch_seq FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'big_orders'",
        )
        .unwrap();
        assert_eq!(mode.as_deref(), Some("differential"));
        assert_eq!(seq, Some(1), "the initial population is snapshot batch 1");

        run("INSERT INTO orders VALUES (100, 'r1', 10, 6), (101, 'r2', 11, 1)");
        run("UPDATE orders SET qty = 0 WHERE id = 3");
        run("DELETE FROM orders WHERE id = 4");
        let seq = one::<i64>("SELECT pgtrickle.refresh_stream_table('big_orders')");
        assert_eq!(seq, Some(2));
        assert_same("big_orders", query);
        // The batch holds exactly the delta: +id 100, -id 3, -id 4.
        let buffer = one::<String>("SELECT 'pgtrickle_changes.changes_' || 'big_orders'::regclass::oid").unwrap();
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM {buffer} WHERE batch_seq = 2 AND action = 'I'")), Some(1));
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM {buffer} WHERE batch_seq = 2 AND action = 'D'")), Some(2));
        // Nothing changed: no batch, and the seq stays gap-free.
        assert_eq!(one::<i64>("SELECT pgtrickle.refresh_stream_table('big_orders')"), None);
        run("UPDATE orders SET amount = amount + 1 WHERE id = 10");
        assert_eq!(one::<i64>("SELECT pgtrickle.refresh_stream_table('big_orders')"), Some(3));
        assert_same("big_orders", query);
    }

    #[pg_test]
    fn group_by_aggregates_stay_equal_to_the_query() {
        seed_orders();
        let query = "SELECT region, count(*) AS n, sum(amount) AS total, avg(qty) AS mean_qty, count(amount) AS c, \
                     min(qty) AS lo, max(amount) AS hi FROM orders GROUP BY region";
        run(&format!("SELECT pgtrickle.create_stream_table('by_region', $${query}$$, refresh_mode => 'differential')"));
        assert_same("by_region", query);
        run("INSERT INTO orders VALUES (200, 'r9', NULL, 3), (201, 'r0', 1000, 9)");
        run("DELETE FROM orders WHERE id IN (1, 2, 3)");
        run("UPDATE orders SET region = 'r1' WHERE id = 5");
        run("SELECT pgtrickle.refresh_stream_table('by_region')");
        assert_same("by_region", query);
        run("DELETE FROM orders WHERE region = 'r9'");
        run("SELECT pgtrickle.refresh_stream_table('by_region')");
        assert_same("by_region", query);
        assert_eq!(one::<i64>("SELECT count(*) FROM by_region WHERE region = 'r9'"), Some(0));
    }

    #[pg_test]
    fn inner_join_of_two_sources() {
        seed_orders();
        run("CREATE TABLE regions (code text, label text)");
        run("INSERT INTO regions VALUES ('r0', 'zero'), ('r1', 'one'), ('r1', 'uno')");
        let query = "SELECT o.id, r.label FROM orders o JOIN regions r ON r.code = o.region WHERE o.qty >= 1";
        run(&format!("SELECT pgtrickle.create_stream_table('labelled', $${query}$$, refresh_mode => 'differential')"));
        assert_same("labelled", query);
        run("INSERT INTO regions VALUES ('r2', 'two')");
        run("DELETE FROM regions WHERE label = 'uno'");
        run("INSERT INTO orders VALUES (300, 'r2', 1, 1)");
        run("UPDATE orders SET region = 'r0' WHERE id = 1");
        run("SELECT pgtrickle.refresh_stream_table('labelled')");
        assert_same("labelled", query);
    }

    #[pg_test]
    fn other_queries_are_recomputed_and_diffed() {
        seed_orders();
        let query = "SELECT DISTINCT region FROM orders UNION ALL SELECT 'extra'";
        run(&format!("SELECT pgtrickle.create_stream_table('regions_seen', $${query}$$)"));
        assert_eq!(
            one::<String>("SELECT effective_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'regions_seen'")
                .as_deref(),
            Some("full")
        );
        run("INSERT INTO orders VALUES (400, 'new', 1, 1)");
        assert_eq!(one::<i64>("SELECT pgtrickle.refresh_stream_table('regions_seen')"), Some(2));
        assert_same("regions_seen", query);
        let inserted = one::<i64>(
            "SELECT rows_inserted FROM pgtrickle.pgt_refresh_history WHERE batch_seq = 2 ORDER BY refresh_id DESC LIMIT 1",
        );
        assert_eq!(inserted, Some(1), "a recompute-and-diff writes only what changed");
    }

    #[pg_test]
    fn truncate_of_a_source_is_handled() {
        seed_orders();
        let query = "SELECT region, sum(qty) AS q FROM orders GROUP BY region";
        run(&format!("SELECT pgtrickle.create_stream_table('q_by_region', $${query}$$)"));
        run("TRUNCATE orders");
        run("INSERT INTO orders VALUES (1, 'a', 1, 1)");
        run("SELECT pgtrickle.refresh_stream_table('q_by_region')");
        assert_same("q_by_region", query);
    }

    #[pg_test]
    fn reinitialize_emits_a_snapshot_batch() {
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('all_orders', 'SELECT id, region FROM orders')");
        assert_eq!(one::<i64>("SELECT pgtrickle.reinitialize_stream_table('all_orders')"), Some(2));
        let buffer = one::<String>("SELECT 'pgtrickle_changes.changes_' || 'all_orders'::regclass::oid").unwrap();
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM {buffer} WHERE batch_seq = 2 AND action = 'T'")), Some(1));
        assert_eq!(
            one::<i64>(&format!("SELECT count(*) FROM {buffer} WHERE batch_seq = 2 AND action = 'I'")),
            Some(30)
        );
        assert_eq!(
            one::<String>("SELECT batch_kind FROM pgtrickle.pgt_refresh_history WHERE batch_seq = 2").as_deref(),
            Some("snapshot")
        );
    }

    #[pg_test]
    fn stream_tables_over_stream_tables() {
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('base_st', 'SELECT id, region, qty FROM orders WHERE qty > 0')");
        let query = "SELECT region, count(*) AS n FROM base_st GROUP BY region";
        run(&format!("SELECT pgtrickle.create_stream_table('top_st', $${query}$$)"));
        run("INSERT INTO orders VALUES (500, 'r1', 1, 5)");
        run("DELETE FROM orders WHERE id < 5");
        run("SELECT pgtrickle.refresh_stream_table('base_st')");
        run("SELECT pgtrickle.refresh_stream_table('top_st')");
        assert_same("top_st", query);
        assert_same("top_st", "SELECT region, count(*) AS n FROM orders WHERE qty > 0 GROUP BY region");
        // Reinitializing the upstream makes the downstream recompute (snapshot batches carry a T marker).
        run("SELECT pgtrickle.reinitialize_stream_table('base_st')");
        run("SELECT pgtrickle.refresh_stream_table('top_st')");
        assert_same("top_st", query);

        let message = expect_error(
            "SELECT pgtrickle.drop_stream_table('base_st')",
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        );
        assert!(message.contains("top_st"), "{message}");
        let message = expect_error(
            "SELECT pgtrickle.alter_stream_table('base_st', query => 'SELECT region AS id, region, n AS qty FROM top_st')",
            PgSqlErrorCode::ERRCODE_INVALID_RECURSION,
        );
        assert!(
            message.contains("base_st -> top_st -> base_st") || message.contains("would depend on itself"),
            "{message}"
        );
        run("SELECT pgtrickle.drop_stream_table('base_st', cascade => true)");
        assert_eq!(one::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables"), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM pgtrickle.pgt_change_buffers"), Some(0), "captures released");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal"),
            Some(0)
        );
    }

    #[pg_test]
    fn dropping_a_source_in_use_is_refused_with_a_hint() {
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('o2', 'SELECT id FROM orders')");
        let message = expect_error("DROP TABLE orders", PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST);
        assert!(message.contains("o2"), "{message}");
        expect_error("DROP TABLE o2", PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST);
    }

    #[pg_test]
    fn bad_input_is_refused_and_nothing_is_left_behind() {
        seed_orders();
        let cases: &[(&str, PgSqlErrorCode)] = &[
            ("SELECT pgtrickle.create_stream_table('x', 'SELECT id FROM orders', refresh_mode => 'sometimes')", PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE),
            ("SELECT pgtrickle.create_stream_table('x', 'SELECT id FROM orders', schedule => 'soon')", PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE),
            ("SELECT pgtrickle.create_stream_table('x', 'SELECT id FROM nowhere')", PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
            ("SELECT pgtrickle.create_stream_table('x', 'SELEKT 1')", PgSqlErrorCode::ERRCODE_SYNTAX_ERROR),
            ("SELECT pgtrickle.create_stream_table('x', '')", PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION),
            ("SELECT pgtrickle.create_stream_table('x', 'SELECT id, random() AS r FROM orders', refresh_mode => 'differential')", PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION),
            ("SELECT pgtrickle.create_stream_table('x', 'SELECT region, count(*) FROM orders GROUP BY region HAVING count(*) > 1', refresh_mode => 'differential')", PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED),
            ("SELECT pgtrickle.create_stream_table('orders', 'SELECT 1 AS one')", PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE),
            ("SELECT pgtrickle.create_stream_table('nope.x', 'SELECT 1 AS one')", PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE),
            ("SELECT pgtrickle.refresh_stream_table('missing')", PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
            ("SELECT pgtrickle.refresh_stream_table('orders')", PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
            ("SELECT pgtrickle.drop_stream_table('missing')", PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
            ("SELECT pgtrickle.alter_stream_table('missing', schedule => '1s')", PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
        ];
        for (sql, code) in cases {
            expect_error(sql, *code);
            assert_eq!(one::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables"), Some(0), "{sql}");
            assert_eq!(one::<bool>("SELECT to_regclass('x') IS NULL"), Some(true), "{sql}");
            assert_eq!(one::<i64>("SELECT count(*) FROM pgtrickle.pgt_change_buffers"), Some(0), "{sql}");
        }
    }

    #[pg_test]
    fn alter_changes_schedule_mode_status_and_query() {
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('alt', 'SELECT id FROM orders', schedule => '5s')");
        run("SELECT pgtrickle.alter_stream_table('alt', schedule => '2m', refresh_mode => 'full', status => 'suspended')");
        let (schedule, mode) = Spi::get_two::<String, String>(
            "SELECT schedule::text, effective_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'alt'",
        )
        .unwrap();
        assert_eq!(schedule.as_deref(), Some("00:02:00"));
        assert_eq!(mode.as_deref(), Some("full"));
        assert_eq!(
            one::<String>("SELECT status FROM pgtrickle.stream_tables WHERE name = 'public.alt'").as_deref(),
            Some("SUSPENDED")
        );
        run("SELECT pgtrickle.alter_stream_table('alt', query => 'SELECT id, qty FROM orders WHERE qty > 3', refresh_mode => 'auto')");
        assert_same("alt", "SELECT id, qty FROM orders WHERE qty > 3");
        assert_eq!(
            one::<i64>("SELECT last_batch_seq FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'alt'"),
            Some(2)
        );
        expect_error(
            "SELECT pgtrickle.alter_stream_table('alt', status => 'sleepy')",
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        );
        expect_error(
            "SELECT pgtrickle.alter_stream_table('alt', query => 'SELECT id FROM alt')",
            PgSqlErrorCode::ERRCODE_INVALID_RECURSION,
        );
    }

    #[pg_test]
    fn the_view_reports_status_and_freshness() {
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('v1', 'SELECT id FROM orders', schedule => '10s')");
        let (status, rows) =
            Spi::get_two::<String, i64>("SELECT status, rows FROM pgtrickle.stream_tables WHERE name = 'public.v1'")
                .unwrap();
        assert_eq!(status.as_deref(), Some("ACTIVE"));
        assert_eq!(rows, Some(30));
        assert_eq!(
            one::<bool>(
                "SELECT next_due_at > last_refresh_at AND staleness >= interval '0' FROM pgtrickle.stream_tables"
            ),
            Some(true)
        );
    }

    /// A checkpoint names every stream table, its sources and settings (never by OID), and reads back through the
    /// codec with the counts its header announces; a URL that names no usable store is refused with a hint.
    #[pg_test]
    fn a_checkpoint_names_every_stream_table_and_reads_back() {
        use shared_model::checkpoint::{CheckpointReader, Item, QualifiedName, RefreshMode, SourceKind};
        seed_orders();
        let totals = "SELECT region, sum(amount) AS total FROM orders GROUP BY region";
        run(&format!("SELECT pgtrickle.create_stream_table('totals', $${totals}$$, '5s', 'differential')"));
        run("SELECT pgtrickle.create_stream_table('big', 'SELECT region FROM totals WHERE total > 100', NULL, 'full')");
        let dir = format!("/tmp/pgtrickle-checkpoint-test-{}", std::process::id());
        let (url, size) =
            Spi::get_two::<String, i64>(&format!("SELECT url, bytes FROM pgtrickle.checkpoint('file://{dir}')"))
                .unwrap();
        let url = url.expect("a URL");
        assert!(url.starts_with(&format!("file://{dir}/")) && url.ends_with(".jsonl.zst"), "{url}");
        let bytes = std::fs::read(url.trim_start_matches("file://")).expect("the file exists");
        assert_eq!(size, Some(bytes.len() as i64));
        let (header, items) = CheckpointReader::new(&bytes[..]).unwrap().read_all().unwrap();
        assert_eq!(header.counts.get("stream_table"), Some(&2));
        assert_eq!(header.counts.get("dependency"), Some(&2));
        let totals_item = items.iter().find(|i| matches!(i, Item::StreamTable { name, .. } if name.name == "totals"));
        match totals_item {
            Some(Item::StreamTable { query, schedule, refresh_mode, .. }) => {
                assert_eq!(query, totals);
                assert_eq!(schedule.as_deref(), Some("00:00:05"));
                assert_eq!(*refresh_mode, RefreshMode::Differential);
            }
            other => panic!("no stream table item for totals: {other:?}"),
        }
        assert!(items.iter().any(|i| matches!(i, Item::Dependency { stream_table, source, source_kind, .. }
            if stream_table == &QualifiedName::new("public", "big") && source == &QualifiedName::new("public", "totals")
                && *source_kind == SourceKind::StreamTable)));
        // An explicit file name is used as given.
        let named = format!("file://{dir}/named.jsonl.zst");
        assert_eq!(one::<String>(&format!("SELECT url FROM pgtrickle.checkpoint('{named}')")), Some(named));
        let message = expect_error("SELECT pgtrickle.checkpoint('ftp://host/x')", PgSqlErrorCode::ERRCODE_IO_ERROR);
        assert!(message.contains("not supported") && message.contains("s3://"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
