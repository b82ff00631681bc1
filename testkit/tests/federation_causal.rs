//! Causal mode against real servers. A writer on B reads what A published (A's stream table, once A's batch is
//! in the coordinators' log) and writes derived rows on B; a checker on C reads the mirrors over and over. In
//! causal mode every (applied seq A, applied seq B) it sees must be a cut of the log (checked against the log
//! afterwards), and B's derived rows never show without their A rows. The same checker run against eventual mode
//! must catch a violation, which shows the check can fail. Both run on each change-log backend (Kafka, NATS).
//!
//! For a few seconds in the middle of each run, applies of A's batches on C fail (a trigger on C's mirror of A
//! refuses them, as a full disk or a broken constraint would): the lag of one source that eventual mode shows
//! and causal mode must hide. Without it, whether eventual mode ever shows a violation is left to timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared_model::apply::is_consistent;
use shared_model::{Backend, StreamId};
use testkit::federation::Federation;
use testkit::wait_for;

const STREAM_A: &str = "cluster_a/public.a_events";
const STREAM_B: &str = "cluster_b/public.b_derived";

struct Observed {
    pairs: Vec<(u64, u64)>,
    orphans: usize,
}

fn run(backend: Backend, consistency: &str, stop_at_first_violation: bool) -> (Federation, Observed) {
    let fed = Federation::start_on(backend, 3, &[]).expect("start the federation");
    let mut a = fed.connect(0).unwrap();
    let mut b = fed.connect(1).unwrap();
    let mut c = fed.connect(2).unwrap();
    a.batch_execute(
        "CREATE TABLE events (id int PRIMARY KEY, note text);
         SELECT pgtrickle.create_stream_table('a_events', 'SELECT id, note FROM events', schedule => '50ms');
         SELECT pgtrickle.publish_stream_table('a_events');",
    )
    .unwrap();
    b.batch_execute(
        "CREATE TABLE derived (id int PRIMARY KEY, source_id int NOT NULL);
         SELECT pgtrickle.create_stream_table('b_derived', 'SELECT id, source_id FROM derived', schedule => '50ms');
         SELECT pgtrickle.publish_stream_table('b_derived');",
    )
    .unwrap();
    let schedule = if consistency == "causal" { "" } else { ", schedule => '100ms'" };
    c.batch_execute(&format!(
        "SELECT pgtrickle.create_federated_stream_table('joined', \
           'SELECT d.id, d.source_id, e.note FROM cluster_b.b_derived d JOIN cluster_a.a_events e ON e.id = d.source_id', \
           ARRAY['{backend}://coordinator/cluster_a/a_events', '{backend}://coordinator/cluster_b/b_derived'], \
           consistency => '{consistency}'{schedule})"
    ))
    .unwrap();
    let bootstrapped = wait_for(Duration::from_secs(60), || {
        let n: i64 =
            c.query_one("SELECT count(*) FROM pgtrickle.federation_sources WHERE applied_seq > 0", &[]).unwrap().get(0);
        (n == 2).then_some(())
    });
    assert!(bootstrapped.is_some(), "mirrors not bootstrapped");
    // The stall of A's applies on C, off until `stalled` has a row.
    c.batch_execute(
        "CREATE TABLE stalled (why text NOT NULL);
         CREATE FUNCTION refuse_while_stalled() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM stalled) THEN RAISE EXCEPTION 'applies of cluster_a are stalled by the test'; END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER stall_applies BEFORE INSERT OR UPDATE OR DELETE ON cluster_a.a_events
           FOR EACH STATEMENT EXECUTE FUNCTION refuse_while_stalled();",
    )
    .unwrap();

    // The checker: one statement per sample, so it sees one snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let violated = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let checker = {
        let stop = stop.clone();
        let violated = violated.clone();
        let seen = seen.clone();
        let mut c = fed.connect(2).unwrap();
        std::thread::spawn(move || {
            let mut observed = Observed { pairs: Vec::new(), orphans: 0 };
            while !stop.load(Ordering::Relaxed) {
                let row = c
                    .query_one(
                        "SELECT (SELECT applied_seq FROM pgtrickle.pgt_federation_sources WHERE stream_id = $1), \
                                (SELECT applied_seq FROM pgtrickle.pgt_federation_sources WHERE stream_id = $2), \
                                (SELECT count(*) FROM cluster_b.b_derived d \
                                 WHERE NOT EXISTS (SELECT 1 FROM cluster_a.a_events e WHERE e.id = d.source_id))",
                        &[&STREAM_A, &STREAM_B],
                    )
                    .unwrap();
                let pair = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
                let orphans = row.get::<_, i64>(2) as usize;
                if orphans > 0 {
                    observed.orphans += 1;
                    violated.store(true, Ordering::Relaxed);
                }
                if observed.pairs.last() != Some(&pair) {
                    observed.pairs.push(pair);
                    seen.lock().unwrap().push(pair);
                }
            }
            observed
        })
    };

    // The writer: each event on A, once A's batch carrying it is in the log, gets a derived row on B.
    let started = Instant::now();
    let mut checked = Instant::now();
    let mut id = 0;
    let mut stall = Stall::Before;
    while started.elapsed() < Duration::from_secs(if stop_at_first_violation { 60 } else { 15 }) {
        stall = stall.at(started.elapsed(), &mut c);
        // Looking for a violation: check what was seen against the log every 2 s, and stop at the first.
        if stop_at_first_violation && checked.elapsed() > Duration::from_secs(2) {
            checked = Instant::now();
            let pairs = seen.lock().unwrap().clone();
            if !inconsistent(&fed, &pairs).is_empty() {
                break;
            }
        }
        id += 1;
        a.execute("INSERT INTO events VALUES ($1, 'event ' || $1::int)", &[&id]).unwrap();
        // Several independent events on A too, so A's batches interleave with B's in the log.
        a.execute("INSERT INTO events VALUES ($1 + 1000000, 'noise')", &[&id]).unwrap();
        let published = wait_for(Duration::from_secs(20), || {
            let row = a
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM a_events WHERE id = $1), \
                            (SELECT p.published_seq >= st.last_batch_seq FROM pgtrickle.pgt_publications p \
                             JOIN pgtrickle.pgt_stream_tables st USING (pgt_id))",
                    &[&id],
                )
                .unwrap();
            (row.get::<_, bool>(0) && row.get::<_, bool>(1)).then_some(())
        });
        assert!(published.is_some(), "event {id} never published on A");
        b.execute("INSERT INTO derived VALUES ($1, $1)", &[&id]).unwrap();
        if stop_at_first_violation && violated.load(Ordering::Relaxed) {
            break;
        }
    }
    stall.at(STALL_ENDS, &mut c);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let observed = checker.join().unwrap();
    (fed, observed)
}

