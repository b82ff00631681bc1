//! The coordinator at a federation's size (`benches/scale.sh`): three `pgtrickle-coordinator` nodes on loopback,
//! CLUSTERS × STREAMS published streams, publishers advancing all streams of a cluster per request. Prints one JSON
//! line per measurement:
//!
//! - `publish`: registrations and publishes per second (64 concurrent callers);
//! - `advance`: batched frontier advances per second; resident memory per node and per stream;
//! - `snapshot`: size of the state snapshot and the time to export it;
//! - `follower_catch_up`: a follower killed with SIGKILL, down for DOWN seconds while the load runs, restarted:
//!   time until it has applied what the leader had when it came back;
//! - `new_member`: a fifth process added as a learner while the load runs: time until it has caught up;
//! - `list_page`: latency of `GET /v1/frontiers?limit=1000` pages, and of the whole list in one answer;
//! - `watchers`: notification delay (write sent → long-poll answered) with N concurrent watchers of `/v1/events`
//!   and with N consumers long-polling their own stream's frontier history.
//!
//! The nodes log at `warn` to `DIR/nN.log`; `SCALE_NODE_LOG` sets another filter (e.g. `warn,coordinator=info`),
//! and `SCALE_NODE_ARGS` adds `serve` flags (e.g. `--heartbeat-ms 100`) to compare settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::procs::{free_port, kill, percentile, raise_fd_limit, rss_mb, ScaleShape};
use clap::Parser;
use coordinator::api::{AdvanceFrontiers, EventsPage, FrontierHistoryView, PublishStream, RegisterCluster, StatusView};
use coordinator::client::{Client, ClientError, ClientOptions};
use futures::StreamExt;
use serde_json::json;
use shared_model::{
    BatchKind, BrokerPosition, ClusterName, ColumnDef, FrontierAdvance, ProducerFence, StreamId, SystemIdentifier,
};

#[derive(Parser)]
/// The coordinator at a federation's size (one JSON line per measurement).
struct Args {
    /// The coordinator binary (a release build).
    #[arg(long)]
    bin: PathBuf,
    #[command(flatten)]
    shape: ScaleShape,
    /// Where the nodes' data directories go.
    #[arg(long)]
    dir: PathBuf,
}

impl std::ops::Deref for Args {
    type Target = ScaleShape;
    fn deref(&self) -> &ScaleShape {
        &self.shape
    }
}

const TOKEN: &str = "scale-bench";

