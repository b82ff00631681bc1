//! Command validation: `decide(state, index, command)` turns a command into the events it causes, or a typed
//! error, without changing anything. Deterministic — the same on every replica — and total: every command gets an
//! answer, no input panics.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::{Command, FrontierAdvance, ProducerFence};
use crate::dag::NodeKey;
use crate::error::CommandError;
use crate::event::Event;
use crate::ids::{ClusterName, FederatedTableId, Ident, StreamId, SystemIdentifier};
use crate::model::{ColumnDef, LogIndex};
use crate::state::State;

/// Largest number of frontier advances in one command.
pub const MAX_ADVANCES_PER_COMMAND: usize = 10_000;
/// Largest number of sources of one federated table.
pub const MAX_SOURCES: usize = 64;
/// PostgreSQL's limit on columns per table.
pub const MAX_COLUMNS: usize = 1600;
/// Longest free-text field (endpoint, reason, URL…).
pub const MAX_TEXT: usize = 2048;
/// Largest batch seq: PostgreSQL keeps seqs in `bigint`, and seq + 1 must never overflow anywhere.
pub const MAX_SEQ: u64 = i64::MAX as u64;

fn check_seq(field: &str, seq: u64) -> Result<(), CommandError> {
    if seq >= MAX_SEQ {
        return Err(invalid(
            field,
            format!("{seq} is out of range: batch seqs stay below {MAX_SEQ} (PostgreSQL bigint)"),
        ));
    }
    Ok(())
}

fn invalid(field: &str, reason: impl Into<String>) -> CommandError {
    CommandError::InvalidArgument { field: field.to_string(), reason: reason.into() }
}

