//! Producer fencing with real servers: a cluster restored from a cold copy of its data directory after it had
//! published more stops publishing (it never adopts the log's position) until the operator takes its name over,
//! then its stream restarts with a snapshot and the consumer converges on the restored data; a second server
//! registering a taken name is refused until it asks for a takeover, which fences the first server.

use std::time::Duration;

use postgres::error::SqlState;
use rand::SeedableRng;
use testkit::federation::Federation;
use testkit::seed::*;
use testkit::wait_for;

const ORDER_AGG_STREAM: &str = "cluster_a/public.order_agg";

/// The publisher's recorded error for `order_agg`, once it contains one of `fragments`.
fn wait_for_publisher_error(client: &mut postgres::Client, fragments: &[&str]) -> Option<String> {
    wait_for(Duration::from_secs(60), || {
        let error: Option<String> = client
            .query_one("SELECT last_error FROM pgtrickle.pgt_publications WHERE stream_id = $1", &[&ORDER_AGG_STREAM])
            .ok()?
            .get(0);
        error.filter(|e| fragments.iter().any(|f| e.contains(f)))
    })
}

fn epoch(fed: &Federation, cluster: &str) -> u64 {
    let clusters = fed.coordinator(|client| async move { client.clusters().await }).expect("clusters");
    clusters.iter().find(|c| c.name.as_str() == cluster).expect("registered").producer_epoch
}

