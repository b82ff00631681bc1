//! Under a write load of 16 concurrent clients: SIGKILL the leader, measure the time to a new leader, check that
//! every acknowledged write is present (against the clients' own record), restart the killed node from disk and
//! watch it catch up, then change membership 3 → 4 → 3 while the load runs. A watcher following `/v1/events`
//! through all of it must see every committed record exactly once, in order.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coordinator::api::*;
use coordinator::client::ClientError;
use futures::StreamExt;
use shared_model::*;

const CLIENTS: usize = 16;

fn stream_of(i: usize) -> StreamId {
    StreamId::parse(&format!("c{i}/public.s")).unwrap()
}

/// One client: advances its own stream's frontier 1, 2, 3… and publishes each acknowledged seq in `progress`, so
/// the test can see the load move (or stall) at any moment.
async fn writer(
    client: coordinator::client::Client,
    i: usize,
    producer: ProducerFence,
    stop: Arc<AtomicBool>,
    progress: Arc<Vec<AtomicU64>>,
) {
    let mut acked = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let seq = acked + 1;
        let body = AdvanceFrontiers {
            producer: producer.clone(),
            advances: vec![FrontierAdvance {
                stream: stream_of(i),
                seq,
                kind: BatchKind::Delta,
                position: BrokerPosition { partition: 0, offset: seq as i64 },
            }],
        };
        match client.advance_frontiers(&body).await {
            Ok(_) => {
                acked = seq;
                progress[i].store(acked, Ordering::SeqCst);
            }
            // The deadline passed without an answer (no leader for a while): the write may or may not have
            // committed; resending the same batch is an identical repeat, so just try again. A client that never
            // gets through again shows as progress that stops growing, which the test checks.
            Err(ClientError::Unavailable { .. }) => {}
            Err(e) => panic!("client {i}: write of seq {seq} failed: {e}"),
        }
    }
}

/// The writers' acknowledged writes so far.
fn total(progress: &[AtomicU64]) -> u64 {
    progress.iter().map(|p| p.load(Ordering::SeqCst)).sum()
}

