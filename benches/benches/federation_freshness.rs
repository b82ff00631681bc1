//! Federation freshness and apply throughput on this machine, on each change-log backend (Kafka: tansu; NATS
//! JetStream: nats-server), next to PostgreSQL logical replication measured in the same federation:
//! 1. Freshness: a row committed on A → visible on C, p50/p99, for (a) logical replication of the source table
//!    A → C (publication/subscription), (b) an eventual federated stream table over A's published stream table,
//!    (c) the same in causal mode. All three watch the same INSERTs, polled on C from one connection.
//! 2. Apply throughput: rows per second written into a mirror for large delta batches (`apply_ms` of
//!    `pgtrickle.pgt_apply_log`, the time spent applying the batch to the mirror).
//!
//! Run: `cargo bench -p benches --bench federation_freshness` (extension installed with
//! `cargo pgrx install --release`; SAMPLES, BULK_ROWS, BULK_BATCHES override). Under `cargo test` a small smoke
//! run checks that it still works.

use std::time::{Duration, Instant};

use shared_model::Backend;
use testkit::federation::Federation;
use testkit::wait_for;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one backend's run measured (ms; rows/s).
struct Measured {
    backend: Backend,
    logical_replication: Vec<f64>,
    eventual: Vec<f64>,
    causal: Vec<f64>,
    apply_median: Option<f64>,
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let samples = env_or("SAMPLES", if smoke { 10 } else { 300 });
    let bulk_rows = env_or("BULK_ROWS", if smoke { 5_000 } else { 200_000 });
    let bulk_batches = env_or("BULK_BATCHES", if smoke { 1 } else { 3 });
    let runs: Vec<Measured> = [Backend::Kafka, Backend::Nats]
        .into_iter()
        .map(|backend| measure(backend, samples, bulk_rows, bulk_batches))
        .collect();
    println!("\nsummary (ms, p50 / p99; apply median rows/s):");
    for run in &runs {
        println!(
            "  {:<6} logical replication {:>6.1} / {:>6.1}   eventual {:>6.1} / {:>6.1}   causal {:>6.1} / {:>6.1}   \
             eventual/LR {:>5.1}×   apply {}",
            run.backend.to_string(),
            percentile(&run.logical_replication, 0.5),
            percentile(&run.logical_replication, 0.99),
            percentile(&run.eventual, 0.5),
            percentile(&run.eventual, 0.99),
            percentile(&run.causal, 0.5),
            percentile(&run.causal, 0.99),
            percentile(&run.eventual, 0.5) / percentile(&run.logical_replication, 0.5),
            run.apply_median.map_or("-".to_string(), |r| format!("{r:.0}")),
        );
    }
}

