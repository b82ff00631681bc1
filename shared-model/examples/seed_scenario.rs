//! The seed scenario played through the replicated state machine in memory: clusters A, B, C register; A
//! publishes `order_agg`, B publishes `user_stats`; C creates the federated `dashboard` over both (causal); a few
//! frontier advances commit; the DAG (DOT), the newest cut and a rejected cycle are printed.
//!
//! `cargo run -p shared-model --example seed_scenario`

use std::collections::BTreeSet;

use shared_model::*;

fn main() {
    let mut state = State::default();
    let mut index = 0;
    let mut run = |state: &mut State, command: Command| {
        index += 1;
        let key = IdempotencyKey::new("demo", &index.to_string()).expect("valid key");
        let executed = state.execute(index, &Request { key, command, proposed_at_unix_ms: 0 });
        match &executed.result {
            Ok(applied) => {
                let kinds: Vec<_> = applied.events.iter().map(|e| e.kind()).collect();
                println!("log[{index:>2}] ok    {}", kinds.join(", "));
            }
            Err(e) => println!("log[{index:>2}] REJECTED {}: {e}\n          hint: {}", e.code(), e.hint()),
        }
    };
    for (i, c) in ["cluster_a", "cluster_b", "cluster_c"].into_iter().enumerate() {
        let name = ClusterName::parse(c).expect("valid");
        let command = Command::RegisterCluster {
            name,
            endpoint: format!("postgres://{c}"),
            capabilities: BTreeSet::new(),
            system_identifier: SystemIdentifier(7_300_000_000_000_000_000 + i as u64),
            known_epoch: None,
            takeover: false,
        };
        run(&mut state, command);
    }
    let columns = vec![ColumnDef::new("customer_id", "bigint"), ColumnDef::new("total", "numeric")];
    for s in ["cluster_a/order_agg", "cluster_b/user_stats"] {
        let stream = StreamId::parse(s).expect("valid");
        run(
            &mut state,
            Command::PublishStream { stream, columns: columns.clone(), upstream: BTreeSet::new(), base_seq: 0 },
        );
    }
    let dashboard = FederatedTableId::parse("cluster_c/dashboard").expect("valid");
    let sources = ["kafka://coordinator/cluster_a/order_agg", "kafka://coordinator/cluster_b/user_stats"]
        .iter()
        .map(|u| SourceUrl::parse(u).expect("valid"))
        .collect();
    run(
        &mut state,
        Command::CreateFederatedTable { table: dashboard.clone(), sources, consistency: Consistency::Causal },
    );
    for (stream, seq) in [("cluster_a/order_agg", 1), ("cluster_b/user_stats", 1), ("cluster_a/order_agg", 2)] {
        let stream = StreamId::parse(stream).expect("valid");
        let cluster = &state.clusters()[stream.cluster()];
        let producer = ProducerFence {
            cluster: stream.cluster().clone(),
            system_identifier: cluster.system_identifier,
            producer_epoch: cluster.producer_epoch,
        };
        let advance = FrontierAdvance {
            stream,
            seq,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: seq as i64 },
        };
        run(&mut state, Command::AdvanceFrontier { producer, advances: vec![advance] });
    }
    // C publishes the dashboard and A tries to read it back into order_agg: a cycle, rejected with its path.
    let dash_stream = StreamId::parse("cluster_c/dashboard").expect("valid");
    run(&mut state, Command::PublishStream { stream: dash_stream, columns, upstream: BTreeSet::new(), base_seq: 0 });
    let mirror = FederatedTableId::parse("cluster_a/dash_mirror").expect("valid");
    let url = SourceUrl::parse("kafka://coordinator/cluster_c/dashboard").expect("valid");
    run(
        &mut state,
        Command::CreateFederatedTable { table: mirror.clone(), sources: vec![url], consistency: Consistency::Eventual },
    );
    let order_agg = StreamId::parse("cluster_a/order_agg").expect("valid");
    let upstream = BTreeSet::from([NodeKey::Federated(mirror)]);
    run(
        &mut state,
        Command::PublishStream {
            stream: order_agg,
            columns: vec![ColumnDef::new("customer_id", "bigint"), ColumnDef::new("total", "numeric")],
            upstream,
            base_seq: 0,
        },
    );

    let cut = state.newest_cut(&dashboard).expect("exists");
    println!("\nnewest cut of {dashboard} at global time {}:", cut.at);
    for (s, seq) in &cut.seqs {
        println!("  {s:<28} seq {seq}");
    }
    println!("\nglobal DAG (Graphviz DOT):\n{}", state.dag().to_dot());
}