/// Waits until the writers' acknowledged total passes `from` by at least `by` (the load moves), or fails.
fn assert_progress(progress: &[AtomicU64], from: u64, by: u64, what: &str) -> u64 {
    let started = Instant::now();
    loop {
        let now = total(progress);
        if now >= from + by {
            println!("{what}: {} more writes acknowledged in {} ms", now - from, started.elapsed().as_millis());
            return now;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{what}: writes stalled at {now} (from {from})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn leader_of_survivors(cluster: &TestCluster, dead: u64) -> Option<u64> {
    cluster
        .nodes
        .values()
        .filter(|n| n.id != dead && n.running())
        .filter_map(|n| cluster.status(n.id))
        .find(|s| s.state == "Leader")
        .map(|s| s.node_id)
}

#[test]
fn leader_failover_and_membership_changes_under_load_lose_nothing() {
    let mut cluster = TestCluster::start(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let client = cluster.client();
    let fences = rt.block_on(async {
        let mut fences = Vec::new();
        for i in 0..CLIENTS {
            let name = ClusterName::parse(&format!("c{i}")).unwrap();
            let registered =
                client.register_cluster(&RegisterCluster::new(name, "x", SystemIdentifier(i as u64))).await.unwrap();
            fences.push(registered.fence());
            let publish = PublishStream {
                stream: stream_of(i),
                columns: vec![ColumnDef::new("k", "int")],
                upstream: BTreeSet::new(),
                base_seq: 0,
                producer: None,
            };
            client.publish_stream(&publish).await.unwrap();
        }
        fences
    });

    // The watcher follows the log from the start through everything that follows.
    let watch_client = cluster.client_as("watcher");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<EventRecord>::new()));
    let watcher = {
        let seen = seen.clone();
        rt.spawn(async move {
            let mut stream = Box::pin(watch_client.watch_events(0));
            while let Some(record) = stream.next().await {
                match record {
                    Ok(r) => seen.lock().unwrap().push(r),
                    Err(e) => panic!("watch failed: {e}"),
                }
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            rt.spawn(writer(cluster.client_as(&format!("w{i}")), i, fences[i].clone(), stop.clone(), progress.clone()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = assert_progress(&progress, 0, 100, "load before the kill");

    // Kill the leader and time the election.
    let old = cluster.wait_leader(Duration::from_secs(5));
    let killed_at = Instant::now();
    cluster.kill(old);
    let new_leader = loop {
        if let Some(l) = leader_of_survivors(&cluster, old) {
            break l;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "no new leader after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    let election = killed_at.elapsed();
    println!("leader {old} killed with SIGKILL; node {new_leader} leads after {} ms", election.as_millis());
    assert!(election < Duration::from_secs(2), "new leader after {election:?}");
    // The clients must get through to the new leader: the load moves on after the kill, by every client.
    let at_kill = total(&progress);
    assert!(at_kill >= before_kill);
    let per_client_at_kill: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    let after_kill = assert_progress(&progress, at_kill, 100, "load after the leader's SIGKILL");
    let started = Instant::now();
    while progress.iter().zip(&per_client_at_kill).any(|(p, at)| p.load(Ordering::SeqCst) <= *at) {
        assert!(started.elapsed() < Duration::from_secs(15), "a client made no progress after the leader changed");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Restart the killed node from its data directory; it must catch up.
    cluster.restart(old);
    let started = Instant::now();
    loop {
        let leader = cluster.wait_leader(Duration::from_secs(5));
        let target = cluster.status(leader).and_then(|s| s.applied_index).unwrap_or(0);
        let mine = cluster.status(old).and_then(|s| s.applied_index).unwrap_or(0);
        if mine >= target && target > 0 {
            println!("restarted node {old} caught up to index {mine} in {} ms", started.elapsed().as_millis());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "node {old} did not catch up: {mine} < {target}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Membership 3 -> 4 -> 3 under load.
    cluster.add_node(4);
    let addr4 = cluster.nodes[&4].addr();
    let out = cluster.cli(&["add-learner", "--id", "4", "--addr", &addr4]);
    assert!(out.status.success(), "add-learner: {}", String::from_utf8_lossy(&out.stderr));
    let out = cluster.cli(&["change-membership", "--voters", "1,2,3,4"]);
    assert!(out.status.success(), "3 -> 4: {}", String::from_utf8_lossy(&out.stderr));
    let members = cluster.status(cluster.wait_leader(Duration::from_secs(5))).unwrap().members;
    assert_eq!(members.iter().filter(|m| m.voter).count(), 4, "{members:?}");
    std::thread::sleep(Duration::from_millis(500));
    let out = cluster.cli(&["change-membership", "--voters", "1,2,3"]);
    assert!(out.status.success(), "4 -> 3: {}", String::from_utf8_lossy(&out.stderr));
    let members = cluster.status(cluster.wait_leader(Duration::from_secs(5))).unwrap().members;
    let voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]), "{members:?}");
    // And the load still moves with the three voters.
    assert_progress(&progress, total(&progress), 50, "load after 4 -> 3");

    stop.store(true, Ordering::Relaxed);
    rt.block_on(async { futures::future::join_all(writers).await }).into_iter().for_each(|r| r.unwrap());
    let acked: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    let total: u64 = acked.iter().sum();
    println!("{CLIENTS} clients acknowledged {total} frontier advances ({} after the kill)", total - at_kill);
    assert!(total > after_kill);

    // Every acknowledged write is present: each stream's frontier is at its client's last acknowledged seq (or
    // one beyond, when the last attempt committed but its answer was lost).
    let frontiers: BTreeMap<StreamId, u64> =
        rt.block_on(client.frontiers()).unwrap().into_iter().map(|f| (f.stream, f.seq)).collect();
    let mut lost = 0;
    for (i, acked) in acked.iter().enumerate() {
        let committed = frontiers[&stream_of(i)];
        if committed < *acked {
            lost += acked - committed;
        }
        assert!(committed <= acked + 1, "client {i}: frontier {committed} beyond its last attempt {}", acked + 1);
    }
    println!("{lost} acknowledged writes lost");
    assert_eq!(lost, 0);

    // Every voter holds the same state.
    let leader = cluster.wait_leader(Duration::from_secs(5));
    let target = cluster.status(leader).unwrap().applied_index.unwrap();
    for id in [1u64, 2, 3] {
        let started = Instant::now();
        while cluster.status(id).and_then(|s| s.applied_index).unwrap_or(0) < target {
            assert!(started.elapsed() < Duration::from_secs(10), "node {id} lags");
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("{}/v1/frontiers?consistency=stale", cluster.nodes[&id].url());
        let mine: Vec<FrontierView> = serde_json::from_str(&ureq_get(&url).unwrap()).unwrap();
        let mine: BTreeMap<StreamId, u64> = mine.into_iter().map(|f| (f.stream, f.seq)).collect();
        assert_eq!(mine.len(), frontiers.len(), "node {id} holds other streams than the leader");
        assert_eq!(mine.len(), CLIENTS, "node {id}");
        assert!(mine.iter().all(|(s, q)| *q >= frontiers[s]), "node {id} is behind the leader's read");
    }

    // The watcher saw every committed record exactly once, in order.
    let started = Instant::now();
    loop {
        let last = seen.lock().unwrap().last().map_or(0, |r| r.index);
        if last >= target {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "watcher stuck at {last} < {target}");
        std::thread::sleep(Duration::from_millis(50));
    }
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    // Entries 1..=last each appear, and records within an entry (batched writes) are numbered 0, 1, 2…
    let mut previous = (0u64, 0u32);
    for (i, r) in seen.iter().enumerate() {
        let ok = if i == 0 {
            r.index == 1 && r.position == 0
        } else if r.index == previous.0 {
            r.position == previous.1 + 1
        } else {
            r.index == previous.0 + 1 && r.position == 0
        };
        assert!(ok, "the watcher missed or repeated records at {i}: {:?} after {previous:?}", (r.index, r.position));
        previous = (r.index, r.position);
    }
    // And what it saw is what the log holds.
    let log: Vec<EventRecord> = rt.block_on(async {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = client.events(after, Duration::ZERO, 10_000).await.unwrap();
            if page.records.is_empty() {
                break all;
            }
            after = page.records.last().unwrap().index;
            all.extend(page.records);
        }
    });
    assert_eq!(&log[..seen.len()], &seen[..]);
    println!("watcher saw {} records, exactly once and in order, across the leader change", seen.len());
}
