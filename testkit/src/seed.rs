//! The seed's scenario, shared by the federation tests, the demo and the freshness benchmark: cluster A publishes
//! `order_agg` (orders per user), B publishes `user_stats` (active users), C keeps the federated `dashboard`
//! joining both mirrors; a random workload on A and B, and the checks that C converged and applied each batch once.

use std::collections::BTreeMap;
use std::time::Duration;

use shared_model::Backend;

use crate::federation::Federation;
use crate::wait_for;
use rand::Rng;

pub const ORDER_AGG: &str = "SELECT user_id, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY user_id";
pub const USER_STATS: &str = "SELECT id AS user_id, name, country FROM users WHERE active";
pub const DASHBOARD: &str = "SELECT u.name, u.country, o.orders, o.total \
     FROM cluster_a.order_agg o JOIN cluster_b.user_stats u ON u.user_id = o.user_id";

/// The dashboard's sources as the release plan writes them, with the federation backend's scheme.
pub fn sources(backend: Backend) -> String {
    format!("ARRAY['{backend}://coordinator/cluster_a/order_agg', '{backend}://coordinator/cluster_b/user_stats']")
}

pub fn setup_sources(fed: &Federation) -> (postgres::Client, postgres::Client) {
    let mut a = fed.connect(0).unwrap();
    let mut b = fed.connect(1).unwrap();
    a.batch_execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL, amount numeric(12,2) NOT NULL);
         INSERT INTO orders SELECT g, g % 20, g * 1.5 FROM generate_series(1, 200) g;
         SELECT pgtrickle.create_stream_table('order_agg', '{ORDER_AGG}', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('order_agg');"
    ))
    .unwrap();
    b.batch_execute(&format!(
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, country text, active boolean NOT NULL);
         INSERT INTO users SELECT g, 'user ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'c' || (g % 4) END, g % 5 <> 0
           FROM generate_series(0, 25) g;
         SELECT pgtrickle.create_stream_table('user_stats', '{USER_STATS}', schedule => '200ms');
         SELECT pgtrickle.publish_stream_table('user_stats');"
    ))
    .unwrap();
    (a, b)
}

/// C's federated `dashboard` over A's and B's streams, refreshed every 200 ms.
pub fn create_dashboard(c: &mut postgres::Client, backend: Backend) {
    let sources = sources(backend);
    c.query_one(
        &format!(
            "SELECT pgtrickle.create_federated_stream_table('dashboard', '{DASHBOARD}', {sources}, schedule => '200ms')"
        ),
        &[],
    )
    .unwrap();
}

/// A federation of `count` clusters running the seed scenario, converged: A's and B's sources published, C's
/// dashboard over them. Returns connections to A, B and C.
pub fn seed_federation(count: usize) -> (Federation, postgres::Client, postgres::Client, postgres::Client) {
    seed_federation_on(Backend::Kafka, count)
}

/// The same on the given change-log backend.
pub fn seed_federation_on(
    backend: Backend,
    count: usize,
) -> (Federation, postgres::Client, postgres::Client, postgres::Client) {
    let fed = Federation::start_on(backend, count, &[]).expect("federation");
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    create_dashboard(&mut c, backend);
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    (fed, a, b, c)
}

/// Random writes on A's orders and B's users.
pub fn workload(a: &mut postgres::Client, b: &mut postgres::Client, rng: &mut rand::rngs::StdRng, statements: usize) {
    for _ in 0..statements {
        // Paced, so that the statements spread over several refreshes (and batches) of A and B.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let id = rng.random_range(1..400);
        let user = rng.random_range(0..30);
        match rng.random_range(0..6) {
            0 | 1 => {
                a.execute(
                    "INSERT INTO orders VALUES ($1, $2, $3::int * 0.25) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
                    &[&id, &user, &rng.random_range(1..1000)],
                )
                .unwrap();
            }
            2 => {
                a.execute("DELETE FROM orders WHERE id = $1", &[&id]).unwrap();
            }
            3 => {
                a.execute("UPDATE orders SET user_id = $2 WHERE id = $1", &[&id, &user]).unwrap();
            }
            4 => {
                b.execute(
                    "INSERT INTO users VALUES ($1, 'user ' || $1::int, 'c' || ($1::int % 3), true) \
                     ON CONFLICT (id) DO UPDATE SET active = NOT users.active",
                    &[&user],
                )
                .unwrap();
            }
            _ => {
                b.execute(
                    "UPDATE users SET country = CASE WHEN country IS NULL THEN 'cx' ELSE NULL END WHERE id = $1",
                    &[&user],
                )
                .unwrap();
            }
        }
    }
}

