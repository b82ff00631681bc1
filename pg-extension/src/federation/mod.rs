//! Federation membership: registering this PostgreSQL cluster with the coordinators, leaving, and asking how
//! the coordinators are doing. The coordinators hold the truth (the replicated log); the extension keeps only what
//! it was told at registration (federation name and broker settings) in `pgtrickle.pgt_federation`.
//!
//! Calls go through the coordinator client library on a current-thread tokio runtime built for the call, on the
//! backend's own thread ([`runtime`]).
//!
//! Submodules: [`broker`] (Kafka), [`publisher`] (change buffers → broker → frontier advances, a background
//! worker), [`subscriber`] (broker → mirrors gated by the frontier, a background worker), [`mirror`] (mirror
//! tables and applying batches to them), [`federated`] (federated stream tables), [`wire`] (the text form values
//! travel in).

pub mod broker_config;
pub mod changelog;
pub mod federated;
pub mod mirror;
pub mod publisher;
pub mod runtime;
pub mod subscriber;
pub mod wire;

use std::time::Duration;

use std::collections::BTreeSet;

use coordinator::api::{PublishStream, RegisterCluster};
use coordinator::client::{Client, ClientError, ClientOptions};
use shared_model::{ClusterName, ColumnDef, Event, MessageKey, NodeKey, ProducerFence, StreamId, SystemIdentifier};

use crate::catalog;
use crate::config;
use crate::error::{PgTrickleError, Result};
use runtime::block_on;

/// This server's `system_identifier` (set by initdb; kept by physical copies).
pub fn system_identifier() -> Result<SystemIdentifier> {
    let text =
        catalog::scalar::<String>("SELECT system_identifier::text FROM pg_control_system()", &[])?.unwrap_or_default();
    SystemIdentifier::parse(&text).map_err(|e| PgTrickleError::Internal(format!("pg_control_system(): {e}")))
}

/// This cluster's client id at the coordinators (part of every write's idempotency key).
pub fn client_id() -> Result<String> {
    Ok(client_id_of(system_identifier()?))
}

/// The client id of the server with identifier `me`.
pub fn client_id_of(me: SystemIdentifier) -> String {
    format!("pg-{me}")
}

/// A coordinator client (no I/O until used); `client_id` from [`client_id`].
pub fn client_with_id(url: &str, deadline: Duration, client_id: String) -> Result<Client> {
    let options = ClientOptions {
        token: config::coordinator_token(),
        client_id,
        deadline,
        attempt_timeout: deadline.min(Duration::from_secs(5)),
        ca_pem: None,
    };
    Client::new(url, options).map_err(coordinator_error)
}

pub fn client(url: &str, deadline: Duration) -> Result<Client> {
    client_with_id(url, deadline, client_id()?)
}

/// Maps a client error to ours: the coordinator's own code, message and hint when it answered.
pub fn coordinator_error(error: ClientError) -> PgTrickleError {
    match error {
        ClientError::Api { status, error } => PgTrickleError::Coordinator {
            code: error.code.clone(),
            message: format!("{} ({}, HTTP {status})", error.message, error.code),
            hint: error.hint.unwrap_or_else(|| "See the coordinator's log.".into()),
            rejected: status < 500,
        },
        ClientError::BadUrl(url) => PgTrickleError::InvalidArgument {
            argument: "coordinator_url",
            message: format!("{url:?} is not a coordinator URL"),
            hint: "Write http://host:port, or several nodes as http://c1:7070,c2:7070,c3:7070.".into(),
        },
        other => PgTrickleError::CoordinatorUnavailable(other.to_string()),
    }
}

/// The registration row, if this cluster is registered.
pub struct Membership {
    pub coordinator_url: String,
    pub cluster_name: String,
    pub federation_name: String,
    /// The server the registration was made by (see `pgt_federation.system_identifier`).
    pub system_identifier: String,
    /// The producer epoch it was handed.
    pub producer_epoch: u64,
    /// The federation's change-log backend.
    pub backend: shared_model::Backend,
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    /// The federation's message key as stored (hex); [`Membership::message_key`] parses it.
    message_key: String,
    /// The catalog's librdkafka properties (no secrets).
    pub broker_settings: std::collections::BTreeMap<String, String>,
    pub topics: shared_model::broker_settings::TopicSettings,
}

impl Membership {
    /// The federation's message key.
    pub fn message_key(&self) -> Result<MessageKey> {
        MessageKey::parse_hex(&self.message_key)
            .map_err(|e| PgTrickleError::Internal(format!("pgt_federation.message_key: {e}")))
    }

