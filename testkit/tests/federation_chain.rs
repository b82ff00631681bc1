//! A column change under a chain, with real servers: A publishes `order_agg`; B keeps the federated stream table
//! `big_spenders` over it and publishes that in turn; C keeps a federated stream table over B's. A's defining
//! query gains a column: B rebuilds its mirror and plans `big_spenders` again in place (same stream table id,
//! still published), its REINITIALIZE reaches C as a snapshot batch, and C converges on A's data — after the
//! change and after more writes.
//!
//! Where rebuilding in place cannot be done safely — a local stream table on B reads `big_spenders`, whose
//! storage the rebuild replaces — B's source shows `blocked` with the readers and what to do, applies nothing
//! meanwhile (no retry loop: the apply is tried again every 5 s, before any DDL), and converges once the reader
//! is dropped.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use testkit::federation::Federation;
use testkit::seed::{caught_up, converge_or_explain, sources_view, tail};

const ORDER_AGG: &str = "SELECT user_id, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY user_id";
const ORDER_AGG_WIDER: &str = "SELECT user_id, count(*) AS orders, sum(amount) AS total, max(amount) AS biggest \
     FROM orders GROUP BY user_id";
const BIG_SPENDERS: &str = "SELECT user_id, orders, total FROM cluster_a.order_agg WHERE total > 100";

/// What C must show: A's orders aggregated and filtered, as sorted text rows.
fn expected(a: &mut postgres::Client) -> Vec<String> {
    rows(a, "SELECT format('%s|%s|%s', user_id, count(*), sum(amount)) FROM orders GROUP BY user_id HAVING sum(amount) > 100")
}

fn actual(c: &mut postgres::Client) -> Vec<String> {
    rows(c, "SELECT format('%s|%s|%s', user_id, orders, total) FROM at_c")
}

fn rows(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    let mut rows: Vec<String> = client.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    rows.sort();
    rows
}

fn converge(fed: &Federation, a: &mut postgres::Client, b: &mut postgres::Client, c: &mut postgres::Client) {
    converge_or_explain(
        fed,
        Duration::from_secs(90),
        &mut (a, b, c),
        |(a, b, c)| caught_up(b) && caught_up(c) && expected(a) == actual(c),
        |(a, b, c)| {
            format!(
                "expected {:?}\nC has {:?}\nB sources:\n{}\nC sources:\n{}",
                expected(a),
                actual(c),
                sources_view(b),
                sources_view(c)
            )
        },
        &[1, 2],
    );
}

fn writes(a: &mut postgres::Client, rng: &mut rand::rngs::StdRng, count: usize) {
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(5));
        let id: i32 = rng.random_range(1..300);
        let user: i32 = rng.random_range(0..25);
        let amount: i32 = rng.random_range(1..200);
        a.execute(
            "INSERT INTO orders VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
            &[&id, &user, &amount],
        )
        .unwrap();
    }
}

/// A publishes `order_agg` over its orders; B keeps the federated stream table `big_spenders` over it.
fn publish_order_agg_and_follow_it(a: &mut postgres::Client, b: &mut postgres::Client) {
    a.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL, amount int NOT NULL);
         INSERT INTO orders SELECT g, g % 25, g % 97 FROM generate_series(1, 200) g;
         SELECT pgtrickle.create_stream_table('order_agg', '{ORDER_AGG}', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('order_agg');"
    ))
    .unwrap();
    b.query_one(
        &format!(
            "SELECT pgtrickle.create_federated_stream_table('big_spenders', '{BIG_SPENDERS}', \
             ARRAY['kafka://coordinator/cluster_a/order_agg'], schedule => '200ms')"
        ),
        &[],
    )
    .unwrap();
}

