//! The simulation as a test: at least 500 seeds hold every invariant; a seed replays bit for bit; and every planted
//! bug is found within the same seed budget (a checker that cannot fail proves nothing).
//!
//! `SIMULATION_SEEDS` raises the count (the `simulate` binary runs 10,000 and more with a progress bar).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use simulations::{Bug, Options, Outcome};

/// Seeds every CI run checks.
const CI_SEEDS: u64 = 500;

fn seeds() -> u64 {
    std::env::var("SIMULATION_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(CI_SEEDS).max(CI_SEEDS)
}

/// Runs seeds `0..count` on every core; stops early once `stop_after` failures are found.
fn run_seeds(count: u64, bug: Option<Bug>, stop_after: usize) -> (u64, Vec<Outcome>) {
    let next = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if failures.lock().unwrap().len() >= stop_after {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= count {
                    break;
                }
                let outcome = simulations::run(&Options { bug, ..Options::new(seed) });
                ran.fetch_add(1, Ordering::Relaxed);
                if !outcome.passed() {
                    failures.lock().unwrap().push(outcome);
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|o| o.seed);
    (ran.into_inner(), failures)
}

#[test]
fn every_seed_holds_every_invariant() {
    let count = seeds();
    let (ran, failures) = run_seeds(count, None, usize::MAX);
    assert_eq!(ran, count);
    if let Some(first) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|o| o.seed).collect();
        panic!("{} of {count} seeds failed: {seeds:?}\n{}", failures.len(), first.report(60));
    }
}

#[test]
fn a_seed_replays_bit_for_bit() {
    for seed in [3, 70] {
        let first = simulations::run(&Options::new(seed));
        let second = simulations::run(&Options::new(seed));
        assert!(first.trace.len() > 50, "seed {seed}: a trace of {} lines says too little", first.trace.len());
        assert!(first.operations > 100, "seed {seed}: only {} coordinator operations", first.operations);
        assert_eq!(first.trace, second.trace, "seed {seed} did not replay the same trace");
        assert_eq!(first.violations, second.violations);
    }
    // And different seeds are different runs.
    assert_ne!(simulations::run(&Options::new(3)).trace, simulations::run(&Options::new(4)).trace);
}

#[test]
fn every_planted_bug_is_found_within_the_seed_budget() {
    for bug in Bug::ALL {
        let (ran, failures) = run_seeds(CI_SEEDS, Some(bug), 1);
        let Some(found) = failures.first() else {
            panic!("{bug:?}: no violation in {ran} seeds — the checkers cannot see this bug");
        };
        println!("{bug:?}: found by seed {} ({} seeds run): {}", found.seed, ran, found.violations[0]);
    }
}