    /// What this server presents when it writes as the cluster's producer: the cluster, its own identifier `me`
    /// (not the stored one: a row restored onto another server must not speak for the server that wrote it) and
    /// the epoch it was handed.
    pub fn producer_fence(&self, me: SystemIdentifier) -> Result<ProducerFence> {
        Ok(ProducerFence {
            cluster: ClusterName::parse(&self.cluster_name)
                .map_err(|e| PgTrickleError::Internal(format!("stored cluster name: {e}")))?,
            system_identifier: me,
            producer_epoch: self.producer_epoch,
        })
    }

    /// The broker configuration in force with the properties file's `file` settings.
    pub fn broker_config(
        &self,
        file: &std::collections::BTreeMap<String, String>,
    ) -> std::result::Result<broker_config::BrokerConfig, broker_config::ConfigError> {
        broker_config::effective(self.change_log(), &self.broker_settings, file, self.topics)
    }

    /// Where the federation's change log is.
    pub fn change_log(&self) -> broker_config::ChangeLogTarget<'_> {
        broker_config::ChangeLogTarget {
            backend: self.backend,
            servers: &self.bootstrap_servers,
            topic_prefix: &self.topic_prefix,
        }
    }
}

/// The registration row (one query: the workers read it every round).
pub fn membership() -> Result<Option<Membership>> {
    let row = catalog::scalar::<pgrx::JsonB>(
        "SELECT jsonb_build_object('url', coordinator_url, 'cluster', cluster_name, 'federation', federation_name, \
         'system_identifier', system_identifier, 'producer_epoch', producer_epoch, 'backend', backend, \
         'servers', bootstrap_servers, 'prefix', topic_prefix, 'key', message_key, 'settings', broker_settings, \
         'partitions', topic_partitions, 'replication', topic_replication_factor) FROM pgtrickle.pgt_federation",
        &[],
    )?;
    let Some(pgrx::JsonB(json)) = row else { return Ok(None) };
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_string();
    let topics = shared_model::broker_settings::TopicSettings::new(
        json["partitions"].as_i64().unwrap_or(1) as i32,
        json["replication"].as_i64().unwrap_or(1) as i32,
    )
    .map_err(|e| PgTrickleError::Internal(format!("pgt_federation: {e}")))?;
    Ok(Some(Membership {
        coordinator_url: text("url"),
        cluster_name: text("cluster"),
        federation_name: text("federation"),
        system_identifier: text("system_identifier"),
        producer_epoch: json["producer_epoch"].as_u64().unwrap_or_default(),
        backend: text("backend")
            .parse()
            .map_err(|e| PgTrickleError::Internal(format!("pgt_federation.backend: {e}")))?,
        bootstrap_servers: text("servers"),
        topic_prefix: text("prefix"),
        message_key: text("key"),
        broker_settings: broker_config::stored_settings(&json["settings"]),
        topics,
    }))
}

/// What registration returns to the caller.
pub struct Registration {
    pub federation: String,
    pub cluster: String,
    pub backend: String,
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub log_index: i64,
    pub producer_epoch: i64,
}

