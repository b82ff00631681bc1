//! raft-store append throughput with flush, batches of 1, 16 and 256 entries, beside the physical floor: a plain
//! `write` + `fdatasync` loop of the same bytes per batch on the same disk, measured in the same run.
//!
//! Run: `cargo bench -p benches --bench raft_append` (env `APPEND_BENCH_SECONDS`, default 3 s per case). The data
//! directory is under `target/` so both measurements hit the same file system.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use raft_store::{workload, StoreOptions};
use shared_model::codec;

struct Measured {
    entries: u64,
    batches: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Measured {
    fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
    fn p(&mut self, q: f64) -> u64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i]
    }
}

fn sled_append(dir: &std::path::Path, batch: u64, budget: Duration) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (log, _sm) = raft_store::open(dir, StoreOptions::default()).unwrap();
        let mut next = 1;
        let mut m = Measured { entries: 0, batches: 0, elapsed: Duration::ZERO, latencies_us: vec![] };
        let started = Instant::now();
        while started.elapsed() < budget {
            let entries: Vec<_> = (next..next + batch).map(workload::entry).collect();
            let t = Instant::now();
            log.append_durably(entries).await.unwrap();
            m.latencies_us.push(t.elapsed().as_micros() as u64);
            next += batch;
            m.entries += batch;
            m.batches += 1;
        }
        m.elapsed = started.elapsed();
        m
    })
}

fn fdatasync_loop(dir: &std::path::Path, batch: u64, budget: Duration) -> Measured {
    let path = dir.join("floor.log");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let mut next = 1;
    let mut m = Measured { entries: 0, batches: 0, elapsed: Duration::ZERO, latencies_us: vec![] };
    let started = Instant::now();
    while started.elapsed() < budget {
        let mut bytes = Vec::new();
        for i in next..next + batch {
            bytes.extend_from_slice(&codec::encode(&workload::entry(i)));
        }
        let t = Instant::now();
        file.write_all(&bytes).unwrap();
        file.sync_data().unwrap();
        m.latencies_us.push(t.elapsed().as_micros() as u64);
        next += batch;
        m.entries += batch;
        m.batches += 1;
    }
    m.elapsed = started.elapsed();
    m
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run a short smoke then.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("APPEND_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let budget = if smoke { Duration::from_millis(200) } else { Duration::from_secs_f64(seconds) };
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    println!("| batch | raft-store entries/s | p50 / p99 append µs | write+fdatasync entries/s | p50 / p99 µs | ratio (store / floor) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for batch in [1u64, 16, 256] {
        let store_dir = tempfile::tempdir_in(&base).unwrap();
        let floor_dir = tempfile::tempdir_in(&base).unwrap();
        let mut store = sled_append(store_dir.path(), batch, budget);
        let mut floor = fdatasync_loop(floor_dir.path(), batch, budget);
        println!(
            "| {batch} | {:.0} | {} / {} | {:.0} | {} / {} | {:.2} |",
            store.entries_per_sec(),
            store.p(0.5),
            store.p(0.99),
            floor.entries_per_sec(),
            floor.p(0.5),
            floor.p(0.99),
            store.entries_per_sec() / floor.entries_per_sec()
        );
    }
}
