//! Property tests of the model: random command sequences over a small universe of names (so that collisions,
//! cycles, cascades and gaps are frequent), checked against the invariants of docs/ARCHITECTURE.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use shared_model::frontier::consistent_window;
use shared_model::*;

/// A command in the abstract; turned into a concrete command against the state at the moment it runs, so that
/// sequences stay meaningful (mostly valid frontier seqs, existing names) while still hitting every error.
#[derive(Debug, Clone)]
enum Intent {
    Register(u8),
    Deregister(u8, bool),
    Publish {
        cluster: u8,
        name: u8,
        upstream: Vec<(bool, u8)>,
        wide: bool,
    },
    Unpublish(u8, u8, bool),
    Federate {
        cluster: u8,
        name: u8,
        sources: Vec<(u8, u8)>,
        causal: bool,
    },
    Drop(u8, u8, bool),
    /// Advances of the first entry's cluster; the fence is the current one, or (1 in 8) a stale epoch or
    /// another server's identifier.
    Advance(Vec<(u8, u8, i8)>, u8),
    Reinit(u8, u8),
    /// Another server (identifier `1000 + n`) takes the cluster name over.
    Takeover(u8, u8),
}

const CLUSTERS: u8 = 4;
const NAMES: u8 = 4;

fn intent() -> impl Strategy<Value = Intent> {
    let c = 0..CLUSTERS;
    let n = 0..NAMES;
    prop_oneof![
        2 => c.clone().prop_map(Intent::Register),
        1 => (c.clone(), any::<bool>()).prop_map(|(c, k)| Intent::Deregister(c, k)),
        4 => (c.clone(), n.clone(), prop::collection::vec((any::<bool>(), n.clone()), 0..3), any::<bool>())
            .prop_map(|(cluster, name, upstream, wide)| Intent::Publish { cluster, name, upstream, wide }),
        1 => (c.clone(), n.clone(), any::<bool>()).prop_map(|(c, n, k)| Intent::Unpublish(c, n, k)),
        4 => (c.clone(), n.clone(), prop::collection::vec((c.clone(), n.clone()), 1..4), any::<bool>())
            .prop_map(|(cluster, name, sources, causal)| Intent::Federate { cluster, name, sources, causal }),
        2 => (c.clone(), n.clone(), any::<bool>()).prop_map(|(c, n, k)| Intent::Drop(c, n, k)),
        8 => (prop::collection::vec((c.clone(), n.clone(), prop_oneof![6 => Just(1i8), 1 => Just(0), 1 => Just(2), 1 => Just(-1), 1 => Just(-2)]), 1..5), 0..16u8)
            .prop_map(|(list, fence)| Intent::Advance(list, fence)),
        1 => (c.clone(), n.clone()).prop_map(|(c, n)| Intent::Reinit(c, n)),
        1 => (c, 0..3u8).prop_map(|(c, n)| Intent::Takeover(c, n)),
    ]
}

fn cname(c: u8) -> String {
    format!("c{c}")
}
fn sid(c: u8, n: u8) -> String {
    format!("c{c}/s{n}")
}