/// Registers this server under `cluster_name`; with `takeover`, also when another server (or an older copy of
/// this one: a restored backup, the old primary of a promoted standby) holds the name, under a new producer epoch.
pub fn register(coordinator_url: &str, cluster_name: Option<&str>, takeover: bool) -> Result<Registration> {
    let name = match cluster_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None => catalog::scalar::<String>("SELECT current_setting('cluster_name')", &[])?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| PgTrickleError::InvalidArgument {
                argument: "cluster_name",
                message: "no cluster name given and the server's cluster_name setting is empty".into(),
                hint: "Pass one: SELECT pgtrickle.register_federation('http://c1:7070', 'cluster_a');".into(),
            })?,
    };
    let cluster = ClusterName::parse(&name).map_err(|e| PgTrickleError::InvalidArgument {
        argument: "cluster_name",
        message: e.to_string(),
        hint: "Cluster names are lower-case identifiers (letters, digits, _), at most 63 bytes.".into(),
    })?;
    let me = system_identifier()?;
    let mut known_epoch = None;
    if let Some(existing) = membership()? {
        if existing.cluster_name != cluster.to_string() || existing.coordinator_url != coordinator_url {
            return Err(PgTrickleError::AlreadyRegistered {
                cluster: existing.cluster_name,
                federation: existing.federation_name,
            });
        }
        // A row restored onto another server (pg_dump/pg_restore) speaks for the server that wrote it.
        if existing.system_identifier == me.to_string() {
            known_epoch = Some(existing.producer_epoch);
        }
    }
    let endpoint = catalog::scalar::<String>(
        "SELECT coalesce(inet_server_addr()::text, 'local') || ':' || current_setting('port')",
        &[],
    )?
    .unwrap_or_default();
    let client = client(coordinator_url, Duration::from_secs(15))?;
    let body = RegisterCluster {
        name: cluster.clone(),
        endpoint,
        capabilities: Default::default(),
        system_identifier: me,
        known_epoch,
        takeover,
    };
    let registered = block_on(client.register_cluster(&body))?.map_err(coordinator_error)?;
    let settings = &registered.federation.changelog;
    // Checked before it is stored: a reply without a valid key must not leave a row that sends unverifiable data.
    MessageKey::parse_hex(&registered.message_key)
        .map_err(|e| PgTrickleError::Internal(format!("the coordinators' message key: {e}")))?;
    let registration = Registration {
        federation: registered.federation.name.to_string(),
        cluster: cluster.to_string(),
        backend: settings.backend.to_string(),
        bootstrap_servers: settings.bootstrap_servers.clone(),
        topic_prefix: settings.topic_prefix.clone(),
        log_index: registered.applied.index as i64,
        producer_epoch: registered.cluster.producer_epoch as i64,
    };
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_federation (coordinator_url, cluster_name, federation_name, backend, \
         bootstrap_servers, topic_prefix, registered_at_index, system_identifier, producer_epoch, message_key, \
         last_contact) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now()) \
         ON CONFLICT (singleton) DO UPDATE SET federation_name = EXCLUDED.federation_name, backend = EXCLUDED.backend, \
         bootstrap_servers = EXCLUDED.bootstrap_servers, topic_prefix = EXCLUDED.topic_prefix, \
         system_identifier = EXCLUDED.system_identifier, producer_epoch = EXCLUDED.producer_epoch, \
         message_key = EXCLUDED.message_key, last_contact = now(), last_error = NULL",
        &[
            coordinator_url.into(),
            registration.cluster.clone().into(),
            registration.federation.clone().into(),
            registration.backend.clone().into(),
            registration.bootstrap_servers.clone().into(),
            registration.topic_prefix.clone().into(),
            registration.log_index.into(),
            me.to_string().into(),
            registration.producer_epoch.into(),
            registered.message_key.clone().into(),
        ],
    )?;
    if takeover {
        pgrx::log!(
            "pg_trickle: {} taken over by this server under producer epoch {}; its streams restart with snapshot batches",
            registration.cluster,
            registration.producer_epoch
        );
    }
    Ok(registration)
}

pub fn deregister(cascade: bool) -> Result<()> {
    let Some(member) = membership()? else {
        return Err(PgTrickleError::NotRegistered);
    };
    let cluster = ClusterName::parse(&member.cluster_name)
        .map_err(|e| PgTrickleError::Internal(format!("stored cluster name: {e}")))?;
    let client = client(&member.coordinator_url, Duration::from_secs(15))?;
    block_on(client.deregister_cluster(&cluster, cascade))?.map_err(coordinator_error)?;
    catalog::exec("DELETE FROM pgtrickle.pgt_federation")?;
    Ok(())
}

/// One line of `federation_status()`.
pub struct Status {
    pub coordinator_url: String,
    pub cluster: String,
    pub federation: String,
    pub reachable: bool,
    pub leader: Option<String>,
    pub detail: String,
    /// The broker settings in force as the properties file reads now (secrets redacted), or none when they
    /// cannot be put together ([`Status::broker_error`] says why).
    pub broker_settings: Option<serde_json::Value>,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
    pub properties_file: Option<String>,
    pub broker_error: Option<String>,
}

pub fn status() -> Result<Status> {
    let Some(member) = membership()? else {
        return Err(PgTrickleError::NotRegistered);
    };
    let client = client(&member.coordinator_url, Duration::from_secs(3))?;
    let answer = block_on(client.status())?;
    let (reachable, leader, detail) = match &answer {
        Ok(view) => {
            let leader = view.leader.and_then(|id| view.members.iter().find(|m| m.id == id)).map(|m| m.addr.clone());
            (true, leader, format!("node {} is {} (term {})", view.node_id, view.state, view.term))
        }
        Err(error) => (false, None, error.to_string()),
    };
    // The contact (or its failure) is recorded; a status call must not fail because the coordinators are down.
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_federation SET last_contact = CASE WHEN $1 THEN now() ELSE last_contact END, \
         last_error = CASE WHEN $1 THEN NULL ELSE $2 END",
        &[reachable.into(), detail.clone().into()],
    )?;
    let broker = broker_config::read_properties_file().and_then(|file| member.broker_config(&file));
    let (broker_settings, broker_error) = match broker {
        Ok(config) => (Some(serde_json::to_value(config.shown()).unwrap_or_default()), None),
        Err(error) => (None, Some(error.to_string())),
    };
    Ok(Status {
        coordinator_url: member.coordinator_url,
        cluster: member.cluster_name,
        federation: member.federation_name,
        reachable,
        leader,
        detail,
        broker_settings,
        topic_partitions: member.topics.partitions,
        topic_replication_factor: member.topics.replication_factor,
        properties_file: config::broker_properties_file(),
        broker_error,
    })
}

