//! Coordinator state snapshots to object storage (file://) and a new cluster bootstrapped from one; a damaged
//! snapshot is refused before anything is created.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use coordinator::api::*;
use shared_model::*;

#[test]
fn snapshot_to_object_storage_and_bootstrap_a_new_cluster() {
    let cluster = TestCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = cluster.client();
    rt.block_on(async {
        let mut fences = Vec::new();
        for (i, name) in ["cluster_a", "cluster_c"].into_iter().enumerate() {
            let r = RegisterCluster::new(ClusterName::parse(name).unwrap(), "x", SystemIdentifier(i as u64 + 1));
            fences.push(client.register_cluster(&r).await.unwrap().fence());
        }
        let stream = StreamId::parse("cluster_a/order_agg").unwrap();
        client
            .publish_stream(&PublishStream {
                stream: stream.clone(),
                columns: vec![ColumnDef::new("k", "int")],
                upstream: BTreeSet::new(),
                base_seq: 0,
                producer: None,
            })
            .await
            .unwrap();
        client
            .create_federated_table(&CreateFederatedTable {
                table: FederatedTableId::parse("cluster_c/dashboard").unwrap(),
                sources: vec![SourceUrl::parse("kafka://coordinator/cluster_a/order_agg").unwrap()],
                consistency: Consistency::Causal,
            })
            .await
            .unwrap();
        for seq in 1..=3 {
            let adv = FrontierAdvance {
                stream: stream.clone(),
                seq,
                kind: BatchKind::Delta,
                position: BrokerPosition { partition: 0, offset: seq as i64 },
            };
            let body = AdvanceFrontiers { producer: fences[0].clone(), advances: vec![adv] };
            client.advance_frontiers(&body).await.unwrap();
        }
    });
    let out_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/coordinator.snap", out_dir.path().display());
    let out = cluster.cli(&["snapshot", "--to", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A damaged copy is refused before any data directory is created.
    let snap_path = out_dir.path().join("coordinator.snap");
    let mut bytes = std::fs::read(&snap_path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    let damaged = out_dir.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes).unwrap();
    let data = out_dir.path().join("refused-node");
    let port = free_port();
    let out = Command::new(BIN)
        .args(["serve", "--id", "1", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--insecure-no-token", "--bootstrap-from", &format!("file://{}", damaged.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum") && stderr.contains("damaged.snap"), "{stderr}");
    assert!(!data.exists(), "a refused bootstrap created the data directory");

    // A new single-node cluster starts from the snapshot.
    let port = free_port();
    let data = out_dir.path().join("new-node");
    let mut child = Command::new(BIN)
        .args(["serve", "--id", "1", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--token", TOKEN, "--bootstrap-from", &url])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let init = loop {
        let out = Command::new(BIN)
            .args(["--endpoints", &endpoint, "--token", TOKEN, "--timeout-secs", "2", "init"])
            .output()
            .unwrap();
        if out.status.success() || started.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let started = Instant::now();
    let streams: Vec<StreamView> = loop {
        if let Some(body) = ureq_get(&format!("{endpoint}/v1/streams?consistency=stale")) {
            let s: Vec<StreamView> = serde_json::from_str(&body).unwrap();
            if !s.is_empty() {
                break s;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the bootstrap state never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].frontier.seq, 3, "the frontier survives the move to a new cluster");
    assert_eq!(streams[0].subscribers, vec![FederatedTableId::parse("cluster_c/dashboard").unwrap()]);
}
