//! Three real nodes on 127.0.0.1 formed through the CLI: a write through any node is visible from every node;
//! the CLI's reads work; bad input gets typed 4xx answers and leaves the state unchanged.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use coordinator::api::*;
use shared_model::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn register(name: &str) -> RegisterCluster {
    let id = SystemIdentifier(name.bytes().map(u64::from).sum::<u64>() + 7_000_000_000_000_000_000);
    RegisterCluster::new(ClusterName::parse(name).unwrap(), format!("postgres://{name}"), id)
}

fn publish(id: &str) -> PublishStream {
    PublishStream {
        stream: StreamId::parse(id).unwrap(),
        columns: vec![ColumnDef::new("k", "bigint")],
        upstream: BTreeSet::new(),
        base_seq: 0,
        producer: None,
    }
}

#[test]
fn three_nodes_form_a_cluster_and_every_write_is_visible_everywhere() {
    let cluster = TestCluster::start(3);
    let members = cluster.cli(&["members", "--json"]);
    assert!(members.status.success(), "{}", String::from_utf8_lossy(&members.stderr));
    let members: Vec<MemberView> = serde_json::from_slice(&members.stdout).unwrap();
    assert_eq!(members.iter().filter(|m| m.voter).count(), 3);

    rt().block_on(async {
        // One write through each node.
        for (i, id) in [1u64, 2, 3].iter().enumerate() {
            let one = cluster.node_client(*id);
            let name = format!("cluster_{i}");
            let out = one.register_cluster(&register(&name)).await.unwrap();
            assert_eq!(out.applied.events.len(), 1);
        }
        // Every node shows all three, linearizable and (after apply) stale.
        for id in [1u64, 2, 3] {
            let clusters = cluster.node_client(id).clusters().await.unwrap();
            assert_eq!(clusters.len(), 3, "node {id}");
            let started = Instant::now();
            loop {
                let url = format!("{}/v1/clusters?consistency=stale", cluster.nodes[&id].url());
                let stale: Vec<ClusterView> = serde_json::from_str(&ureq_get(&url).unwrap()).unwrap();
                if stale.len() == 3 {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "node {id} never applied the writes");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let out = cluster.cli(&["clusters"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster_0") && text.contains("cluster_2"), "{text}");
    let status = cluster.cli(&["status"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).matches("Leader").count(), 1);
}

/// The state as JSON from every read endpoint, to prove a rejected request changed nothing.
async fn state_dump(client: &coordinator::client::Client) -> String {
    let clusters = serde_json::to_string(&client.clusters().await.unwrap()).unwrap();
    let streams = serde_json::to_string(&client.streams().await.unwrap()).unwrap();
    let tables = serde_json::to_string(&client.federated_tables().await.unwrap()).unwrap();
    format!("{clusters}\n{streams}\n{tables}")
}

fn raw(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> (u16, ApiError) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        url,
        "-H",
        "content-type: application/json",
        "--data-binary",
        "@-",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let error: ApiError = serde_json::from_str(body).unwrap_or_else(|e| panic!("not a typed error ({e}): {body}"));
    (code.parse().unwrap(), error)
}

const READ_TOKEN: &str = "read-only-token-42";

/// The HTTP status of a GET with an optional bearer token.
fn get_status(url: &str, token: Option<&str>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).trim().parse().unwrap()
}

#[test]
fn health_and_metrics_open_only_when_asked() {
    let cluster = TestCluster::start_with(1, &["--open-health"]);
    let base = cluster.nodes[&1].url();
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get_status(&format!("{base}{path}"), None), 200, "{path}");
    }
    assert_eq!(get_status(&format!("{base}/v1/clusters"), None), 401);
    assert_eq!(get_status(&format!("{base}/openapi.json"), None), 200, "the API description is public");
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let cluster = TestCluster::start_with(3, &["--read-token", READ_TOKEN]);
    let client = cluster.client();
    let base = cluster.nodes[&2].url(); // a follower or the leader: both must answer alike
    rt().block_on(async {
        let a = client.register_cluster(&register("cluster_a")).await.unwrap();
        let c = client.register_cluster(&register("cluster_c")).await.unwrap();
        // One message key per federation, handed out with every registration, never shown by a read.
        assert_eq!(a.message_key.len(), 64, "{}", a.message_key);
        assert!(a.message_key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a.message_key, c.message_key, "two registrations, two keys");
        let events = client.events(0, Duration::ZERO, 1000).await.unwrap();
        let shown = serde_json::to_string(&events).unwrap();
        assert!(shown.contains("MessageKeyIssued") && shown.contains("<redacted>"), "no redacted key event");
        assert!(!shown.contains(&a.message_key), "the watch API shows the message key");
        client.publish_stream(&publish("cluster_a/order_agg")).await.unwrap();
        let fence = serde_json::to_string(&a.fence()).unwrap();
        let mut stale = a.fence();
        stale.producer_epoch -= 1;
        let stale = serde_json::to_string(&stale).unwrap();
        let advance = |fence: &str, seq: u64| {
            format!(r#"{{"producer":{fence},"advances":[{{"stream":"cluster_a/order_agg","seq":{seq},"kind":"Delta","position":{{"partition":0,"offset":1}}}}]}}"#).into_bytes()
        };
        client.publish_stream(&publish("cluster_c/dashboard")).await.unwrap();
        let sources = vec![SourceUrl::parse("kafka://coordinator/cluster_a/order_agg").unwrap()];
        client
            .create_federated_table(&CreateFederatedTable {
                table: FederatedTableId::parse("cluster_c/dashboard").unwrap(),
                sources,
                consistency: Consistency::Causal,
            })
            .await
            .unwrap();
        let before = state_dump(&client).await;

        // (method, url, token, body, expected status, expected code)
        type Case<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16, &'a str);
        let cases: Vec<Case> = vec![
            ("POST", format!("{base}/v1/streams"), Some(TOKEN), b"{\"stream\": ".to_vec(), 400, "malformed_json"),
            ("POST", format!("{base}/v1/streams"), Some(TOKEN), b"[1,2]".to_vec(), 422, "invalid_argument"),
            ("POST", format!("{base}/v1/streams"), Some(TOKEN), br#"{"stream":"nope/x","columns":[{"name":"k","type_name":"int"}]}"#.to_vec(), 404, "unknown_cluster"),
            // A crafted type name never reaches the log (nor a consumer's DDL).
            ("POST", format!("{base}/v1/streams"), Some(TOKEN), br#"{"stream":"cluster_a/x","columns":[{"name":"k","type_name":"int); DROP TABLE pgtrickle.pgt_federation; --"}]}"#.to_vec(), 422, "invalid_argument"),
            ("POST", format!("{base}/v1/streams"), Some(TOKEN), br#"{"stream":"cluster_a/x","columns":[{"name":"k","type_name":"int, evil text"}]}"#.to_vec(), 422, "invalid_argument"),
            ("POST", format!("{base}/v1/federated-tables"), Some(TOKEN), br#"{"table":"cluster_c/t2","sources":["kafka://coordinator/cluster_a/missing"]}"#.to_vec(), 404, "unknown_stream"),
            ("POST", format!("{base}/v1/federated-tables"), Some(TOKEN), br#"{"table":"cluster_c/t2","sources":["gopher://coordinator/cluster_a/order_agg"]}"#.to_vec(), 422, "invalid_argument"),
            // order_agg reading a mirror of the dashboard that reads order_agg: a cycle.
            ("POST", format!("{base}/v1/federated-tables"), Some(TOKEN), br#"{"table":"cluster_a/order_agg","sources":["kafka://coordinator/cluster_c/dashboard"]}"#.to_vec(), 409, "cycle_detected"),
            ("POST", format!("{base}/v1/frontiers"), Some(TOKEN), advance(&fence, 5), 409, "frontier_gap"),
            ("POST", format!("{base}/v1/frontiers"), Some(TOKEN), advance(&stale, 1), 409, "stale_producer_epoch"),
            ("POST", format!("{base}/v1/frontiers"), Some(TOKEN), br#"{"advances":[{"stream":"cluster_a/order_agg","seq":1,"kind":"Delta","position":{"partition":0,"offset":1}}]}"#.to_vec(), 422, "invalid_argument"),
            ("POST", format!("{base}/v1/clusters"), Some(TOKEN), br#"{"name":"cluster_a","endpoint":"x","system_identifier":"12345"}"#.to_vec(), 409, "cluster_name_taken"),
            ("POST", format!("{base}/v1/clusters"), Some(TOKEN), br#"{"name":"cluster_q","endpoint":"x","system_identifier":-5}"#.to_vec(), 422, "invalid_argument"),
            ("POST", format!("{base}/v1/frontiers"), Some(TOKEN), vec![b' '; 2 * 1024 * 1024], 413, "payload_too_large"),
            ("POST", format!("{base}/v1/clusters"), None, br#"{"name":"cluster_z","endpoint":"x"}"#.to_vec(), 401, "unauthorized"),
            ("POST", format!("{base}/v1/clusters"), Some("wrong"), br#"{"name":"cluster_z","endpoint":"x"}"#.to_vec(), 401, "unauthorized"),
            ("DELETE", format!("{base}/v1/streams/cluster_a/public.order_agg"), Some(TOKEN), vec![], 409, "has_dependents"),
            ("DELETE", format!("{base}/v1/streams/cluster_a/public.order_agg?cascade=maybe"), Some(TOKEN), vec![], 400, "bad_query"),
            ("GET", format!("{base}/v1/streams/cluster_a/public.nope"), Some(TOKEN), vec![], 404, "not_found"),
            ("GET", format!("{base}/v1/no-such-route"), Some(TOKEN), vec![], 404, "not_found"),
            // Reads need a token too; the read-only token reads but cannot write.
            ("GET", format!("{base}/v1/clusters"), None, vec![], 401, "unauthorized"),
            ("GET", format!("{base}/v1/streams"), Some("wrong"), vec![], 401, "unauthorized"),
            ("GET", format!("{base}/metrics"), None, vec![], 401, "unauthorized"),
            ("POST", format!("{base}/v1/clusters"), Some(READ_TOKEN), br#"{"name":"cluster_z","endpoint":"x","system_identifier":"1"}"#.to_vec(), 403, "forbidden"),
            ("PATCH", format!("{base}/v1/streams"), Some(TOKEN), vec![], 405, "method_not_allowed"),
        ];
        assert_eq!(get_status(&format!("{base}/v1/clusters"), Some(READ_TOKEN)), 200, "the read token reads");
        assert_eq!(get_status(&format!("{base}/readyz"), Some(READ_TOKEN)), 200);
        for (method, url, token, body, status, code) in cases {
            let (got_status, error) = raw(method, &url, token, &body);
            assert_eq!((got_status, error.code.as_str()), (status, code), "{method} {url}: {error:?}");
            assert!(!error.message.is_empty());
        }
        // The cycle error names the path.
        let (_, cycle) = raw("POST", &format!("{base}/v1/federated-tables"), Some(TOKEN), br#"{"table":"cluster_a/order_agg","sources":["kafka://coordinator/cluster_c/dashboard"]}"#);
        assert!(cycle.message.contains(" -> ") && cycle.hint.is_some(), "{cycle:?}");
        assert_eq!(state_dump(&client).await, before, "a rejected request changed the state");
    });
    // The CLI reports errors in one line with a non-zero status.
    let out = cluster.cli(&["frontier", "cluster_a/missing"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = std::process::Command::new(BIN)
        .args(["--endpoints", "http://127.0.0.1:1", "--timeout-secs", "1", "clusters"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `serve` with stderr going to a file (not a terminal) until it logs that it serves, and returns the log.
fn serve_log(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--id", "1", "--listen", &format!("127.0.0.1:{}", free_port()), "--insecure-no-token"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("coordinator node serving") || started.elapsed() > Duration::from_secs(10) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("coordinator node serving"), "{log}");
    log
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_come_as_json_lines_when_asked() {
    let text = serve_log(&[]);
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a log file: {text:?}");
    let json = serve_log(&["--log-format", "json"]);
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value["level"].is_string() && value["fields"]["message"].is_string(), "{line}");
    }
    assert!(json.contains("\"message\":\"coordinator node serving\""), "{json}");
}

#[test]
fn contradicting_raft_settings_stop_the_node_at_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--id", "1", "--listen", &format!("127.0.0.1:{}", free_port()), "--insecure-no-token"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--body-limit", "1048576", "--snapshot-chunk-bytes", "3145728"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("raft.snapshot_chunk_bytes (3145728) exceeds body_limit (1048576)")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "a refused start created the data directory");
}

fn wait_snapshot_at_least(cluster: &TestCluster, index: u64, within: Duration) -> u64 {
    let started = Instant::now();
    loop {
        let at = cluster.status(1).and_then(|s| s.snapshot_index).unwrap_or(0);
        if at >= index {
            return at;
        }
        assert!(started.elapsed() < within, "no snapshot covering {index} within {within:?} (at {at})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn snapshots_are_taken_by_log_size_and_by_age_not_only_by_entry_count() {
    let rt = rt();
    // By size: entry count never triggers (a million), 64 KiB of log does.
    let cluster = TestCluster::start_with(
        1,
        &[
            "--snapshot-logs-since-last",
            "1000000",
            "--snapshot-bytes-since-last",
            "65536",
            "--snapshot-max-age-secs",
            "0",
        ],
    );
    let client = cluster.client();
    rt.block_on(client.register_cluster(&register("sizes"))).unwrap();
    let mut last = 0;
    for i in 0..40 {
        last = rt.block_on(client.publish_stream(&publish(&format!("sizes/public.t{i}")))).unwrap().index;
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.status(1).unwrap().snapshot_index.unwrap_or(0), 0, "a snapshot before 64 KiB of log");
    // Each publish of 200 columns is a few KiB of log.
    for i in 0..40 {
        let mut p = publish(&format!("sizes/public.wide{i}"));
        p.columns = (0..200).map(|c| ColumnDef::new(&format!("column_number_{c}"), "bigint")).collect();
        last = rt.block_on(client.publish_stream(&p)).unwrap().index;
    }
    let at = wait_snapshot_at_least(&cluster, 1, Duration::from_secs(5));
    println!("by size: a snapshot at {at} (last write {last})");
    drop(cluster);

    // By age: a few writes, never enough entries or bytes, and the snapshot comes after two seconds.
    let cluster =
        TestCluster::start_with(1, &["--snapshot-logs-since-last", "1000000", "--snapshot-max-age-secs", "2"]);
    let client = cluster.client();
    let index = rt.block_on(client.register_cluster(&register("ages"))).unwrap().applied.index;
    let started = Instant::now();
    let at = wait_snapshot_at_least(&cluster, index, Duration::from_secs(6));
    println!("by age: a snapshot at {at} after {} ms", started.elapsed().as_millis());
}

/// A GET through reqwest with the token and an optional If-None-Match: status, headers and body.
async fn get_raw(url: &str, etag: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(url).bearer_auth(TOKEN);
    if let Some(tag) = etag {
        req = req.header("if-none-match", tag);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[test]
fn lists_page_and_filter_while_writes_continue_and_unchanged_reads_cost_a_304() {
    let cluster = TestCluster::start(3);
    let rt = rt();
    let client = cluster.client();
    let mut expected = BTreeSet::new();
    rt.block_on(async {
        for name in ["ant", "bee", "cow"] {
            client.register_cluster(&register(name)).await.unwrap();
            for i in 0..40 {
                let id = format!("{name}/public.t{i:02}");
                client.publish_stream(&publish(&id)).await.unwrap();
                expected.insert(id);
            }
        }
    });
    // A writer publishes more streams of `bee` (they sort between the listed ones) while the pages are read.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = cluster.client_as("writer");
        let stop = stop.clone();
        rt.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.publish_stream(&publish(&format!("bee/public.t{:02}_new{i}", i % 40))).await.unwrap();
                i += 1;
            }
            i
        })
    };
    // Pages of 7 through a follower (the reads are forwarded to the leader, headers and all).
    let leader = cluster.wait_leader(Duration::from_secs(5));
    let follower = cluster.nodes.values().find(|n| n.id != leader).unwrap().url();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &after {
            Some(a) => format!("{follower}/v1/frontiers?limit=7&after={a}"),
            None => format!("{follower}/v1/frontiers?limit=7"),
        };
        let (status, headers, body) = rt.block_on(get_raw(&url, None));
        assert_eq!(status, 200, "{body}");
        let page: Vec<FrontierView> = serde_json::from_str(&body).unwrap();
        assert!(page.len() <= 7);
        seen.extend(page.iter().map(|f| f.stream.to_string()));
        pages += 1;
        match headers.get("x-pgtrickle-next-after") {
            Some(next) => {
                let link = headers.get("link").unwrap().to_str().unwrap();
                assert!(link.contains("limit=7") && link.ends_with("rel=\"next\""), "{link}");
                after = Some(next.to_str().unwrap().to_string());
            }
            None => break,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = rt.block_on(writer).unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an item was listed twice");
    assert!(expected.is_subset(&unique), "an item that existed throughout was not listed");
    println!("{pages} pages, {} items ({} written during the listing)", seen.len(), written);

    // The cluster filter keeps one cluster's items, paged by the client library as well.
    let cows: Vec<StreamView> = rt.block_on(client.list_all("/v1/streams", Some("cow"))).unwrap();
    assert_eq!(cows.len(), 40);
    assert!(cows.iter().all(|s| s.stream.to_string().starts_with("cow/")));
    let (one, next) = rt.block_on(client.list_page::<ClusterView>("/v1/clusters", None, Some("ant"), 1)).unwrap();
    assert_eq!((one[0].name.to_string(), next.as_deref()), ("bee".to_string(), Some("bee")));
    let all = rt.block_on(client.frontiers()).unwrap();
    assert_eq!(all.len(), 120 + written);

    // Conditional reads: an unchanged state answers 304 with no body, a write changes the tag.
    let url = format!("{}/v1/clusters", cluster.nodes[&leader].url());
    let (status, headers, _) = rt.block_on(get_raw(&url, None));
    assert_eq!(status, 200);
    let tag = headers.get("etag").unwrap().to_str().unwrap().to_string();
    let (status, headers, body) = rt.block_on(get_raw(&url, Some(&tag)));
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(headers.get("etag").unwrap().to_str().unwrap(), tag);
    let (status, _, _) = rt.block_on(get_raw(&format!("{follower}/v1/clusters"), Some(&tag)));
    assert_eq!(status, 304, "the same version has the same tag through a follower");
    rt.block_on(client.register_cluster(&register("dog"))).unwrap();
    let (status, headers, body) = rt.block_on(get_raw(&url, Some(&tag)));
    assert_eq!(status, 200, "{body}");
    assert_ne!(headers.get("etag").unwrap().to_str().unwrap(), tag);

    // Bad paging input gets typed errors.
    let (status, _, body) = rt.block_on(get_raw(&format!("{url}?limit=0"), None));
    assert!(status == 422 && body.contains("limit 0 is out of range"), "{status} {body}");
    let (status, _, body) = rt.block_on(get_raw(&format!("{url}?cluster=Not%20A%20Name"), None));
    assert_eq!(status, 422, "{body}");
}

fn wakeups_metric(cluster: &TestCluster, id: u64) -> u64 {
    let text = ureq_get(&format!("{}/metrics", cluster.nodes[&id].url())).unwrap();
    text.lines().find_map(|l| l.strip_prefix("pgtrickle_watch_wakeups_total ")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_stream_long_poll_sleeps_through_other_clusters_and_wakes_for_its_own() {
    let cluster = TestCluster::start(1);
    let rt = rt();
    let client = cluster.client();
    let (ant, bee) = rt.block_on(async {
        let ant = client.register_cluster(&register("ant")).await.unwrap().fence();
        let bee = client.register_cluster(&register("bee")).await.unwrap().fence();
        client.publish_stream(&publish("ant/public.a")).await.unwrap();
        client.publish_stream(&publish("bee/public.b")).await.unwrap();
        (ant, bee)
    });
    let advance = |fence: &ProducerFence, stream: &str, seq: u64| AdvanceFrontiers {
        producer: fence.clone(),
        advances: vec![FrontierAdvance {
            stream: StreamId::parse(stream).unwrap(),
            seq,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: seq as i64 },
        }],
    };
    let stream_a = StreamId::parse("ant/public.a").unwrap();
    let poller = {
        let client = cluster.client_as("consumer");
        let stream_a = stream_a.clone();
        rt.spawn(async move {
            let started = Instant::now();
            let view = client.frontier_history(&stream_a, 0, Duration::from_secs(20)).await.unwrap();
            (view, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = wakeups_metric(&cluster, 1);
    rt.block_on(async {
        for seq in 1..=30 {
            client.advance_frontiers(&advance(&bee, "bee/public.b", seq)).await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let during_bee = wakeups_metric(&cluster, 1) - before;
    assert!(!poller.is_finished(), "the long-poll answered without news of its stream");
    assert!(during_bee <= 2, "30 advances of another cluster woke the long-poll {during_bee} times");
    let sent = Instant::now();
    rt.block_on(client.advance_frontiers(&advance(&ant, "ant/public.a", 1))).unwrap();
    let (view, _) = rt.block_on(poller).unwrap();
    println!(
        "woken {} ms after its stream advanced; {during_bee} wake-ups during 30 other advances",
        sent.elapsed().as_millis()
    );
    assert_eq!(view.points.last().map(|p| p.seq), Some(1));
    assert!(sent.elapsed() < Duration::from_secs(2));
}

#[test]
fn the_event_stream_sends_the_backlog_then_every_new_record_once_in_order() {
    use futures::StreamExt;
    let cluster = TestCluster::start(3);
    let rt = rt();
    let client = cluster.client();
    let fence = rt.block_on(async {
        let fence = client.register_cluster(&register("ant")).await.unwrap().fence();
        client.publish_stream(&publish("ant/public.a")).await.unwrap();
        fence
    });
    let leader = cluster.wait_leader(Duration::from_secs(5));
    let follower = cluster.nodes.values().find(|n| n.id != leader).unwrap().url();
    let (tx, rx) = std::sync::mpsc::channel::<EventRecord>();
    let reader = rt.spawn(async move {
        let resp =
            reqwest::Client::new().get(format!("{follower}/v1/events/stream")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let mut body = resp.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk.unwrap());
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.len() > 1 {
                    let record: EventRecord = serde_json::from_slice(&line).expect("an EventRecord line");
                    if tx.send(record).is_err() {
                        return;
                    }
                }
            }
        }
    });
    // Concurrent writers, so that entries batch several records.
    let last = rt.block_on(async {
        let calls = (1..=40u64).map(|seq| {
            let client = cluster.client_as(&format!("w{seq}"));
            let body = AdvanceFrontiers {
                producer: fence.clone(),
                advances: vec![FrontierAdvance {
                    stream: StreamId::parse("ant/public.a").unwrap(),
                    seq,
                    kind: BatchKind::Delta,
                    position: BrokerPosition { partition: 0, offset: seq as i64 },
                }],
            };
            async move {
                // Seqs must come in order: each waits for its turn by retrying until its predecessor landed.
                loop {
                    match client.advance_frontiers(&body).await {
                        Ok(a) => return a.index,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        });
        futures::future::join_all(calls).await.into_iter().max().unwrap()
    });
    let mut seen: Vec<EventRecord> = Vec::new();
    let started = Instant::now();
    while seen.last().is_none_or(|r| r.index < last) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stream stopped at {:?}",
            seen.last().map(|r| r.index)
        );
        if let Ok(r) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(r);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(r) = rx.try_recv() {
        seen.push(r);
    }
    reader.abort();
    // Every entry from the first, each record once, in log order; positions number the records of an entry.
    let mut previous: Option<(u64, u32)> = None;
    for r in &seen {
        let ok = match previous {
            None => r.position == 0,
            Some((i, p)) if r.index == i => r.position == p + 1,
            Some((i, _)) => r.index == i + 1 && r.position == 0,
        };
        assert!(ok, "record ({}, {}) after {previous:?}", r.index, r.position);
        previous = Some((r.index, r.position));
    }
    let advanced = seen.iter().flat_map(|r| &r.events).filter(|e| e.kind() == "FrontierAdvanced").count();
    println!("{} records up to index {last}, {advanced} advances", seen.len());
    assert_eq!(advanced, 40);
}
