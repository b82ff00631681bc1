//! Bad input to create_federated_stream_table: every refusal carries a SQLSTATE and a HINT, and nothing is
//! created, neither on C (no table, mirror, schema or catalog row) nor at the coordinators (no federated table).

use std::collections::BTreeSet;

use coordinator::api::PublishStream;
use postgres::error::SqlState;
use shared_model::{ColumnDef, StreamId};
use testkit::federation::Federation;
use testkit::seed::*;

/// Runs `sql`, which must be refused with `state`, a HINT, and a message containing `reason` (so a case refused
/// for another reason than the one it tests fails).
fn refused(client: &mut postgres::Client, sql: &str, state: SqlState, reason: &str) -> String {
    let error = client.batch_execute(sql).expect_err(sql);
    let db = error.as_db_error().unwrap_or_else(|| panic!("{sql}: {error}"));
    assert_eq!(db.code(), &state, "{sql}: {}", db.message());
    assert!(db.hint().is_some_and(|h| !h.is_empty()), "{sql}: no HINT");
    assert!(db.message().contains(reason), "{sql}: refused for another reason than {reason:?}: {}", db.message());
    db.message().to_string()
}

/// What C holds that a create could leave behind, and the coordinators' federated tables.
fn footprint(fed: &Federation, c: &mut postgres::Client) -> (i64, i64, i64, BTreeSet<String>) {
    let relations: i64 = c
        .query_one("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')", &[])
        .unwrap()
        .get(0);
    let schemas: i64 =
        c.query_one("SELECT count(*) FROM pg_namespace WHERE nspname !~ '^pg_(toast_)?temp_'", &[]).unwrap().get(0);
    let rows: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pgtrickle.pgt_stream_tables) + (SELECT count(*) FROM pgtrickle.pgt_federated_tables) \
             + (SELECT count(*) FROM pgtrickle.pgt_federation_sources)",
            &[],
        )
        .unwrap()
        .get(0);
    let tables = fed
        .coordinator(|client| async move { client.federated_tables().await })
        .expect("federated tables")
        .into_iter()
        .map(|t| t.table.to_string())
        .collect();
    (relations, schemas, rows, tables)
}

