//! `simulate`: runs many seeds with a progress bar and a summary, or replays one seed with its whole trace.
//!
//! ```text
//! cargo run -p simulations --release --bin simulate -- --seeds 10000
//! cargo run -p simulations --release --bin simulate -- --seed 4242
//! cargo run -p simulations --release --bin simulate -- --seeds 500 --bug ack-before-flush
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use simulations::{Bug, Options, Outcome};

#[derive(Parser)]
#[command(about = "Seeded fault simulations of pg_trickle federation")]
struct Args {
    /// Replay this one seed and print its whole trace.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Parallel runs (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Plant a bug (the run must then find violations).
    #[arg(long, value_enum)]
    bug: Option<Bug>,
}

fn main() {
    let args = Args::parse();
    let bug = args.bug;
    if let Some(seed) = args.seed {
        let outcome = simulations::run(&Options { bug, ..Options::new(seed) });
        for line in &outcome.trace {
            println!("{line}");
        }
        summarize_one(&outcome);
        std::process::exit(if outcome.passed() { 0 } else { 1 });
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let next = Arc::new(AtomicU64::new(args.start));
    let failures: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let totals = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let end = args.start + args.seeds;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (next, failures, totals, bar) = (next.clone(), failures.clone(), totals.clone(), bar.clone());
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let outcome = simulations::run(&Options { bug, ..Options::new(seed) });
                totals[0].fetch_add(outcome.applied_batches, Ordering::Relaxed);
                totals[1].fetch_add(outcome.operations as u64, Ordering::Relaxed);
                totals[2].fetch_add(outcome.faults as u64, Ordering::Relaxed);
                if !outcome.passed() {
                    bar.println(outcome.report(40));
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
                }
                let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).len();
                bar.set_message(format!("{failed} failed"));
                bar.inc(1);
            });
        }
    });
    bar.finish();
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
    let mut seeds: Vec<u64> = failures.iter().map(|o| o.seed).collect();
    seeds.sort_unstable();
    println!(
        "{} seeds in {:.1} s: {} passed, {} failed; {} applies, {} coordinator operations checked, {} faults injected",
        args.seeds,
        started.elapsed().as_secs_f64(),
        args.seeds as usize - failures.len(),
        failures.len(),
        totals[0].load(Ordering::Relaxed),
        totals[1].load(Ordering::Relaxed),
        totals[2].load(Ordering::Relaxed),
    );
    if !seeds.is_empty() {
        println!("failing seeds: {seeds:?} (replay one with --seed S)");
        std::process::exit(1);
    }
}

fn summarize_one(outcome: &Outcome) {
    println!(
        "seed {}: {} ({} applies, {} coordinator operations, {} faults)",
        outcome.seed,
        if outcome.passed() { "passed" } else { "FAILED" },
        outcome.applied_batches,
        outcome.operations,
        outcome.faults
    );
    for v in &outcome.violations {
        println!("violation: {v}");
    }
}