/// Copies A's orders and B's users into C (schema `expected`) and counts rows that differ between the dashboard
/// and the defining query evaluated over those copies.
pub fn dashboard_difference(a: &mut postgres::Client, b: &mut postgres::Client, c: &mut postgres::Client) -> i64 {
    let copy = |from: &mut postgres::Client, table: &str, columns: &str| -> String {
        let rows: Vec<String> = from
            .query(&format!("SELECT format('(%s)', concat_ws(',', {columns})) FROM {table}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        rows.join(",")
    };
    let orders = copy(a, "orders", "id, user_id, amount");
    let users =
        copy(b, "users", "id, quote_literal(name), coalesce(quote_literal(country), 'NULL'), quote_literal(active)");
    c.batch_execute(
        "DROP SCHEMA IF EXISTS expected CASCADE; CREATE SCHEMA expected;
         CREATE TABLE expected.orders (id int, user_id int, amount numeric(12,2));
         CREATE TABLE expected.users (id int, name text, country text, active boolean);",
    )
    .unwrap();
    if !orders.is_empty() {
        c.batch_execute(&format!("INSERT INTO expected.orders VALUES {orders}")).unwrap();
    }
    if !users.is_empty() {
        c.batch_execute(&format!("INSERT INTO expected.users VALUES {users}")).unwrap();
    }
    let expected = format!(
        "SELECT u.name, u.country, o.orders, o.total FROM ({}) o JOIN ({}) u ON u.user_id = o.user_id",
        ORDER_AGG.replace("FROM orders", "FROM expected.orders"),
        USER_STATS.replace("FROM users", "FROM expected.users")
    );
    rows_differing(c, &expected, "SELECT name, country, orders, total FROM dashboard")
}

/// Rows in one query's result and not the other's, both ways, counting duplicates (EXCEPT ALL).
pub fn rows_differing(c: &mut postgres::Client, expected: &str, actual: &str) -> i64 {
    c.query_one(
        &format!(
            "SELECT count(*) FROM (({expected} EXCEPT ALL {actual}) UNION ALL ({actual} EXCEPT ALL {expected})) d"
        ),
        &[],
    )
    .unwrap()
    .get(0)
}

/// Every source's applied seqs: a snapshot first, then each seq exactly once, in order, with no gap (a later
/// snapshot may jump ahead), and the last one logged is the source's `applied_seq` (the log and the position are
/// written in the same transaction). Every mirrored source must have applied something: an empty log fails.
/// Returns the seqs per stream.
pub fn check_apply_log(c: &mut postgres::Client) -> BTreeMap<String, Vec<i64>> {
    let mut log: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in
        c.query("SELECT stream_id, seq, kind FROM pgtrickle.pgt_apply_log ORDER BY applied_at, seq", &[]).unwrap()
    {
        log.entry(row.get(0)).or_default().push((row.get(1), row.get(2)));
    }
    let applied: BTreeMap<String, i64> = c
        .query("SELECT stream_id, applied_seq FROM pgtrickle.pgt_federation_sources", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!applied.is_empty(), "C mirrors no source");
    assert_eq!(
        log.keys().collect::<Vec<_>>(),
        applied.keys().collect::<Vec<_>>(),
        "the apply log and the mirrored sources name different streams"
    );
    let mut out = BTreeMap::new();
    for (stream, entries) in log {
        assert_eq!(entries[0].1, "snapshot", "{stream}: first apply is not a snapshot: {entries:?}");
        for pair in entries.windows(2) {
            let ((prev, _), (next, kind)) = (&pair[0], &pair[1]);
            assert!(
                *next == prev + 1 || (kind == "snapshot" && next > prev),
                "{stream}: seq {next} ({kind}) applied after {prev}: {entries:?}"
            );
        }
        let last = entries.last().expect("an entry per logged stream").0;
        assert_eq!(
            last, applied[&stream],
            "{stream}: the apply log ends at {last}, applied_seq is {}",
            applied[&stream]
        );
        out.insert(stream, entries.into_iter().map(|(s, _)| s).collect());
    }
    out
}

/// The apply log's length (the number of batches C applied so far).
pub fn apply_log_len(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM pgtrickle.pgt_apply_log", &[]).unwrap().get(0)
}

/// Batches a producer made that its publisher has not yet had recorded (broker ack + frontier advance), as text.
pub fn unpublished(producer: &mut postgres::Client) -> Option<String> {
    producer
        .query_one(
            "SELECT string_agg(format('%s made %s, published %s', p.stream_id, st.last_batch_seq, p.published_seq), '; ') \
             FROM pgtrickle.pgt_publications p JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             WHERE st.last_batch_seq > p.published_seq",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Batches the coordinators' log recorded that C has not applied yet, as text. The frontier is read before C's
/// position, so a positive difference means the batch was in flight at the moment C was read.
pub fn unapplied(fed: &Federation, c: &mut postgres::Client) -> Option<String> {
    let streams: Vec<String> = c
        .query("SELECT stream_id FROM pgtrickle.pgt_federation_sources ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let committed: Vec<u64> = streams.iter().map(|s| fed.frontier(s).seq()).collect();
    let mut behind = Vec::new();
    for (stream, committed) in streams.iter().zip(committed) {
        let applied: i64 = c
            .query_one("SELECT applied_seq FROM pgtrickle.pgt_federation_sources WHERE stream_id = $1", &[stream])
            .unwrap()
            .get(0);
        if committed as i64 > applied {
            behind.push(format!("{stream} committed {committed}, applied {applied}"));
        }
    }
    (!behind.is_empty()).then(|| behind.join("; "))
}

pub fn sources_view(c: &mut postgres::Client) -> String {
    c.query(
        "SELECT stream_id, committed_seq, applied_seq, lag_batches, state, coalesce(detail, '') FROM pgtrickle.federation_sources",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "{} committed {} applied {} lag {} {} {}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, String>(4),
            r.get::<_, String>(5)
        )
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// Whether C applied every batch the log committed for each of its sources (and each has committed one).
pub fn caught_up(c: &mut postgres::Client) -> bool {
    c.query_one(
        "SELECT bool_and(applied_seq = committed_seq AND committed_seq > 0) FROM pgtrickle.federation_sources",
        &[],
    )
    .unwrap()
    .get::<_, Option<bool>>(0)
    .unwrap_or(false)
}

/// Waits until the dashboard equals its query over A's and B's current contents and C applied every committed
/// batch.
pub fn converge(
    fed: &Federation,
    a: &mut postgres::Client,
    b: &mut postgres::Client,
    c: &mut postgres::Client,
    within: Duration,
) {
    converge_or_explain(
        fed,
        within,
        &mut (a, b, c),
        // The local refreshes on A and B must have run too: compare only then.
        |(a, b, c)| caught_up(c) && dashboard_difference(a, b, c) == 0,
        |(a, b, c)| format!("difference {}\nsources:\n{}", dashboard_difference(a, b, c), sources_view(c)),
        &[2, 0],
    );
}

/// Waits until `done` holds on `state` (the test's connections); otherwise panics with `explain` (what differs,
/// the sources) and the log tails of clusters `logs_of`.
pub fn converge_or_explain<S>(
    fed: &Federation,
    within: Duration,
    state: &mut S,
    mut done: impl FnMut(&mut S) -> bool,
    explain: impl FnOnce(&mut S) -> String,
    logs_of: &[usize],
) {
    if wait_for(within, || done(state).then_some(())).is_some() {
        return;
    }
    let logs: Vec<String> =
        logs_of.iter().map(|&i| format!("{} log:\n{}", fed.clusters[i].name, tail(&fed.clusters[i].log()))).collect();
    panic!("no convergence within {within:?}: {}\n{}", explain(state), logs.join("\n"));
}

pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