fn measure(backend: Backend, samples: u64, bulk_rows: u64, bulk_batches: u64) -> Measured {
    println!("\n== {backend}");
    let fed = Federation::start_on(
        backend,
        3,
        &["wal_level=logical", "max_wal_senders=10", "max_replication_slots=10", "pg_trickle.scheduler_interval=20"],
    )
    .expect("start the federation (is the extension installed?)");
    let mut a = fed.connect(0).unwrap();
    let mut c = fed.connect(2).unwrap();
    let schedule = "20ms";
    a.batch_execute(&format!(
        "CREATE TABLE fresh (id bigint PRIMARY KEY, v int NOT NULL);
         CREATE PUBLICATION fresh_pub FOR TABLE fresh;
         SELECT pgtrickle.create_stream_table('fresh_ev', 'SELECT id, v FROM fresh', schedule => '{schedule}');
         SELECT pgtrickle.create_stream_table('fresh_ca', 'SELECT id, v FROM fresh', schedule => '{schedule}');
         SELECT pgtrickle.publish_stream_table('fresh_ev');
         SELECT pgtrickle.publish_stream_table('fresh_ca');
         CREATE TABLE bulk (id bigint PRIMARY KEY, grp int NOT NULL, note text NOT NULL);
         SELECT pgtrickle.create_stream_table('bulk_st', 'SELECT id, grp, note FROM bulk', schedule => '{schedule}');
         SELECT pgtrickle.publish_stream_table('bulk_st');"
    ))
    .unwrap();
    c.batch_execute("CREATE TABLE fresh (id bigint PRIMARY KEY, v int NOT NULL)").unwrap();
    // Its own statement: CREATE SUBSCRIPTION may not run in the implicit transaction of a multi-statement batch.
    c.batch_execute(&format!(
        "CREATE SUBSCRIPTION fresh_sub CONNECTION '{}' PUBLICATION fresh_pub",
        fed.clusters[0].conninfo("postgres")
    ))
    .unwrap();
    c.batch_execute(&format!(
        "SELECT pgtrickle.create_federated_stream_table('view_ev', 'SELECT id, v FROM cluster_a.fresh_ev',
           ARRAY['{backend}://coordinator/cluster_a/fresh_ev'], schedule => '{schedule}');
         SELECT pgtrickle.create_federated_stream_table('view_ca', 'SELECT id, v FROM cluster_a.fresh_ca',
           ARRAY['{backend}://coordinator/cluster_a/fresh_ca'], consistency => 'causal');
         SELECT pgtrickle.create_federated_stream_table('bulk_view', 'SELECT count(*) AS n FROM cluster_a.bulk_st',
           ARRAY['{backend}://coordinator/cluster_a/bulk_st'], schedule => '1s');"
    ))
    .unwrap();
    let ready = wait_for(Duration::from_secs(120), || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pgtrickle.federation_sources WHERE state = 'streaming'", &[])
            .unwrap()
            .get(0);
        (n == 3).then_some(())
    });
    assert!(ready.is_some(), "mirrors did not bootstrap");

    // 1. Freshness.
    let (mut lr, mut ev, mut ca) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=samples as i64 {
        std::thread::sleep(Duration::from_millis(37)); // not in step with any poll interval
        let committed = Instant::now();
        a.execute("INSERT INTO fresh VALUES ($1, 1)", &[&i]).unwrap();
        let (mut seen_lr, mut seen_ev, mut seen_ca) = (None, None, None);
        while seen_lr.is_none() || seen_ev.is_none() || seen_ca.is_none() {
            if committed.elapsed() > Duration::from_secs(30) {
                panic!("row {i} not visible on C after 30 s: lr {seen_lr:?} eventual {seen_ev:?} causal {seen_ca:?}");
            }
            let row = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM fresh WHERE id = $1), EXISTS (SELECT 1 FROM view_ev WHERE id = $1), \
                            EXISTS (SELECT 1 FROM view_ca WHERE id = $1)",
                    &[&i],
                )
                .unwrap();
            let now = committed.elapsed().as_secs_f64() * 1000.0;
            for (seen, column) in [(&mut seen_lr, 0), (&mut seen_ev, 1), (&mut seen_ca, 2)] {
                if seen.is_none() && row.get::<_, bool>(column) {
                    *seen = Some(now);
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        lr.push(seen_lr.unwrap());
        ev.push(seen_ev.unwrap());
        ca.push(seen_ca.unwrap());
    }
    println!(
        "freshness over {samples} commits on A (ms, commit → visible on C; stream tables refreshed every {schedule}):"
    );
    for (name, values) in [("logical replication", &lr), ("federated, eventual", &ev), ("federated, causal", &ca)] {
        println!("  {name:<22} p50 {:>8.1}  p99 {:>8.1}", percentile(values, 0.5), percentile(values, 0.99));
    }
    println!(
        "  eventual p50 / logical replication p50 = {:.1}×; causal p50 − eventual p50 = {:.1} ms",
        percentile(&ev, 0.5) / percentile(&lr, 0.5),
        percentile(&ca, 0.5) - percentile(&ev, 0.5)
    );

    // Where the time of the eventual path goes, for the last batches: A's refresh commit, the log's record
    // (proposal time of FrontierAdvanced), the apply on C (all clocks of this one machine).
    let frontier = fed.frontier("cluster_a/public.fresh_ev");
    let (_, _, _, points) = frontier.parts();
    let mut stages: Vec<(f64, f64)> = Vec::new();
    for point in points.iter().rev().take(20) {
        let refreshed: Option<f64> = a
            .query_opt(
                "SELECT extract(epoch FROM h.finished_at)::float8 * 1000 FROM pgtrickle.pgt_refresh_history h \
                 JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) WHERE st.pgt_name = 'fresh_ev' AND h.batch_seq = $1",
                &[&(point.seq as i64)],
            )
            .unwrap()
            .map(|r| r.get(0));
        let applied: Option<f64> = c
            .query_opt(
                "SELECT extract(epoch FROM applied_at)::float8 * 1000 FROM pgtrickle.pgt_apply_log \
                 WHERE stream_id = 'cluster_a/public.fresh_ev' AND seq = $1",
                &[&(point.seq as i64)],
            )
            .unwrap()
            .map(|r| r.get(0));
        if let (Some(refreshed), Some(applied)) = (refreshed, applied) {
            stages.push((point.proposed_at_unix_ms as f64 - refreshed, applied - point.proposed_at_unix_ms as f64));
        }
    }
    if !stages.is_empty() {
        let (publish, apply): (Vec<f64>, Vec<f64>) = stages.into_iter().unzip();
        println!(
            "  eventual path, median of the last {} batches: A's refresh commit → recorded in the log {:.1} ms, \
             → applied on C {:.1} ms",
            publish.len(),
            percentile(&publish, 0.5),
            percentile(&apply, 0.5)
        );
    }

    // 2. Apply throughput.
    let mut next = 1i64;
    for _ in 0..bulk_batches {
        a.execute(
            "INSERT INTO bulk SELECT g, g % 100, md5(g::text) FROM generate_series($1::bigint, $2::bigint) g",
            &[&next, &(next + bulk_rows as i64 - 1)],
        )
        .unwrap();
        next += bulk_rows as i64;
        let target = next - 1;
        let applied = wait_for(Duration::from_secs(600), || {
            let n: i64 = c.query_one("SELECT count(*) FROM cluster_a.bulk_st", &[]).unwrap().get(0);
            (n == target).then_some(())
        });
        assert!(applied.is_some(), "bulk rows never reached C's mirror");
    }
    let rows = c
        .query(
            "SELECT rows_written, apply_ms FROM pgtrickle.pgt_apply_log \
             WHERE stream_id = 'cluster_a/public.bulk_st' AND kind = 'delta' AND rows_written >= $1 ORDER BY seq",
            &[&((bulk_rows / 2) as i64)],
        )
        .unwrap();
    let rates: Vec<f64> = rows.iter().map(|r| r.get::<_, i64>(0) as f64 / (r.get::<_, f64>(1) / 1000.0)).collect();
    let sizes: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    println!(
        "apply into the mirror: batches of {sizes:?} rows: {:?} rows/s",
        rates.iter().map(|r| r.round() as i64).collect::<Vec<_>>()
    );
    let apply_median = (!rates.is_empty()).then(|| percentile(&rates, 0.5));
    if let Some(median) = apply_median {
        println!("  median {median:.0} rows/s");
    }
    Measured { backend, logical_replication: lr, eventual: ev, causal: ca, apply_median }
}
