//! Faults with real processes. Exactly once (on Kafka and on NATS JetStream): C's apply log shows every source's
//! seqs once, in order, with no gap, across SIGKILL of A's publisher, of C's postmaster, of the coordinator leader,
//! and of the change log's server on persistent storage, each in the middle of a workload. Change-log data loss
//! (a Kafka broker restarted empty, a purged JetStream stream) makes C ask for a REINITIALIZE, visible in the
//! status view, and C converges. Coordinators down: the apply stalls with the reason in the view and resumes by
//! itself.

use std::time::Duration;

use rand::SeedableRng;
use shared_model::Backend;
use testkit::changelog::LogServer;
use testkit::federation::Federation;
use testkit::seed::*;
use testkit::wait_for;

/// `converge`, and on failure the three clusters' logs (a worker that crashed shows there).
fn converge_or_show(
    fed: &Federation,
    a: &mut postgres::Client,
    b: &mut postgres::Client,
    c: &mut postgres::Client,
    within: Duration,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| converge(fed, a, b, c, within)));
    if let Err(panic) = outcome {
        let what = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        panic!(
            "did not converge: {what}\nA log:\n{}\nB log:\n{}\nC log:\n{}",
            tail(&fed.clusters[0].log()),
            tail(&fed.clusters[1].log()),
            tail(&fed.clusters[2].log())
        );
    }
}

/// Where a kill must find work in flight.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    /// A made a batch its publisher has not yet had recorded.
    OnA,
    /// The log recorded a batch C has not applied.
    OnC,
    /// Either.
    Anywhere,
}

/// Writes one statement at a time until work is in flight where `at` says, and returns what was found; the caller
/// kills at once. A kill that lands on an idle federation proves nothing, so not finding any fails the test.
fn drive_until_in_flight(
    fed: &Federation,
    a: &mut postgres::Client,
    b: &mut postgres::Client,
    c: &mut postgres::Client,
    rng: &mut rand::rngs::StdRng,
    at: InFlight,
) -> String {
    for _ in 0..2000 {
        workload(a, b, rng, 1);
        let found = match at {
            InFlight::OnA => unpublished(a),
            InFlight::OnC => unapplied(fed, c),
            InFlight::Anywhere => unpublished(a).or_else(|| unpublished(b)).or_else(|| unapplied(fed, c)),
        };
        if let Some(found) = found {
            return found;
        }
    }
    panic!("no work in flight ({at:?}) after 2000 statements:\n{}", sources_view(c));
}

testkit::backend_tests!(exactly_once_across_crashes, change_log_loss_is_detected_and_reinitialized);