fn applied_kind(c: &mut postgres::Client, seq: u64) -> Option<String> {
    c.query_opt(
        "SELECT kind FROM pgtrickle.pgt_apply_log WHERE stream_id = $1 AND seq = $2",
        &[&ORDER_AGG_STREAM, &(seq as i64)],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
fn a_server_restored_from_a_cold_copy_stops_until_taken_over_then_converges() {
    let (mut fed, mut a, mut b, mut c) = seed_federation(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    workload(&mut a, &mut b, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));

    // A cold copy of A's data directory, then A publishes more.
    drop(a);
    fed.clusters[0].stop().unwrap();
    let copy = fed.clusters.base_dir().join("a-cold-copy");
    fed.clusters[0].cold_copy(&copy).unwrap();
    fed.clusters[0].start().unwrap();
    a = fed.reconnect(0);
    let at_copy = fed.frontier(ORDER_AGG_STREAM).seq();
    workload(&mut a, &mut b, &mut rng, 40);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let committed = fed.frontier(ORDER_AGG_STREAM).seq();
    assert!(committed > at_copy, "A published nothing after the copy ({at_copy})");

    // A is restored from the copy and writes on: its batches are not the log's.
    drop(a);
    fed.clusters[0].stop().unwrap();
    fed.clusters[0].restore_cold_copy(&copy).unwrap();
    fed.clusters[0].start().unwrap();
    a = fed.reconnect(0);
    workload(&mut a, &mut b, &mut rng, 20);
    let error = wait_for_publisher_error(&mut a, &["behind the log"])
        .unwrap_or_else(|| panic!("the restored publisher did not stop:\n{}", tail(&fed.clusters[0].log())));
    assert!(error.contains("takeover => true"), "the error does not name the repair: {error}");
    assert_eq!(fed.frontier(ORDER_AGG_STREAM).seq(), committed, "the restored server recorded batches");
    let applied: i64 = c
        .query_one(
            "SELECT applied_seq FROM pgtrickle.pgt_federation_sources WHERE stream_id = $1",
            &[&ORDER_AGG_STREAM],
        )
        .unwrap()
        .get(0);
    assert_eq!(applied as u64, committed, "C applied something the log did not record");

    // The repair: A takes its own name over under a new epoch; order_agg restarts with a snapshot at the log's
    // next seq and C converges on the restored A's real tables.
    let before = epoch(&fed, "cluster_a");
    let row = a
        .query_one(
            "SELECT producer_epoch FROM pgtrickle.register_federation($1, 'cluster_a', takeover => true)",
            &[&fed.coordinators.endpoints()],
        )
        .unwrap();
    let after: i64 = row.get(0);
    assert!(after as u64 > before, "the takeover did not start a new epoch ({before} -> {after})");
    assert_eq!(epoch(&fed, "cluster_a"), after as u64);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    assert_eq!(applied_kind(&mut c, committed + 1).as_deref(), Some("snapshot"), "{:?}", check_apply_log(&mut c));
    // And it publishes on under the new epoch.
    workload(&mut a, &mut b, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let seqs = check_apply_log(&mut c);
    let error: Option<String> = a
        .query_one("SELECT last_error FROM pgtrickle.pgt_publications WHERE stream_id = $1", &[&ORDER_AGG_STREAM])
        .unwrap()
        .get(0);
    assert_eq!(error, None, "the publisher still shows an error after the repair");
    println!("restored from a cold copy: stopped at {committed}, repaired under epoch {after}; apply log {seqs:?}");
}

#[test]
fn a_second_server_taking_a_name_is_refused_then_takes_it_over_explicitly() {
    let (fed, mut a, mut b, mut c) = seed_federation(4);
    let endpoints = fed.coordinators.endpoints();

    // D (another server, registered as cluster_d) leaves and asks for A's name: refused, with the repair named.
    let mut d = fed.connect(3).unwrap();
    d.batch_execute("SELECT pgtrickle.deregister_federation()").unwrap();
    let error = d
        .query_one("SELECT * FROM pgtrickle.register_federation($1, 'cluster_a')", &[&endpoints])
        .expect_err("a taken name must be refused");
    let db = error.as_db_error().expect("a database error");
    assert_eq!(db.code(), &SqlState::DUPLICATE_OBJECT, "{}", db.message());
    assert!(db.message().contains("another PostgreSQL server"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("takeover => true"), "{:?}", db.hint());
    let registered: i64 = d.query_one("SELECT count(*) FROM pgtrickle.pgt_federation", &[]).unwrap().get(0);
    assert_eq!(registered, 0, "a refused registration left a row behind");

    // D has an order_agg of its own, with other data, and takes the name over explicitly.
    d.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL, amount numeric(12,2) NOT NULL);
         INSERT INTO orders SELECT g, g % 7, g * 3.25 FROM generate_series(1, 60) g;
         SELECT pgtrickle.create_stream_table('order_agg', '{ORDER_AGG}', schedule => '200ms');"
    ))
    .unwrap();
    let before = epoch(&fed, "cluster_a");
    d.query_one("SELECT * FROM pgtrickle.register_federation($1, 'cluster_a', takeover => true)", &[&endpoints])
        .unwrap();
    assert!(epoch(&fed, "cluster_a") > before);
    d.query_one("SELECT pgtrickle.publish_stream_table('order_agg')", &[]).unwrap();

    // A writes on, but is fenced: its publisher shows why, and C converges on D's data, not A's.
    let mut rng = rand::rngs::StdRng::seed_from_u64(33);
    workload(&mut a, &mut b, &mut rng, 30);
    let error = wait_for_publisher_error(&mut a, &["cluster_name_taken", "took this cluster name over"])
        .unwrap_or_else(|| panic!("A's publisher was not fenced:\n{}", tail(&fed.clusters[0].log())));
    println!("A fenced: {error}");
    converge(&fed, &mut d, &mut b, &mut c, Duration::from_secs(90));
    let seqs = check_apply_log(&mut c);

    // Superseded, A can neither withdraw the stream D now produces nor publish another under the name: both are
    // refused by the coordinators (42710 + HINT), and C goes on reading D's order_agg.
    let error = a
        .batch_execute("BEGIN; SELECT pgtrickle.unpublish_stream_table('order_agg'); COMMIT;")
        .expect_err("a superseded server withdrew a stream");
    let db = error.as_db_error().expect("a database error");
    assert_eq!(db.code(), &SqlState::DUPLICATE_OBJECT, "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("takeover"), "{:?}", db.hint());
    a.batch_execute("ROLLBACK").ok();
    let published: i64 = a.query_one("SELECT count(*) FROM pgtrickle.pgt_publications", &[]).unwrap().get(0);
    assert_eq!(published, 1, "A's refused unpublish removed its local row");
    a.batch_execute(&format!("SELECT pgtrickle.create_stream_table('order_agg_2', '{ORDER_AGG}')")).unwrap();
    let error = a
        .query_one("SELECT pgtrickle.publish_stream_table('order_agg_2')", &[])
        .expect_err("a superseded server published a stream");
    assert_eq!(error.as_db_error().expect("a database error").code(), &SqlState::DUPLICATE_OBJECT);
    let streams = fed.coordinator(|client| async move { client.streams().await }).expect("streams");
    assert!(streams.iter().any(|s| s.stream.to_string() == "cluster_a/public.order_agg"), "{streams:?}");
    assert!(!streams.iter().any(|s| s.stream.to_string() == "cluster_a/public.order_agg_2"), "{streams:?}");

    workload(&mut a, &mut b, &mut rng, 30);
    d.batch_execute("INSERT INTO orders VALUES (1000, 3, 99.5)").unwrap();
    converge(&fed, &mut d, &mut b, &mut c, Duration::from_secs(60));
    println!("D took cluster_a over; apply log {seqs:?}");
}

#[test]
fn a_promoted_standby_takes_over_and_the_old_primary_is_fenced() {
    let (mut fed, mut a, mut b, mut c) = seed_federation(3);
    let s_index = fed.clusters.add_standby(0).expect("a streaming standby of A");
    let mut rng = rand::rngs::StdRng::seed_from_u64(47);
    workload(&mut a, &mut b, &mut rng, 30);

    // A dies mid-workload, with a batch made that its publisher has not had recorded yet (the standby possibly
    // behind); the standby is promoted.
    let in_flight = (0..2000)
        .find_map(|_| {
            workload(&mut a, &mut b, &mut rng, 1);
            unpublished(&mut a)
        })
        .expect("no batch of A in flight after 2000 statements");
    drop(a);
    fed.clusters[0].kill().unwrap();
    fed.clusters[s_index].promote().unwrap_or_else(|e| {
        panic!(
            "promote: {e}
{}",
            fed.clusters[s_index].log()
        )
    });
    let mut s = fed.reconnect(s_index);
    println!("A killed with {in_flight}; standby promoted");

    // The operator's step after a failover: the promoted server takes the name over (new epoch); its streams go
    // on (or restart with a snapshot if the log is ahead of what replication delivered), and C converges on the
    // promoted server's real tables.
    let before = epoch(&fed, "cluster_a");
    s.query_one(
        "SELECT * FROM pgtrickle.register_federation($1, 'cluster_a', takeover => true)",
        &[&fed.coordinators.endpoints()],
    )
    .unwrap_or_else(|e| {
        panic!(
            "takeover: {e:?}
{}",
            tail(&fed.clusters[s_index].log())
        )
    });
    assert!(epoch(&fed, "cluster_a") > before);
    workload(&mut s, &mut b, &mut rng, 20);
    converge(&fed, &mut s, &mut b, &mut c, Duration::from_secs(90));

    // The old primary comes back (split brain): it writes, but its publisher is fenced and nothing of it
    // reaches C.
    fed.clusters[0].start_after_crash().unwrap();
    let mut old = fed.reconnect(0);
    old.batch_execute("INSERT INTO orders SELECT g, 1, 1000 FROM generate_series(5000, 5050) g").unwrap();
    let error = wait_for_publisher_error(&mut old, &["stale_producer_epoch", "took this cluster name over"])
        .unwrap_or_else(|| panic!("the old primary was not fenced:\n{}", tail(&fed.clusters[0].log())));
    println!("old primary fenced: {error}");
    workload(&mut s, &mut b, &mut rng, 10);
    converge(&fed, &mut s, &mut b, &mut c, Duration::from_secs(60));
    let seqs = check_apply_log(&mut c);
    println!("promoted standby: apply log {seqs:?}");
}
