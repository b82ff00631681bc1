//! Values between differently configured servers: A prints under `DateStyle = 'SQL, DMY'`, `IntervalStyle =
//! 'postgres_verbose'`, a +12:45 time zone, `extra_float_digits = -3` (lossy floats) and `bytea_output = 'escape'`;
//! C parses under `DateStyle = 'German, MDY'`, `IntervalStyle = 'sql_standard'`, a -03:00 time zone and
//! `extra_float_digits = 0`. A table of dates (incl. BC and infinity), timestamps with and without time zone,
//! intervals, float4/float8 (NaN, ±Infinity, denormals, 0.1 + 0.2), numeric (NaN, 40 digits), money, bytea,
//! json (its text kept as written) and jsonb, arrays (with NULLs and quotes), an enum and a domain is published by
//! A; C's federated stream table over it must equal A's table exactly (EXCEPT ALL both ways, compared under one
//! canonical session), after the bootstrap snapshot and after deltas. `lc_monetary` is not varied: the machine
//! has no locale but C and C.UTF-8, which format money alike.

use std::time::Duration;

use testkit::federation::Federation;
use testkit::seed::{caught_up, converge_or_explain, rows_differing, sources_view};

const TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s \"fine\"');
     CREATE DOMAIN posint AS integer CHECK (VALUE > 0);";

const TABLE: &str = "(id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, iv interval, f8 float8,
     f4 float4, n numeric, m money, b bytea, j json, jb jsonb, ia int[], ta text[], tsa timestamptz[], e mood,
     dom posint)";

const COLUMNS: &str = "id, d, ts, tstz, iv, f8, f4, n, m, b, j, jb, ia, ta, tsa, e, dom";

/// Compared as text where the type has no equality (json) — its text is what must arrive unchanged.
const COMPARED: &str = "id, d, ts, tstz, iv, f8, f4, n, m, b, j::text, jb, ia, ta, tsa, e, dom";