fn concrete(state: &State, intent: &Intent) -> Command {
    match intent {
        Intent::Register(c) => register(&cname(*c)),
        Intent::Deregister(c, cascade) => Command::DeregisterCluster { name: cluster(&cname(*c)), cascade: *cascade },
        Intent::Publish { cluster: c, name, upstream, wide } => {
            let up: Vec<NodeKey> = upstream
                .iter()
                .map(|(fed, n)| {
                    if *fed {
                        NodeKey::Federated(table(&format!("c{c}/s{n}")))
                    } else {
                        NodeKey::Stream(stream(&sid(*c, *n)))
                    }
                })
                .collect();
            let mut cmd = publish(&sid(*c, *name), &up);
            if *wide {
                if let Command::PublishStream { columns, .. } = &mut cmd {
                    columns.push(ColumnDef::new("extra", "text"));
                }
            }
            cmd
        }
        Intent::Unpublish(c, n, cascade) => {
            Command::UnpublishStream { stream: stream(&sid(*c, *n)), cascade: *cascade }
        }
        Intent::Federate { cluster: c, name, sources, causal } => {
            // Federated tables share the stream names, so "a federated table that is itself published" happens.
            let srcs: Vec<String> = sources.iter().map(|(sc, sn)| sid(*sc, *sn)).collect();
            let refs: Vec<&str> = srcs.iter().map(|s| s.as_str()).collect();
            let mut cmd = federate(&format!("c{c}/s{name}"), &refs);
            if let Command::CreateFederatedTable { consistency, .. } = &mut cmd {
                *consistency = if *causal { Consistency::Causal } else { Consistency::Eventual };
            }
            cmd
        }
        Intent::Drop(c, n, cascade) => {
            Command::DropFederatedTable { table: table(&format!("c{c}/s{n}")), cascade: *cascade }
        }
        Intent::Advance(list, fence) => {
            let c = list[0].0;
            let name = cluster(&cname(c));
            let info = state.clusters().get(&name);
            let mut producer = ProducerFence {
                cluster: name.clone(),
                system_identifier: info.map_or(system_identifier(&cname(c)), |i| i.system_identifier),
                producer_epoch: info.map_or(0, |i| i.producer_epoch),
            };
            match fence {
                14 => producer.producer_epoch = producer.producer_epoch.saturating_sub(1),
                15 => producer.system_identifier = SystemIdentifier(producer.system_identifier.0 ^ 1),
                _ => {}
            }
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let advances = list
                .iter()
                .map(|(_, n, delta)| {
                    let id = sid(c, *n);
                    let cur =
                        *next.entry(id.clone()).or_insert_with(|| state.frontier(&stream(&id)).map_or(0, |f| f.seq()));
                    // -1 repeats the previous batch as recorded, -2 repeats the current one from another position.
                    let step = if *delta == -2 { 0 } else { *delta as i64 };
                    let seq = (cur as i64 + step).max(0) as u64;
                    if seq == cur + 1 {
                        next.insert(id.clone(), seq);
                    }
                    let mut adv = advance(&id, seq);
                    if *delta == -2 {
                        adv.position.offset += 1;
                    }
                    adv
                })
                .collect();
            Command::AdvanceFrontier { producer, advances }
        }
        Intent::Reinit(c, n) => Command::RequestReinitialize { stream: stream(&sid(*c, *n)), reason: "test".into() },
        Intent::Takeover(c, n) => {
            let mut command = register(&cname(*c));
            if let Command::RegisterCluster { system_identifier, takeover, .. } = &mut command {
                *system_identifier = SystemIdentifier(1000 + *n as u64);
                *takeover = true;
            }
            command
        }
    }
}

/// Runs the intents, returning the harness and the executed records.
fn run(intents: &[Intent]) -> (Harness, Vec<(Request, Executed)>) {
    let mut h = Harness::new();
    let mut records = Vec::new();
    for (i, intent) in intents.iter().enumerate() {
        let command = concrete(&h.state, intent);
        h.index += 1;
        let request = Request {
            key: IdempotencyKey::new("prop", &i.to_string()).unwrap(),
            command,
            proposed_at_unix_ms: h.index * 7,
        };
        let executed = h.state.execute(h.index, &request);
        records.push((request, executed));
    }
    (h, records)
}

