//! Property test of refresh: random INSERT/UPDATE/DELETE/TRUNCATE on two sources, refreshes in
//! between (in their own transactions and inside the writing transaction), and after every refresh
//! each stream table equals its defining query, for every refresh mode. Differential and full
//! variants of the same query also agree on row identities, and batch seqs stay 1, 2, 3… gap-free.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use testkit::Clusters;

/// (stream table, defining query, refresh mode). Queries are over schema `p`.
const STREAM_TABLES: &[(&str, &str, &str)] = &[
    ("proj_d", "SELECT id, v * 2 AS v2, k FROM p.a WHERE v > 3", "differential"),
    ("proj_f", "SELECT id, v * 2 AS v2, k FROM p.a WHERE v > 3", "full"),
    ("dups_d", "SELECT k, v FROM p.a", "differential"),
    ("dups_f", "SELECT k, v FROM p.a", "full"),
    (
        "agg_d",
        "SELECT k, count(*) AS n, sum(v) AS s, avg(w) AS m, count(v) AS cv, min(v) AS lo, max(w) AS hi FROM p.a GROUP BY k",
        "differential",
    ),
    (
        "agg_f",
        "SELECT k, count(*) AS n, sum(v) AS s, avg(w) AS m, count(v) AS cv, min(v) AS lo, max(w) AS hi FROM p.a GROUP BY k",
        "full",
    ),
    ("join_d", "SELECT a.id, a.v, b.label FROM p.a a JOIN p.b b ON a.k = b.k", "differential"),
    ("join_f", "SELECT a.id, a.v, b.label FROM p.a a JOIN p.b b ON a.k = b.k", "full"),
    (
        "joinagg_d",
        "SELECT b.label, count(*) AS n, sum(a.v) AS s FROM p.a a JOIN p.b b ON a.k = b.k GROUP BY b.label",
        "differential",
    ),
    ("distinct_auto", "SELECT DISTINCT k FROM p.a WHERE v IS NOT NULL", "auto"),
    // Stream tables over stream tables (refreshed after their upstream).
    ("over_agg_d", "SELECT k, n FROM p.agg_d WHERE n > 1", "differential"),
    ("over_join_auto", "SELECT label, sum(v) AS total FROM p.join_d GROUP BY label", "auto"),
];

/// Pairs that must hold identical rows, row identities included.
const SAME_IDENTITY: &[(&str, &str)] =
    &[("proj_d", "proj_f"), ("dups_d", "dups_f"), ("agg_d", "agg_f"), ("join_d", "join_f")];

#[derive(Debug, Clone)]
enum Op {
    InsertA(Vec<(i32, Option<i32>, Option<i32>)>),
    UpdateA {
        k: i32,
        dv: i32,
    },
    MoveA {
        from: i32,
        to: i32,
    },
    DeleteA {
        modulo: i32,
        rest: i32,
    },
    TruncateA,
    InsertB(i32, String),
    DeleteB(i32),
    Refresh,
    /// Writes, refreshes and writes again in one transaction.
    InTransaction(i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((0..5i32, prop::option::weighted(0.85, -3..12i32), prop::option::weighted(0.85, 0..50i32)), 1..6)
            .prop_map(Op::InsertA),
        2 => (0..5i32, -4..5i32).prop_map(|(k, dv)| Op::UpdateA { k, dv }),
        1 => (0..5i32, 0..5i32).prop_map(|(from, to)| Op::MoveA { from, to }),
        2 => (2..5i32, 0..2i32).prop_map(|(modulo, rest)| Op::DeleteA { modulo, rest }),
        1 => Just(Op::TruncateA),
        2 => (0..5i32, prop::sample::select(vec!["x", "y", "z"])).prop_map(|(k, l)| Op::InsertB(k, l.to_string())),
        1 => (0..5i32).prop_map(Op::DeleteB),
        4 => Just(Op::Refresh),
        1 => (0..5i32).prop_map(Op::InTransaction),
    ]
}

fn sql_of(op: &Op, next_id: &mut i32) -> Option<String> {
    Some(match op {
        Op::InsertA(rows) => {
            let values: Vec<String> = rows
                .iter()
                .map(|(k, v, w)| {
                    *next_id += 1;
                    let v = v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
                    let w = w.map(|w| format!("{w}.25")).unwrap_or_else(|| "NULL".into());
                    // Every third row repeats the previous id: duplicates must be kept apart.
                    let id = if *next_id % 3 == 0 { *next_id - 1 } else { *next_id };
                    format!("({id}, {k}, {v}, {w})")
                })
                .collect();
            format!("INSERT INTO p.a (id, k, v, w) VALUES {}", values.join(", "))
        }
        Op::UpdateA { k, dv } => format!("UPDATE p.a SET v = v + {dv}, w = w * 2 WHERE k = {k}"),
        Op::MoveA { from, to } => format!("UPDATE p.a SET k = {to} WHERE k = {from} AND id % 2 = 0"),
        Op::DeleteA { modulo, rest } => format!("DELETE FROM p.a WHERE id % {modulo} = {rest}"),
        Op::TruncateA => "TRUNCATE p.a".into(),
        Op::InsertB(k, label) => format!("INSERT INTO p.b VALUES ({k}, '{label}')"),
        Op::DeleteB(k) => format!("DELETE FROM p.b WHERE k = {k}"),
        Op::Refresh | Op::InTransaction(_) => return None,
    })
}

