//! One load generator for the coordinator and for etcd, so that a comparison measures the servers, not the
//! clients: N concurrent clients, each writing in a closed loop (next write after the previous answer) for a
//! fixed time, with the same value size. Prints one JSON line per run.
//!
//! - `loadgen coordinator --endpoints URLS --token T --clients N --seconds S`: each client advances its own
//!   stream's frontier (a `POST /v1/frontiers`, one committed Raft entry per write).
//! - `loadgen etcd --endpoints URLS --clients N --seconds S --value-size B`: each client puts its own key.
//! - `loadgen floor --dir D`: loopback TCP round trip and write+fdatasync latency on this machine (the floor under
//!   a single client's committed write).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use coordinator::api::{AdvanceFrontiers, PublishStream, RegisterCluster};
use coordinator::client::{Client, ClientOptions};
use serde::Serialize;
use shared_model::{
    BatchKind, BrokerPosition, ClusterName, ColumnDef, FrontierAdvance, ProducerFence, StreamId, SystemIdentifier,
};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    Coordinator {
        #[arg(long)]
        endpoints: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Distinguishes runs so their streams do not collide.
        #[arg(long, default_value = "run")]
        run: String,
    },
    Etcd {
        #[arg(long)]
        endpoints: String,
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        value_size: usize,
    },
    Floor {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

#[derive(Serialize)]
struct Report {
    target: String,
    clients: usize,
    writes: usize,
    seconds: f64,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    value_bytes: usize,
}

fn report(target: &str, clients: usize, mut lat: Vec<Duration>, elapsed: Duration, value_bytes: usize) -> Report {
    lat.sort_unstable();
    let p = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Report {
        target: target.into(),
        clients,
        writes: lat.len(),
        seconds: elapsed.as_secs_f64(),
        writes_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: p(0.5),
        p99_ms: p(0.99),
        value_bytes,
    }
}

fn advance(producer: &ProducerFence, stream: &StreamId, seq: u64) -> AdvanceFrontiers {
    AdvanceFrontiers {
        producer: producer.clone(),
        advances: vec![FrontierAdvance {
            stream: stream.clone(),
            seq,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: seq as i64 },
        }],
    }
}

/// The JSON body size of one coordinator write: etcd gets values of the same size.
fn coordinator_body_size() -> usize {
    let stream = StreamId::parse("bench_r_0000/public.s").expect("valid");
    let producer = ProducerFence {
        cluster: stream.cluster().clone(),
        system_identifier: SystemIdentifier(7_311_954_316_468_451_331),
        producer_epoch: 1_000,
    };
    serde_json::to_vec(&advance(&producer, &stream, 1_000_000)).expect("serializes").len()
}

async fn run_coordinator(endpoints: &str, token: Option<String>, clients: usize, seconds: f64, run: &str) -> Report {
    let options = ClientOptions { token: token.clone(), client_id: format!("loadgen-{run}"), ..Default::default() };
    let setup = Client::new(endpoints, options.clone()).expect("endpoints");
    let mut streams = Vec::new();
    for i in 0..clients {
        let cluster = ClusterName::parse(&format!("bench_{run}_{i:04}")).expect("valid");
        let registered = setup
            .register_cluster(&RegisterCluster::new(cluster.clone(), "bench", SystemIdentifier(i as u64 + 1)))
            .await
            .expect("register");
        let stream = StreamId::parse(&format!("{cluster}/public.s")).expect("valid");
        setup
            .publish_stream(&PublishStream {
                stream: stream.clone(),
                columns: vec![ColumnDef::new("k", "int")],
                upstream: BTreeSet::new(),
                base_seq: 0,
                producer: None,
            })
            .await
            .expect("publish");
        streams.push((registered.fence(), stream));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, (producer, stream))| {
            let client =
                Client::new(endpoints, ClientOptions { client_id: format!("loadgen-{run}-{i}"), ..options.clone() })
                    .expect("client");
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut seq = 0;
                while Instant::now() < deadline {
                    seq += 1;
                    let t = Instant::now();
                    client.advance_frontiers(&advance(&producer, &stream, seq)).await.expect("write");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    report("coordinator", clients, all, started.elapsed(), coordinator_body_size())
}

async fn run_etcd(endpoints: &str, clients: usize, seconds: f64, value_size: usize) -> Report {
    let eps: Vec<String> = endpoints.split(',').map(str::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let value = Arc::new(vec![b'x'; value_size]);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let eps = eps.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect(eps, None).await.expect("etcd connect");
            let key = format!("/bench/c{i:04}");
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.put(key.as_bytes(), value.as_slice(), None).await.expect("etcd put");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    report("etcd", clients, all, started.elapsed(), value_size)
}

fn floor(dir: &std::path::Path) {
    // Loopback TCP round trip (1-byte ping-pong).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).ok();
    let mut rtts = Vec::new();
    let mut b = [7u8; 1];
    for _ in 0..2000 {
        let t = Instant::now();
        c.write_all(&b).expect("write");
        c.read_exact(&mut b).expect("read");
        rtts.push(t.elapsed());
    }
    drop(c);
    let _ = echo.join();
    // write + fdatasync of a small record.
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("floor.dat");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open");
    let mut syncs = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        f.write_all(&[1u8; 200]).expect("write");
        f.sync_data().expect("fdatasync");
        syncs.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    let median = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!("{{\"target\":\"floor\",\"loopback_rtt_ms\":{:.4},\"fdatasync_ms\":{:.4}}}", median(rtts), median(syncs));
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match args.target {
        Target::Coordinator { endpoints, token, clients, seconds, run } => {
            let r = rt.block_on(run_coordinator(&endpoints, token, clients, seconds, &run));
            println!("{}", serde_json::to_string(&r).expect("report"));
        }
        Target::Etcd { endpoints, clients, seconds, value_size } => {
            let r = rt.block_on(run_etcd(&endpoints, clients, seconds, value_size));
            println!("{}", serde_json::to_string(&r).expect("report"));
        }
        Target::Floor { dir } => floor(&dir),
    }
}