fn sequences() -> impl Strategy<Value = Vec<Intent>> {
    prop::collection::vec(intent(), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn dag_stays_acyclic(intents in sequences()) {
        let mut h = Harness::new();
        for intent in &intents {
            let command = concrete(&h.state, intent);
            let _ = h.run(command);
            prop_assert!(h.state.dag().is_acyclic());
            prop_assert!(h.state.dag().scc_groups().is_empty());
            prop_assert_eq!(h.state.dag().node_count(), h.state.streams().len() + h.state.federated_tables().len());
        }
    }

    #[test]
    fn folding_the_records_reproduces_the_state(intents in sequences()) {
        let (h, records) = run(&intents);
        let mut replayed = State::default();
        for (_, executed) in &records {
            replayed.replay(executed).unwrap();
        }
        prop_assert_eq!(&replayed, &h.state);
        // The derived DAG, rebuilt from data alone, equals the incrementally maintained one.
        let rebuilt: State = codec::decode(&codec::encode(&h.state)).unwrap();
        prop_assert_eq!(rebuilt.dag().to_dot(), h.state.dag().to_dot());
        prop_assert_eq!(rebuilt.dag().edge_count(), h.state.dag().edge_count());
        prop_assert_eq!(replayed.dag().to_dot(), h.state.dag().to_dot());
        // Folding just the events of fresh, successful records gives the same data too.
        let mut folded = State::default();
        for (_, executed) in records.iter().filter(|(_, e)| e.fresh) {
            if let Ok(applied) = &executed.result {
                for event in &applied.events {
                    folded.fold(executed.index, executed.proposed_at_unix_ms, event).unwrap();
                }
            }
        }
        prop_assert_eq!(snapshot_without_cache(&folded), snapshot_without_cache(&h.state));
    }

    #[test]
    fn only_the_current_server_and_epoch_record_batches(intents in sequences()) {
        let mut h = Harness::new();
        for intent in &intents {
            let command = concrete(&h.state, intent);
            let before = h.state.clone();
            let result = h.run(command.clone());
            if let (Command::AdvanceFrontier { producer, .. }, Ok(applied)) = (&command, &result) {
                let current = &before.clusters()[&producer.cluster];
                prop_assert_eq!(producer.system_identifier, current.system_identifier);
                prop_assert_eq!(producer.producer_epoch, current.producer_epoch);
                for event in &applied.events {
                    if let Event::FrontierAdvanced { stream, producer_epoch, .. } = event {
                        prop_assert_eq!(stream.cluster(), &producer.cluster);
                        prop_assert_eq!(*producer_epoch, current.producer_epoch);
                    }
                }
            }
            // Epochs never go back, and a stream's epoch is never newer than its cluster's.
            for (name, info) in h.state.clusters() {
                if let Some(old) = before.clusters().get(name) {
                    prop_assert!(info.producer_epoch >= old.producer_epoch);
                }
            }
            for (id, info) in h.state.streams() {
                prop_assert!(info.producer_epoch <= h.state.clusters()[id.cluster()].producer_epoch);
            }
        }
    }

    #[test]
    fn serialization_round_trips(intents in sequences()) {
        let (h, records) = run(&intents);
        let bytes = codec::encode(&h.state);
        let back: State = codec::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &h.state);
        prop_assert_eq!(codec::encode(&back), bytes);
        for (request, executed) in &records {
            prop_assert_eq!(&codec::decode::<Request>(&codec::encode(request)).unwrap(), request);
            prop_assert_eq!(&codec::decode::<Executed>(&codec::encode(executed)).unwrap(), executed);
            let json = serde_json::to_string(executed).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Executed>(&json).unwrap(), executed);
        }
    }

    #[test]
    fn cuts_are_monotone_and_consistent(intents in sequences()) {
        let (h, _) = run(&intents);
        let last = h.state.last_applied();
        for (id, info) in h.state.federated_tables() {
            // The incrementally kept newest cut is the cut at the current time.
            let now = h.state.cut_at(id, last).unwrap().unwrap();
            prop_assert_eq!(&now.seqs, &info.newest_cut.seqs);
            let mut previous: Option<Cut> = None;
            for t in info.created_at..=last {
                let cut = h.state.cut_at(id, t).unwrap().unwrap();
                if let Some(p) = &previous {
                    for (s, seq) in &cut.seqs {
                        prop_assert!(p.seqs[s] <= *seq, "cut went back at {} for {}", t, s);
                    }
                }
                let window = consistent_window(&cut.seqs, |s| h.state.frontier(s)).unwrap();
                let (lo, hi) = window.expect("every cut is consistent");
                prop_assert!(lo <= t && t <= hi, "cut at {} has window {}..={}", t, lo, hi);
                previous = Some(cut);
            }
        }
    }

    #[test]
    fn idempotent_retries_change_nothing(intents in sequences(), picks in prop::collection::vec(any::<prop::sample::Index>(), 1..10)) {
        let (mut h, records) = run(&intents);
        let before = snapshot_without_cache(&h.state);
        let cache_len = h.state.idempotency().len();
        for pick in picks {
            let (request, first) = &records[pick.index(records.len())];
            h.index += 1;
            let retry = h.state.execute(h.index, request);
            prop_assert!(!retry.fresh);
            prop_assert_eq!(&retry.result, &first.result);
        }
        prop_assert_eq!(snapshot_without_cache(&h.state), before);
        prop_assert_eq!(h.state.idempotency().len(), cache_len);
    }

    /// A node that restarts from a snapshot taken at any point and executes the rest of the log must end where a
    /// node that never stopped ends: same results for every later request, same data, same idempotency cache, same
    /// DAG and subscriber index (which are derived and rebuilt when a snapshot is loaded, never serialized).
    #[test]
    fn a_state_decoded_midway_continues_like_the_uninterrupted_run(
        intents in sequences(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (uninterrupted, records) = run(&intents);
        let midpoint = cut.index(records.len() + 1);
        let mut state = State::default();
        for (request, executed) in &records[..midpoint] {
            state.execute(executed.index, request);
        }
        let mut restored: State = codec::decode(&codec::encode(&state)).unwrap();
        for (request, executed) in &records[midpoint..] {
            let again = restored.execute(executed.index, request);
            prop_assert_eq!(&again, executed, "request {} after a restore at {}", executed.index, midpoint);
        }
        prop_assert_eq!(&restored, &uninterrupted.state);
        prop_assert_eq!(restored.dag().to_dot(), uninterrupted.state.dag().to_dot());
        for id in uninterrupted.state.streams().keys() {
            let ours: Vec<_> = restored.subscribers(id).collect();
            let theirs: Vec<_> = uninterrupted.state.subscribers(id).collect();
            prop_assert_eq!(ours, theirs, "subscribers of {}", id);
        }
    }

    /// A rejected command leaves no trace in the data: executing only the accepted requests, at the same log
    /// indexes, gives the same clusters, streams, frontiers and federated tables.
    #[test]
    fn rejected_commands_can_be_left_out_of_the_log(intents in sequences()) {
        let (h, records) = run(&intents);
        let mut accepted_only = State::default();
        for (request, executed) in records.iter().filter(|(_, e)| e.result.is_ok()) {
            let again = accepted_only.execute(executed.index, request);
            prop_assert_eq!(&again.result, &executed.result, "request {}", executed.index);
        }
        prop_assert_eq!(snapshot_without_cache(&accepted_only), snapshot_without_cache(&h.state));
        prop_assert_eq!(accepted_only.dag().to_dot(), h.state.dag().to_dot());
    }
}

#[test]
fn the_generator_reaches_every_outcome() {
    // Guards the properties above against a generator that only ever produces rejections (or only successes).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut codes = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for _ in 0..300 {
        let intents = sequences().new_tree(&mut runner).unwrap().current();
        let (_, records) = run(&intents);
        for (_, e) in records {
            match e.result {
                Ok(applied) => kinds.extend(applied.events.iter().map(|e| e.kind())),
                Err(err) => {
                    codes.insert(err.code());
                }
            }
        }
    }
    for code in [
        "cycle_detected",
        "frontier_gap",
        "frontier_conflict",
        "has_dependents",
        "unknown_stream",
        "unknown_upstream",
        "cluster_name_taken",
        "stale_producer_epoch",
    ] {
        assert!(codes.contains(code), "never saw {code}: {codes:?}");
    }
    for kind in [
        "FederatedTableCreated",
        "FederatedTableDropped",
        "FrontierAdvanced",
        "StreamUnpublished",
        "ClusterDeregistered",
        "ClusterTakenOver",
    ] {
        assert!(kinds.contains(kind), "never saw {kind}: {kinds:?}");
    }
}