fn exactly_once_across_crashes(backend: Backend) {
    let server = LogServer::start_persistent(backend).expect("change-log server");
    let fed = Federation::start_with(server, 3, &[]).expect("federation");
    let (mut a, mut b) = setup_sources(&fed);
    let mut c = fed.connect(2).unwrap();
    create_dashboard(&mut c, fed.backend());
    converge_or_show(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut fed = fed;

    // A's publisher dies mid-stream, with a batch of A's not yet recorded (the whole of A restarts its backends,
    // as PostgreSQL does after a crash).
    workload(&mut a, &mut b, &mut rng, 30);
    let ready =
        |fed: &Federation| fed.clusters[0].log().matches("database system is ready to accept connections").count();
    let ready_before = ready(&fed);
    let in_flight = drive_until_in_flight(&fed, &mut a, &mut b, &mut c, &mut rng, InFlight::OnA);
    let killed = fed.clusters[0].kill_backend("pg_trickle publisher").unwrap();
    assert!(killed.is_some(), "A has no publisher running");
    println!("publisher SIGKILL with {in_flight}");
    // PostgreSQL answers a crashed child by ending every backend and recovering: wait for that to finish.
    let recovered = wait_for(Duration::from_secs(60), || (ready(&fed) > ready_before).then_some(()));
    assert!(recovered.is_some(), "A did not recover:\n{}", fed.clusters[0].log());
    a = fed.reconnect(0);
    workload(&mut a, &mut b, &mut rng, 30);
    converge_or_show(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    println!("publisher SIGKILL: converged, apply log {:?}", check_apply_log(&mut c));

    // C's postmaster dies mid-apply: with batches recorded that C has not applied.
    workload(&mut a, &mut b, &mut rng, 30);
    let in_flight = drive_until_in_flight(&fed, &mut a, &mut b, &mut c, &mut rng, InFlight::OnC);
    drop(c);
    fed.clusters[2].crash_and_restart().unwrap();
    println!("C postmaster SIGKILL with {in_flight}");
    c = fed.reconnect(2);
    workload(&mut a, &mut b, &mut rng, 30);
    converge_or_show(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    println!("C postmaster SIGKILL: converged, apply log {:?}", check_apply_log(&mut c));

    // The coordinator leader dies; a new one is elected and the old one comes back.
    workload(&mut a, &mut b, &mut rng, 30);
    let leader = fed.coordinators.leader().expect("a leader");
    let in_flight = drive_until_in_flight(&fed, &mut a, &mut b, &mut c, &mut rng, InFlight::Anywhere);
    fed.coordinators.kill(leader);
    println!("coordinator leader SIGKILL with {in_flight}");
    workload(&mut a, &mut b, &mut rng, 30);
    converge_or_show(&fed, &mut a, &mut b, &mut c, Duration::from_secs(90));
    fed.coordinators.restart(leader).unwrap();
    println!("coordinator leader {leader} SIGKILL: converged, apply log {:?}", check_apply_log(&mut c));

    // The broker (persistent storage) dies and restarts mid-stream: nothing is lost, no snapshot is needed.
    workload(&mut a, &mut b, &mut rng, 30);
    let in_flight = drive_until_in_flight(&fed, &mut a, &mut b, &mut c, &mut rng, InFlight::Anywhere);
    fed.broker.restart().unwrap();
    println!("broker SIGKILL with {in_flight}");
    workload(&mut a, &mut b, &mut rng, 30);
    converge_or_show(&fed, &mut a, &mut b, &mut c, Duration::from_secs(120));
    let seqs = check_apply_log(&mut c);
    println!("broker SIGKILL + restart (persistent): converged, apply log {seqs:?}");
    let snapshots: i64 =
        c.query_one("SELECT count(*) FROM pgtrickle.pgt_apply_log WHERE kind = 'snapshot'", &[]).unwrap().get(0);
    if snapshots != 2 {
        // Why the consumer asked for a snapshot, and what the publisher did around the broker's restart.
        let grep = |log: String, words: &[&str]| -> String {
            log.lines().filter(|l| words.iter().any(|w| l.contains(w))).collect::<Vec<_>>().join("\n")
        };
        panic!(
            "{snapshots} snapshots applied, expected only the two bootstrap ones: no data was lost anywhere\n\
             C:\n{}\nA:\n{}\nbroker:\n{}",
            grep(fed.clusters[2].log(), &["snapshot", "lost", "missing", "reinit"]),
            grep(fed.clusters[0].log(), &["publisher", "snapshot"]),
            tail(&fed.broker.log())
        );
    }
}

/// Kafka: the broker restarted with empty storage; NATS: the federation's stream purged.
fn change_log_loss_is_detected_and_reinitialized(backend: Backend) {
    let (mut fed, mut a, mut b, c) = seed_federation_on(backend, 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // C is down while A and B publish: the log records batches C has not read when the change log loses them.
    drop(c);
    fed.clusters[2].stop().unwrap();
    workload(&mut a, &mut b, &mut rng, 40);
    let published = wait_for(Duration::from_secs(60), || {
        (unpublished(&mut a).is_none() && unpublished(&mut b).is_none()).then_some(())
    });
    assert!(published.is_some(), "A and B did not publish: {:?} {:?}", unpublished(&mut a), unpublished(&mut b));
    fed.lose_change_log().unwrap();
    workload(&mut a, &mut b, &mut rng, 40);
    fed.clusters[2].start().unwrap();
    let mut c = fed.reconnect(2);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(120))
    }));
    if outcome.is_err() {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cp {}/core* /tmp/ 2>/dev/null; ls {}",
                fed.clusters[2].data_dir.display(),
                fed.clusters[2].data_dir.display()
            ))
            .status();
        panic!("C log:\n{}", tail(&fed.clusters[2].log()));
    }
    let seqs = check_apply_log(&mut c);
    let row = c
        .query_one(
            "SELECT sum(reinit_requests)::int8, (SELECT count(*) FROM pgtrickle.pgt_apply_log WHERE kind = 'snapshot') \
             FROM pgtrickle.federation_sources",
            &[],
        )
        .unwrap();
    let (requests, snapshots): (i64, i64) = (row.get::<_, Option<i64>>(0).unwrap_or(0), row.get(1));
    println!(
        "{backend}: change log lost: {requests} reinitialize requests, {snapshots} snapshots applied; log {seqs:?}"
    );
    assert!(requests >= 1, "the loss was not noticed:\n{}", sources_view(&mut c));
    assert!(snapshots >= 3, "no snapshot after the bootstrap ones:\n{}", sources_view(&mut c));
}

