//! Frontier advance plus newest-cut computation on a global DAG of 10,000 streams (target: <= 1 ms per advance).
//!
//! `incremental`: execute an AdvanceFrontier command through the state machine (validation, idempotency cache,
//! fold, incremental cut maintenance) and read the newest cut of a federated table that reads the stream.
//! `recompute` (the peer): the same cut recomputed from every source's frontier history with `cut_at`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use shared_model::{BatchKind, BrokerPosition, Command, FrontierAdvance};

fn bench(c: &mut Criterion) {
    let mut fed = benches::federation(100, 100, 8);
    assert_eq!(fed.state.streams().len(), 10_000);
    println!(
        "global DAG: {} nodes, {} edges, {} federated tables",
        fed.state.dag().node_count(),
        fed.state.dag().edge_count(),
        fed.tables.len()
    );
    // Streams that federated tables read (so every advance updates at least one cut).
    let sourced: Vec<_> = fed.streams.iter().filter(|s| fed.state.subscribers(s).next().is_some()).cloned().collect();
    let mut group = c.benchmark_group("frontier_10k_streams");
    let mut i = 0usize;
    group.bench_function("advance_and_newest_cut/incremental", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                let stream = sourced[i % sourced.len()].clone();
                let seq = fed.state.frontier(&stream).expect("published").seq() + 1;
                let table = fed.state.subscribers(&stream).next().expect("subscribed").clone();
                let command = Command::AdvanceFrontier {
                    producer: fed.fence(stream.cluster()),
                    advances: vec![FrontierAdvance {
                        stream,
                        seq,
                        kind: BatchKind::Delta,
                        position: BrokerPosition { partition: 0, offset: seq as i64 },
                    }],
                };
                let request = fed.request(command);
                let index = fed.next_index;
                fed.next_index += 1;
                let started = Instant::now();
                let executed = fed.state.execute(index, &request);
                let width = fed.state.newest_cut(&table).expect("table").seqs.len();
                spent += started.elapsed();
                assert!(executed.result.is_ok());
                black_box(width);
            }
            spent
        })
    });
    let table = fed.tables[0].clone();
    let now = fed.next_index;
    group.bench_function("newest_cut/recompute_from_history", |b| {
        b.iter(|| fed.state.cut_at(&table, now).expect("retained").expect("table").seqs.len())
    });
    group.bench_function("newest_cut/incremental_read", |b| {
        b.iter(|| fed.state.newest_cut(&table).expect("table").seqs.len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
