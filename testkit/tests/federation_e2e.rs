//! Federation end to end with real processes (three coordinators, the change log's server — tansu for Kafka,
//! nats-server for NATS JetStream — and three PostgreSQL clusters): the seed's dashboard converges and every batch
//! is applied once, on either backend.

use std::time::Duration;

use rand::SeedableRng;
use shared_model::Backend;
use testkit::federation::Federation;
use testkit::seed::*;

testkit::backend_tests!(eventual_dashboard_converges_and_applies_each_batch_once);

fn eventual_dashboard_converges_and_applies_each_batch_once(backend: Backend) {
    let fed = Federation::start_on(backend, 3, &[]).expect("start the federation");
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    // The release plan's call, as written (sources => ARRAY['nats://coordinator/cluster_a/order_agg', …]).
    let id: String = c
        .query_one(
            &format!(
                "SELECT pgtrickle.create_federated_stream_table('dashboard', '{DASHBOARD}', sources => {}, \
                 schedule => '200ms')",
                sources(backend)
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id, "cluster_c/public.dashboard");
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..5 {
        workload(&mut a, &mut b, &mut rng, 40);
        std::thread::sleep(Duration::from_millis(150));
    }
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let seqs = check_apply_log(&mut c);
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    for (stream, applied) in &seqs {
        assert!(applied.len() >= 2, "{stream}: the workload should have produced deltas: {applied:?}");
    }
    let view = sources_view(&mut c);
    assert!(view.contains("streaming"), "{view}");
}

#[test]
fn a_source_column_change_reinitializes_its_mirror() {
    let fed = Federation::start(3, &[]).expect("start the federation");
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    c.query_one(
        &format!(
            "SELECT pgtrickle.create_federated_stream_table('dashboard', '{DASHBOARD}', {}, schedule => '200ms')",
            sources(Backend::Kafka)
        ),
        &[],
    )
    .unwrap();
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    // A new defining query with one more column; refused while batches are still unsent, so retried.
    let new_query =
        "SELECT user_id, count(*) AS orders, sum(amount) AS total, max(amount) AS biggest FROM orders GROUP BY user_id";
    let altered = testkit::wait_for(Duration::from_secs(20), || {
        a.execute("SELECT pgtrickle.alter_stream_table('order_agg', query => $1)", &[&new_query]).ok()
    });
    assert!(altered.is_some(), "alter_stream_table kept failing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    workload(&mut a, &mut b, &mut rng, 30);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let has_column: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'cluster_a.order_agg'::regclass AND attname = 'biggest')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(has_column, "the mirror did not get the new column");
    let snapshots: i64 = c
        .query_one(
            "SELECT count(*) FROM pgtrickle.pgt_apply_log WHERE stream_id = 'cluster_a/public.order_agg' AND kind = 'snapshot'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(snapshots >= 2, "no snapshot after the column change");
    check_apply_log(&mut c);
    let stream = fed
        .coordinator(|client| async move {
            client.stream(&shared_model::StreamId::parse("cluster_a/public.order_agg").unwrap()).await
        })
        .unwrap();
    assert_eq!(stream.schema_version, 2);
    assert!(stream.columns.iter().any(|c| c.name == "biggest"));
}

/// NATS: batches larger than the server's announced `max_payload` travel in chunks below it.
#[test]
fn nats_batches_are_chunked_under_the_servers_max_payload() {
    const MAX_PAYLOAD: usize = 64 * 1024;
    let server = testkit::nats::NatsServer::start_with_max_payload(MAX_PAYLOAD).expect("nats-server");
    let fed = Federation::start_with(server, 3, &[]).expect("start the federation");
    let mut a = fed.connect(0).unwrap();
    let mut c = fed.connect(2).unwrap();
    a.batch_execute(
        "CREATE TABLE wide (id int PRIMARY KEY, note text NOT NULL);
         SELECT pgtrickle.create_stream_table('wide_st', 'SELECT id, note FROM wide', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('wide_st');",
    )
    .unwrap();
    c.batch_execute(
        "SELECT pgtrickle.create_federated_stream_table('wide_copy', 'SELECT id, note FROM cluster_a.wide_st', \
         ARRAY['nats://coordinator/cluster_a/wide_st'], schedule => '200ms')",
    )
    .unwrap();
    // About 600 KB in one refresh: ten times the limit.
    a.batch_execute("INSERT INTO wide SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 4000) g").unwrap();
    let arrived = testkit::wait_for(Duration::from_secs(60), || {
        let n: i64 = c.query_one("SELECT count(*) FROM wide_copy", &[]).unwrap().get(0);
        (n == 4000).then_some(())
    });
    assert!(arrived.is_some(), "the batch never arrived:\n{}\n{}", sources_view(&mut c), tail(&fed.clusters[0].log()));
    let last = match &fed.broker {
        testkit::changelog::LogServer::Nats(server) => server.last_sequence("PGTRICKLE").unwrap(),
        _ => unreachable!(),
    };
    // Messages in the stream: the snapshot, the chunks of the big delta; well over 600 KB / 64 KiB.
    assert!(last >= 10, "the big batch was not chunked: {last} messages in the stream");
}
