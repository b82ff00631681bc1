//! One run: the setup (clusters registered, two streams published, one federated table over both), the workers
//! (two publishers refreshing and publishing, one subscriber applying), the nemesis that injects a fault every
//! few hundred simulated milliseconds, the heal (every fault undone, nodes restarted, producer refreshes stopped)
//! and the final checks.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand08::rngs::StdRng;
use rand08::{Rng, SeedableRng};
use shared_model::{
    Applied, ClusterName, ColumnDef, Command, Consistency, Event, Executed, FederatedTableId, SourceUrl, StreamId,
    SystemIdentifier,
};

use crate::broker::Broker;
use crate::checks::{check_agreement, check_once, Checker};
use crate::coordinators::{Coordinators, NODES};
use crate::history::History;
use crate::net::{LinkFaults, Net};
use crate::world::{world_key, ConsumerWorker, ProducerDb, ProducerWorker, SentArchive, WorkerFaults};
use crate::{linearizability, Options, Outcome};

/// A bug planted on purpose, to show that the checkers find it. Never in a real run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// The log store acknowledges an append before it is durable.
    AckBeforeFlush,
    /// The consumer applies batches past the committed frontier.
    ApplyPastFrontier,
    /// The producer adopts a log ahead of the batches it proposed.
    AdoptLogAhead,
    /// The consumer applies a copy of a seq other than the recorded one.
    ApplyOtherCopy,
    /// The fold skips the idempotency check (a retried request takes effect twice).
    SkipIdempotency,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 5] =
        [Bug::AckBeforeFlush, Bug::ApplyPastFrontier, Bug::AdoptLogAhead, Bug::ApplyOtherCopy, Bug::SkipIdempotency];

    /// The protocol machines' switch for it, when it lives there.
    fn in_machines(self) -> Option<shared_model::planted::Bug> {
        use shared_model::planted::Bug as Planted;
        match self {
            Bug::AckBeforeFlush => None,
            Bug::ApplyPastFrontier => Some(Planted::ApplyPastFrontier),
            Bug::AdoptLogAhead => Some(Planted::AdoptLogAhead),
            Bug::ApplyOtherCopy => Some(Planted::ApplyOtherCopy),
            Bug::SkipIdempotency => Some(Planted::SkipIdempotency),
        }
    }
}

