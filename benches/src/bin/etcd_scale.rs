//! etcd 3.4 at the size of the coordinator's scale benchmark (`benches/scale.sh` runs both): three members on
//! loopback holding one key per stream (CLUSTERS × STREAMS keys), publishers writing all keys of a cluster in one
//! transaction per request — the coordinator's batched frontier advance — with values of a frontier point's size.
//! Prints one JSON line per measurement, named as the coordinator's are where they compare:
//!
//! - `publish`: the keys written once, one transaction per cluster (64 concurrent callers);
//! - `advance`: keys written per second under load; resident memory per member and per key;
//! - `follower_catch_up`: a follower killed with SIGKILL, down for DOWN seconds under load, restarted: time until
//!   it has applied what the leader had when it came back;
//! - `new_member`: a fourth member added as a learner under load: time until it has caught up;
//! - `list_page`: latency of range pages of 1,000 keys, and of the whole range at once;
//! - `watchers`: notification delay (write sent → event received) with N watchers of the whole prefix (the
//!   coordinator's event watchers) and with N watchers of one key each (its frontier-history consumers).
//!
//! etcd compacts its history every minute here (`--auto-compaction-mode periodic`), as an operator keeping
//! months of writes would configure it; the coordinator keeps a bounded history per stream.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::procs::{free_port, kill, percentile, raise_fd_limit, rss_mb, ScaleShape};
use clap::Parser;
use etcd_client::{Client, GetOptions, MemberAddOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use serde_json::json;

#[derive(Parser)]
/// etcd 3.4 at the size of the coordinator scale benchmark (one JSON line per measurement).
struct Args {
    #[command(flatten)]
    shape: ScaleShape,
    /// Watchers per client connection (etcd multiplexes watches over gRPC streams of one connection).
    #[arg(long, default_value_t = 100)]
    watchers_per_connection: usize,
    /// Leave out the new member (at 100,000 keys under load, etcd's learner takes many minutes to catch up).
    #[arg(long)]
    skip_new_member: bool,
    /// Where the members' data directories go.
    #[arg(long)]
    dir: PathBuf,
}

impl std::ops::Deref for Args {
    type Target = ScaleShape;
    fn deref(&self) -> &ScaleShape {
        &self.shape
    }
}

const PREFIX: &str = "frontiers/";

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &std::path::Path, i: usize) -> Member {
        let name = format!("e{i}");
        Member { dir: dir.join(&name), name, client_port: free_port(), peer_port: free_port(), child: None }
    }
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn initial(&self) -> String {
        format!("{}={}", self.name, self.peer_url())
    }
}