/// When, after the writer starts, applies of A's batches on C are stalled.
const STALL_BEGINS: Duration = Duration::from_secs(3);
const STALL_ENDS: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, PartialEq)]
enum Stall {
    Before,
    On,
    Over,
}

impl Stall {
    /// Turns the stall on or off as `elapsed` enters or leaves its window.
    fn at(self, elapsed: Duration, c: &mut postgres::Client) -> Stall {
        match self {
            Stall::Before if elapsed >= STALL_BEGINS => {
                c.execute("INSERT INTO stalled VALUES ('a test of lag on one source')", &[]).unwrap();
                Stall::On
            }
            Stall::On if elapsed >= STALL_ENDS => {
                c.execute("DELETE FROM stalled", &[]).unwrap();
                Stall::Over
            }
            other => other,
        }
    }
}

/// The pairs that are not cuts of the log (pairs with a side not bootstrapped yet are skipped).
fn inconsistent(fed: &Federation, pairs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let frontiers: BTreeMap<StreamId, shared_model::Frontier> =
        [STREAM_A, STREAM_B].iter().map(|s| (StreamId::parse(s).unwrap(), fed.frontier(s))).collect();
    pairs
        .iter()
        .filter(|(a, b)| *a > 0 && *b > 0)
        .filter(|(a, b)| {
            let applied: BTreeMap<StreamId, u64> =
                [(StreamId::parse(STREAM_A).unwrap(), *a), (StreamId::parse(STREAM_B).unwrap(), *b)]
                    .into_iter()
                    .collect();
            !is_consistent(&applied, &frontiers)
        })
        .copied()
        .collect()
}

testkit::backend_tests!(causal_mode_shows_only_cuts_of_the_log, eventual_mode_fails_the_same_check);

fn causal_mode_shows_only_cuts_of_the_log(backend: Backend) {
    let (fed, observed) = run(backend, "causal", false);
    let bad = inconsistent(&fed, &observed.pairs);
    let distinct = observed.pairs.iter().filter(|(a, b)| *a > 0 && *b > 0).count();
    println!(
        "{backend} causal: {distinct} distinct (A, B) pairs observed, {} not cuts, {} with orphans",
        bad.len(),
        observed.orphans
    );
    assert!(distinct >= 10, "too few cuts observed to mean anything: {:?}", observed.pairs);
    assert!(bad.is_empty(), "pairs that are not cuts of the log: {bad:?}");
    assert_eq!(observed.orphans, 0, "B's derived rows were seen without their A rows");
    // The federated table itself was refreshed in the cut transactions and matches its query over the mirrors.
    let mut c = fed.connect(2).unwrap();
    let diff: i64 = c
        .query_one(
            "SELECT count(*) FROM ((SELECT id, source_id, note FROM joined EXCEPT ALL \
               SELECT d.id, d.source_id, e.note FROM cluster_b.b_derived d JOIN cluster_a.a_events e ON e.id = d.source_id) \
             UNION ALL (SELECT d.id, d.source_id, e.note FROM cluster_b.b_derived d JOIN cluster_a.a_events e \
               ON e.id = d.source_id EXCEPT ALL SELECT id, source_id, note FROM joined)) x",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(diff, 0);
}

fn eventual_mode_fails_the_same_check(backend: Backend) {
    let (fed, observed) = run(backend, "eventual", true);
    let bad = inconsistent(&fed, &observed.pairs);
    println!(
        "{backend} eventual: {} pairs observed, {} not cuts of the log (e.g. {:?}), {} samples with orphans",
        observed.pairs.len(),
        bad.len(),
        bad.first(),
        observed.orphans
    );
    assert!(
        !bad.is_empty() || observed.orphans > 0,
        "the checker saw no violation in eventual mode: {:?}",
        observed.pairs
    );
}