/// Replaces the catalog's broker settings (when given) and the topic settings (those given); returns the
/// configuration then in force, secrets redacted. Refused — nothing changed — when the result is not one the
/// workers could use: a secret or protocol-owned key, a key the properties file also sets, an unreadable file,
/// or properties librdkafka does not accept. The workers pick the change up at their next round.
pub fn set_broker_settings(
    settings: Option<&serde_json::Value>,
    topic_partitions: Option<i32>,
    topic_replication_factor: Option<i32>,
) -> Result<serde_json::Value> {
    let member = membership()?.ok_or(PgTrickleError::NotRegistered)?;
    let catalog_settings = match settings {
        Some(json) => broker_config::catalog_settings(json)?,
        None => member.broker_settings.clone(),
    };
    let topics = shared_model::broker_settings::TopicSettings::new(
        topic_partitions.unwrap_or(member.topics.partitions),
        topic_replication_factor.unwrap_or(member.topics.replication_factor),
    )
    .map_err(|message| PgTrickleError::InvalidArgument {
        argument: "topic_partitions",
        message,
        hint: "A stream uses one partition; raise it only where the broker's policy demands more.".into(),
    })?;
    let refused = |error: broker_config::ConfigError| PgTrickleError::InvalidArgument {
        argument: "settings",
        message: error.message,
        hint: format!("{} Nothing was changed.", error.hint),
    };
    let file = broker_config::read_properties_file().map_err(refused)?;
    let config = broker_config::effective(member.change_log(), &catalog_settings, &file, topics).map_err(refused)?;
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_federation SET broker_settings = $1, topic_partitions = $2, \
         topic_replication_factor = $3",
        &[
            pgrx::JsonB(serde_json::to_value(&catalog_settings).unwrap_or_default()).into(),
            topics.partitions.into(),
            topics.replication_factor.into(),
        ],
    )?;
    Ok(serde_json::to_value(config.shown()).unwrap_or_default())
}

/// `cluster/schema.table` of a stream table of this cluster; names must be plain lower-case identifiers.
fn stream_id(member: &Membership, st: &catalog::StreamTable) -> Result<StreamId> {
    StreamId::parse(&format!("{}/{}.{}", member.cluster_name, st.schema, st.name)).map_err(|e| {
        PgTrickleError::InvalidArgument {
            argument: "name",
            message: format!("{} cannot be published: {e}", st.qualified()),
            hint: "Published stream tables need lower-case identifier names (schema and table).".into(),
        }
    })
}

