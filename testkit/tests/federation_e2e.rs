//! Federation end to end with real processes (three coordinators, the tansu broker, three PostgreSQL clusters):
//! the seed's dashboard converges and every batch is applied once.

use std::time::Duration;

use rand::SeedableRng;
use testkit::federation::Federation;
use testkit::seed::*;

#[test]
fn eventual_dashboard_converges_and_applies_each_batch_once() {
    let fed = Federation::start(3, &[]).expect("start the federation");
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    let id: String = c
        .query_one(
            &format!("SELECT pgtrickle.create_federated_stream_table('dashboard', '{DASHBOARD}', {SOURCES}, schedule => '200ms')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id, "cluster_c/public.dashboard");
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..5 {
        workload(&mut a, &mut b, &mut rng, 40);
        std::thread::sleep(Duration::from_millis(150));
    }
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let seqs = check_apply_log(&mut c);
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    for (stream, applied) in &seqs {
        assert!(applied.len() >= 2, "{stream}: the workload should have produced deltas: {applied:?}");
    }
    let view = sources_view(&mut c);
    assert!(view.contains("streaming"), "{view}");
}
