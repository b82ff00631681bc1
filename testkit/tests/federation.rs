//! Federation membership against real coordinators: register (idempotent), status, refusals with SQLSTATE and
//! nothing stored, coordinators down, deregister.

use postgres::error::SqlState;
use testkit::coordinators::{Coordinators, TOKEN};
use testkit::Clusters;

fn refused(client: &mut postgres::Client, sql: &str, state: SqlState) -> String {
    let error = client.batch_execute(sql).expect_err(sql);
    let db = error.as_db_error().unwrap_or_else(|| panic!("{sql}: {error}"));
    assert_eq!(db.code(), &state, "{sql}: {}", db.message());
    assert!(db.hint().is_some(), "{sql}: no HINT");
    db.message().to_string()
}

fn registrations(client: &mut postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM pgtrickle.pgt_federation", &[]).unwrap().get(0)
}

#[test]
fn register_status_refusals_and_deregister() {
    let mut coordinators = Coordinators::start(3).expect("start coordinators");
    let (_clusters, mut client) = Clusters::one_with_extension().expect("start cluster");
    client.batch_execute(&format!("SET pg_trickle.coordinator_token = '{TOKEN}'")).unwrap();
    let urls = coordinators.endpoints();

    // Bad input: refused with SQLSTATE and HINT, nothing stored here or at the coordinators.
    refused(
        &mut client,
        "SELECT * FROM pgtrickle.register_federation('ftp://x', 'cluster_a')",
        SqlState::INVALID_PARAMETER_VALUE,
    );
    refused(
        &mut client,
        &format!("SELECT * FROM pgtrickle.register_federation('{urls}', 'Not A Name')"),
        SqlState::INVALID_PARAMETER_VALUE,
    );
    let dead = format!("http://127.0.0.1:{}", testkit::free_port().unwrap());
    let message = refused(
        &mut client,
        &format!("SELECT * FROM pgtrickle.register_federation('{dead}', 'cluster_a')"),
        SqlState::CONNECTION_FAILURE,
    );
    assert!(message.contains("no coordinator"), "{message}");
    refused(&mut client, "SELECT * FROM pgtrickle.federation_status()", SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
    assert_eq!(registrations(&mut client), 0);
    assert!(!coordinators.cli(&["clusters"]).unwrap().contains("cluster_a"));
    // A wrong token is the coordinators' refusal, passed on.
    client.batch_execute("SET pg_trickle.coordinator_token = 'wrong'").unwrap();
    refused(
        &mut client,
        &format!("SELECT * FROM pgtrickle.register_federation('{urls}', 'cluster_a')"),
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    );
    client.batch_execute(&format!("SET pg_trickle.coordinator_token = '{TOKEN}'")).unwrap();

    // Registration returns the federation's broker settings and is idempotent.
    let row =
        client.query_one(&format!("SELECT * FROM pgtrickle.register_federation('{urls}', 'cluster_a')"), &[]).unwrap();
    let (federation, cluster, backend): (String, String, String) =
        (row.get("federation"), row.get("cluster"), row.get("backend"));
    assert!(!federation.is_empty());
    assert_eq!(cluster, "cluster_a");
    assert!(["kafka", "nats"].contains(&backend.as_str()), "{backend}");
    client.query_one(&format!("SELECT * FROM pgtrickle.register_federation('{urls}', 'cluster_a')"), &[]).unwrap();
    assert_eq!(registrations(&mut client), 1);
    assert!(coordinators.cli(&["clusters"]).unwrap().contains("cluster_a"));
    // A checkpoint of a registered database is recorded at the coordinators, which list the newest per cluster.
    let dir = tempfile::Builder::new().prefix("pgtrickle-fed-checkpoint-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let row = client
        .query_one(&format!("SELECT url, recorded FROM pgtrickle.checkpoint('file://{}')", dir.path().display()), &[])
        .unwrap();
    let (checkpoint_url, recorded): (String, bool) = (row.get(0), row.get(1));
    assert!(recorded, "{checkpoint_url} was not recorded at the coordinators");
    let listed = coordinators.cli(&["checkpoints"]).unwrap();
    assert!(listed.contains("cluster_a") && listed.contains(&checkpoint_url), "{listed}");
    refused(
        &mut client,
        &format!("SELECT * FROM pgtrickle.register_federation('{urls}', 'cluster_b')"),
        SqlState::DUPLICATE_OBJECT,
    );

    // Status: reachable with a leader; with every coordinator down it says so instead of failing.
    let row = client.query_one("SELECT reachable, leader FROM pgtrickle.federation_status()", &[]).unwrap();
    assert!(row.get::<_, bool>(0));
    assert!(row.get::<_, Option<String>>(1).is_some());
    coordinators.kill_all();
    let row = client.query_one("SELECT reachable, detail FROM pgtrickle.federation_status()", &[]).unwrap();
    assert!(!row.get::<_, bool>(0));
    let last_error: Option<String> =
        client.query_one("SELECT last_error FROM pgtrickle.pgt_federation", &[]).unwrap().get(0);
    assert!(last_error.is_some(), "the failed contact is recorded");
    refused(&mut client, "SELECT pgtrickle.deregister_federation()", SqlState::CONNECTION_FAILURE);
    assert_eq!(registrations(&mut client), 1, "a failed deregistration keeps the membership");
}

#[test]
fn deregister_removes_the_cluster_everywhere() {
    let coordinators = Coordinators::start(3).expect("start coordinators");
    let (_clusters, mut client) = Clusters::one_with_extension().expect("start cluster");
    client.batch_execute(&format!("SET pg_trickle.coordinator_token = '{TOKEN}'")).unwrap();
    client
        .query_one(
            &format!("SELECT * FROM pgtrickle.register_federation('{}', 'cluster_c')", coordinators.endpoints()),
            &[],
        )
        .unwrap();
    client.batch_execute("SELECT pgtrickle.deregister_federation()").unwrap();
    assert_eq!(registrations(&mut client), 0);
    assert!(!coordinators.cli(&["clusters"]).unwrap().contains("cluster_c"));
    refused(&mut client, "SELECT pgtrickle.deregister_federation()", SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
}

#[test]
fn publishing_stream_tables() {
    let coordinators = Coordinators::start(3).expect("start coordinators");
    let (_clusters, mut client) = Clusters::one_with_extension().expect("start cluster");
    client
        .batch_execute(&format!(
            "SET pg_trickle.coordinator_token = '{TOKEN}';
             CREATE TABLE orders (id int, region text, amount numeric);
             SELECT pgtrickle.create_stream_table('order_agg', 'SELECT region, sum(amount) AS total FROM orders GROUP BY region');
             SELECT pgtrickle.create_stream_table('big_regions', 'SELECT region FROM order_agg WHERE total > 100');
             SELECT pgtrickle.create_stream_table('\"Shouty\"', 'SELECT 1 AS one');"
        ))
        .unwrap();
    refused(
        &mut client,
        "SELECT pgtrickle.publish_stream_table('order_agg')",
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    client
        .query_one(
            &format!("SELECT * FROM pgtrickle.register_federation('{}', 'cluster_a')", coordinators.endpoints()),
            &[],
        )
        .unwrap();

    let id: String = client.query_one("SELECT pgtrickle.publish_stream_table('order_agg')", &[]).unwrap().get(0);
    assert_eq!(id, "cluster_a/public.order_agg");
    let again: String = client.query_one("SELECT pgtrickle.publish_stream_table('order_agg')", &[]).unwrap().get(0);
    assert_eq!(again, id, "publishing is idempotent");
    client.query_one("SELECT pgtrickle.publish_stream_table('big_regions')", &[]).unwrap();
    let streams = coordinators.cli(&["streams"]).unwrap();
    assert!(streams.contains("order_agg") && streams.contains("big_regions"), "{streams}");
    // The upstream edge reached the global DAG.
    let dag = coordinators.cli(&["dag", "--dot"]).unwrap();
    assert!(dag.contains("order_agg") && dag.contains("->"), "{dag}");

    refused(&mut client, "SELECT pgtrickle.publish_stream_table('\"Shouty\"')", SqlState::INVALID_PARAMETER_VALUE);
    refused(&mut client, "SELECT pgtrickle.publish_stream_table('missing')", SqlState::UNDEFINED_TABLE);
    let message = refused(
        &mut client,
        "SELECT pgtrickle.drop_stream_table('big_regions')",
        SqlState::DEPENDENT_OBJECTS_STILL_EXIST,
    );
    assert!(message.contains("cluster_a/public.big_regions"), "{message}");

    client.batch_execute("SELECT pgtrickle.unpublish_stream_table('big_regions')").unwrap();
    assert!(!coordinators.cli(&["streams"]).unwrap().contains("big_regions"));
    client.batch_execute("SELECT pgtrickle.drop_stream_table('big_regions')").unwrap();
    let published: i64 = client.query_one("SELECT count(*) FROM pgtrickle.pgt_publications", &[]).unwrap().get(0);
    assert_eq!(published, 1);
}