/// Offers a stream table to the federation: its columns, its upstream edges (the published stream tables of this
/// cluster it reads, so the coordinator sees cross-cluster cycles) and its current batch seq. Idempotent.
pub fn publish(name: &str) -> Result<String> {
    let member = membership()?.ok_or(PgTrickleError::NotRegistered)?;
    let st = catalog::find_by_name(name)?;
    let stream = stream_id(&member, &st)?;
    let columns: Vec<ColumnDef> =
        crate::cdc::user_columns(st.relid)?.iter().map(|(n, t)| ColumnDef::new(n, t)).collect();
    let upstream_ids = catalog::column::<String>(
        "SELECT p.stream_id FROM pgtrickle.pgt_dependencies d \
         JOIN pgtrickle.pgt_stream_tables up ON up.pgt_relid = d.source_relid \
         JOIN pgtrickle.pgt_publications p ON p.pgt_id = up.pgt_id WHERE d.pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    let mut upstream = BTreeSet::new();
    // A federated stream table's output follows from its federated table (so a cycle through it is seen).
    let federated = catalog::scalar::<String>(
        "SELECT table_id FROM pgtrickle.pgt_federated_tables WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    if let Some(table_id) = federated {
        let parsed = shared_model::FederatedTableId::parse(&table_id)
            .map_err(|e| PgTrickleError::Internal(format!("stored federated table id {table_id}: {e}")))?;
        upstream.insert(NodeKey::Federated(parsed));
    }
    for id in upstream_ids {
        let parsed =
            StreamId::parse(&id).map_err(|e| PgTrickleError::Internal(format!("stored stream id {id}: {e}")))?;
        upstream.insert(NodeKey::Stream(parsed));
    }
    // On behalf of this server: a server superseded by a takeover cannot publish the cluster's streams.
    let producer = Some(member.producer_fence(system_identifier()?)?);
    let body =
        PublishStream { stream: stream.clone(), columns, upstream, base_seq: st.last_batch_seq as u64, producer };
    let client = client(&member.coordinator_url, Duration::from_secs(15))?;
    let applied = block_on(client.publish_stream(&body))?.map_err(coordinator_error)?;
    let published = applied.events.iter().find_map(|e| match e {
        Event::StreamPublished { incarnation, .. } => Some(*incarnation),
        _ => None,
    });
    // An identical re-publication records nothing: the stream's incarnation is asked for.
    let incarnation = match published {
        Some(incarnation) => incarnation,
        None => block_on(client.stream(&stream))?.map_err(coordinator_error)?.incarnation,
    };
    // A row of another incarnation (its unpublish reached the coordinators, or they were restored without the
    // stream) starts over: the new incarnation's seqs begin at this cluster's current batch.
    catalog::exec_with(
        "DELETE FROM pgtrickle.pgt_publications WHERE pgt_id = $1 AND incarnation IS DISTINCT FROM $2",
        &[st.pgt_id.into(), (incarnation as i64).into()],
    )?;
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_publications (pgt_id, stream_id, base_seq, published_index, published_seq, \
           proposed_seq, incarnation, columns) VALUES ($1, $2, $3, $4, $3, $3, $5, $6) \
         ON CONFLICT (pgt_id) DO UPDATE SET columns = EXCLUDED.columns",
        &[
            st.pgt_id.into(),
            stream.to_string().into(),
            st.last_batch_seq.into(),
            (applied.index as i64).into(),
            (incarnation as i64).into(),
            pgrx::JsonB(serde_json::to_value(&body.columns).unwrap_or_default()).into(),
        ],
    )?;
    Ok(stream.to_string())
}

/// Withdraws a stream table from the federation (with `cascade`, the coordinator also drops what reads it).
///
/// The local row goes now; the coordinators are told when the transaction commits (its pre-commit step), so a
/// transaction that rolls back withdraws nothing anywhere, and a refusal there (dependents without `cascade`,
/// coordinators unreachable) aborts the transaction, so the local row stays too. Only a crash between the
/// coordinators' answer and the local commit can leave the row behind; the publisher then shows the stream's
/// "not published" error on it, and publishing it again repairs it.
pub fn unpublish(name: &str, cascade: bool) -> Result<()> {
    let member = membership()?.ok_or(PgTrickleError::NotRegistered)?;
    let st = catalog::find_by_name(name)?;
    let stream = stream_id(&member, &st)?;
    let deleted = catalog::exec_with("DELETE FROM pgtrickle.pgt_publications WHERE pgt_id = $1", &[st.pgt_id.into()])?;
    if deleted == 0 {
        return Err(PgTrickleError::InvalidArgument {
            argument: "name",
            message: format!("{} is not published", st.qualified()),
            hint: "SELECT stream_id FROM pgtrickle.pgt_publications lists what this cluster publishes.".into(),
        });
    }
    let client = client(&member.coordinator_url, Duration::from_secs(15))?;
    // On behalf of this server: a server superseded by a takeover cannot withdraw the cluster's streams.
    let fence = member.producer_fence(system_identifier()?)?;
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PrePrepare, || {
        PgTrickleError::InvalidArgument {
            argument: "transaction",
            message: "a transaction that unpublishes a stream cannot be prepared (two-phase commit)".into(),
            hint: "Unpublish in an ordinary transaction.".into(),
        }
        .raise()
    });
    let call = std::panic::AssertUnwindSafe((client, stream, fence));
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PreCommit, move || {
        let (client, stream, fence) = &*call;
        let result =
            block_on(client.unpublish_stream(stream, cascade, Some(fence))).and_then(|r| r.map_err(coordinator_error));
        match result {
            Ok(_) => {}
            // Withdrawn already (a retried transaction, or by cascade from elsewhere): the goal holds.
            Err(PgTrickleError::Coordinator { code, .. }) if code == "unknown_stream" => {}
            Err(error) => error.raise(),
        }
    });
    Ok(())
}
