//! Stream incarnations and authenticated envelopes with real servers (three PostgreSQL clusters, three
//! coordinators, the broker):
//! - a published stream table unpublished, dropped and re-created under the same name with other data: the
//!   consumer's source shows the stream gone (its other source keeps flowing), then follows the new incarnation —
//!   its mirror emptied, rebuilt from the new life's snapshot, never a batch of the old life — and converges;
//! - `BEGIN; unpublish; ROLLBACK` withdraws nothing anywhere, and an unpublish the coordinators refuse at commit
//!   aborts the transaction, leaving the publication in place;
//! - a forged envelope written to a stream's topic by a plain Kafka producer (the next batch's seq, other rows,
//!   another key): refused, counted in `federation_sources.refused_messages`, nothing of it applied.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use postgres::error::SqlState;
use rand::SeedableRng;
use shared_model::envelope::{Batch, RowAction, RowChange};
use shared_model::{BatchKind, ColumnDef, MessageKey, StreamId};
use testkit::seed::*;
use testkit::wait_for;

const ORDER_AGG_STREAM: &str = "cluster_a/public.order_agg";
const USER_STATS_STREAM: &str = "cluster_b/public.user_stats";

fn source_row(c: &mut postgres::Client, stream: &str) -> (i64, Option<i64>, String, Option<String>, i64) {
    let row = c
        .query_one(
            "SELECT applied_seq, incarnation, state, detail, refused_messages FROM pgtrickle.federation_sources \
             WHERE stream_id = $1",
            &[&stream],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// Writes one message to partition 0 of `topic`, as anyone with access to the broker could.
fn write_to_topic(servers: &str, topic: &str, payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", servers).create().expect("a producer");
    producer.send(BaseRecord::to(topic).partition(0).key(ORDER_AGG_STREAM).payload(payload)).expect("queued");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while producer.in_flight_count() > 0 {
        assert!(std::time::Instant::now() < deadline, "the broker did not acknowledge the forged message");
        producer.poll(Duration::from_millis(10));
    }
}

fn incarnation(fed: &testkit::federation::Federation, stream: &str) -> u64 {
    let id = StreamId::parse(stream).unwrap();
    fed.coordinator(|client| async move { client.stream(&id).await }).expect("the stream").incarnation
}

#[test]
fn a_dropped_and_recreated_stream_is_a_new_incarnation_the_consumer_follows_from_a_snapshot() {
    let (fed, mut a, mut b, mut c) = seed_federation(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    workload(&mut a, &mut b, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let first = incarnation(&fed, ORDER_AGG_STREAM);
    assert_eq!(source_row(&mut c, ORDER_AGG_STREAM).1, Some(first as i64), "C is not bound to the incarnation");

    // Withdrawn (the coordinators drop C's dashboard with it), dropped, and A's data changes meanwhile.
    a.batch_execute(
        "SELECT pgtrickle.unpublish_stream_table('order_agg', cascade => true);
         SELECT pgtrickle.drop_stream_table('order_agg');
         DELETE FROM orders WHERE id % 3 = 0;
         UPDATE orders SET amount = amount * 2 WHERE id % 3 = 1;",
    )
    .unwrap();
    let gone = wait_for(Duration::from_secs(30), || {
        let (_, _, state, detail, _) = source_row(&mut c, ORDER_AGG_STREAM);
        (state == "error").then_some(detail.unwrap_or_default())
    })
    .unwrap_or_else(|| panic!("C's source does not show the stream gone:\n{}", sources_view(&mut c)));
    assert!(gone.contains("no longer published"), "unclear error: {gone}");
    // The other source of the same table keeps flowing meanwhile.
    let before = source_row(&mut c, USER_STATS_STREAM).0;
    b.batch_execute("UPDATE users SET country = 'moved' WHERE id = 1; UPDATE users SET active = true WHERE id = 5")
        .unwrap();
    wait_for(Duration::from_secs(30), || (source_row(&mut c, USER_STATS_STREAM).0 > before).then_some(()))
        .unwrap_or_else(|| panic!("user_stats stopped with order_agg:\n{}", sources_view(&mut c)));

    // Re-created under the same name over the changed data, and published again: a new incarnation.
    a.batch_execute(&format!(
        "SELECT pgtrickle.create_stream_table('order_agg', '{ORDER_AGG}', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('order_agg');"
    ))
    .unwrap();
    let second = incarnation(&fed, ORDER_AGG_STREAM);
    assert!(second > first, "publishing again kept incarnation {first} (now {second})");
    let stored: i64 = a
        .query_one("SELECT incarnation FROM pgtrickle.pgt_publications WHERE stream_id = $1", &[&ORDER_AGG_STREAM])
        .unwrap()
        .get(0);
    assert_eq!(stored as u64, second, "the publication row does not hold the new incarnation");
    workload(&mut a, &mut b, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    let (applied, bound, state, _, _) = source_row(&mut c, ORDER_AGG_STREAM);
    assert_eq!(bound, Some(second as i64), "C did not follow the new incarnation");
    assert_eq!(state, "streaming");
    assert!(applied as u64 <= fed.frontier(ORDER_AGG_STREAM).seq(), "C applied past the new life's frontier");
    // Since the reset, the source's apply log starts with the new life's snapshot.
    let log: Vec<(i64, String)> = c
        .query(
            "SELECT seq, kind FROM pgtrickle.pgt_apply_log WHERE stream_id = $1 ORDER BY applied_at DESC LIMIT 40",
            &[&ORDER_AGG_STREAM],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(log.iter().any(|(_, kind)| kind == "snapshot"), "no snapshot of the new life applied: {log:?}");
}

#[test]
fn an_unpublish_rolled_back_withdraws_nothing_and_one_refused_at_commit_keeps_the_publication() {
    let (fed, mut a, mut b, mut c) = seed_federation(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    let first = incarnation(&fed, ORDER_AGG_STREAM);

    let mut tx = a.transaction().unwrap();
    tx.execute("SELECT pgtrickle.unpublish_stream_table('order_agg', cascade => true)", &[]).unwrap();
    tx.rollback().unwrap();
    // Nothing was withdrawn: the stream, its incarnation and C's dashboard are still at the coordinators, and
    // both streams flow on.
    assert_eq!(incarnation(&fed, ORDER_AGG_STREAM), first);
    let tables = fed.coordinator(|client| async move { client.federated_tables().await }).expect("tables");
    assert!(tables.iter().any(|t| t.table.to_string() == "cluster_c/public.dashboard"), "the dashboard was dropped");
    workload(&mut a, &mut b, &mut rng, 30);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);

    // Without cascade the coordinators refuse (C's dashboard reads it): the refusal comes at COMMIT, aborts the
    // transaction, and the publication is still there and still publishing.
    let error = a
        .batch_execute("BEGIN; SELECT pgtrickle.unpublish_stream_table('order_agg'); COMMIT;")
        .expect_err("an unpublish with dependents committed");
    let db = error.as_db_error().unwrap_or_else(|| panic!("not a server error: {error}"));
    assert_eq!(db.code(), &SqlState::DEPENDENT_OBJECTS_STILL_EXIST, "{db:?}");
    assert!(db.hint().is_some_and(|h| !h.is_empty()), "no hint: {db:?}");
    let _ = a.batch_execute("ROLLBACK");
    let published: i64 = a
        .query_one("SELECT count(*) FROM pgtrickle.pgt_publications WHERE stream_id = $1", &[&ORDER_AGG_STREAM])
        .unwrap()
        .get(0);
    assert_eq!(published, 1, "the refused unpublish removed the publication locally");
    workload(&mut a, &mut b, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);
}

#[test]
fn a_forged_envelope_on_the_topic_is_refused_counted_and_never_applied() {
    let (fed, mut a, mut b, mut c) = seed_federation(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(33);
    let topic: String = c
        .query_one("SELECT topic FROM pgtrickle.pgt_federation_sources WHERE stream_id = $1", &[&ORDER_AGG_STREAM])
        .unwrap()
        .get(0);
    // The next batch of order_agg, as a forger would write it: a user with a huge total, under its own key.
    let next = fed.frontier(ORDER_AGG_STREAM).seq() + 1;
    let forged = Batch {
        stream: StreamId::parse(ORDER_AGG_STREAM).unwrap(),
        incarnation: incarnation(&fed, ORDER_AGG_STREAM),
        producer_epoch: 1,
        seq: next,
        kind: BatchKind::Delta,
        columns: vec![
            ColumnDef::new("user_id", "integer"),
            ColumnDef::new("orders", "bigint"),
            ColumnDef::new("total", "numeric"),
        ],
        rows: vec![RowChange {
            action: RowAction::Insert,
            row_id: 4242,
            values: vec![Some("1".into()), Some("1".into()), Some("99999999".into())],
        }],
    };
    let messages = forged.encode_chunks(64 * 1024, &MessageKey::from_bytes([0x66; 32])).unwrap();
    write_to_topic(&fed.broker.address(), &topic, &messages[0]);

    let refused = wait_for(Duration::from_secs(30), || {
        let (_, _, _, _, refused) = source_row(&mut c, ORDER_AGG_STREAM);
        (refused > 0).then_some(refused)
    })
    .unwrap_or_else(|| {
        panic!("the forged message was not refused:\n{}\n{}", sources_view(&mut c), tail(&fed.clusters[2].log()))
    });
    assert!(refused >= 1);
    assert!(fed.clusters[2].log().contains("not authenticated"), "the refusal is not in C's log");
    workload(&mut a, &mut b, &mut rng, 30);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);
    let huge: i64 = c.query_one("SELECT count(*) FROM dashboard WHERE total = 99999999", &[]).unwrap().get(0);
    assert_eq!(huge, 0, "the forged row reached the dashboard");
}
