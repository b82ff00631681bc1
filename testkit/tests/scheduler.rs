//! The background scheduler on a real server with pg_trickle preloaded: stream tables refreshed on
//! their schedule by the per-database workers, a failing stream table isolated and retried.

use std::time::Duration;

use testkit::{wait_for, Clusters};

fn scalar_i64(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[test]
fn workers_refresh_on_schedule_and_isolate_a_failing_stream_table() {
    let clusters = Clusters::start(1, &["pg_trickle.scheduler_interval=100ms", "pg_trickle.max_backoff=2"])
        .expect("start cluster");
    let cluster = &clusters[0];
    let mut client = cluster.connect("postgres").unwrap();
    client
        .batch_execute(
            "CREATE EXTENSION pg_trickle;
             CREATE TABLE readings (id int PRIMARY KEY, sensor text, value int, divisor int);
             INSERT INTO readings SELECT g, 's' || (g % 4), g, 1 FROM generate_series(1, 100) g;
             SELECT pgtrickle.create_stream_table('per_sensor',
                 'SELECT sensor, count(*) AS n, sum(value) AS total FROM readings GROUP BY sensor', schedule => '300ms');
             SELECT pgtrickle.create_stream_table('ratios',
                 'SELECT id, value / divisor AS ratio FROM readings', schedule => '300ms');",
        )
        .unwrap();

    // A scheduler worker serves this database.
    let worker = wait_for(Duration::from_secs(20), || {
        let n = scalar_i64(
            &mut client,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_trickle scheduler' AND datname = 'postgres'",
        );
        (n == 1).then_some(())
    });
    assert!(worker.is_some(), "no scheduler worker started; server log:\n{}", cluster.log());

    // Changes reach the stream table without anyone calling refresh.
    client.batch_execute("INSERT INTO readings VALUES (1000, 's9', 5, 1)").unwrap();
    let refreshed = wait_for(Duration::from_secs(20), || {
        let n = scalar_i64(&mut client, "SELECT count(*) FROM per_sensor WHERE sensor = 's9' AND total = 5");
        (n == 1).then_some(())
    });
    assert!(refreshed.is_some(), "per_sensor was not refreshed by the scheduler; log:\n{}", cluster.log());
    let by_scheduler = scalar_i64(
        &mut client,
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         WHERE st.pgt_name = 'per_sensor' AND h.triggered_by = 'scheduler' AND h.status = 'OK'",
    );
    assert!(by_scheduler >= 1);

    // One stream table starts failing (division by zero in its query); it goes to ERROR with the
    // message kept, and is retried by the scheduler alone (nothing else is written meanwhile, so no change can
    // trigger the retry): at least two failures, with the backoff capped at max_backoff = 2 s.
    client.batch_execute("UPDATE readings SET divisor = 0 WHERE id = 7").unwrap();
    let failed = wait_for(Duration::from_secs(20), || {
        let row = client
            .query_one(
                "SELECT status, coalesce(last_error, ''), consecutive_failures FROM pgtrickle.pgt_stream_tables \
                 WHERE pgt_name = 'ratios'",
                &[],
            )
            .unwrap();
        let (status, error, failures): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        (status == "ERROR" && error.contains("division by zero") && failures >= 2).then_some(failures)
    });
    assert!(failed.is_some(), "ratios did not go to ERROR and get retried; log:\n{}", cluster.log());
    let attempts = scalar_i64(
        &mut client,
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
         WHERE st.pgt_name = 'ratios' AND h.status = 'ERROR' AND h.triggered_by = 'scheduler'",
    );
    assert!(attempts >= 2, "{attempts} failed attempts by the scheduler in the history");
    client.batch_execute("INSERT INTO readings VALUES (1001, 's10', 6, 1)").unwrap();
    let others_go_on = wait_for(Duration::from_secs(20), || {
        (scalar_i64(&mut client, "SELECT count(*) FROM per_sensor WHERE sensor = 's10'") == 1).then_some(())
    });
    assert!(others_go_on.is_some(), "a failing stream table blocked the others");
    let error_rows = scalar_i64(
        &mut client,
        "SELECT count(*) FROM pgtrickle.pgt_refresh_history WHERE status = 'ERROR' AND error LIKE '%division by zero%'",
    );
    assert!(error_rows >= 1, "the failure is in the history");

    // Retries continue with backoff; once the data is fixed the stream table recovers by itself.
    client.batch_execute("UPDATE readings SET divisor = 1 WHERE id = 7").unwrap();
    let recovered = wait_for(Duration::from_secs(30), || {
        let row = client
            .query_one(
                "SELECT status, consecutive_failures FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'ratios'",
                &[],
            )
            .unwrap();
        let (status, failures): (String, i32) = (row.get(0), row.get(1));
        (status == "ACTIVE" && failures == 0).then_some(())
    });
    assert!(recovered.is_some(), "ratios did not recover; log:\n{}", cluster.log());
    let mismatches = scalar_i64(
        &mut client,
        "SELECT count(*) FROM ((SELECT id, ratio FROM ratios EXCEPT ALL SELECT id, value / divisor FROM readings) \
         UNION ALL (SELECT id, value / divisor FROM readings EXCEPT ALL SELECT id, ratio FROM ratios)) d",
    );
    assert_eq!(mismatches, 0);
}

#[test]
fn each_database_with_the_extension_gets_its_own_worker_and_disabling_stops_refreshes() {
    let clusters = Clusters::start(1, &["pg_trickle.scheduler_interval=100ms"]).expect("start cluster");
    let cluster = &clusters[0];
    let mut admin = cluster.connect("postgres").unwrap();
    for database in ["app_one", "app_two", "no_extension"] {
        admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    }
    for database in ["app_one", "app_two"] {
        let mut client = cluster.connect(database).unwrap();
        client
            .batch_execute(
                "CREATE EXTENSION pg_trickle;
                 CREATE TABLE t (id int);
                 SELECT pgtrickle.create_stream_table('t_count', 'SELECT id % 2 AS parity, count(*) AS n FROM t GROUP BY 1', schedule => '200ms');",
            )
            .unwrap();
    }
    let workers = wait_for(Duration::from_secs(20), || {
        let rows = admin
            .query(
                "SELECT datname::text FROM pg_stat_activity WHERE backend_type = 'pg_trickle scheduler' ORDER BY 1",
                &[],
            )
            .unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (names == ["app_one", "app_two"]).then_some(names)
    });
    assert!(workers.is_some(), "expected one worker in each database with the extension; log:\n{}", cluster.log());

    // pg_trickle.enabled = off: schedulers stay idle (a reload is enough).
    admin.batch_execute("ALTER SYSTEM SET pg_trickle.enabled = off").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut app = cluster.connect("app_one").unwrap();
    app.batch_execute("INSERT INTO t VALUES (1), (2), (3)").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(scalar_i64(&mut app, "SELECT coalesce(sum(n), 0)::int8 FROM t_count"), 0, "refreshed while disabled");
    admin.batch_execute("ALTER SYSTEM SET pg_trickle.enabled = on").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let resumed = wait_for(Duration::from_secs(20), || {
        (scalar_i64(&mut app, "SELECT coalesce(sum(n), 0)::int8 FROM t_count") == 3).then_some(())
    });
    assert!(resumed.is_some(), "refreshes did not resume after enabling");
}
