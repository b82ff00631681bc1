//! Checkpoints on real servers with pg_trickle preloaded: the scheduler writes one every
//! `pg_trickle.checkpoint_interval` into the database's folder under `pg_trickle.checkpoint_url`, each readable by
//! the codec with the stream tables in it, and prunes checkpoints past the retention, never other files; and
//! `s3://` against a real S3-compatible server (s3s-fs), for checkpoints and the coordinator's own snapshots.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared_model::checkpoint::{CheckpointReader, Item};
use testkit::broker::S3Server;
use testkit::coordinators::Coordinators;
use testkit::{wait_for, Clusters};

/// The extension, a source table and a stream table over it.
const READINGS: &str = "CREATE EXTENSION pg_trickle;
             CREATE TABLE readings (id int PRIMARY KEY, sensor text, value int);
             INSERT INTO readings SELECT g, 's' || (g % 4), g FROM generate_series(1, 100) g;
             SELECT pgtrickle.create_stream_table('per_sensor',
                 'SELECT sensor, count(*) AS n, sum(value) AS total FROM readings GROUP BY sensor', schedule => '1s');";

/// Checkpoint files (time-named) in `folder`, oldest first.
fn checkpoints_in(folder: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(folder).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    found.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("Z.jsonl.zst")));
    found.sort();
    found
}

#[test]
fn the_scheduler_writes_checkpoints_periodically_and_prunes_only_old_ones() {
    let base = tempfile::Builder::new().prefix("pgtrickle-checkpoints-").tempdir().unwrap();
    let folder = base.path().join("postgres");
    std::fs::create_dir_all(&folder).unwrap();
    for dir in [base.path(), folder.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let old = folder.join("2020-01-01T00:00:00.000Z.jsonl.zst");
    std::fs::write(&old, b"an old checkpoint").unwrap();
    let foreign = folder.join("README.txt");
    std::fs::write(&foreign, b"not a checkpoint").unwrap();

    let url = format!("pg_trickle.checkpoint_url=file://{}", base.path().display());
    let clusters = Clusters::start(
        1,
        &[
            "pg_trickle.scheduler_interval=100ms",
            "pg_trickle.checkpoint_interval=2",
            "pg_trickle.checkpoint_retention_days=1",
            &url,
        ],
    )
    .expect("start cluster");
    let cluster = &clusters[0];
    let mut client = cluster.connect("postgres").unwrap();
    client.batch_execute(READINGS).unwrap();

    // Two checkpoints by the scheduler, two seconds apart; the old one pruned by then.
    let written = wait_for(Duration::from_secs(40), || {
        let found = checkpoints_in(&folder);
        (found.len() >= 2 && !old.exists()).then_some(found)
    });
    let written = written.unwrap_or_else(|| {
        panic!(
            "no two periodic checkpoints in {}: {:?}; log:\n{}",
            folder.display(),
            checkpoints_in(&folder),
            cluster.log()
        )
    });
    assert!(foreign.exists(), "a file that is not a checkpoint was pruned");
    let newest = written.last().unwrap();
    let (header, items) = CheckpointReader::new(&std::fs::read(newest).unwrap()[..]).unwrap().read_all().unwrap();
    assert_eq!(header.database, "postgres");
    assert!(items.iter().any(|i| matches!(i, Item::StreamTable { name, .. } if name.name == "per_sensor")));

    // The SQL listing of the default prefix agrees, newest first.
    let listed: Vec<String> = client
        .query("SELECT url FROM pgtrickle.list_checkpoints()", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(listed.len() >= 2, "{listed:?}");
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, sorted, "not newest first");
    for url in &listed {
        let path = url.strip_prefix("file://").expect("a file URL");
        assert!(Path::new(path).starts_with(&folder) && Path::new(path).exists(), "{url}");
    }
}

#[test]
fn checkpoints_and_coordinator_snapshots_go_to_s3_and_restore_from_there() {
    let root = tempfile::Builder::new().prefix("pgtrickle-s3-").tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("checkpoints")).unwrap(); // the bucket
    let s3 = S3Server::start(root.path()).expect("start s3s-fs");
    let mut clusters = Clusters::start(1, &["pg_trickle.enabled=off"]).expect("start cluster");
    // Cloud credentials reach the server through its environment, never through a URL or a setting.
    clusters[0].stop().unwrap();
    for (key, value) in s3.env() {
        clusters[0].set_env(&key, &value);
    }
    clusters[0].start().unwrap();
    let mut client = clusters[0].connect("postgres").unwrap();
    client.batch_execute(READINGS).unwrap();
    client
        .batch_execute("SELECT pgtrickle.create_stream_table('busy', 'SELECT sensor FROM per_sensor WHERE n > 10', schedule => '1s')")
        .unwrap();
    let row =
        client.query_one("SELECT url, bytes FROM pgtrickle.checkpoint('s3://checkpoints/site_a/app')", &[]).unwrap();
    let (url, bytes): (String, i64) = (row.get(0), row.get(1));
    let name = url.strip_prefix("s3://checkpoints/site_a/app/").unwrap_or_else(|| panic!("{url}"));
    let on_disk = root.path().join("checkpoints/site_a/app").join(name);
    assert_eq!(std::fs::metadata(&on_disk).map(|m| m.len() as i64).ok(), Some(bytes), "{}", on_disk.display());
    let listed: i64 = client
        .query_one("SELECT count(*) FROM pgtrickle.list_checkpoints('s3://checkpoints/site_a/app')", &[])
        .unwrap()
        .get(0);
    assert_eq!(listed, 1);
    let restored: i64 = client
        .query_one("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint($1, replace => true)", &[&url])
        .unwrap()
        .get(0);
    assert_eq!(restored, 2);

    // The coordinator's state snapshot to the same server, in the same run.
    let coordinators = Coordinators::start(1).expect("start a coordinator");
    coordinators
        .cli_with_env(&["snapshot", "--to", "s3://checkpoints/coordinator/state.snap"], &s3.env())
        .expect("snapshot --to s3://");
    let snapshot = std::fs::metadata(root.path().join("checkpoints/coordinator/state.snap")).expect("the snapshot");
    assert!(snapshot.len() > 0);
}