fn check_text(field: &str, value: &str, allow_empty: bool) -> Result<(), CommandError> {
    if !allow_empty && value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_TEXT {
        return Err(invalid(field, format!("is {} bytes long, the limit is {MAX_TEXT}", value.len())));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Decides a command against `state` at log `index` (the index it will commit at).
pub fn decide(state: &State, index: LogIndex, command: &Command) -> Result<Vec<Event>, CommandError> {
    match command {
        Command::ConfigureFederation { name, changelog } => {
            check_text("bootstrap_servers", &changelog.bootstrap_servers, false)?;
            check_text("topic_prefix", &changelog.topic_prefix, false)?;
            // A Kafka topic name's characters, which are also NATS subject tokens and make a JetStream stream name.
            let token = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !changelog.topic_prefix.split('.').all(token) || changelog.topic_prefix.len() > 100 {
                return Err(invalid(
                    "topic_prefix",
                    "must be dot-separated words of letters, digits, '_' and '-' (at most 100 characters)",
                ));
            }
            let current = state.federation();
            if &current.name == name && &current.changelog == changelog {
                return Ok(vec![]);
            }
            let in_use = current.name != *name || current.changelog.backend != changelog.backend;
            if in_use && !state.federated_tables().is_empty() {
                return Err(CommandError::HasDependents {
                    object: format!("federation {} ({})", current.name, current.changelog.backend),
                    dependents: state.federated_tables().keys().map(|t| format!("federated {t}")).collect(),
                });
            }
            Ok(vec![Event::FederationConfigured { name: name.clone(), changelog: changelog.clone() }])
        }
        Command::RegisterCluster { name, endpoint, capabilities, system_identifier, known_epoch, takeover } => {
            check_text("endpoint", endpoint, false)?;
            if capabilities.len() > 64 {
                return Err(invalid("capabilities", "at most 64 are allowed"));
            }
            decide_register(state, index, name, endpoint, capabilities, *system_identifier, *known_epoch, *takeover)
        }
        Command::DeregisterCluster { name, cascade } => {
            if !state.clusters().contains_key(name) {
                return Err(CommandError::UnknownCluster { cluster: name.to_string() });
            }
            let owned = owned_nodes(state, name);
            let mut events = removal_events(state, &owned, true, *cascade, &format!("cluster {name}"))?;
            events.push(Event::ClusterDeregistered { name: name.clone() });
            Ok(events)
        }
        Command::AsProducer { fence, command } => {
            let stream = match command.as_ref() {
                Command::PublishStream { stream, .. } | Command::UnpublishStream { stream, .. } => stream,
                _ => return Err(invalid("command", "only publish and unpublish are sent on behalf of a producer")),
            };
            if stream.cluster() != &fence.cluster {
                return Err(invalid("stream", format!("{stream} is not a stream of cluster {}", fence.cluster)));
            }
            check_fence(state, fence)?;
            decide(state, index, command)
        }
        Command::PublishStream { stream, columns, upstream, base_seq } => {
            decide_publish(state, index, stream, columns, upstream, *base_seq)
        }
        Command::IssueMessageKey { key } => match state.message_key() {
            Some(_) => Ok(vec![]),
            None if !key.is_known() => Err(invalid("key", "a redacted key cannot be issued")),
            None => Ok(vec![Event::MessageKeyIssued { key: key.clone() }]),
        },
        Command::UnpublishStream { stream, cascade } => {
            if !state.streams().contains_key(stream) {
                return Err(CommandError::UnknownStream { stream: stream.to_string() });
            }
            removal_events(
                state,
                &BTreeSet::from([NodeKey::Stream(stream.clone())]),
                false,
                *cascade,
                &format!("stream {stream}"),
            )
        }
        Command::CreateFederatedTable { table, sources, consistency } => {
            decide_create_federated(state, table, sources, *consistency)
        }
        Command::DropFederatedTable { table, cascade } => {
            if !state.federated_tables().contains_key(table) {
                return Err(CommandError::UnknownFederatedTable { table: table.to_string() });
            }
            removal_events(
                state,
                &BTreeSet::from([NodeKey::Federated(table.clone())]),
                false,
                *cascade,
                &format!("federated table {table}"),
            )
        }
        Command::AdvanceFrontier { producer, advances } => decide_advances(state, index, producer, advances),
        Command::RequestReinitialize { stream, reason } => {
            check_text("reason", reason, false)?;
            let info = state
                .streams()
                .get(stream)
                .ok_or_else(|| CommandError::UnknownStream { stream: stream.to_string() })?;
            if info.pending_reinit.is_some() {
                return Ok(vec![]); // coalesce: one snapshot batch answers every pending request
            }
            Ok(vec![Event::ReinitializeRequested {
                stream: stream.clone(),
                epoch: info.reinit_epoch + 1,
                reason: reason.clone(),
            }])
        }
        Command::RestoreState { state: restored } => {
            if !state.clusters().is_empty() || !state.streams().is_empty() || !state.federated_tables().is_empty() {
                let what = format!(
                    "{} clusters, {} streams, {} federated tables",
                    state.clusters().len(),
                    state.streams().len(),
                    state.federated_tables().len()
                );
                return Err(CommandError::StateNotEmpty { what });
            }
            Ok(vec![Event::StateRestored { state: Box::new(restored.rebased(index)) }])
        }
        Command::RecordCheckpoint { cluster, checkpoint } => {
            if !state.clusters().contains_key(cluster) {
                return Err(CommandError::UnknownCluster { cluster: cluster.to_string() });
            }
            check_text("checkpoint url", &checkpoint.url, false)?;
            if checkpoint.checksum.is_empty()
                || checkpoint.checksum.len() > 128
                || !checkpoint.checksum.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(invalid("checkpoint checksum", "must be 1 to 128 hexadecimal digits"));
            }
            Ok(vec![Event::CheckpointRecorded { cluster: cluster.clone(), checkpoint: checkpoint.clone() }])
        }
    }
}

/// Registration binds a cluster name to one server (its system identifier) under a producer epoch. The epoch
/// changes only through an explicit takeover, to the log index of the takeover (never below the previous epoch + 1,
/// so it grows even across a restored coordinator whose indexes start again lower).
#[allow(clippy::too_many_arguments)]
fn decide_register(
    state: &State,
    index: LogIndex,
    name: &ClusterName,
    endpoint: &str,
    capabilities: &BTreeSet<Ident>,
    system_identifier: SystemIdentifier,
    known_epoch: Option<u64>,
    takeover: bool,
) -> Result<Vec<Event>, CommandError> {
    let Some(current) = state.clusters().get(name) else {
        return Ok(vec![Event::ClusterRegistered {
            name: name.clone(),
            endpoint: endpoint.to_string(),
            capabilities: capabilities.clone(),
            system_identifier,
            producer_epoch: index.max(1),
        }]);
    };
    if takeover {
        return Ok(vec![Event::ClusterTakenOver {
            name: name.clone(),
            endpoint: endpoint.to_string(),
            capabilities: capabilities.clone(),
            system_identifier,
            previous_system_identifier: current.system_identifier,
            producer_epoch: index.max(current.producer_epoch + 1),
        }]);
    }
    if current.system_identifier != system_identifier {
        return Err(CommandError::ClusterNameTaken {
            cluster: name.to_string(),
            registered: current.system_identifier.to_string(),
            presented: system_identifier.to_string(),
        });
    }
    // Copies of one server (a promoted standby and its old primary, a restored backup) share the identifier: the
    // epoch each was handed tells them apart. A server that knows none (its catalog row is gone) rejoins.
    if let Some(known) = known_epoch {
        if known != current.producer_epoch {
            return Err(stale_epoch(name, known, current));
        }
    }
    if current.endpoint == endpoint && &current.capabilities == capabilities {
        return Ok(vec![]);
    }
    Ok(vec![Event::ClusterRegistered {
        name: name.clone(),
        endpoint: endpoint.to_string(),
        capabilities: capabilities.clone(),
        system_identifier,
        producer_epoch: current.producer_epoch,
    }])
}

fn stale_epoch(name: &ClusterName, presented: u64, current: &crate::state::ClusterInfo) -> CommandError {
    CommandError::StaleProducerEpoch {
        cluster: name.to_string(),
        presented,
        current: current.producer_epoch,
        holder: current.system_identifier.to_string(),
    }
}

/// Advances are accepted only from the cluster's current server under its current epoch.
fn check_fence(state: &State, producer: &ProducerFence) -> Result<(), CommandError> {
    let cluster = state
        .clusters()
        .get(&producer.cluster)
        .ok_or_else(|| CommandError::UnknownCluster { cluster: producer.cluster.to_string() })?;
    if cluster.system_identifier != producer.system_identifier {
        return Err(CommandError::ClusterNameTaken {
            cluster: producer.cluster.to_string(),
            registered: cluster.system_identifier.to_string(),
            presented: producer.system_identifier.to_string(),
        });
    }
    if cluster.producer_epoch != producer.producer_epoch {
        return Err(stale_epoch(&producer.cluster, producer.producer_epoch, cluster));
    }
    Ok(())
}

fn owned_nodes(state: &State, cluster: &ClusterName) -> BTreeSet<NodeKey> {
    let streams = state.streams().keys().filter(|s| s.cluster() == cluster).map(|s| NodeKey::Stream(s.clone()));
    let tables =
        state.federated_tables().keys().filter(|t| t.cluster() == cluster).map(|t| NodeKey::Federated(t.clone()));
    streams.chain(tables).collect()
}

/// Events that remove `roots`: rejected when anything else would go too and `cascade` is off; with cascade, every
/// descendant goes first, most downstream first, so each event leaves a consistent state behind.
fn removal_events(
    state: &State,
    roots: &BTreeSet<NodeKey>,
    roots_need_cascade: bool,
    cascade: bool,
    object: &str,
) -> Result<Vec<Event>, CommandError> {
    let dag = state.dag();
    let mut doomed = roots.clone();
    for root in roots {
        doomed.extend(dag.descendants(root));
    }
    if !cascade {
        // A cluster must be empty to leave without cascade; a stream or table must have no dependents.
        let others: Vec<String> =
            doomed.iter().filter(|d| roots_need_cascade || !roots.contains(*d)).map(|d| d.to_string()).collect();
        if !others.is_empty() {
            return Err(CommandError::HasDependents { object: object.to_string(), dependents: others });
        }
    }
    let order = dag.topological_order();
    Ok(order
        .into_iter()
        .rev()
        .filter(|n| doomed.contains(n))
        .map(|n| match n {
            NodeKey::Stream(stream) => Event::StreamUnpublished { stream },
            NodeKey::Federated(table) => Event::FederatedTableDropped { table },
        })
        .collect())
}

fn check_columns(columns: &[ColumnDef]) -> Result<(), CommandError> {
    if columns.is_empty() || columns.len() > MAX_COLUMNS {
        return Err(invalid("columns", format!("a stream has 1 to {MAX_COLUMNS} columns, not {}", columns.len())));
    }
    let mut seen = BTreeSet::new();
    for c in columns {
        if c.name.is_empty() || c.name.len() > crate::ids::MAX_IDENT_LEN || c.name.contains('\0') {
            return Err(invalid("column name", format!("{:?} must be 1 to 63 bytes without NUL", c.name)));
        }
        if !seen.insert(&c.name) {
            return Err(invalid("columns", format!("column {:?} appears twice", c.name)));
        }
        if let Err(why) = crate::model::check_type_name(&c.type_name) {
            return Err(invalid("column type", format!("column {:?}: {why}", c.name)));
        }
    }
    Ok(())
}

fn cycle_error(path: Vec<NodeKey>) -> CommandError {
    CommandError::CycleDetected { path: path.iter().map(|n| n.to_string()).collect() }
}

fn decide_publish(
    state: &State,
    index: LogIndex,
    stream: &StreamId,
    columns: &[ColumnDef],
    upstream: &BTreeSet<NodeKey>,
    base_seq: u64,
) -> Result<Vec<Event>, CommandError> {
    if !state.clusters().contains_key(stream.cluster()) {
        return Err(CommandError::UnknownCluster { cluster: stream.cluster().to_string() });
    }
    check_seq("base_seq", base_seq)?;
    check_columns(columns)?;
    if upstream.len() > 1024 {
        return Err(invalid("upstream", "at most 1024 upstream edges are allowed"));
    }
    let me = NodeKey::Stream(stream.clone());
    for up in upstream {
        let (cluster, exists) = match up {
            NodeKey::Stream(s) => (s.cluster(), state.streams().contains_key(s)),
            NodeKey::Federated(t) => (t.cluster(), state.federated_tables().contains_key(t)),
        };
        if cluster != stream.cluster() {
            return Err(invalid(
                "upstream",
                format!("{up} is on another cluster than {stream}; cross-cluster reads go through federated tables"),
            ));
        }
        if up == &me {
            return Err(cycle_error(vec![me.clone(), me.clone()]));
        }
        if !exists {
            return Err(CommandError::UnknownUpstream { stream: stream.to_string(), upstream: up.to_string() });
        }
    }
    let existing = state.streams().get(stream);
    if let Some(info) = existing {
        if info.columns == columns && &info.upstream == upstream {
            return Ok(vec![]); // identical re-publication; base_seq only matters the first time
        }
        if let Some(cycle) = state.dag().cycle_if_added(&me, upstream) {
            return Err(cycle_error(cycle));
        }
    }
    let schema_version = match existing {
        None => 1,
        Some(info) if info.columns != columns => info.schema_version + 1,
        Some(info) => info.schema_version,
    };
    let base_seq = existing.map_or(base_seq, |i| i.frontier.seq());
    // A new life of the stream gets an incarnation no earlier life had: the log index, kept above every one
    // handed out before (a restored state may come from an older, longer log).
    let incarnation = existing.map_or(index.max(state.last_incarnation() + 1), |i| i.incarnation);
    Ok(vec![Event::StreamPublished {
        stream: stream.clone(),
        columns: columns.to_vec(),
        upstream: upstream.clone(),
        base_seq,
        schema_version,
        incarnation,
    }])
}

fn decide_create_federated(
    state: &State,
    table: &FederatedTableId,
    sources: &[crate::ids::SourceUrl],
    consistency: crate::model::Consistency,
) -> Result<Vec<Event>, CommandError> {
    if !state.clusters().contains_key(table.cluster()) {
        return Err(CommandError::UnknownCluster { cluster: table.cluster().to_string() });
    }
    if sources.is_empty() || sources.len() > MAX_SOURCES {
        return Err(invalid(
            "sources",
            format!("a federated table has 1 to {MAX_SOURCES} sources, not {}", sources.len()),
        ));
    }
    let settings = state.federation();
    let mut by_stream = BTreeMap::new();
    for url in sources {
        if url.federation != settings.name {
            return Err(CommandError::FederationMismatch {
                source_url: url.to_string(),
                found: url.federation.to_string(),
                expected: settings.name.to_string(),
            });
        }
        if url.backend != settings.changelog.backend {
            return Err(CommandError::BackendMismatch {
                source_url: url.to_string(),
                found: url.backend.to_string(),
                expected: settings.changelog.backend.to_string(),
            });
        }
        if !state.clusters().contains_key(url.stream.cluster()) {
            return Err(CommandError::UnknownCluster { cluster: url.stream.cluster().to_string() });
        }
        if !state.streams().contains_key(&url.stream) {
            return Err(CommandError::UnknownStream { stream: url.stream.to_string() });
        }
        if by_stream.insert(url.stream.clone(), url.clone()).is_some() {
            return Err(invalid("sources", format!("{} is listed twice", url.stream)));
        }
    }
    if let Some(existing) = state.federated_tables().get(table) {
        if existing.sources == by_stream && existing.consistency == consistency {
            return Ok(vec![]);
        }
        return Err(CommandError::AlreadyExists { what: "federated table".into(), name: table.to_string() });
    }
    // The only edge out of a new federated table goes to the published stream of the same name, if any.
    let me = NodeKey::Federated(table.clone());
    let output = NodeKey::Stream(StreamId(table.0.clone()));
    if state.dag().contains(&output) {
        for source in by_stream.keys() {
            let source = NodeKey::Stream(source.clone());
            if let Some(mut path) = state.dag().path(&output, &source) {
                path.insert(0, me.clone());
                path.push(me.clone());
                return Err(cycle_error(path));
            }
        }
    }
    Ok(vec![Event::FederatedTableCreated { table: table.clone(), sources: by_stream, consistency }])
}

fn decide_advances(
    state: &State,
    _index: LogIndex,
    producer: &ProducerFence,
    advances: &[FrontierAdvance],
) -> Result<Vec<Event>, CommandError> {
    if advances.is_empty() || advances.len() > MAX_ADVANCES_PER_COMMAND {
        return Err(invalid(
            "advances",
            format!("1 to {MAX_ADVANCES_PER_COMMAND} per command, not {}", advances.len()),
        ));
    }
    if let Some(foreign) = advances.iter().find(|a| a.stream.cluster() != &producer.cluster) {
        return Err(invalid(
            "advances",
            format!("{} is not a stream of the proposing cluster {}", foreign.stream, producer.cluster),
        ));
    }
    check_fence(state, producer)?;
    // Seqs advanced earlier in this same command, per stream.
    let mut staged: BTreeMap<&StreamId, BTreeMap<u64, &FrontierAdvance>> = BTreeMap::new();
    let mut events = Vec::new();
    for adv in advances {
        check_seq("advances.seq", adv.seq)?;
        if adv.position.offset < 0 || adv.position.partition < 0 {
            return Err(invalid(
                "advances.position",
                format!("partition and offset must be >= 0, not {}:{}", adv.position.partition, adv.position.offset),
            ));
        }
        let info = state
            .streams()
            .get(&adv.stream)
            .ok_or_else(|| CommandError::UnknownStream { stream: adv.stream.to_string() })?;
        let here = staged.entry(&adv.stream).or_default();
        let current = here.keys().next_back().copied().unwrap_or_else(|| info.frontier.seq());
        if adv.seq == current + 1 {
            here.insert(adv.seq, adv);
            events.push(Event::FrontierAdvanced {
                stream: adv.stream.clone(),
                seq: adv.seq,
                kind: adv.kind,
                position: adv.position,
                producer_epoch: producer.producer_epoch,
            });
            continue;
        }
        if adv.seq > current + 1 {
            return Err(CommandError::FrontierGap { stream: adv.stream.to_string(), current, proposed: adv.seq });
        }
        // A repeat: a no-op when identical to what is recorded, a conflict otherwise.
        let recorded = match here.get(&adv.seq) {
            Some(earlier) => Some((earlier.position, earlier.kind)),
            None => match info.frontier.point(adv.seq) {
                Ok(Some(p)) => Some((p.position, p.kind)),
                Ok(None) | Err(_) => None,
            },
        };
        match recorded {
            Some((position, kind)) if position == adv.position && kind == adv.kind => {}
            Some((position, _)) => {
                return Err(CommandError::FrontierConflict {
                    stream: adv.stream.to_string(),
                    seq: adv.seq,
                    recorded: position,
                    proposed: adv.position,
                })
            }
            None => {
                return Err(CommandError::FrontierTooOld {
                    stream: adv.stream.to_string(),
                    seq: adv.seq,
                    oldest_retained: info.frontier.oldest_retained(),
                });
            }
        }
    }
    Ok(events)
}