/// What the nemesis tells the workers.
#[derive(Default)]
struct Control {
    stop: bool,
    refreshing: bool,
    faults: WorkerFaults,
    restart_producer: [bool; 2],
    restart_consumer: bool,
    consumer_skew_ms: i64,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stream(id: &str) -> StreamId {
    StreamId::parse(id).expect("a valid stream id")
}

async fn must(coordinators: &Coordinators, command: Command) -> Applied {
    for _ in 0..50 {
        match coordinators.write("setup", command.clone()).await {
            Ok(Executed { result: Ok(applied), .. }) => return applied,
            Ok(executed) => panic!("setup command refused: {:?}", executed.result),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("setup did not complete");
}

/// The producer epoch a registration or takeover handed out.
fn registered_epoch(applied: &Applied) -> Option<u64> {
    applied.events.iter().find_map(|e| match e {
        Event::ClusterRegistered { producer_epoch, .. } | Event::ClusterTakenOver { producer_epoch, .. } => {
            Some(*producer_epoch)
        }
        _ => None,
    })
}

/// The operator's repair after a failover: the restored server takes its cluster name over; on success its
/// catalog holds the new epoch and its publisher restarts the stream. Whether it committed.
async fn take_over(coordinators: &Coordinators, history: &History, source: &StreamId, db: &Shared<ProducerDb>) -> bool {
    let (system_identifier, known) = {
        let db = lock(db);
        (db.system_identifier, db.epoch)
    };
    let command = Command::RegisterCluster {
        name: source.cluster().clone(),
        endpoint: format!("postgres://{}", source.cluster()),
        capabilities: BTreeSet::new(),
        system_identifier,
        known_epoch: Some(known),
        takeover: true,
    };
    match coordinators.write("operator", command).await {
        Ok(Executed { result: Ok(applied), .. }) => {
            let epoch = registered_epoch(&applied).expect("a takeover event");
            lock(db).epoch = epoch;
            history.note(format!("nemesis: {} taken over under epoch {epoch}", source.cluster()));
            true
        }
        other => {
            history.note(format!("nemesis: takeover of {} did not commit: {other:?}", source.cluster()));
            false
        }
    }
}

/// Runs one seed (inside the run's runtime).
pub async fn run(options: Options) -> Outcome {
    let seed = options.seed;
    let started = tokio::time::Instant::now();
    let history = History::default();
    history.start_clock();
    let net = Net::new(seed);
    let broker = Broker::default();
    let archive = SentArchive::default();
    shared_model::planted::plant(options.bug.and_then(Bug::in_machines));
    let coordinators =
        Coordinators::start(net.clone(), history.clone(), options.bug == Some(Bug::AckBeforeFlush)).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let causal = rng.gen_bool(0.5);

    // Setup.
    let sources = [stream("cluster_a/public.s"), stream("cluster_b/public.t")];
    let mut epochs = Vec::new();
    for (i, cluster) in ["cluster_a", "cluster_b", "cluster_c"].into_iter().enumerate() {
        let command = Command::RegisterCluster {
            name: ClusterName::parse(cluster).expect("a valid name"),
            endpoint: format!("postgres://{cluster}"),
            capabilities: BTreeSet::new(),
            system_identifier: SystemIdentifier(7_000 + i as u64),
            known_epoch: None,
            takeover: false,
        };
        let applied = must(&coordinators, command).await;
        epochs.push(registered_epoch(&applied).expect("a registration event"));
    }
    must(&coordinators, Command::IssueMessageKey { key: world_key() }).await;
    let mut incarnations = Vec::new();
    for source in &sources {
        let command = Command::PublishStream {
            stream: source.clone(),
            columns: vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "text")],
            upstream: BTreeSet::new(),
            base_seq: 0,
        };
        let applied = must(&coordinators, command).await;
        let incarnation = applied.events.iter().find_map(|e| match e {
            Event::StreamPublished { incarnation, .. } => Some(*incarnation),
            _ => None,
        });
        incarnations.push(incarnation.expect("a publication event"));
    }
    let urls = sources
        .iter()
        .map(|s| {
            SourceUrl::parse(&format!("kafka://coordinator/{}/{}", s.cluster(), s.0.qualified_name()))
                .expect("a valid url")
        })
        .collect();
    let consistency = if causal { Consistency::Causal } else { Consistency::Eventual };
    let table = FederatedTableId::parse("cluster_c/public.dash").expect("a valid id");
    must(&coordinators, Command::CreateFederatedTable { table, sources: urls, consistency }).await;
    history.note(format!("setup done: {consistency:?} federated table over {sources:?}"));

    // The producers' databases: a few rows, and the bootstrap snapshot batch.
    let dbs: Vec<Shared<ProducerDb>> = (0..2)
        .map(|i| {
            let mut db = ProducerDb {
                system_identifier: SystemIdentifier(7_000 + i),
                epoch: epochs[i as usize],
                incarnation: incarnations[i as usize],
                ..ProducerDb::default()
            };
            let mut local = StdRng::seed_from_u64(seed.wrapping_add(100 + i));
            for _ in 0..3 {
                db.refresh(&mut local);
            }
            db.buffer.clear();
            db.last_batch_seq = 0;
            db.snapshot();
            Arc::new(Mutex::new(db))
        })
        .collect();
    let control: Shared<Control> = Arc::new(Mutex::new(Control { refreshing: true, ..Control::default() }));
    let checker = Checker { history: history.clone(), archive: archive.clone() };

    let mut tasks = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let mut worker = ProducerWorker::new(
            source.clone(),
            dbs[i].clone(),
            broker.clone(),
            coordinators.clone(),
            history.clone(),
            archive.clone(),
        );
        let control = control.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(10 + i as u64));
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (stop, refreshing, faults, restart) = {
                    let mut c = lock(&control);
                    let restart = std::mem::take(&mut c.restart_producer[i]);
                    (c.stop, c.refreshing, c.faults, restart)
                };
                if stop {
                    break;
                }
                if restart {
                    worker.restart();
                }
                if refreshing && rng.gen_range(0..3) == 0 {
                    lock(&worker.db).refresh(&mut rng);
                }
                worker.round(faults, &mut rng).await;
            }
        }));
    }
    let consumer = Arc::new(tokio::sync::Mutex::new(ConsumerWorker::new(
        sources.to_vec(),
        consistency,
        broker.clone(),
        coordinators.clone(),
        history.clone(),
        checker,
    )));
    {
        let consumer = consumer.clone();
        let control = control.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(20));
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let (stop, faults, restart, skew) = {
                    let mut c = lock(&control);
                    (c.stop, c.faults, std::mem::take(&mut c.restart_consumer), c.consumer_skew_ms)
                };
                if stop {
                    break;
                }
                let mut worker = consumer.lock().await;
                if restart {
                    worker.restart();
                }
                worker.skew_ms = skew;
                worker.round(faults, &mut rng).await;
            }
        }));
    }

    // Faults.
    let mut faults = 0;
    let mut backups: Vec<Option<ProducerDb>> = vec![None, None];
    let mut failed_over = [false; 2];
    let mut taken_over = [false; 2];
    while started.elapsed() < Duration::from_millis(options.fault_ms) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1_000))).await;
        faults += 1;
        let up = coordinators.up();
        match rng.gen_range(0..16) {
            0 | 1 => {
                let node = NODES[rng.gen_range(0..3)];
                if up.contains(&node) {
                    let lost = coordinators.crash(node).unwrap_or_default();
                    history.note(format!("nemesis: node {node} crashes ({lost})"));
                } else {
                    coordinators.restart(node).await;
                    history.note(format!("nemesis: node {node} restarts"));
                }
            }
            2 | 3 => {
                // A partition: one node cut off, both ways or one way only.
                let node = NODES[rng.gen_range(0..3)];
                let one_way = rng.gen_bool(0.4);
                let mut cut = BTreeSet::new();
                for other in NODES.iter().filter(|n| **n != node) {
                    cut.insert((node, *other));
                    if !one_way {
                        cut.insert((*other, node));
                    }
                }
                let mut link = net.faults();
                link.cut = cut;
                net.set_faults(link);
                history.note(format!(
                    "nemesis: node {node} partitioned ({})",
                    if one_way { "its messages out lost" } else { "both ways" }
                ));
            }
            4 => {
                let mut link = net.faults();
                link.cut.clear();
                net.set_faults(link);
                history.note("nemesis: partitions healed");
            }
            5 => {
                let link = LinkFaults {
                    cut: net.faults().cut,
                    loss_pct: rng.gen_range(0..25),
                    duplicate_pct: rng.gen_range(0..15),
                    max_delay_ms: rng.gen_range(0..120),
                };
                history.note(format!(
                    "nemesis: messages {}% lost, {}% duplicated, delayed up to {} ms",
                    link.loss_pct, link.duplicate_pct, link.max_delay_ms
                ));
                net.set_faults(link);
            }
            6 => {
                let node = NODES[rng.gen_range(0..3)];
                let fsync = Duration::from_millis(if rng.gen_bool(0.5) { rng.gen_range(20..300) } else { 1 });
                coordinators.disk(node).set_fsync(fsync);
                history.note(format!("nemesis: node {node} disk fsync takes {fsync:?}"));
            }
            7 => {
                let mut c = lock(&control);
                c.faults = WorkerFaults {
                    lost_ack_pct: rng.gen_range(0..20),
                    redeliver_pct: rng.gen_range(0..30),
                    apply_fail_pct: rng.gen_range(0..15),
                };
                history.note(format!("nemesis: worker faults {:?}", c.faults));
            }
            8 => {
                let i = rng.gen_range(0..2);
                lock(&control).restart_producer[i] = true;
                history.note(format!("nemesis: publisher of {} crashes and restarts", sources[i]));
            }
            9 => {
                lock(&control).restart_consumer = true;
                history.note("nemesis: subscriber crashes and restarts");
            }
            10 => match rng.gen_range(0..4) {
                0 => {
                    let lost = broker.lose_tail(rng.gen_range(1..4));
                    history
                        .note(format!("nemesis: broker restarts without its last acknowledged messages ({lost} lost)"));
                }
                1 => {
                    let lost = broker.lose_everything();
                    history.note(format!("nemesis: broker restarts empty ({lost} messages lost)"));
                }
                _ => {
                    broker.restart();
                    history.note("nemesis: broker restarts (nothing lost)");
                }
            },
            11 => {
                let i = rng.gen_range(0..2);
                backups[i] = Some(lock(&dbs[i]).clone());
                history.note(format!("nemesis: backup of {}'s database taken", sources[i]));
            }
            12 => {
                let i = rng.gen_range(0..2);
                if let Some(backup) = backups[i].clone() {
                    history.note(format!(
                        "nemesis: {} fails over to a server restored from the backup (last batch {}, published {})",
                        sources[i], backup.last_batch_seq, backup.published_seq
                    ));
                    let mut db = lock(&dbs[i]);
                    let server = db.server + 1;
                    *db = ProducerDb { server, ..backup };
                    lock(&control).restart_producer[i] = true;
                    failed_over[i] = true;
                    taken_over[i] = false;
                }
            }
            14 => {
                // The operator repairs a failed-over producer: a takeover under a new epoch (one attempt; the
                // heal repeats it until it commits).
                let i = rng.gen_range(0..2);
                if failed_over[i] && !taken_over[i] {
                    taken_over[i] = take_over(&coordinators, &history, &sources[i], &dbs[i]).await;
                }
            }
            13 => {
                let skew = rng.gen_range(-60_000..60_000);
                lock(&control).consumer_skew_ms = skew;
                history.note(format!("nemesis: the consumer's wall clock is {skew} ms off"));
            }
            _ => {
                // A quiet spell.
            }
        }
    }

    // Heal: every fault undone, every node up; then the producers stop refreshing so that everything settles.
    history.note("nemesis: heal");
    net.set_faults(LinkFaults::default());
    for node in NODES {
        coordinators.disk(node).set_fsync(Duration::from_millis(1));
        coordinators.restart(node).await;
    }
    {
        let mut c = lock(&control);
        c.faults = WorkerFaults::default();
        c.consumer_skew_ms = 0;
    }
    for i in 0..2 {
        while failed_over[i] && !taken_over[i] {
            taken_over[i] = take_over(&coordinators, &history, &sources[i], &dbs[i]).await;
            if !taken_over[i] {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(options.heal_ms / 3)).await;
    lock(&control).refreshing = false;
    history.note("refreshes stop");
    tokio::time::sleep(Duration::from_millis(options.heal_ms - options.heal_ms / 3)).await;
    lock(&control).stop = true;
    for task in tasks {
        let _ = task.await;
    }
    history.note("run over: checking");

    // Final checks.
    check_agreement(&history);
    check_once(&history);
    let acyclic = history.committed_state(|s| s.is_none_or(|s| s.dag().is_acyclic()));
    if !acyclic {
        history.violation("the global DAG has a cycle");
    }
    let operations = history.operations();
    if let Err(e) = linearizability::check(&operations) {
        history.violation(format!(
            "frontier operations on {} are not linearizable ({} operations):\n    {}",
            e.stream, e.operations, e.detail
        ));
    }
    let worker = consumer.lock().await;
    // Every failed-over producer was taken over by the heal: all sources must have caught up.
    for (i, source) in sources.iter().enumerate() {
        let committed = history.committed_frontier(source).map_or(0, |f| f.seq());
        let (applied, _) = worker.db.applied[source];
        if applied != committed {
            history.violation(format!("{source}: the consumer applied up to {applied}; the log committed {committed}"));
        }
        let db = lock(&dbs[i]);
        match &db.last_error {
            Some(error) => history.violation(format!("{source}: the publisher still fails after the heal: {error}")),
            None => {
                if db.published_seq != db.last_batch_seq {
                    history.violation(format!(
                        "{source}: published {} of {} batches after the heal",
                        db.published_seq, db.last_batch_seq
                    ));
                } else if committed == db.last_batch_seq
                    && applied == committed
                    && worker.db.mirrors[source] != db.table
                {
                    history.violation(format!(
                        "{source}: the consumer's mirror ({} rows) differs from the producer's table ({} rows)",
                        worker.db.mirrors[source].len(),
                        db.table.len()
                    ));
                }
            }
        }
    }
    let applied_batches = worker.db.applies;
    shared_model::planted::plant(None);
    Outcome {
        seed,
        violations: history.violations(),
        trace: history.trace(),
        applied_batches,
        operations: operations.len(),
        faults,
    }
}
