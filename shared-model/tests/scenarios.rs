//! Command validation scenarios: each rejection is typed and leaves the state unchanged.

mod common;

use common::*;
use shared_model::*;

#[test]
fn seed_scenario_builds_the_dag_and_cuts() {
    let mut h = seed();
    let dash = table("cluster_c/dashboard");
    assert_eq!(h.state.dag().node_count(), 3);
    assert_eq!(h.state.dag().edge_count(), 2);
    let applied = h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    assert_eq!(applied.events.len(), 1);
    h.run(h.advances(&[("cluster_b/user_stats", 1)])).unwrap();
    let t1 = h.index;
    h.run(h.advances(&[("cluster_a/order_agg", 2)])).unwrap();
    let cut = h.state.newest_cut(&dash).unwrap();
    assert_eq!(cut.seqs[&stream("cluster_a/order_agg")], 2);
    assert_eq!(cut.seqs[&stream("cluster_b/user_stats")], 1);
    let old = h.state.cut_at(&dash, t1).unwrap().unwrap();
    assert_eq!(old.seqs[&stream("cluster_a/order_agg")], 1);
    assert_eq!(h.state.cut_at(&dash, cut.at).unwrap().unwrap(), cut.clone());
}

#[test]
fn unknown_names_are_rejected() {
    let mut h = seed();
    assert_eq!(h.rejected(publish("cluster_z/x", &[])).code(), "unknown_cluster");
    assert_eq!(h.rejected(federate("cluster_c/f2", &["cluster_a/nope"])).code(), "unknown_stream");
    assert_eq!(h.rejected(federate("cluster_z/f2", &["cluster_a/order_agg"])).code(), "unknown_cluster");
    assert_eq!(h.rejected(h.advances(&[("cluster_a/nope", 1)])).code(), "unknown_stream");
    let e = h.rejected(Command::DropFederatedTable { table: table("cluster_c/nope"), cascade: false });
    assert_eq!(e.code(), "unknown_federated_table");
    assert_eq!(e.class(), ErrorClass::NotFound);
    let up = NodeKey::Stream(stream("cluster_a/missing"));
    assert_eq!(h.rejected(publish("cluster_a/x", &[up])).code(), "unknown_upstream");
}

#[test]
fn frontier_gaps_repeats_and_conflicts() {
    let mut h = seed();
    h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    let e = h.rejected(h.advances(&[("cluster_a/order_agg", 3)]));
    assert!(matches!(e, CommandError::FrontierGap { current: 1, proposed: 3, .. }), "{e:?}");
    assert!(e.to_string().contains("next batch is 2"), "{e}");
    // An identical repeat is a no-op with no events.
    let again = h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    assert!(again.events.is_empty());
    // A conflicting repeat is an error.
    let mut other = advance("cluster_a/order_agg", 1);
    other.position.offset = 999;
    let e = h.rejected(Command::AdvanceFrontier { producer: h.fence("cluster_a"), advances: vec![other] });
    assert_eq!(e.code(), "frontier_conflict");
    // Several seqs of one stream in one command, in order.
    let ok = h
        .run(h.advances(&[("cluster_a/order_agg", 2), ("cluster_a/order_agg", 3), ("cluster_a/order_agg", 3)]))
        .unwrap();
    assert_eq!(ok.events.len(), 2);
    // A batch that fails halfway rejects the whole command.
    h.run(h.advances(&[("cluster_b/user_stats", 1)])).unwrap();
    let e = h.rejected(h.advances(&[("cluster_b/user_stats", 2), ("cluster_b/user_stats", 9)]));
    assert_eq!(e.code(), "frontier_gap");
    assert_eq!(h.state.frontier(&stream("cluster_b/user_stats")).unwrap().seq(), 1);
    // One command carries one cluster's advances: its fence speaks for that cluster only.
    let e = h.rejected(h.advances(&[("cluster_b/user_stats", 2), ("cluster_a/order_agg", 4)]));
    assert_eq!(e.code(), "invalid_argument");
    assert!(e.to_string().contains("not a stream of the proposing cluster cluster_b"), "{e}");
    let e = h.rejected(Command::AdvanceFrontier { producer: h.fence("cluster_a"), advances: vec![] });
    assert_eq!(e.code(), "invalid_argument");
    // A position the broker never gave (librdkafka's -1 for "unknown") cannot be recorded.
    let mut unknown = advance("cluster_a/order_agg", 4);
    unknown.position.offset = -1;
    let e = h.rejected(Command::AdvanceFrontier { producer: h.fence("cluster_a"), advances: vec![unknown] });
    assert_eq!(e.code(), "invalid_argument");
    assert!(e.to_string().contains("must be >= 0"), "{e}");
}