const ROWS: &str = "INSERT INTO kinds VALUES
    (1, '2026-11-30', '2026-11-30 23:59:59.123456', '2026-03-29 01:30:00+02', '1 year 2 mons -3 days 04:05:06.789',
     0.1 + 0.2, 3.4028235e38, 12345678901234567890.12345678901234567890, 1234.56, '\\x00ff27'::bytea,
     '{ \"a\" :  1, \"a\": 2 }', '{\"b\": [1, 2.50, null], \"a\": \"x\"}', '{1,NULL,3}', '{\"a,b\",\"q\\\"uote\",NULL}',
     '{\"2026-01-01 00:00:00+00\",\"1999-12-31 23:59:59.999999+05:30\"}', 'happy', 7),
    (2, '0044-03-15 BC', '1900-02-28 12:00', '1970-01-01 00:00:00+00', '-1 day +01:00', 'NaN', '-Infinity',
     'NaN', -0.01, '\\x'::bytea, '[]', '[]', '{}', '{}', '{}', 'it''s \"fine\"', 1),
    (3, 'infinity', '-infinity', 'infinity', '00:00:00.000001', 'Infinity', 1.17549435e-38, 0.000000000000000000001,
     0, '\\x5c27'::bytea, 'null', 'null', NULL, '{\"\"}', NULL, 'sad', 2147483647),
    (4, NULL, NULL, NULL, NULL, 4.9e-324, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (5, '2000-02-29', '2000-02-29 00:00', '2000-02-29 00:00+12:45', '178000000 years', -0.0, 1e-45, -1e-130,
     -92233720368547758.08, '\\xdeadbeef'::bytea, '\"a\\u00e9\"', '{\"nested\": {\"deep\": [true, false]}}',
     '{-2147483648}', '{\"é\",\"\\\\\"}', '{\"-infinity\"}', 'ok', 42)";

const DELTAS: &str = "UPDATE kinds SET f8 = f8 * 3, iv = iv + interval '1 month 1 microsecond', d = d + 1
       WHERE id IN (1, 5);
     UPDATE kinds SET tstz = '2026-10-25 02:30:00 Europe/Berlin', m = m + '0.01'::money WHERE id = 1;
     DELETE FROM kinds WHERE id = 3;
     INSERT INTO kinds VALUES (6, '1999-01-08', '2038-01-19 03:14:08', '2038-01-19 03:14:08+00', 'P1Y2M3DT4H5M6.5S',
       1.7976931348623157e308, 'Infinity', 1e-6, 0.99, '\\x00'::bytea, '{}', '{}', '{0}', '{\"NULL\"}',
       '{NULL}', 'happy', 3)";

/// One session with every setting canonical, for copying and comparing.
const CANONICAL: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; SET TimeZone = 'UTC';
     SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// ALTER SYSTEM statements (one at a time: none may run in a transaction block), then a reload.
fn configure(client: &mut postgres::Client, settings: &str) {
    for statement in settings.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client.batch_execute(statement).unwrap();
    }
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Copies A's rows into C's `expected` table through canonical text, then counts rows that differ both ways.
fn difference(a: &mut postgres::Client, c: &mut postgres::Client) -> i64 {
    a.batch_execute(CANONICAL).unwrap();
    c.batch_execute(CANONICAL).unwrap();
    let rows: Vec<String> = a
        .query(&format!("SELECT format('(%s)', concat_ws(',', {})) FROM kinds", literal_list()), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.batch_execute(&format!("DROP TABLE IF EXISTS expected; CREATE TABLE expected {TABLE}")).unwrap();
    if !rows.is_empty() {
        c.batch_execute(&format!("INSERT INTO expected ({COLUMNS}) VALUES {}", rows.join(","))).unwrap();
    }
    rows_differing(c, &format!("SELECT {COMPARED} FROM expected"), &format!("SELECT {COMPARED} FROM kinds_fed"))
}

/// `coalesce(quote_literal(col::text) || '::type', 'NULL')` for every column: the canonical text, typed again.
fn literal_list() -> String {
    let types = [
        "int",
        "date",
        "timestamp",
        "timestamptz",
        "interval",
        "float8",
        "float4",
        "numeric",
        "money",
        "bytea",
        "json",
        "jsonb",
        "int[]",
        "text[]",
        "timestamptz[]",
        "mood",
        "posint",
    ];
    COLUMNS
        .split(", ")
        .zip(types)
        .map(|(column, ty)| format!("coalesce(quote_literal({column}::text) || '::{ty}', 'NULL')"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn wait_converged(fed: &Federation, a: &mut postgres::Client, c: &mut postgres::Client) {
    converge_or_explain(
        fed,
        Duration::from_secs(60),
        &mut (a, c),
        |(a, c)| caught_up(c) && difference(a, c) == 0,
        |(a, c)| {
            let shown: Vec<String> = c
                .query(&format!("SELECT format('%s', ROW({COMPARED})) FROM kinds_fed ORDER BY id"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            format!(
                "C differs from A by {} rows\nC has:\n{}\nsources:\n{}",
                difference(a, c),
                shown.join("\n"),
                sources_view(c)
            )
        },
        &[2, 0],
    );
}

#[test]
fn every_type_round_trips_exactly_between_differently_configured_servers() {
    let fed = Federation::start(3, &[]).expect("federation");
    let mut a = fed.connect(0).unwrap();
    let mut c = fed.connect(2).unwrap();
    configure(
        &mut a,
        "ALTER SYSTEM SET DateStyle = 'SQL, DMY'; ALTER SYSTEM SET IntervalStyle = 'postgres_verbose';
         ALTER SYSTEM SET TimeZone = 'Pacific/Chatham'; ALTER SYSTEM SET extra_float_digits = -3;
         ALTER SYSTEM SET bytea_output = 'escape'",
    );
    configure(
        &mut c,
        "ALTER SYSTEM SET DateStyle = 'German, MDY'; ALTER SYSTEM SET IntervalStyle = 'sql_standard';
         ALTER SYSTEM SET TimeZone = 'America/Sao_Paulo'; ALTER SYSTEM SET extra_float_digits = 0",
    );
    // Sessions started after the reload see the servers' settings (the workers are started later still).
    let mut a = fed.connect(0).unwrap();
    let mut c = fed.connect(2).unwrap();
    let date_style: String = a.query_one("SHOW DateStyle", &[]).unwrap().get(0);
    assert_eq!(date_style, "SQL, DMY", "A's settings did not take");
    a.batch_execute(TYPES).unwrap();
    c.batch_execute(TYPES).unwrap();
    a.batch_execute(&format!(
        "CREATE TABLE kinds {TABLE}; {ROWS};
         SELECT pgtrickle.create_stream_table('kinds_st', 'SELECT {COLUMNS} FROM kinds', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('kinds_st');"
    ))
    .unwrap();
    c.query_one(
        &format!(
            "SELECT pgtrickle.create_federated_stream_table('kinds_fed', 'SELECT {COLUMNS} FROM cluster_a.kinds_st', \
             ARRAY['kafka://coordinator/cluster_a/kinds_st'], schedule => '200ms')"
        ),
        &[],
    )
    .unwrap();
    wait_converged(&fed, &mut a, &mut c);
    // Deltas travel the same way.
    a.batch_execute("RESET ALL").unwrap();
    a.batch_execute(DELTAS).unwrap();
    wait_converged(&fed, &mut a, &mut c);
    let rows: i64 = c.query_one("SELECT count(*) FROM kinds_fed", &[]).unwrap().get(0);
    assert_eq!(rows, 5);
}