struct Node {
    id: u64,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn spawn(bin: &Path, node: &mut Node, peers: &str) {
    let log = std::fs::File::create(node.dir.with_extension("log")).unwrap();
    let child = Command::new(bin)
        .args(["serve", "--id", &node.id.to_string(), "--listen", &format!("127.0.0.1:{}", node.port)])
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["--peers", peers, "--token", TOKEN])
        .args(std::env::var("SCALE_NODE_ARGS").unwrap_or_default().split_whitespace())
        .env("RUST_LOG", std::env::var("SCALE_NODE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    node.child = Some(child);
    while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn client(endpoints: &str, name: &str) -> Client {
    let options = ClientOptions {
        token: Some(TOKEN.into()),
        client_id: name.into(),
        deadline: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(30),
        ca_pem: None,
    };
    Client::new(endpoints, options).unwrap()
}

async fn status(http: &reqwest::Client, node: &Node) -> Option<StatusView> {
    let resp = http.get(format!("{}/v1/admin/status", node.url())).bearer_auth(TOKEN).send().await.ok()?;
    resp.json().await.ok()
}

async fn applied(http: &reqwest::Client, node: &Node) -> u64 {
    status(http, node).await.and_then(|s| s.applied_index).unwrap_or(0)
}

async fn leader(http: &reqwest::Client, nodes: &[Node]) -> usize {
    loop {
        for (i, n) in nodes.iter().enumerate().filter(|(_, n)| n.child.is_some()) {
            if status(http, n).await.is_some_and(|s| s.leader == Some(s.node_id)) {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stream(c: usize, s: usize) -> StreamId {
    StreamId::parse(&format!("site{c:04}/public.t{s:03}")).unwrap()
}

/// Batch `seq` of every stream of cluster `c`, in one request (how publishers batch their advances).
fn cluster_advance(fence: &ProducerFence, c: usize, streams: usize, seq: u64) -> AdvanceFrontiers {
    AdvanceFrontiers {
        producer: fence.clone(),
        advances: (0..streams)
            .map(|s| FrontierAdvance {
                stream: stream(c, s),
                seq,
                kind: BatchKind::Delta,
                position: BrokerPosition { partition: 0, offset: seq as i64 },
            })
            .collect(),
    }
}

/// Publishers: each owns the clusters `w, w + writers, …` and advances every stream of one of them per request.
fn start_load(
    endpoints: &str,
    args: &Args,
    fences: Arc<Vec<ProducerFence>>,
    seqs: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    advances: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..args.writers)
        .map(|w| {
            let client = client(endpoints, &format!("writer{w}"));
            let (fences, seqs, stop, advances) = (fences.clone(), seqs.clone(), stop.clone(), advances.clone());
            let (clusters, streams, writers) = (args.clusters, args.streams, args.writers);
            tokio::spawn(async move {
                let mine: Vec<usize> = (w..clusters).step_by(writers).collect();
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = mine[turn % mine.len()];
                    turn += 1;
                    let seq = seqs[c].load(Ordering::SeqCst) + 1;
                    let body = cluster_advance(&fences[c], c, streams, seq);
                    match client.advance_frontiers(&body).await {
                        Ok(_) => {
                            seqs[c].store(seq, Ordering::SeqCst);
                            advances.fetch_add(streams as u64, Ordering::Relaxed);
                        }
                        Err(ClientError::Unavailable { .. }) => {}
                        Err(e) => panic!("advance: {e}"),
                    }
                }
            })
        })
        .collect()
}

/// Waits until `node` has applied what the leader had applied when the wait began.
async fn catch_up(http: &reqwest::Client, nodes: &[Node], node: usize) -> Duration {
    let started = Instant::now();
    let target = applied(http, &nodes[leader(http, nodes).await]).await;
    while applied(http, &nodes[node]).await < target {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// `n` event watchers long-polling from the tip, then writes one at a time: the delay from sending a write to each
/// watcher's answer.
async fn event_watchers(
    url: &str,
    endpoints: &str,
    n: usize,
    fence: &ProducerFence,
    seq: &AtomicU64,
) -> serde_json::Value {
    let http = reqwest::Client::builder().pool_max_idle_per_host(n + 16).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let stop = Arc::new(AtomicBool::new(false));
    let tip = Arc::new(AtomicU64::new(applied_of(&http, url).await));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, tx, stop, tip, url) = (http.clone(), tx.clone(), stop.clone(), tip.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut after = tip.load(Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                let q = format!("{url}/v1/events?after={after}&wait_ms=20000&limit=100&consistency=stale");
                let Ok(resp) = http.get(&q).bearer_auth(TOKEN).send().await else { continue };
                let Ok(page) = resp.json::<EventsPage>().await else { continue };
                if let Some(last) = page.records.last() {
                    after = last.index;
                    let _ = tx.send(Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer = client(endpoints, "probe");
    let mut delays = Vec::new();
    let mut write_ms = Vec::new();
    for _ in 0..10 {
        while rx.try_recv().is_ok() {}
        let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = Instant::now();
        writer.advance_frontiers(&probe_advance(fence, s)).await.unwrap();
        write_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < n && Instant::now() < deadline {
            if let Ok(Some(at)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                delays.push((at - sent).as_secs_f64() * 1000.0);
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let answered = delays.len();
    json!({"measure": "watchers", "kind": "events", "watchers": n, "notifications": answered,
           "expected": n * 10, "p50_ms": percentile(delays.clone(), 0.5), "p99_ms": percentile(delays, 0.99),
           "write_p50_ms": percentile(write_ms, 0.5)})
}

/// `n` watchers each holding one `/v1/events/stream` response open; the delay from sending a write to each
/// watcher reading a line of that entry.
async fn stream_watchers(
    url: &str,
    endpoints: &str,
    n: usize,
    fence: &ProducerFence,
    seq: &AtomicU64,
) -> serde_json::Value {
    let http = reqwest::Client::builder().pool_max_idle_per_host(n + 16).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let tip = applied_of(&http, url).await;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, tx, url) = (http.clone(), tx.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let Ok(resp) = http.get(format!("{url}/v1/events/stream?after={tip}")).bearer_auth(TOKEN).send().await
            else {
                return;
            };
            let mut body = resp.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                // Only the arrival time matters: the probe's entry is the only one written meanwhile.
                if chunk.len() > 1 {
                    let _ = tx.send((0, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer = client(endpoints, "probe-stream");
    let mut delays = Vec::new();
    for _ in 0..10 {
        while rx.try_recv().is_ok() {}
        let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = Instant::now();
        writer.advance_frontiers(&probe_advance(fence, s)).await.unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < n && Instant::now() < deadline {
            if let Ok(Some((_, at))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                delays.push((at - sent).as_secs_f64() * 1000.0);
                got += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for t in tasks {
        t.abort();
    }
    json!({"measure": "watchers", "kind": "events_stream", "watchers": n, "notifications": delays.len(),
           "expected": n * 10, "p50_ms": percentile(delays.clone(), 0.5), "p99_ms": percentile(delays, 0.99)})
}

fn probe_advance(fence: &ProducerFence, seq: u64) -> AdvanceFrontiers {
    AdvanceFrontiers {
        producer: fence.clone(),
        advances: vec![FrontierAdvance {
            stream: StreamId::parse("probe/public.p").unwrap(),
            seq,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: seq as i64 },
        }],
    }
}

async fn applied_of(http: &reqwest::Client, url: &str) -> u64 {
    let resp = http.get(format!("{url}/v1/admin/status")).bearer_auth(TOKEN).send().await.unwrap();
    resp.json::<StatusView>().await.unwrap().applied_index.unwrap_or(0)
}

/// `n` consumers, each long-polling its own stream's history; the probe advances one of them at a time: the delay
/// until that consumer's answer.
async fn history_watchers(
    url: &str,
    endpoints: &str,
    args: &Args,
    n: usize,
    fences: &[ProducerFence],
    seqs: &[AtomicU64],
) -> serde_json::Value {
    let http = reqwest::Client::builder().pool_max_idle_per_host(n + 16).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, s) = (i % args.clusters, (i / args.clusters) % args.streams);
        let (http, tx, url) = (http.clone(), tx.clone(), url.to_string());
        let mut after = seqs[c].load(Ordering::SeqCst);
        tasks.push(tokio::spawn(async move {
            let id = stream(c, s).to_string();
            let (cluster, name) = id.split_once('/').unwrap();
            loop {
                let q = format!(
                    "{url}/v1/frontiers/{cluster}/{name}/history?after_seq={after}&wait_ms=20000&consistency=stale"
                );
                let Ok(resp) = http.get(&q).bearer_auth(TOKEN).send().await else { continue };
                let Ok(view) = resp.json::<FrontierHistoryView>().await else { continue };
                if let Some(p) = view.points.last().filter(|p| p.seq > after) {
                    after = p.seq;
                    let _ = tx.send((i, Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer = client(endpoints, "probe-history");
    let mut delays = Vec::new();
    for round in 0..20 {
        let i = (round * 7919) % n;
        let c = i % args.clusters;
        let seq = seqs[c].load(Ordering::SeqCst) + 1;
        let body = cluster_advance(&fences[c], c, args.streams, seq);
        let sent = Instant::now();
        writer.advance_frontiers(&body).await.unwrap();
        seqs[c].store(seq, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((who, at))) if who == i => {
                    delays.push((at - sent).as_secs_f64() * 1000.0);
                    break;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    json!({"measure": "watchers", "kind": "frontier_history", "watchers": n, "notifications": delays.len(),
           "expected": 20, "p50_ms": percentile(delays.clone(), 0.5), "p99_ms": percentile(delays, 0.99)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    raise_fd_limit();
    std::fs::create_dir_all(&args.dir).unwrap();
    let mut nodes: Vec<Node> =
        (1..=3).map(|id| Node { id, port: free_port(), dir: args.dir.join(format!("n{id}")), child: None }).collect();
    let peers: String = nodes.iter().map(|n| format!("{}=127.0.0.1:{}", n.id, n.port)).collect::<Vec<_>>().join(",");
    for n in nodes.iter_mut() {
        spawn(&args.bin, n, &peers);
    }
    let endpoints: String = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let http = reqwest::Client::new();
    http.post(format!("{}/v1/admin/init", nodes[0].url())).bearer_auth(TOKEN).json(&json!({})).send().await.unwrap();
    leader(&http, &nodes).await;
    let setup = client(&endpoints, "setup");

    // Registration and publication.
    let started = Instant::now();
    let fences: Vec<ProducerFence> = futures::stream::iter(0..args.clusters)
        .map(|c| {
            let setup = setup.clone();
            async move {
                let name = ClusterName::parse(&format!("site{c:04}")).unwrap();
                setup
                    .register_cluster(&RegisterCluster::new(name, "x", SystemIdentifier(c as u64 + 1)))
                    .await
                    .unwrap()
                    .fence()
            }
        })
        .buffered(64)
        .collect()
        .await;
    let registered = started.elapsed();
    let started = Instant::now();
    let total = args.clusters * args.streams;
    futures::stream::iter((0..total).map(|i| (i / args.streams, i % args.streams)))
        .map(|(c, s)| {
            let setup = setup.clone();
            async move {
                let body = PublishStream {
                    stream: stream(c, s),
                    columns: vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "text")],
                    upstream: Default::default(),
                    base_seq: 0,
                    producer: None,
                };
                setup.publish_stream(&body).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let published = started.elapsed();
    let rss_idle: Vec<f64> = nodes.iter().map(|n| rss_mb(n.child.as_ref())).collect();
    println!(
        "{}",
        json!({"measure": "publish", "clusters": args.clusters, "streams": total,
               "registrations_per_sec": args.clusters as f64 / registered.as_secs_f64(),
               "publishes_per_sec": total as f64 / published.as_secs_f64(), "rss_mb": rss_idle})
    );

    // Load.
    let fences = Arc::new(fences);
    let seqs: Arc<Vec<AtomicU64>> = Arc::new((0..args.clusters).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let advances = Arc::new(AtomicU64::new(0));
    let load = start_load(&endpoints, &args, fences.clone(), seqs.clone(), stop.clone(), advances.clone());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.load_secs)).await;
    let rate = advances.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let rss: Vec<f64> = nodes.iter().map(|n| rss_mb(n.child.as_ref())).collect();
    let per_stream_kb = rss.iter().sum::<f64>() / 3.0 * 1024.0 / total as f64;
    println!(
        "{}",
        json!({"measure": "advance", "advances_per_sec": rate, "batch": args.streams, "writers": args.writers,
               "rss_mb": rss, "rss_kb_per_stream": per_stream_kb,
               "points_per_stream": advances.load(Ordering::Relaxed) as f64 / total as f64})
    );

    // Snapshot export (the same encoding as the Raft snapshot).
    let started = Instant::now();
    let image = setup.get_bytes("/v1/admin/snapshot").await.unwrap();
    let export_ms = started.elapsed().as_millis();
    // What the state is made of: the replicated idempotency cache against the rest.
    let idempotency_bytes = match raft_store::snapshot::decode(&image, Path::new("export")) {
        Ok(decoded) => shared_model::codec::encode(decoded.state.idempotency()).len(),
        Err(_) => 0,
    };
    println!(
        "{}",
        json!({"measure": "snapshot", "bytes": image.len(), "export_ms": export_ms,
               "idempotency_cache_bytes": idempotency_bytes})
    );

    // A follower down under load, then restarted.
    let l = leader(&http, &nodes).await;
    let f = (0..3).find(|i| *i != l).unwrap();
    if let Some(mut c) = nodes[f].child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let before = applied(&http, &nodes[l]).await;
    tokio::time::sleep(Duration::from_secs(args.down_secs)).await;
    let behind = applied(&http, &nodes[leader(&http, &nodes).await]).await - before;
    let restarted = Instant::now();
    spawn(&args.bin, &mut nodes[f], &peers);
    let listening = restarted.elapsed();
    let data_dir_mb = dir_bytes(&nodes[f].dir) as f64 / (1024.0 * 1024.0);
    let took = catch_up(&http, &nodes, f).await + listening;
    println!(
        "{}",
        json!({"measure": "follower_catch_up", "down_secs": args.down_secs, "entries_behind": behind,
               "catch_up_ms": took.as_millis(), "listening_after_ms": listening.as_millis(),
               "data_dir_mb": data_dir_mb, "advances_per_sec_meanwhile": advances.load(Ordering::Relaxed) as f64 / (args.load_secs + args.down_secs) as f64})
    );

    // A new member under load.
    let mut fourth = Node { id: 4, port: free_port(), dir: args.dir.join("n4"), child: None };
    spawn(&args.bin, &mut fourth, &peers);
    let started = Instant::now();
    let resp = http
        .post(format!("{}/v1/admin/learners", nodes[leader(&http, &nodes).await].url()))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&json!({"id": 4, "addr": format!("127.0.0.1:{}", fourth.port)}))
        .send()
        .await
        .unwrap();
    let added = started.elapsed();
    assert!(resp.status().is_success(), "add-learner: {}", resp.text().await.unwrap_or_default());
    nodes.push(fourth);
    let caught = catch_up(&http, &nodes, 3).await;
    println!(
        "{}",
        json!({"measure": "new_member", "add_learner_ms": added.as_millis(), "join_ms": (started.elapsed()).as_millis(),
               "then_caught_up_ms": caught.as_millis()})
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let total_advances = advances.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({"measure": "after_load", "advances": total_advances, "requests": total_advances / args.streams as u64,
               "rss_mb": nodes.iter().map(|n| rss_mb(n.child.as_ref())).collect::<Vec<f64>>()})
    );

    // Lists: pages of 1,000 and the whole list at once.
    let leader_url = nodes[leader(&http, &nodes).await].url();
    let mut page_ms = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let started = Instant::now();
        let (items, next) =
            setup.list_page::<serde_json::Value>("/v1/frontiers", None, after.as_deref(), 1000).await.unwrap();
        page_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(!items.is_empty());
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let started = Instant::now();
    let whole = http.get(format!("{leader_url}/v1/frontiers")).bearer_auth(TOKEN).send().await.unwrap();
    let whole_bytes = whole.bytes().await.unwrap().len();
    let whole_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        json!({"measure": "list_page", "pages": page_ms.len(), "page_p50_ms": percentile(page_ms.clone(), 0.5),
               "page_p99_ms": percentile(page_ms, 0.99), "whole_list_ms": whole_ms, "whole_list_bytes": whole_bytes})
    );

    // Watchers.
    let probe = setup
        .register_cluster(&RegisterCluster::new(ClusterName::parse("probe").unwrap(), "x", SystemIdentifier(9_999_999)))
        .await
        .unwrap()
        .fence();
    setup
        .publish_stream(&PublishStream {
            stream: StreamId::parse("probe/public.p").unwrap(),
            columns: vec![ColumnDef::new("k", "bigint")],
            upstream: Default::default(),
            base_seq: 0,
            producer: None,
        })
        .await
        .unwrap();
    let probe_seq = AtomicU64::new(0);
    for n in &args.watchers {
        println!("{}", event_watchers(&leader_url, &endpoints, *n, &probe, &probe_seq).await);
        println!("{}", stream_watchers(&leader_url, &endpoints, *n, &probe, &probe_seq).await);
        println!("{}", history_watchers(&leader_url, &endpoints, &args, (*n).min(total), &fences, &seqs).await);
    }
    for n in nodes.iter_mut() {
        kill(n.child.take());
    }
}