#[test]
fn cycles_are_rejected_with_their_path() {
    let mut h = seed();
    // C publishes its dashboard; A federates it and publishes a stream computed from that mirror.
    h.run(publish("cluster_c/dashboard", &[])).unwrap();
    h.run(federate("cluster_a/dash_mirror", &["cluster_c/dashboard"])).unwrap();
    // order_agg reading dash_mirror would close a → c → a.
    let up = NodeKey::Federated(table("cluster_a/dash_mirror"));
    let e = h.rejected(publish("cluster_a/order_agg", &[up]));
    let CommandError::CycleDetected { path } = &e else { panic!("{e:?}") };
    assert_eq!(path.first(), path.last());
    assert!(path.iter().any(|p| p.contains("cluster_c/public.dashboard")), "{path:?}");
    assert!(e.to_string().contains(" -> "));
    assert!(h.state.dag().is_acyclic());
}

#[test]
fn a_federated_table_may_not_read_its_own_output() {
    let mut h = seed();
    h.run(publish("cluster_a/report", &[])).unwrap();
    // cluster_a/report is published; creating the federated table of the same name over a source that reads it.
    h.run(federate("cluster_b/copy", &["cluster_a/report"])).unwrap();
    h.run(publish("cluster_b/derived", &[NodeKey::Federated(table("cluster_b/copy"))])).unwrap();
    let e = h.rejected(federate("cluster_a/report", &["cluster_b/derived"]));
    assert_eq!(e.code(), "cycle_detected");
}

#[test]
fn drops_with_dependents_need_cascade() {
    let mut h = seed();
    let e = h.rejected(Command::UnpublishStream { stream: stream("cluster_a/order_agg"), cascade: false });
    let CommandError::HasDependents { dependents, .. } = &e else { panic!("{e:?}") };
    assert_eq!(dependents, &vec!["federated cluster_c/public.dashboard".to_string()]);
    let e = h.rejected(Command::DeregisterCluster { name: cluster("cluster_b"), cascade: false });
    assert_eq!(e.code(), "has_dependents");
    let done = h.run(Command::DeregisterCluster { name: cluster("cluster_b"), cascade: true }).unwrap();
    let kinds: Vec<_> = done.events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, ["FederatedTableDropped", "StreamUnpublished", "ClusterDeregistered"]);
    assert!(h.state.federated_tables().is_empty());
    assert!(h.state.subscribers(&stream("cluster_a/order_agg")).next().is_none());
    // Now order_agg has no dependents.
    h.run(Command::UnpublishStream { stream: stream("cluster_a/order_agg"), cascade: false }).unwrap();
    assert_eq!(h.state.dag().node_count(), 0);
}