/// The definitions of a cluster's stream tables, in a comparable form.
fn definitions(client: &mut postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%s.%s %s %s %s %s', pgt_schema, pgt_name, refresh_mode, status, \
             coalesce(schedule::text, 'manual'), defining_query) \
             FROM pgtrickle.pgt_stream_tables ORDER BY pgt_schema, pgt_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_dag_of_120_stream_tables_restores_on_a_fresh_cluster_and_each_equals_its_query() {
    let clusters = Clusters::start(2, &["pg_trickle.enabled=off"]).expect("start clusters");
    let sources = "CREATE EXTENSION pg_trickle;
         CREATE SCHEMA app;
         CREATE TABLE app.events (id int PRIMARY KEY, kind int, amount int, bucket int);
         INSERT INTO app.events SELECT g, g % 17, (g * 7919) % 1000, g % 13 FROM generate_series(1, 2000) g;
         CREATE TABLE app.users (id int PRIMARY KEY, region int);
         INSERT INTO app.users SELECT g, g % 5 FROM generate_series(1, 300) g;";
    let mut a = clusters[0].connect("postgres").unwrap();
    let mut b = clusters[1].connect("postgres").unwrap();
    a.batch_execute(sources).unwrap();
    b.batch_execute(sources).unwrap();
    // 40 differential aggregates, 40 full-refresh filters, 40 stream tables over the aggregates.
    let mut queries: Vec<(String, String)> = Vec::new();
    for i in 0..40 {
        let agg = format!(
            "SELECT kind AS g, count(*) AS n, sum(amount) AS total FROM app.events \
             WHERE amount > {i} AND bucket <> {} GROUP BY kind",
            i % 13
        );
        a.execute(
            "SELECT pgtrickle.create_stream_table($1, $2, '1m', 'differential')",
            &[&format!("app.agg_{i}"), &agg],
        )
        .unwrap();
        queries.push((format!("app.agg_{i}"), agg));
        let full = format!("SELECT id, region FROM app.users WHERE id % {} = {}", i % 9 + 2, i % 2);
        a.execute("SELECT pgtrickle.create_stream_table($1, $2, NULL, 'full')", &[&format!("app.users_{i}"), &full])
            .unwrap();
        queries.push((format!("app.users_{i}"), full));
        let over = format!("SELECT g, n FROM app.agg_{i} WHERE n > {}", i * 3);
        a.execute("SELECT pgtrickle.create_stream_table($1, $2, '30s')", &[&format!("app.over_{i}"), &over]).unwrap();
        queries.push((format!("app.over_{i}"), over));
    }
    a.batch_execute("SELECT pgtrickle.alter_stream_table('app.users_3', status => 'suspended')").unwrap();
    let dir = tempfile::Builder::new().prefix("pgtrickle-roundtrip-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let url: String = a
        .query_one(&format!("SELECT url FROM pgtrickle.checkpoint('file://{}')", dir.path().display()), &[])
        .unwrap()
        .get(0);

    let restored: i64 =
        b.query_one("SELECT stream_tables FROM pgtrickle.restore_from_checkpoint($1)", &[&url]).unwrap().get(0);
    assert_eq!(restored, 120);
    assert_eq!(definitions(&mut b), definitions(&mut a), "the definitions differ after the restore");
    let waiting: i64 =
        b.query_one("SELECT count(*) FROM pgtrickle.pgt_stream_tables WHERE needs_reinit", &[]).unwrap().get(0);
    assert_eq!(waiting, 120, "every restored stream table waits for REINITIALIZE");
    // Refreshed in creation order (each after what it reads), every one equals its query on B's data.
    let names: Vec<String> = b
        .query("SELECT format('%I.%I', pgt_schema, pgt_name) FROM pgtrickle.pgt_stream_tables ORDER BY pgt_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in &names {
        b.execute("SELECT pgtrickle.refresh_stream_table($1)", &[name]).unwrap();
    }
    for (name, query) in &queries {
        let columns = if name.contains("agg_") {
            "g, n, total"
        } else if name.contains("users_") {
            "id, region"
        } else {
            "g, n"
        };
        let differ: i64 = b
            .query_one(
                &format!(
                    "SELECT count(*) FROM ((SELECT {columns} FROM {name} EXCEPT ALL ({query})) \
                     UNION ALL (({query}) EXCEPT ALL SELECT {columns} FROM {name})) d"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(differ, 0, "{name} differs from its query after restore and refresh");
    }
}
