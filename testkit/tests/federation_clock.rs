//! Clock skew with real servers: C's postmaster restarted under libfaketime (Debian's `libfaketime`) with its
//! wall clock 30 s ahead of A's, B's and the coordinators'. Loss detection, lag and timeouts run on the
//! consumer's own monotonic clock, so the skew causes no spurious REINITIALIZE (the sources' `reinit_requests`
//! stay as they were) and C converges on A's and B's data after a workload, as without skew.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use testkit::seed::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn reinit_requests(c: &mut postgres::Client) -> i64 {
    c.query_one("SELECT coalesce(sum(reinit_requests), 0)::bigint FROM pgtrickle.federation_sources", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_consumer_whose_clock_runs_30_s_ahead_asks_for_no_snapshot_and_converges() {
    assert!(std::path::Path::new(LIBFAKETIME).exists(), "libfaketime is missing: run scripts/install-deps.sh");
    let (mut fed, mut a, mut b, mut c) = seed_federation(3);
    let before = reinit_requests(&mut c);

    drop(c);
    fed.clusters[2].stop().unwrap();
    fed.clusters[2].set_env("LD_PRELOAD", LIBFAKETIME);
    fed.clusters[2].set_env("FAKETIME", "+30s");
    // Skew is a wall-clock matter (NTP steps it); the monotonic clock keeps running at its own pace.
    fed.clusters[2].set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    fed.clusters[2].start().unwrap();
    let mut c = fed.reconnect(2);
    let theirs: f64 = c.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[]).unwrap().get(0);
    let ours = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((25.0..40.0).contains(&(theirs - ours)), "C's clock is {:.1} s off, not 30 s ahead", theirs - ours);

    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    for _ in 0..3 {
        workload(&mut a, &mut b, &mut rng, 20);
        std::thread::sleep(Duration::from_secs(4));
    }
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    check_apply_log(&mut c);
    assert_eq!(reinit_requests(&mut c), before, "the skew caused a REINITIALIZE:\n{}", sources_view(&mut c));
    let states: Vec<String> =
        c.query("SELECT state FROM pgtrickle.federation_sources", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(states.iter().all(|s| s == "streaming"), "{states:?}");
}