fn create(name: &str, sources: &str, extra: &str) -> String {
    format!(
        "SELECT pgtrickle.create_federated_stream_table('{name}', 'SELECT user_id, orders FROM cluster_a.order_agg', ARRAY[{sources}]{extra})"
    )
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let fed = Federation::start(3, &[]).expect("federation");
    let (_a, _b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    let before = footprint(&fed, &mut c);
    let good = "'kafka://coordinator/cluster_a/order_agg'";
    // (statement, SQLSTATE, what the case tests, a fragment the message must contain)
    let cases: Vec<(String, SqlState, &str, &str)> = vec![
        (
            create("d1", "'not a url'", ""),
            SqlState::INVALID_PARAMETER_VALUE,
            "malformed URL",
            "expected SCHEME://FEDERATION/CLUSTER/STREAM_TABLE",
        ),
        (
            create("d1", "'kafka://elsewhere/cluster_a/order_agg'", ""),
            SqlState::INVALID_PARAMETER_VALUE,
            "other federation",
            "names federation \"elsewhere\"",
        ),
        (
            create("d1", "'nats://coordinator/cluster_a/order_agg'", ""),
            SqlState::INVALID_PARAMETER_VALUE,
            "other backend",
            "asks for backend nats",
        ),
        (
            create("d1", "'kafka://coordinator/cluster_z/order_agg'", ""),
            SqlState::UNDEFINED_OBJECT,
            "unregistered cluster",
            "cluster cluster_z is not registered",
        ),
        (
            create("d1", "'kafka://coordinator/cluster_a/no_such_st'", ""),
            SqlState::UNDEFINED_OBJECT,
            "unknown stream",
            "no_such_st is not published",
        ),
        (
            create("d1", &format!("{good}, {good}"), ""),
            SqlState::INVALID_PARAMETER_VALUE,
            "duplicate source",
            "is listed twice",
        ),
        (
            "SELECT pgtrickle.create_federated_stream_table('d1', 'SELECT 1', ARRAY[]::text[])".into(),
            SqlState::INVALID_PARAMETER_VALUE,
            "no source",
            "no source given",
        ),
        (
            create("d1", good, ", consistency => 'strong'"),
            SqlState::INVALID_PARAMETER_VALUE,
            "unknown consistency",
            "\"strong\"",
        ),
        (
            create("d1", good, ", consistency => 'causal', schedule => '1s'"),
            SqlState::INVALID_PARAMETER_VALUE,
            "causal with a schedule",
            "a causal federated stream table has no schedule",
        ),
        (
            create("Bad Name", good, ""),
            SqlState::INVALID_PARAMETER_VALUE,
            "name not an identifier",
            "\"Bad Name\" is not a lower-case identifier",
        ),
        (
            "SELECT pgtrickle.create_federated_stream_table('d1', 'SELECT * FROM cluster_a.nope', \
             ARRAY['kafka://coordinator/cluster_a/order_agg'])"
                .into(),
            SqlState::UNDEFINED_TABLE,
            "query over a table that is not a mirror",
            "cluster_a.nope",
        ),
    ];
    for (sql, state, what, reason) in &cases {
        let message = refused(&mut c, sql, state.clone(), reason);
        println!("{what}: {message}");
        assert_eq!(footprint(&fed, &mut c), before, "{what} left something behind");
    }
    if c.query_one("SELECT 1", &[]).is_err() {
        panic!("connection lost");
    }

    // A duplicate name: the second create is refused and the first stays intact.
    c.batch_execute(&create("d1", good, "")).unwrap();
    let after_first = footprint(&fed, &mut c);
    // (Over another source, so that the name is what clashes, not the mirror.)
    refused(
        &mut c,
        "SELECT pgtrickle.create_federated_stream_table('d1', 'SELECT user_id, name FROM cluster_b.user_stats', \
         ARRAY['kafka://coordinator/cluster_b/user_stats'])",
        SqlState::DUPLICATE_TABLE,
        "\"public.d1\" already exists",
    );
    assert_eq!(footprint(&fed, &mut c), after_first, "duplicate name left something behind");
    // A second federated table over an already mirrored stream.
    refused(
        &mut c,
        &create("d2", good, ""),
        SqlState::DUPLICATE_TABLE,
        "mirror of cluster_a/public.order_agg (read by federated table",
    );
    assert_eq!(footprint(&fed, &mut c), after_first);
    c.batch_execute("SELECT pgtrickle.drop_federated_stream_table('d1')").unwrap();
    assert_eq!(footprint(&fed, &mut c), before, "drop left something behind");

    // A cycle: C's stream `loopy` (published at the coordinators) → A's federated `a_fed` → A's published
    // `a_fed` → C's new federated `loopy` would feed C's stream `loopy` again.
    let loopy = StreamId::parse("cluster_c/public.loopy").unwrap();
    fed.coordinator(|client| async move {
        client
            .publish_stream(&PublishStream {
                stream: loopy,
                columns: vec![ColumnDef::new("user_id", "integer")],
                upstream: Default::default(),
                base_seq: 0,
                producer: None,
            })
            .await
    })
    .expect("publish C's loopy");
    let mut a = fed.connect(0).unwrap();
    a.batch_execute(
        "SELECT pgtrickle.create_federated_stream_table('a_fed', 'SELECT user_id FROM cluster_c.loopy', \
           ARRAY['kafka://coordinator/cluster_c/loopy']);
         SELECT pgtrickle.publish_stream_table('a_fed');",
    )
    .unwrap();
    let before = footprint(&fed, &mut c);
    let message = refused(
        &mut c,
        "SELECT pgtrickle.create_federated_stream_table('loopy', 'SELECT a_fed.user_id FROM cluster_a.a_fed', \
         ARRAY['kafka://coordinator/cluster_a/a_fed'])",
        SqlState::INVALID_RECURSION,
        "cycle",
    );
    println!("cycle: {message}");
    assert_eq!(footprint(&fed, &mut c), before, "the refused cycle left something behind");
}
