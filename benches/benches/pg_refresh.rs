//! pg_trickle refresh and capture costs on a real PostgreSQL 15 (extension installed with
//! `cargo pgrx install --release`), each figure next to its peer measured in the same run:
//! 1. GROUP BY aggregate over 1,000,000 rows after 10,000 changed rows: differential vs recompute.
//! 2. Delta rows written to the change buffer per second (filter/project stream table).
//! 3. Write path: pgbench TPS and p99 latency on a table with change capture vs the same table without.
//!
//! Run: `cargo bench -p benches --bench pg_refresh` (ROWS, CHANGED, ROUNDS, PGBENCH_SECONDS override).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use testkit::Clusters;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn timed(client: &mut postgres::Client, sql: &str) -> f64 {
    let start = Instant::now();
    client.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs pgbench with `script` for `seconds`; returns (TPS, p99 latency in ms).
fn pgbench(cluster: &testkit::Cluster, script: &str, seconds: u64, log_dir: &Path, tag: &str) -> (f64, f64) {
    let script_path = log_dir.join(format!("{tag}.sql"));
    std::fs::write(&script_path, script).unwrap();
    let prefix = log_dir.join(tag);
    let output = Command::new(testkit::pg_bindir().join("pgbench"))
        .args(["-n", "-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "-c", "4", "-j", "2"])
        .args(["-T", &seconds.to_string(), "-l", "--log-prefix", &prefix.display().to_string(), "-f"])
        .arg(&script_path)
        .arg("postgres")
        .current_dir(log_dir)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pgbench failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .expect("tps line");
    let mut latencies_us: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(log_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with(&format!("{tag}."))
            && path.extension().is_none_or(|e| e != "sql")
        {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                    latencies_us.push(us);
                }
            }
        }
    }
    latencies_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = latencies_us[(latencies_us.len() as f64 * 0.99) as usize] / 1000.0;
    (tps, p99)
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` a small smoke run checks the
    // benchmark still works (and that differential equals recompute) without taking minutes.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rows = env_or("ROWS", if smoke { 20_000 } else { 1_000_000 });
    let changed = env_or("CHANGED", if smoke { 500 } else { 10_000 });
    let rounds = env_or("ROUNDS", if smoke { 1 } else { 5 });
    let pgbench_seconds = env_or("PGBENCH_SECONDS", if smoke { 2 } else { 20 });
    let clusters = Clusters::start(1, &["shared_buffers=1GB", "max_wal_size=4GB", "pg_trickle.enabled=off"])
        .expect("start a cluster (is the extension installed?)");
    let cluster = &clusters[0];
    let mut client = cluster.connect("postgres").unwrap();
    let version: String = client
        .query_one("SELECT version FROM pg_available_extension_versions WHERE name = 'pg_trickle'", &[])
        .unwrap()
        .get(0);
    println!("pg_trickle {version}; {rows} rows, {changed} changed rows per round, {rounds} rounds");

    client
        .batch_execute(&format!(
            "CREATE EXTENSION pg_trickle;
             CREATE TABLE src (id bigint PRIMARY KEY, grp int NOT NULL, amount numeric NOT NULL, qty int NOT NULL);
             INSERT INTO src SELECT g, g % 1000, (g % 977) * 1.25, g % 13 FROM generate_series(1, {rows}) g;"
        ))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE src").unwrap();
    let aggregate = "SELECT grp, count(*) AS n, sum(amount) AS total, avg(qty) AS mean_qty FROM src GROUP BY grp";
    for (name, mode) in [("agg_differential", "differential"), ("agg_recompute", "full")] {
        client
            .execute(
                "SELECT pgtrickle.create_stream_table($1, $2, schedule => 'manual', refresh_mode => $3)",
                &[&name, &aggregate, &mode],
            )
            .unwrap();
    }
    client
        .batch_execute(
            "SELECT pgtrickle.create_stream_table('proj_differential', 'SELECT id, amount, qty FROM src WHERE qty >= 0', \
             schedule => 'manual', refresh_mode => 'differential')",
        )
        .unwrap();

    let (mut differential, mut recompute, mut projection, mut delta_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // 10,000 distinct random rows change (an UPDATE captures a delete and an insert each).
        client
            .batch_execute(&format!(
                "UPDATE src SET amount = amount + 1, qty = qty + 1 WHERE id IN \
                 (SELECT 1 + ((g::bigint * 7919 + {round} * 104729) % {rows}) FROM generate_series(1, {changed}) g)"
            ))
            .unwrap();
        differential.push(timed(&mut client, "SELECT pgtrickle.refresh_stream_table('agg_differential')"));
        recompute.push(timed(&mut client, "SELECT pgtrickle.refresh_stream_table('agg_recompute')"));
        let ms = timed(&mut client, "SELECT pgtrickle.refresh_stream_table('proj_differential')");
        let written: i64 = client
            .query_one(
                "SELECT rows_inserted + rows_deleted FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st \
                 USING (pgt_id) WHERE st.pgt_name = 'proj_differential' ORDER BY refresh_id DESC LIMIT 1",
                &[],
            )
            .unwrap()
            .get(0);
        projection.push(ms);
        delta_rates.push(written as f64 / (ms / 1000.0));
        println!(
            "round {round}: differential {:.1} ms, recompute {:.1} ms, projection {:.1} ms ({written} delta rows)",
            differential[round as usize], recompute[round as usize], ms
        );
    }
    let mismatch: i64 = client
        .query_one(
            "SELECT count(*) FROM ((SELECT grp, n, total, mean_qty FROM agg_differential EXCEPT ALL \
             SELECT grp, n, total, mean_qty FROM agg_recompute) UNION ALL (SELECT grp, n, total, mean_qty FROM agg_recompute \
             EXCEPT ALL SELECT grp, n, total, mean_qty FROM agg_differential)) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatch, 0, "differential and recompute disagree");
    let (d, r) = (median(differential), median(recompute));
    println!(
        "| GROUP BY over {rows} rows, {changed} changed | differential {d:.1} ms | recompute {r:.1} ms | {:.1}x |",
        r / d
    );
    println!(
        "| delta rows written to the change buffer | {:.0} rows/s (median; projection refresh {:.1} ms) |",
        median(delta_rates),
        median(projection)
    );

    // Write path: the same single-row UPDATE by primary key on two identical tables.
    client
        .batch_execute(
            "CREATE TABLE plain (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
             CREATE TABLE captured (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
             INSERT INTO plain SELECT g, 0, repeat('x', 40) FROM generate_series(1, 100000) g;
             INSERT INTO captured SELECT * FROM plain;
             SELECT pgtrickle.create_stream_table('captured_sum', 'SELECT id % 10 AS bucket, sum(v) AS s FROM captured GROUP BY 1', schedule => 'manual');",
        )
        .unwrap();
    for table in ["plain", "captured"] {
        client.batch_execute(&format!("VACUUM ANALYZE {table}")).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let script = |table: &str| format!("\\set id random(1, 100000)\nUPDATE {table} SET v = v + 1 WHERE id = :id;\n");
    // Alternate, so that neither side always runs on a warmer server.
    let mut results = Vec::new();
    for (i, table) in ["plain", "captured", "plain", "captured"].iter().enumerate() {
        let (tps, p99) = pgbench(cluster, &script(table), pgbench_seconds / 2, logs.path(), &format!("{table}{i}"));
        println!("pgbench {table}: {tps:.0} tps, p99 {p99:.2} ms");
        results.push((table.to_string(), tps, p99));
    }
    let avg = |name: &str, pick: fn(&(String, f64, f64)) -> f64| {
        let picked: Vec<f64> = results.iter().filter(|r| r.0 == name).map(pick).collect();
        picked.iter().sum::<f64>() / picked.len() as f64
    };
    let (tps_plain, tps_captured) = (avg("plain", |r| r.1), avg("captured", |r| r.1));
    let (p99_plain, p99_captured) = (avg("plain", |r| r.2), avg("captured", |r| r.2));
    println!(
        "| pgbench UPDATE by key, 4 clients | plain {tps_plain:.0} tps, p99 {p99_plain:.2} ms | captured {tps_captured:.0} tps, p99 {p99_captured:.2} ms | TPS ratio {:.2}, p99 ratio {:.2} |",
        tps_captured / tps_plain,
        p99_captured / p99_plain
    );
}
