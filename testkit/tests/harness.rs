//! The harness itself: independent clusters, preloaded extension, clean teardown.

use testkit::Clusters;

#[test]
fn three_independent_clusters_with_the_extension_preloaded() {
    let clusters = Clusters::start(3, &[]).expect("start clusters");
    let base = clusters.base_dir().to_path_buf();
    let mut system_ids = Vec::new();
    for cluster in &clusters.clusters {
        let mut client = cluster.connect("postgres").expect("connect");
        let preload: String = client.query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
        assert_eq!(preload, "pg_trickle", "cluster {}", cluster.name);
        client.batch_execute("CREATE EXTENSION pg_trickle").expect("create extension");
        let id: i64 = client.query_one("SELECT system_identifier FROM pg_control_system()", &[]).unwrap().get(0);
        system_ids.push(id);
        // A table created on one cluster does not exist on the others.
        client.batch_execute(&format!("CREATE TABLE only_on_{} (x int)", cluster.name)).unwrap();
    }
    system_ids.sort();
    system_ids.dedup();
    assert_eq!(system_ids.len(), 3, "three distinct clusters");
    let mut b = clusters[1].connect("postgres").unwrap();
    assert!(b
        .query_opt("SELECT to_regclass('only_on_a')::text", &[])
        .unwrap()
        .unwrap()
        .get::<_, Option<String>>(0)
        .is_none());
    drop(b);
    drop(clusters);
    assert!(!base.exists(), "teardown removes the clusters' files");
}