#[test]
fn idempotent_retry_returns_the_first_result() {
    let mut h = seed();
    let key = IdempotencyKey::new("cluster_a", "req-1").unwrap();
    let first = h.run_keyed(key.clone(), h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    let retry = h.run_keyed(key.clone(), h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    assert_eq!(first, retry);
    assert_eq!(h.state.frontier(&stream("cluster_a/order_agg")).unwrap().seq(), 1);
    // Same key, different command.
    let e = h.run_keyed(key.clone(), h.advances(&[("cluster_a/order_agg", 2)])).unwrap_err();
    assert_eq!(e.code(), "idempotency_key_reused");
    // A rejected first attempt is also remembered.
    let bad = IdempotencyKey::new("cluster_a", "req-2").unwrap();
    let e1 = h.run_keyed(bad.clone(), h.advances(&[("cluster_a/order_agg", 7)])).unwrap_err();
    let e2 = h.run_keyed(bad, h.advances(&[("cluster_a/order_agg", 7)])).unwrap_err();
    assert_eq!(e1, e2);
}

#[test]
fn source_urls_must_match_the_federation() {
    let mut h = seed();
    let nats = SourceUrl::parse("nats://coordinator/cluster_a/order_agg").unwrap();
    let e = h.rejected(Command::CreateFederatedTable {
        table: table("cluster_c/x"),
        sources: vec![nats],
        consistency: Consistency::Causal,
    });
    assert_eq!(e.code(), "backend_mismatch");
    let foreign = SourceUrl::parse("kafka://elsewhere/cluster_a/order_agg").unwrap();
    let e = h.rejected(Command::CreateFederatedTable {
        table: table("cluster_c/x"),
        sources: vec![foreign],
        consistency: Consistency::Causal,
    });
    assert_eq!(e.code(), "federation_mismatch");
    let e = h.rejected(federate("cluster_c/dashboard", &["cluster_a/order_agg"]));
    assert_eq!(e.code(), "already_exists");
    // An identical re-creation is a no-op.
    let same = h.run(federate("cluster_c/dashboard", &["cluster_a/order_agg", "cluster_b/user_stats"])).unwrap();
    assert!(same.events.is_empty());
}

#[test]
fn reinitialize_is_requested_once_and_answered_by_a_snapshot() {
    let mut h = seed();
    let s = stream("cluster_a/order_agg");
    let r = h.run(Command::RequestReinitialize { stream: s.clone(), reason: "broker lost data".into() }).unwrap();
    assert_eq!(r.events.len(), 1);
    let again = h.run(Command::RequestReinitialize { stream: s.clone(), reason: "again".into() }).unwrap();
    assert!(again.events.is_empty(), "pending requests coalesce");
    let mut snap = advance("cluster_a/order_agg", 1);
    snap.kind = BatchKind::Snapshot;
    h.run(Command::AdvanceFrontier { producer: h.fence("cluster_a"), advances: vec![snap] }).unwrap();
    assert!(h.state.streams()[&s].pending_reinit.is_none());
    let next = h.run(Command::RequestReinitialize { stream: s.clone(), reason: "schema".into() }).unwrap();
    assert!(matches!(next.events[0], Event::ReinitializeRequested { epoch: 2, .. }));
}

#[test]
fn republishing_with_new_columns_bumps_the_schema_version() {
    let mut h = seed();
    let s = stream("cluster_a/order_agg");
    h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    let same = h.run(publish("cluster_a/order_agg", &[])).unwrap();
    assert!(same.events.is_empty());
    let changed = h
        .run(Command::PublishStream {
            stream: s.clone(),
            columns: vec![ColumnDef::new("k", "text")],
            upstream: Default::default(),
            base_seq: 0,
        })
        .unwrap();
    assert!(matches!(changed.events[0], Event::StreamPublished { schema_version: 2, base_seq: 1, .. }));
    assert_eq!(h.state.frontier(&s).unwrap().seq(), 1, "the frontier survives a schema change");
    let e =
        h.rejected(Command::PublishStream { stream: s, columns: vec![], upstream: Default::default(), base_seq: 0 });
    assert_eq!(e.code(), "invalid_argument");
}

#[test]
fn checkpoints_are_recorded_per_cluster() {
    let mut h = seed();
    let record = CheckpointRecord {
        url: "file:///tmp/ck.jsonl.zst".into(),
        checksum: "ab12".into(),
        size_bytes: 10,
        taken_at_unix_ms: 5,
    };
    h.run(Command::RecordCheckpoint { cluster: cluster("cluster_a"), checkpoint: record.clone() }).unwrap();
    assert_eq!(h.state.clusters()[&cluster("cluster_a")].last_checkpoint.as_ref(), Some(&record));
    let mut bad = record;
    bad.checksum = "not hex".into();
    assert_eq!(
        h.rejected(Command::RecordCheckpoint { cluster: cluster("cluster_a"), checkpoint: bad }).code(),
        "invalid_argument"
    );
}

#[test]
fn state_survives_the_codec_and_rebuilds_its_dag() {
    let mut h = seed();
    h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    let bytes = codec::encode(&h.state);
    let back: State = codec::decode(&bytes).unwrap();
    assert_eq!(back, h.state);
    assert_eq!(back.dag().to_dot(), h.state.dag().to_dot());
    assert_eq!(codec::encode(&back), bytes, "encoding is deterministic");
}

fn register_as(name: &str, system_identifier: SystemIdentifier, known_epoch: Option<u64>, takeover: bool) -> Command {
    Command::RegisterCluster {
        name: cluster(name),
        endpoint: "elsewhere:5432".into(),
        capabilities: Default::default(),
        system_identifier,
        known_epoch,
        takeover,
    }
}

#[test]
fn a_cluster_name_is_bound_to_one_server_until_taken_over() {
    let mut h = seed();
    let a = cluster("cluster_a");
    let first_epoch = h.state.clusters()[&a].producer_epoch;
    assert!(first_epoch >= 1);
    h.run(h.advances(&[("cluster_a/order_agg", 1)])).unwrap();
    assert_eq!(h.state.streams()[&stream("cluster_a/order_agg")].producer_epoch, first_epoch);

    // The same server registering again (knowing its epoch, or not) keeps the epoch.
    let me = system_identifier("cluster_a");
    h.run(register_as("cluster_a", me, Some(first_epoch), false)).unwrap();
    h.run(register_as("cluster_a", me, None, false)).unwrap();
    assert_eq!(h.state.clusters()[&a].producer_epoch, first_epoch);

    // Another server may not register the name...
    let other = SystemIdentifier(42);
    let e = h.rejected(register_as("cluster_a", other, None, false));
    assert_eq!((e.code(), e.class()), ("cluster_name_taken", ErrorClass::Conflict));
    assert!(e.to_string().contains("system identifier"), "{e}");
    assert!(e.hint().contains("takeover => true"), "{}", e.hint());
    // ...nor propose for it.
    let forged = ProducerFence { cluster: a.clone(), system_identifier: other, producer_epoch: first_epoch };
    assert_eq!(h.rejected(h.advances_as(forged, &[("cluster_a/order_agg", 2)])).code(), "cluster_name_taken");

    // An explicit takeover binds the name to the new server under a newer epoch, in the log for everyone to see.
    let taken = h.run(register_as("cluster_a", other, None, true)).unwrap();
    let Event::ClusterTakenOver { producer_epoch: new_epoch, previous_system_identifier, .. } = taken.events[0].clone()
    else {
        panic!("{taken:?}")
    };
    assert!(new_epoch > first_epoch);
    assert_eq!(previous_system_identifier, me);
    assert_eq!(h.state.clusters()[&a].system_identifier, other);

    // The old server is fenced: its advances and its re-registration under the old epoch are refused.
    let stale = ProducerFence { cluster: a.clone(), system_identifier: me, producer_epoch: first_epoch };
    let e = h.rejected(h.advances_as(stale, &[("cluster_a/order_agg", 2)]));
    assert_eq!(e.code(), "cluster_name_taken");
    let stale = ProducerFence { cluster: a.clone(), system_identifier: other, producer_epoch: first_epoch };
    let e = h.rejected(h.advances_as(stale, &[("cluster_a/order_agg", 2)]));
    assert!(
        matches!(e, CommandError::StaleProducerEpoch { presented, current, .. } if presented == first_epoch && current == new_epoch),
        "{e:?}"
    );
    assert!(e.hint().contains("must not publish"), "{}", e.hint());
    let e = h.rejected(register_as("cluster_a", other, Some(first_epoch), false));
    assert_eq!(e.code(), "stale_producer_epoch");

    // The new server's advances carry the new epoch into the stream: consumers and the old server can see it.
    h.run(h.advances(&[("cluster_a/order_agg", 2)])).unwrap();
    assert_eq!(h.state.streams()[&stream("cluster_a/order_agg")].producer_epoch, new_epoch);

    // A takeover back (a copy of the first server, e.g. its promoted standby) gets yet another epoch.
    let back = h.run(register_as("cluster_a", me, Some(new_epoch), true)).unwrap();
    assert!(matches!(back.events[0], Event::ClusterTakenOver { producer_epoch, .. } if producer_epoch > new_epoch));
}

#[test]
fn a_superseded_server_can_neither_publish_nor_withdraw_its_clusters_streams() {
    let mut h = seed();
    let a = cluster("cluster_a");
    let (me, first_epoch) = (system_identifier("cluster_a"), h.state.clusters()[&a].producer_epoch);
    let as_me = |command: Command| Command::AsProducer {
        fence: ProducerFence { cluster: a.clone(), system_identifier: me, producer_epoch: first_epoch },
        command: Box::new(command),
    };
    // The current server publishes on its own behalf.
    h.run(as_me(publish("cluster_a/extra", &[]))).unwrap();
    assert!(h.state.streams().contains_key(&stream("cluster_a/extra")));
    // Only publish and unpublish, and only of the fence's own cluster, travel on a producer's behalf.
    let e = h.rejected(as_me(publish("cluster_b/user_stats_copy", &[])));
    assert_eq!(e.code(), "invalid_argument", "{e}");
    let e = h.rejected(as_me(register("cluster_d")));
    assert_eq!(e.code(), "invalid_argument", "{e}");

    // Another server takes the name over: the old one is refused both ways, and the state is unchanged.
    h.run(register_as("cluster_a", SystemIdentifier(77), None, true)).unwrap();
    let before = snapshot_without_cache(&h.state);
    let e = h.rejected(as_me(Command::UnpublishStream { stream: stream("cluster_a/order_agg"), cascade: true }));
    assert_eq!(e.code(), "cluster_name_taken", "{e}");
    let e = h.rejected(as_me(publish("cluster_a/another", &[])));
    assert_eq!(e.code(), "cluster_name_taken", "{e}");
    assert_eq!(snapshot_without_cache(&h.state), before, "a refused command changed the state");
    // The new server, presenting the new epoch, may.
    let epoch = h.state.clusters()[&a].producer_epoch;
    let fence = ProducerFence { cluster: a.clone(), system_identifier: SystemIdentifier(77), producer_epoch: epoch };
    let unpublish = Command::UnpublishStream { stream: stream("cluster_a/extra"), cascade: false };
    h.run(Command::AsProducer { fence, command: Box::new(unpublish) }).unwrap();
    assert!(!h.state.streams().contains_key(&stream("cluster_a/extra")));
}

#[test]
fn takeover_epochs_grow_across_a_restored_coordinator() {
    let mut h = seed();
    let a = cluster("cluster_a");
    for _ in 0..3 {
        h.run(register_as("cluster_a", SystemIdentifier(9), None, true)).unwrap();
    }
    let epoch = h.state.clusters()[&a].producer_epoch;
    // A new coordinator cluster restored from this one's snapshot starts its log again at low indexes.
    let mut fresh = Harness::new();
    fresh.run(Command::RestoreState { state: Box::new(h.state.clone()) }).unwrap();
    assert_eq!(fresh.state.clusters()[&a].producer_epoch, epoch, "epochs are identities: never rebased");
    fresh.run(register_as("cluster_a", SystemIdentifier(10), None, true)).unwrap();
    assert!(fresh.state.clusters()[&a].producer_epoch > epoch);
}

#[test]
fn absurd_seqs_are_refused_before_any_arithmetic() {
    let mut h = seed();
    let mut huge = publish("cluster_a/huge", &[]);
    if let Command::PublishStream { base_seq, .. } = &mut huge {
        *base_seq = u64::MAX;
    }
    let e = h.rejected(huge);
    assert_eq!((e.code(), e.class()), ("invalid_argument", ErrorClass::Invalid));
    assert!(e.to_string().contains("out of range"), "{e}");
    let at = |id: &str, seq: u64| FrontierAdvance {
        stream: stream(id),
        seq,
        kind: BatchKind::Delta,
        position: BrokerPosition { partition: 0, offset: 1 },
    };
    for seq in [decide::MAX_SEQ, u64::MAX] {
        let command =
            Command::AdvanceFrontier { producer: h.fence("cluster_a"), advances: vec![at("cluster_a/order_agg", seq)] };
        let e = h.rejected(command);
        assert_eq!(e.code(), "invalid_argument", "{seq}: {e}");
    }
    // The largest allowed base leaves room for the next seq's arithmetic.
    let mut edge = publish("cluster_a/edge", &[]);
    if let Command::PublishStream { base_seq, .. } = &mut edge {
        *base_seq = decide::MAX_SEQ - 1;
    }
    h.run(edge).unwrap();
    let command = Command::AdvanceFrontier {
        producer: h.fence("cluster_a"),
        advances: vec![at("cluster_a/edge", decide::MAX_SEQ)],
    };
    assert_eq!(h.rejected(command).code(), "invalid_argument");
}

#[test]
fn the_topic_prefix_must_name_topics_subjects_and_streams() {
    let mut h = seed();
    let configure = |prefix: &str| Command::ConfigureFederation {
        name: FederationName::parse("coordinator").unwrap(),
        changelog: ChangeLogSettings { topic_prefix: prefix.into(), ..Default::default() },
    };
    for bad in ["pgt.*", "pgt.>", "a..b", ".pgt", "pg trickle", "pgt/x"] {
        assert_eq!(h.rejected(configure(bad)).code(), "invalid_argument", "{bad:?} was accepted");
    }
    let applied = h.run(configure("acme.prod-1_fed")).unwrap();
    assert_eq!(applied.events.len(), 1);
    // The backend cannot change under existing federated tables (their sources name it).
    let nats = Command::ConfigureFederation {
        name: FederationName::parse("coordinator").unwrap(),
        changelog: ChangeLogSettings { backend: Backend::Nats, ..Default::default() },
    };
    assert_eq!(h.rejected(nats).code(), "has_dependents");
}
