//! TLS: a cluster serving HTTPS (admin API and Raft RPC between nodes) with a self-signed certificate; clients
//! that trust it work, plain HTTP and untrusting clients are refused.

mod common;

use common::*;
use coordinator::api::RegisterCluster;
use coordinator::client::{Client, ClientError, ClientOptions};
use shared_model::{ClusterName, SystemIdentifier};

#[test]
fn a_tls_cluster_replicates_and_serves_only_https() {
    let cluster = TestCluster::start_tls(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = cluster.client();
        let name = ClusterName::parse("cluster_tls").unwrap();
        client.register_cluster(&RegisterCluster::new(name.clone(), "x", SystemIdentifier(1))).await.unwrap();
        // Replicated over HTTPS to every node.
        for id in [1u64, 2, 3] {
            let clusters = cluster.node_client(id).clusters().await.unwrap();
            assert!(clusters.iter().any(|c| c.name == name), "node {id}");
        }
        // A client that does not trust the certificate is refused.
        let options = ClientOptions {
            token: Some(TOKEN.into()),
            deadline: std::time::Duration::from_secs(1),
            ..Default::default()
        };
        let untrusting = Client::new(&cluster.all_endpoints(), options).unwrap();
        let err = untrusting.clusters().await.unwrap_err();
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
    });
    // Plain HTTP to a TLS node gets no answer — from a node that is alive and listening: HTTPS answers just
    // before and just after, and the port accepts the plain connection (so "no answer" is the TLS refusal, not a
    // dead node).
    let alive = |what: &str| {
        let status = cluster.status(1).unwrap_or_else(|| panic!("node 1 does not answer HTTPS {what}"));
        assert_eq!(status.node_id, 1);
    };
    alive("before the plain HTTP request");
    let plain = cluster.nodes[&1].url().replace("https://", "http://");
    let addr: std::net::SocketAddr = cluster.nodes[&1].addr().parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok(),
        "node 1 does not accept connections"
    );
    assert!(ureq_get(&format!("{plain}/healthz")).is_none(), "plain HTTP was answered");
    alive("after the plain HTTP request");
    // The CLI with --ca-file works.
    let out = cluster.cli(&["clusters"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster_tls"));
}
