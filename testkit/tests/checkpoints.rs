//! Periodic checkpoints on a real server with pg_trickle preloaded: the scheduler writes one every
//! `pg_trickle.checkpoint_interval` into the database's folder under `pg_trickle.checkpoint_url`, each readable by
//! the codec with the stream tables in it, and prunes checkpoints past the retention, never other files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared_model::checkpoint::{CheckpointReader, Item};
use testkit::{wait_for, Clusters};

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
    client
        .batch_execute(
            "CREATE EXTENSION pg_trickle;
             CREATE TABLE readings (id int PRIMARY KEY, sensor text, value int);
             INSERT INTO readings SELECT g, 's' || (g % 4), g FROM generate_series(1, 100) g;
             SELECT pgtrickle.create_stream_table('per_sensor',
                 'SELECT sensor, count(*) AS n, sum(value) AS total FROM readings GROUP BY sensor', schedule => '1s');",
        )
        .unwrap();

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