#[test]
fn coordinators_down_stall_visibly_then_resume() {
    let (mut fed, mut a, mut b, mut c) = seed_federation(3);
    // C has applied everything the log recorded. Now the broker gets a batch the log never records: A's publisher
    // exits right after the broker's ack (fault injection), so the batch sits in the topic, unrecorded.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(unapplied(&fed, &mut c), None);
    let applied_before = apply_log_len(&mut c);
    a.batch_execute("ALTER SYSTEM SET pg_trickle.debug_exit_after_send = on").unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    a.execute("INSERT INTO orders VALUES (100000, 1, 5)", &[]).unwrap();
    let sent = wait_for(Duration::from_secs(30), || {
        fed.clusters[0].log().contains("exiting after the broker acknowledged").then_some(())
    });
    assert!(sent.is_some(), "A's publisher did not send:\n{}", fed.clusters[0].log());
    std::thread::sleep(Duration::from_secs(1)); // C's subscriber reads it meanwhile (and must hold it back)
    assert_eq!(apply_log_len(&mut c), applied_before, "C applied a batch the log never recorded");
    // With the coordinators gone, nothing can be recorded: nothing more may be applied until they are back.
    for index in 0..3 {
        fed.coordinators.kill(index);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    workload(&mut a, &mut b, &mut rng, 20);
    let stalled = wait_for(Duration::from_secs(30), || {
        let detail: Option<String> = c
            .query_one("SELECT max(detail) FROM pgtrickle.federation_sources WHERE state = 'stalled'", &[])
            .unwrap()
            .get(0);
        detail
    });
    let detail = stalled.unwrap_or_else(|| panic!("no stall shown:\n{}", sources_view(&mut c)));
    assert!(detail.contains("coordinator unreachable"), "{detail}");
    // Stalled, and it stays so while A and B keep writing.
    for _ in 0..6 {
        workload(&mut a, &mut b, &mut rng, 10);
        std::thread::sleep(Duration::from_millis(500));
        let applied = apply_log_len(&mut c);
        assert_eq!(applied, applied_before, "C applied batches the log never recorded:\n{}", sources_view(&mut c));
    }
    a.batch_execute("ALTER SYSTEM RESET pg_trickle.debug_exit_after_send").unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    for index in 0..3 {
        fed.coordinators.restart(index).unwrap();
    }
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(120));
    check_apply_log(&mut c);
}

#[test]
fn a_publisher_dying_between_broker_ack_and_frontier_advance_resends_the_same_seq() {
    let (fed, mut a, mut b, mut c) = seed_federation(3);
    let stream = "cluster_a/public.order_agg";
    let before = fed.frontier(stream).seq();
    // Every publisher of A now exits right after the broker acknowledged, before the frontier advance; the
    // scheduler starts a new one, which sends the same batch again, and exits again.
    a.batch_execute("ALTER SYSTEM SET pg_trickle.debug_exit_after_send = on").unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    a.execute("INSERT INTO orders VALUES (100000, 1, 5)", &[]).unwrap();
    let resent = wait_for(Duration::from_secs(30), || {
        fed.clusters[0].log().matches("exiting after the broker acknowledged").count().ge(&3).then_some(())
    });
    assert!(resent.is_some(), "the publisher did not exit after sending:\n{}", fed.clusters[0].log());
    assert_eq!(fed.frontier(stream).seq(), before, "nothing may be recorded while the publisher dies before recording");
    a.batch_execute("ALTER SYSTEM RESET pg_trickle.debug_exit_after_send").unwrap();
    a.batch_execute("SELECT pg_reload_conf()").unwrap();
    converge(&fed, &mut a, &mut b, &mut c, Duration::from_secs(60));
    // The batch is in the topic several times (the recorded copy sits past the unrecorded ones) …
    let frontier = fed.frontier(stream);
    let offset = |seq: u64| frontier.point(seq).unwrap().unwrap().position.offset;
    assert!(
        offset(before + 1) - offset(before) >= 3,
        "expected resent copies between offsets {} and {}",
        offset(before),
        offset(before + 1)
    );
    println!(
        "seq {} recorded at offset {}, seq {before} at {}: {} unrecorded copies in between",
        before + 1,
        offset(before + 1),
        offset(before),
        offset(before + 1) - offset(before) - 1
    );
    // … and C applied it once.
    let seqs = check_apply_log(&mut c);
    assert_eq!(seqs[stream].iter().filter(|s| **s == (before + 1) as i64).count(), 1, "{seqs:?}");
}
