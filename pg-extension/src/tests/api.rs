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
            Some(Item::StreamTable { query, schedule_secs, refresh_mode, .. }) => {
                assert_eq!(query, totals);
                assert_eq!(*schedule_secs, Some(5.0));
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
        // Listing and pruning: checkpoints are listed newest first (a file named otherwise is not one); an old one
        // is pruned, a foreign file and the newest stay.
        std::fs::write(format!("{dir}/2020-01-01T00:00:00.000Z.jsonl.zst"), b"old").unwrap();
        std::fs::write(format!("{dir}/notes.txt"), b"mine").unwrap();
        let listed = Spi::get_one::<i64>(&format!("SELECT count(*) FROM pgtrickle.list_checkpoints('file://{dir}')"));
        assert_eq!(listed.unwrap(), Some(2));
        let pruned =
            one::<String>(&format!("SELECT string_agg(url, ',') FROM pgtrickle.prune_checkpoints('file://{dir}', 7)"));
        assert_eq!(pruned, Some(format!("file://{dir}/2020-01-01T00:00:00.000Z.jsonl.zst")));
        assert!(std::path::Path::new(&format!("{dir}/notes.txt")).exists());
        let newest = one::<String>(&format!("SELECT url FROM pgtrickle.list_checkpoints('file://{dir}') LIMIT 1"));
        assert_eq!(newest, Some(url.clone()));
        let message = expect_error("SELECT pgtrickle.checkpoint('ftp://host/x')", PgSqlErrorCode::ERRCODE_IO_ERROR);
        assert!(message.contains("not supported") && message.contains("s3://"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Restoring: the stream tables come back by name in dependency order, empty and marked for REINITIALIZE,
    /// then equal their queries once refreshed; a database with stream tables is refused unless `replace`.
    #[pg_test]
    fn a_checkpoint_restores_the_stream_tables_it_names() {
        seed_orders();
        let totals = "SELECT region, sum(amount) AS total FROM orders GROUP BY region";
        let big = "SELECT region FROM totals WHERE total > 100";
        run(&format!("SELECT pgtrickle.create_stream_table('totals', $${totals}$$, '5s', 'differential')"));
        run(&format!("SELECT pgtrickle.create_stream_table('big', $${big}$$, NULL, 'full')"));
        run("SELECT pgtrickle.create_stream_table('ids', 'SELECT id FROM orders', '1m')");
        run("SELECT pgtrickle.alter_stream_table('ids', status => 'suspended')");
        let dir = format!("/tmp/pgtrickle-restore-test-{}", std::process::id());
        let url = one::<String>(&format!("SELECT url FROM pgtrickle.checkpoint('file://{dir}')")).unwrap();

        let refused = expect_error(
            &format!("SELECT pgtrickle.restore_from_checkpoint('{url}')"),
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        );
        assert!(refused.contains("replace => true"), "{refused}");
        run("SELECT pgtrickle.drop_stream_table('totals', cascade => true)");
        run("SELECT pgtrickle.drop_stream_table('ids')");
        assert_eq!(
            one::<i64>(&format!("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint('{url}')")),
            Some(3)
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit AND row_count = 0"),
            Some(3)
        );
        assert_eq!(
            one::<String>("SELECT status FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'ids'"),
            Some("SUSPENDED".into())
        );
        assert_eq!(
            one::<String>("SELECT refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'big'"),
            Some("full".into())
        );
        run("SELECT pgtrickle.refresh_stream_table('totals')");
        run("SELECT pgtrickle.refresh_stream_table('big')");
        assert_same("totals", totals);
        assert_same("big", big);
        // With replace, the existing ones are dropped and recreated.
        assert_eq!(
            one::<i64>(&format!(
                "SELECT stream_tables FROM pgtrickle.restore_from_checkpoint('{url}', replace => true)"
            )),
            Some(3)
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit"), Some(3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every kind of bad checkpoint is refused with its own SQLSTATE and a hint, and nothing changes.
    #[pg_test]
    fn bad_checkpoints_are_refused_each_with_its_own_sqlstate_and_nothing_changes() {
        use shared_model::checkpoint::{CheckpointWriter, Header, Item, QualifiedName, SourceKind, Watermark};
        seed_orders();
        run("SELECT pgtrickle.create_stream_table('ids', 'SELECT id FROM orders', '1m')");
        let dir = format!("/tmp/pgtrickle-bad-checkpoints-{}", std::process::id());
        let url = one::<String>(&format!("SELECT url FROM pgtrickle.checkpoint('file://{dir}')")).unwrap();
        let good = std::fs::read(url.trim_start_matches("file://")).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = format!("{dir}/{name}");
            std::fs::write(&path, bytes).unwrap();
            format!("file://{path}")
        };
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        let newer = zstd::encode_all(&b"{\"format\":\"pg_trickle_checkpoint\",\"version\":99}\n"[..], 3).unwrap();
        let mut header = Header {
            format: String::new(),
            version: 0,
            extension_version: "test".into(),
            cluster: None,
            database: "elsewhere".into(),
            written_at: "2026-12-01T00:00:00.000Z".into(),
            counts: [("stream_table".to_string(), 1u64), ("dependency".to_string(), 1u64)].into_iter().collect(),
        };
        header.counts.retain(|_, n| *n > 0);
        let mut writer = CheckpointWriter::new(Vec::new(), header).unwrap();
        writer
            .item(&Item::StreamTable {
                name: QualifiedName::new("public", "lost"),
                query: "SELECT * FROM nowhere".into(),
                schedule_secs: None,
                refresh_mode: shared_model::checkpoint::RefreshMode::Full,
                status: shared_model::checkpoint::StreamTableStatus::Active,
                settings: Default::default(),
                refresh_sql: None,
            })
            .unwrap();
        writer
            .item(&Item::Dependency {
                stream_table: QualifiedName::new("public", "lost"),
                source: QualifiedName::new("public", "nowhere"),
                source_kind: SourceKind::Table,
                consumed: Watermark { snapshot: None, xid: None, change_id: None },
            })
            .unwrap();
        let missing_source = writer.finish().unwrap().0;
        let cases = [
            ("flipped.jsonl.zst", flipped, PgSqlErrorCode::ERRCODE_DATA_CORRUPTED),
            ("truncated.jsonl.zst", good[..good.len() - 7].to_vec(), PgSqlErrorCode::ERRCODE_BAD_COPY_FILE_FORMAT),
            ("foreign.jsonl.zst", b"id,name\n1,a\n".to_vec(), PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE),
            ("newer.jsonl.zst", newer, PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED),
            ("empty.jsonl.zst", Vec::new(), PgSqlErrorCode::ERRCODE_ZERO_LENGTH_CHARACTER_STRING),
            ("missing.jsonl.zst", missing_source, PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE),
        ];
        let catalog = "SELECT string_agg(format('%s %s %s', pgt_id, pgt_name, needs_reinit), ',' ORDER BY pgt_id) \
                       FROM pgtrickle.pgt_stream_tables";
        let before = one::<String>(catalog);
        for (name, bytes, sqlstate) in cases {
            let file = write(name, &bytes);
            let message =
                expect_error(&format!("SELECT pgtrickle.restore_from_checkpoint('{file}', replace => true)"), sqlstate);
            assert!(message.contains("HINT: ") && !message.ends_with("HINT: "), "{name}: {message}");
            assert_eq!(one::<String>(catalog), before, "{name} changed the catalog");
        }
        assert!(expect_error(
            &format!("SELECT pgtrickle.restore_from_checkpoint('file://{dir}/absent.jsonl.zst')"),
            PgSqlErrorCode::ERRCODE_IO_ERROR
        )
        .contains("absent"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