#[test]
fn a_column_change_upstream_of_a_published_federated_stream_table_reaches_the_end_of_the_chain() {
    let fed = Federation::start(3, &[]).expect("federation");
    let (mut a, mut b, mut c) = (fed.connect(0).unwrap(), fed.connect(1).unwrap(), fed.connect(2).unwrap());
    publish_order_agg_and_follow_it(&mut a, &mut b);
    b.batch_execute("SELECT pgtrickle.publish_stream_table('big_spenders')").unwrap();
    c.query_one(
        "SELECT pgtrickle.create_federated_stream_table('at_c', \
         'SELECT user_id, orders, total FROM cluster_b.big_spenders', \
         ARRAY['kafka://coordinator/cluster_b/big_spenders'], schedule => '200ms')",
        &[],
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(51);
    writes(&mut a, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c);
    let id_before: i64 = b
        .query_one("SELECT pgt_id FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'big_spenders'", &[])
        .unwrap()
        .get(0);

    // A's query gains a column: B's mirror follows, big_spenders is planned again in place.
    a.batch_execute(&format!("SELECT pgtrickle.alter_stream_table('order_agg', query => '{ORDER_AGG_WIDER}')"))
        .unwrap();
    writes(&mut a, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c);
    let mirror_columns: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'cluster_a.order_agg'::regclass AND attnum > 0 \
             AND NOT attisdropped AND attname = 'biggest'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mirror_columns, 1, "B's mirror did not gain the new column");
    let (id_after, published): (i64, i64) = {
        let row = b
            .query_one(
                "SELECT st.pgt_id, (SELECT count(*) FROM pgtrickle.pgt_publications p WHERE p.pgt_id = st.pgt_id) \
                 FROM pgtrickle.pgt_stream_tables st WHERE pgt_name = 'big_spenders'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(id_after, id_before, "big_spenders was re-created instead of planned again in place");
    assert_eq!(published, 1, "big_spenders is no longer published");
    let state: String = c.query_one("SELECT state FROM pgtrickle.federation_sources", &[]).unwrap().get(0);
    assert_eq!(state, "streaming");
    writes(&mut a, &mut rng, 20);
    converge(&fed, &mut a, &mut b, &mut c);
}

fn big_spenders(b: &mut postgres::Client) -> Vec<String> {
    rows(b, "SELECT format('%s|%s|%s', user_id, orders, total) FROM big_spenders")
}

fn source_state(b: &mut postgres::Client) -> (String, String, i64) {
    let row =
        b.query_one("SELECT state, coalesce(detail, ''), applied_seq FROM pgtrickle.federation_sources", &[]).unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn a_column_change_under_a_federated_stream_table_read_locally_waits_blocked_for_the_readers_to_go() {
    let fed = Federation::start(2, &[]).expect("federation");
    let (mut a, mut b) = (fed.connect(0).unwrap(), fed.connect(1).unwrap());
    publish_order_agg_and_follow_it(&mut a, &mut b);
    b.batch_execute(
        "SELECT pgtrickle.create_stream_table('top_spenders', \
         'SELECT user_id, total FROM big_spenders WHERE total > 150', schedule => '200ms')",
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(52);
    writes(&mut a, &mut rng, 20);
    let b_converged =
        |a: &mut postgres::Client, b: &mut postgres::Client| caught_up(b) && expected(a) == big_spenders(b);
    converge_or_explain(
        &fed,
        Duration::from_secs(60),
        &mut (&mut a, &mut b),
        |(a, b)| b_converged(a, b),
        |(_, b)| sources_view(b),
        &[1],
    );

    // A's query gains a column: big_spenders cannot be rebuilt while top_spenders reads it.
    a.batch_execute(&format!("SELECT pgtrickle.alter_stream_table('order_agg', query => '{ORDER_AGG_WIDER}')"))
        .unwrap();
    writes(&mut a, &mut rng, 20);
    let blocked = testkit::wait_for(Duration::from_secs(60), || {
        let (state, detail, applied) = source_state(&mut b);
        (state == "blocked").then_some((detail, applied))
    });
    let Some((detail, applied)) = blocked else {
        panic!("B's source never showed blocked:\n{}\nB log:\n{}", sources_view(&mut b), tail(&fed.clusters[1].log()));
    };
    assert!(detail.contains("public.top_spenders") && detail.contains("drop_stream_table"), "{detail}");
    // It stays blocked and applies nothing while the reader is there (checked across two recheck intervals).
    let before = big_spenders(&mut b);
    std::thread::sleep(Duration::from_secs(11));
    let (state, _, applied_now) = source_state(&mut b);
    assert_eq!((state.as_str(), applied_now), ("blocked", applied), "the blocked source moved on");
    assert_eq!(big_spenders(&mut b), before, "big_spenders changed while its source was blocked");
    let readers: i64 = b
        .query_one("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE pgt_name = 'top_spenders'", &[])
        .unwrap()
        .get(0);
    assert_eq!(readers, 1, "the reader was touched");

    // The operator does what the hint says: big_spenders is rebuilt and B converges.
    b.batch_execute("SELECT pgtrickle.drop_stream_table('top_spenders')").unwrap();
    writes(&mut a, &mut rng, 10);
    converge_or_explain(
        &fed,
        Duration::from_secs(60),
        &mut (&mut a, &mut b),
        |(a, b)| b_converged(a, b),
        |(a, b)| format!("expected {:?}\nB has {:?}\n{}", expected(a), big_spenders(b), sources_view(b)),
        &[1],
    );
    assert_eq!(source_state(&mut b).0, "streaming");
}
