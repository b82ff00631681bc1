//! Checkpoints of a 1,000-stream-table deployment on a real PostgreSQL 15 (extension installed with
//! `cargo pgrx install --release`): compressed size (target ≤ 200 KB), time to write and upload (target ≤ 1 s),
//! time to validate and restore on a fresh cluster (target ≤ 10 s), and, measured in the same run as the peer,
//! `pg_dump -Fc` of the `pgtrickle` catalog schema (what a DBA would otherwise save).
//!
//! Run: `cargo bench -p benches --bench checkpoint` (STREAM_TABLES, ROUNDS override).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Instant;

use testkit::Clusters;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

const SOURCES: &str = "CREATE EXTENSION pg_trickle;
     CREATE SCHEMA app;
     CREATE TABLE app.events (id int PRIMARY KEY, kind int, amount int, bucket int);
     INSERT INTO app.events SELECT g, g % 17, (g * 7919) % 1000, g % 13 FROM generate_series(1, 2000) g;
     CREATE TABLE app.users (id int PRIMARY KEY, region int);
     INSERT INTO app.users SELECT g, g % 5 FROM generate_series(1, 300) g;";

fn main() {
    let stream_tables = env_or("STREAM_TABLES", 1000);
    let rounds = env_or("ROUNDS", 5);
    // One restore is one transaction: recreating 1,000 stream tables (and dropping as many with `replace`) takes
    // more locks than the default max_locks_per_transaction (64 × connections) holds.
    let clusters =
        Clusters::start(2, &["pg_trickle.enabled=off", "max_locks_per_transaction=256"]).expect("start clusters");
    let mut a = clusters[0].connect("postgres").unwrap();
    let mut b = clusters[1].connect("postgres").unwrap();
    a.batch_execute(SOURCES).unwrap();
    b.batch_execute(SOURCES).unwrap();
    let started = Instant::now();
    // A third each: differential aggregates, full-refresh filters, stream tables over the aggregates.
    for i in 0..stream_tables / 3 {
        let agg = format!(
            "SELECT kind AS g, count(*) AS n, sum(amount) AS total FROM app.events WHERE amount > {i} AND bucket <> {} \
             GROUP BY kind",
            i % 13
        );
        a.execute(
            "SELECT pgtrickle.create_stream_table($1, $2, '1m', 'differential')",
            &[&format!("app.agg_{i}"), &agg],
        )
        .unwrap();
        let full = format!("SELECT id, region FROM app.users WHERE id % {} = {}", i % 9 + 2, i % 2);
        a.execute("SELECT pgtrickle.create_stream_table($1, $2, NULL, 'full')", &[&format!("app.users_{i}"), &full])
            .unwrap();
        let over = format!("SELECT g, n FROM app.agg_{i} WHERE n > {}", i % 50);
        a.execute("SELECT pgtrickle.create_stream_table($1, $2, '30s')", &[&format!("app.over_{i}"), &over]).unwrap();
    }
    let created: i64 = a.query_one("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[]).unwrap().get(0);
    println!("created {created} stream tables in {:.1} s", started.elapsed().as_secs_f64());

    let dir = tempfile::Builder::new().prefix("pgtrickle-checkpoint-bench-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut write_ms = Vec::new();
    let mut url = String::new();
    let mut bytes = 0i64;
    for round in 0..rounds {
        let target = format!("file://{}/round-{round}.jsonl.zst", dir.path().display());
        let start = Instant::now();
        let row = a.query_one("SELECT url, bytes FROM pgtrickle.checkpoint($1)", &[&target]).unwrap();
        write_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        (url, bytes) = (row.get(0), row.get(1));
    }
    let uncompressed = zstd::decode_all(&std::fs::read(url.trim_start_matches("file://")).unwrap()[..]).unwrap().len();

    // The peer: pg_dump of the catalog schema, custom (compressed) format.
    let dump = dir.path().join("pgtrickle.dump");
    let start = Instant::now();
    let output = Command::new(testkit::pg_bindir().join("pg_dump"))
        .args(["-h", "127.0.0.1", "-p", &clusters[0].port.to_string(), "-U", "postgres", "-Fc", "-n", "pgtrickle"])
        .arg("-f")
        .arg(&dump)
        .arg("postgres")
        .output()
        .expect("run pg_dump");
    assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    let dump_ms = start.elapsed().as_secs_f64() * 1000.0;
    let dump_bytes = std::fs::metadata(&dump).unwrap().len();

    // Restore on the fresh cluster, then validation alone (a second restore is refused after checking everything).
    let start = Instant::now();
    let restored: i64 =
        b.query_one("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint($1)", &[&url]).unwrap().get(0);
    let restore_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(restored, created);
    let mut validate_ms = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let refused = b.query_one("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint($1)", &[&url]);
        validate_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(refused.is_err(), "a database with stream tables must refuse without replace");
    }
    let start = Instant::now();
    b.query_one("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint($1, replace => true)", &[&url]).unwrap();
    let replace_ms = start.elapsed().as_secs_f64() * 1000.0;

    println!(
        "{}",
        serde_json::json!({
            "stream_tables": created,
            "checkpoint_bytes": bytes,
            "uncompressed_bytes": uncompressed,
            "checkpoint_write_ms_median": median(write_ms),
            "pg_dump_catalog_bytes": dump_bytes,
            "pg_dump_catalog_ms": dump_ms,
            "restore_ms": restore_ms,
            "validate_only_ms_median": median(validate_ms),
            "restore_replace_ms": replace_ms,
        })
    );
}