/// Starts `member` with `initial_cluster` (`new` for the first three, `existing` for one that joins).
fn spawn(member: &mut Member, initial_cluster: &str, state: &str) {
    let log = std::fs::File::create(member.dir.with_extension("log")).unwrap();
    let child = Command::new("etcd")
        .args(["--name", &member.name])
        .arg("--data-dir")
        .arg(&member.dir)
        .args(["--listen-client-urls", &member.client_url(), "--advertise-client-urls", &member.client_url()])
        .args(["--listen-peer-urls", &member.peer_url(), "--initial-advertise-peer-urls", &member.peer_url()])
        .args(["--initial-cluster", initial_cluster, "--initial-cluster-token", "scale"])
        .args(["--initial-cluster-state", state])
        .args(["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1m"])
        .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("etcd: {e} (apt-get install etcd-server)"));
    member.child = Some(child);
    while std::net::TcpStream::connect(("127.0.0.1", member.client_port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn connect(urls: &[String]) -> Client {
    loop {
        match Client::connect(urls, None).await {
            Ok(client) => return client,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A member's (leader id, own id, applied index), or None while it does not answer.
async fn status(member: &Member) -> Option<(u64, u64, u64)> {
    let ask = async {
        let mut client = Client::connect([member.client_url()], None).await.ok()?;
        let s = client.status().await.ok()?;
        Some((s.leader(), s.header()?.member_id(), s.raft_applied_index()))
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

async fn leader(members: &[Member]) -> usize {
    loop {
        for (i, m) in members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
            if status(m).await.is_some_and(|(leader, me, _)| leader == me && leader != 0) {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn applied(member: &Member) -> u64 {
    status(member).await.map_or(0, |(_, _, applied)| applied)
}

/// Waits until `members[i]` has applied what the leader had applied when the wait began.
async fn catch_up(members: &[Member], i: usize) -> Duration {
    let started = Instant::now();
    let target = applied(&members[leader(members).await]).await;
    while applied(&members[i]).await < target {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn key(c: usize, s: usize) -> String {
    format!("{PREFIX}site{c:04}/public.t{s:03}")
}

/// A frontier point as the coordinator stores it, in JSON: the value of every key.
fn value(seq: u64, s: usize) -> String {
    json!({"seq": seq, "kind": "delta", "position": {"partition": 0, "offset": seq as i64 * 1000 + s as i64},
           "committed_at_unix_ms": 1_700_000_000_000u64 + seq})
    .to_string()
}

/// Writes every key of cluster `c` at `seq` in one transaction.
async fn write_cluster(client: &mut Client, c: usize, streams: usize, seq: u64) -> Result<(), etcd_client::Error> {
    let ops: Vec<TxnOp> = (0..streams).map(|s| TxnOp::put(key(c, s), value(seq, s), None)).collect();
    client.txn(Txn::new().and_then(ops)).await.map(|_| ())
}

fn start_load(
    urls: &[String],
    args: &Args,
    seqs: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..args.writers)
        .map(|w| {
            let (urls, seqs, stop, written) = (urls.to_vec(), seqs.clone(), stop.clone(), written.clone());
            let (clusters, streams, writers) = (args.clusters, args.streams, args.writers);
            tokio::spawn(async move {
                let mut client = connect(&urls).await;
                let mine: Vec<usize> = (w..clusters).step_by(writers).collect();
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = mine[turn % mine.len()];
                    turn += 1;
                    let seq = seqs[c].load(Ordering::SeqCst) + 1;
                    // A member that is down or an election: the client retries another endpoint next turn.
                    if write_cluster(&mut client, c, streams, seq).await.is_ok() {
                        seqs[c].store(seq, Ordering::SeqCst);
                        written.fetch_add(streams as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// Opens `n` watches, `per_connection` to a client connection, on keys chosen by `watched(i)` (with `prefix`,
/// each on everything under its key); every event received is sent with the watcher's number and the time.
async fn open_watchers(
    url: &str,
    n: usize,
    per_connection: usize,
    prefix: bool,
    watched: impl Fn(usize) -> String,
) -> (Vec<tokio::task::JoinHandle<()>>, tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for _ in 0..n.div_ceil(per_connection.max(1)) {
        clients.push(connect(&[url.to_string()]).await);
    }
    let opened: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let mut client = clients[i / per_connection.max(1)].clone();
            let key = watched(i);
            async move {
                let options = if prefix { WatchOptions::new().with_prefix() } else { WatchOptions::new() };
                (i, client.watch(key, Some(options)).await.expect("etcd watch"))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let tasks = opened
        .into_iter()
        .map(|(i, stream)| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (_keep, mut responses) = stream.split();
                while let Ok(Some(resp)) = responses.message().await {
                    if !resp.events().is_empty() {
                        let _ = tx.send((i, Instant::now()));
                    }
                }
            })
        })
        .collect();
    (tasks, rx)
}

/// `n` watchers of the whole prefix; ten probe writes, one at a time: the delay from sending each to each
/// watcher's event.
async fn prefix_watchers(url: &str, n: usize, per_connection: usize) -> serde_json::Value {
    let (tasks, mut rx) = open_watchers(url, n, per_connection, true, |_| PREFIX.to_string()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut writer = connect(&[url.to_string()]).await;
    let mut delays = Vec::new();
    for round in 0..10u64 {
        while rx.try_recv().is_ok() {}
        let sent = Instant::now();
        writer.put(format!("{PREFIX}probe"), value(round, 0), None).await.unwrap();
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
    tasks.iter().for_each(|t| t.abort());
    json!({"measure": "watchers", "kind": "prefix", "watchers": n, "notifications": delays.len(),
           "expected": n * 10, "p50_ms": percentile(delays.clone(), 0.5), "p99_ms": percentile(delays, 0.99)})
}

/// `n` watchers of one key each; twenty probe transactions, each writing every key of one watched key's cluster:
/// the delay until that key's watcher has its event.
async fn key_watchers(url: &str, args: &Args, n: usize, seqs: &[AtomicU64]) -> serde_json::Value {
    let (clusters, streams) = (args.clusters, args.streams);
    let at = move |i: usize| (i % clusters, (i / clusters) % streams);
    let (tasks, mut rx) =
        open_watchers(url, n, args.watchers_per_connection, false, move |i| key(at(i).0, at(i).1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut writer = connect(&[url.to_string()]).await;
    let mut delays = Vec::new();
    for round in 0..20 {
        let i = (round * 7919) % n;
        let c = at(i).0;
        let seq = seqs[c].load(Ordering::SeqCst) + 1;
        let sent = Instant::now();
        write_cluster(&mut writer, c, streams, seq).await.unwrap();
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
    tasks.iter().for_each(|t| t.abort());
    json!({"measure": "watchers", "kind": "key", "watchers": n, "notifications": delays.len(),
           "expected": 20, "p50_ms": percentile(delays.clone(), 0.5), "p99_ms": percentile(delays, 0.99)})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    raise_fd_limit();
    std::fs::create_dir_all(&args.dir).unwrap();
    let mut members: Vec<Member> = (1..=3).map(|i| Member::new(&args.dir, i)).collect();
    let initial: String = members.iter().map(Member::initial).collect::<Vec<_>>().join(",");
    for m in members.iter_mut() {
        spawn(m, &initial, "new");
    }
    let urls: Vec<String> = members.iter().map(Member::client_url).collect();
    leader(&members).await;
    let setup = connect(&urls).await;

    // Every key written once.
    let started = Instant::now();
    futures::stream::iter(0..args.clusters)
        .map(|c| {
            let mut client = setup.clone();
            let streams = args.streams;
            async move { write_cluster(&mut client, c, streams, 0).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let total = args.clusters * args.streams;
    let rss_idle: Vec<f64> = members.iter().map(|m| rss_mb(m.child.as_ref())).collect();
    println!(
        "{}",
        json!({"measure": "publish", "peer": "etcd", "keys": total,
               "keys_per_sec": total as f64 / started.elapsed().as_secs_f64(), "rss_mb": rss_idle})
    );

    // Load.
    let seqs: Arc<Vec<AtomicU64>> = Arc::new((0..args.clusters).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let load = start_load(&urls, &args, seqs.clone(), stop.clone(), written.clone());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.load_secs)).await;
    let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let rss: Vec<f64> = members.iter().map(|m| rss_mb(m.child.as_ref())).collect();
    let db_bytes = setup.clone().status().await.map(|s| s.db_size()).unwrap_or(0);
    println!(
        "{}",
        json!({"measure": "advance", "peer": "etcd", "keys_written_per_sec": rate, "batch": args.streams,
               "writers": args.writers, "rss_mb": rss,
               "rss_kb_per_key": rss.iter().sum::<f64>() / 3.0 * 1024.0 / total as f64, "db_bytes": db_bytes})
    );

    // A follower down under load, then restarted.
    let l = leader(&members).await;
    let f = (0..3).find(|i| *i != l).unwrap();
    kill(members[f].child.take());
    let before = applied(&members[l]).await;
    tokio::time::sleep(Duration::from_secs(args.down_secs)).await;
    let behind = applied(&members[leader(&members).await]).await - before;
    spawn(&mut members[f], &initial, "new");
    let took = catch_up(&members, f).await;
    println!(
        "{}",
        json!({"measure": "follower_catch_up", "peer": "etcd", "down_secs": args.down_secs,
               "entries_behind": behind, "catch_up_ms": took.as_millis()})
    );

    // A new member under load: added as a learner, started, caught up, promoted.
    if !args.skip_new_member {
        new_member(&mut members, &args.dir, &urls, &initial).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    lists_and_watchers(&members, &args, total, &seqs).await;
    for m in members.iter_mut() {
        kill(m.child.take());
    }
}

/// A fourth member added as a learner under load: time until it has caught up, and until it is promoted.
async fn new_member(members: &mut Vec<Member>, dir: &std::path::Path, urls: &[String], initial: &str) {
    let mut fourth = Member::new(dir, 4);
    let started = Instant::now();
    let mut admin = connect(urls).await;
    // etcd refuses a member while it counts the cluster unhealthy (a member restarted less than 5 s ago).
    let added = loop {
        match admin.member_add([fourth.peer_url()], Some(MemberAddOptions::new().with_is_learner())).await {
            Ok(added) => break added,
            Err(e) if e.to_string().contains("unhealthy") => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("member add: {e}"),
        }
    };
    let id = added.member().expect("the added member").id();
    // The joining member checks its configuration against whichever member answers it first: every member must
    // know of it before it starts.
    for i in 0..3 {
        catch_up(members, i).await;
    }
    let all = format!("{initial},{}", fourth.initial());
    spawn(&mut fourth, &all, "existing");
    members.push(fourth);
    let caught = catch_up(members, 3).await;
    let joined = started.elapsed();
    while admin.member_promote(id).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{}",
        json!({"measure": "new_member", "peer": "etcd", "join_ms": joined.as_millis(),
               "then_caught_up_ms": caught.as_millis(), "promoted_after_ms": started.elapsed().as_millis()})
    );
}

/// Range pages and the whole range, then the watchers, with the load stopped.
async fn lists_and_watchers(members: &[Member], args: &Args, total: usize, seqs: &[AtomicU64]) {
    // Lists: pages of 1,000 keys and the whole range at once, from the leader.
    let leader_url = members[leader(members).await].client_url();
    let mut reader = connect(std::slice::from_ref(&leader_url)).await;
    let mut page_ms = Vec::new();
    let mut from = PREFIX.to_string();
    let end = "frontiers0"; // the first key after every key under the prefix
    loop {
        let started = Instant::now();
        let page = reader.get(from.clone(), Some(GetOptions::new().with_range(end).with_limit(1000))).await.unwrap();
        page_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let last = page.kvs().last().expect("a page").key_str().unwrap().to_string();
        if !page.more() {
            break;
        }
        from = format!("{last}\0");
    }
    // The whole range at once is more than a gRPC client takes by default (4 MiB) at this size: say so.
    let started = Instant::now();
    let whole = match reader.get(PREFIX, Some(GetOptions::new().with_prefix())).await {
        Ok(whole) => json!({"keys": whole.kvs().len(), "ms": started.elapsed().as_secs_f64() * 1000.0}),
        Err(e) => json!({"refused": e.to_string()}),
    };
    println!(
        "{}",
        json!({"measure": "list_page", "peer": "etcd", "pages": page_ms.len(),
               "page_p50_ms": percentile(page_ms.clone(), 0.5), "page_p99_ms": percentile(page_ms, 0.99),
               "whole_list": whole})
    );

    for n in &args.watchers {
        println!("{}", prefix_watchers(&leader_url, *n, args.watchers_per_connection).await);
        println!("{}", key_watchers(&leader_url, args, (*n).min(total), seqs).await);
    }
}