fn refresh_all(client: &mut impl postgres::GenericClient) -> Result<(), postgres::Error> {
    for (name, _, _) in STREAM_TABLES {
        client.execute(&format!("SELECT pgtrickle.refresh_stream_table('p.{name}')"), &[])?;
    }
    Ok(())
}

fn visible_columns(client: &mut postgres::Client, table: &str) -> String {
    client
        .query_one(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_\\_pgt\\_%'",
            &[&table],
        )
        .unwrap()
        .get(0)
}

fn check_all(client: &mut postgres::Client, history: &[Op]) -> Result<(), TestCaseError> {
    for (name, query, mode) in STREAM_TABLES {
        let table = format!("p.{name}");
        let columns = visible_columns(client, &table);
        let difference: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ((SELECT {columns} FROM {table} EXCEPT ALL ({query})) \
                     UNION ALL (({query}) EXCEPT ALL SELECT {columns} FROM {table})) d"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        prop_assert_eq!(difference, 0, "{} ({}) differs from its query after {:?}", name, mode, history);
        let seqs: Vec<i64> = client
            .query(
                "SELECT h.batch_seq FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
                 WHERE st.pgt_schema = 'p' AND st.pgt_name = $1 AND h.batch_seq IS NOT NULL ORDER BY h.refresh_id",
                &[name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        prop_assert_eq!(&seqs, &expected, "{} batch seqs are not 1..n", name);
    }
    for (left, right) in SAME_IDENTITY {
        let mismatch: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM ((SELECT * FROM p.{left} EXCEPT ALL SELECT * FROM p.{right}) \
                     UNION ALL (SELECT * FROM p.{right} EXCEPT ALL SELECT * FROM p.{left})) d"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        prop_assert_eq!(mismatch, 0, "{} and {} disagree on row identities after {:?}", left, right, history);
    }
    Ok(())
}

/// Drops every stream table through the API (a failed case may have left some behind).
fn drop_stream_tables(client: &mut postgres::Client) {
    while let Some(row) = client
        .query_opt("SELECT format('%I.%I', pgt_schema, pgt_name) FROM pgtrickle.pgt_stream_tables LIMIT 1", &[])
        .unwrap()
    {
        let name: String = row.get(0);
        client.execute("SELECT pgtrickle.drop_stream_table($1, cascade => true)", &[&name]).unwrap();
    }
}

fn run_case(client: &mut postgres::Client, ops: &[Op]) -> Result<(), TestCaseError> {
    drop_stream_tables(client);
    client
        .batch_execute(
            "DROP SCHEMA IF EXISTS p CASCADE; CREATE SCHEMA p;
             CREATE TABLE p.a (id int, k int, v int, w numeric);
             CREATE TABLE p.b (k int, label text);
             INSERT INTO p.a SELECT g, g % 3, g, g * 1.5 FROM generate_series(1, 8) g;
             INSERT INTO p.b VALUES (0, 'x'), (1, 'y'), (1, 'y2');",
        )
        .unwrap();
    for (name, query, mode) in STREAM_TABLES {
        client
            .execute(
                "SELECT pgtrickle.create_stream_table($1, $2, schedule => 'manual', refresh_mode => $3)",
                &[&format!("p.{name}"), query, mode],
            )
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
    let mut next_id = 100;
    let mut history = Vec::new();
    for op in ops {
        history.push(op.clone());
        match op {
            Op::Refresh => {
                refresh_all(client).unwrap();
                check_all(client, &history)?;
            }
            Op::InTransaction(k) => {
                let mut tx = client.transaction().unwrap();
                tx.execute(&format!("INSERT INTO p.a VALUES ({next_id}, {k}, 5, 1.5)"), &[]).unwrap();
                next_id += 1;
                refresh_all(&mut tx).unwrap();
                tx.execute(&format!("UPDATE p.a SET v = v + 1 WHERE k = {k}"), &[]).unwrap();
                tx.commit().unwrap();
            }
            other => {
                let sql = sql_of(other, &mut next_id).expect("a write");
                client.batch_execute(&sql).unwrap();
            }
        }
    }
    refresh_all(client).unwrap();
    check_all(client, &history)?;
    // Tear down through the API (plain DROP SCHEMA is refused while stream tables exist).
    drop_stream_tables(client);
    let leftovers: i64 = client.query_one("SELECT count(*) FROM pgtrickle.pgt_change_buffers", &[]).unwrap().get(0);
    prop_assert_eq!(leftovers, 0, "change buffers left after dropping every stream table");
    Ok(())
}

#[test]
fn stream_tables_equal_their_queries_after_random_changes() {
    let clusters = Clusters::start(1, &[]).expect("start cluster");
    let client = std::cell::RefCell::new(clusters[0].connect("postgres").unwrap());
    client.borrow_mut().batch_execute("CREATE EXTENSION pg_trickle").unwrap();
    let cases = std::env::var("PGTRICKLE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(op(), 1..14), |ops| run_case(&mut client.borrow_mut(), &ops))
        .unwrap_or_else(|failure| panic!("{failure}\nserver log:\n{}", clusters[0].log()));
}
