//! SQL functions of federation membership.

use pgrx::prelude::*;

use crate::error::OrRaise;
use crate::federation;

/// Registers this cluster with the federation's coordinators (`http://c1:7070,c2:7070,c3:7070`; the client
/// follows the leader). Returns the federation, the broker settings every cluster of it uses and the producer
/// epoch this server publishes under. The name is bound to this server (its `system_identifier`): another
/// server may take it over only with `takeover => true` (after a failover to a promoted standby, a restore from
/// a backup, or a move to a new host), which fences the previous holder and restarts its streams with snapshots.
#[pg_extern(schema = "pgtrickle")]
fn register_federation(
    coordinator_url: &str,
    cluster_name: default!(Option<&str>, "NULL"),
    takeover: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(federation, String),
        name!(cluster, String),
        name!(backend, String),
        name!(bootstrap_servers, String),
        name!(topic_prefix, String),
        name!(log_index, i64),
        name!(producer_epoch, i64),
    ),
> {
    let r = federation::register(coordinator_url, cluster_name, takeover).or_raise();
    TableIterator::once((
        r.federation,
        r.cluster,
        r.backend,
        r.bootstrap_servers,
        r.topic_prefix,
        r.log_index,
        r.producer_epoch,
    ))
}

/// Leaves the federation (with `cascade`, the coordinators also drop what this cluster published and the
/// federated tables that read it).
#[pg_extern(schema = "pgtrickle")]
fn deregister_federation(cascade: default!(bool, false)) {
    federation::deregister(cascade).or_raise()
}

/// How the coordinators are doing, as seen from here now (never fails because they are down: `reachable` says),
/// and the broker settings in force as the properties file reads now (secrets redacted; `broker_error` says why
/// there are none).
#[pg_extern(schema = "pgtrickle")]
#[allow(clippy::type_complexity)] // pgrx reads the column names from the name!() markers in this very signature
fn federation_status() -> TableIterator<
    'static,
    (
        name!(coordinator_url, String),
        name!(cluster, String),
        name!(federation, String),
        name!(reachable, bool),
        name!(leader, Option<String>),
        name!(detail, String),
        name!(broker_settings, Option<pgrx::JsonB>),
        name!(topic_partitions, i32),
        name!(topic_replication_factor, i32),
        name!(properties_file, Option<String>),
        name!(broker_error, Option<String>),
    ),
> {
    let s = federation::status().or_raise();
    TableIterator::once((
        s.coordinator_url,
        s.cluster,
        s.federation,
        s.reachable,
        s.leader,
        s.detail,
        s.broker_settings.map(pgrx::JsonB),
        s.topic_partitions,
        s.topic_replication_factor,
        s.properties_file,
        s.broker_error,
    ))
}

/// Sets how this cluster's clients talk to the broker: `settings` replaces the librdkafka properties kept in the
/// catalog (`{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": "..."}`;
/// secrets belong in `pg_trickle.broker_properties_file`), `topic_partitions` and `topic_replication_factor` how
/// new topics are created. NULL keeps a part as it is. Returns the settings then in force, secrets redacted; the
/// workers use them from their next round on.
#[pg_extern(schema = "pgtrickle")]
fn set_broker_settings(
    settings: default!(Option<pgrx::JsonB>, "NULL"),
    topic_partitions: default!(Option<i32>, "NULL"),
    topic_replication_factor: default!(Option<i32>, "NULL"),
) -> pgrx::JsonB {
    pgrx::JsonB(
        federation::set_broker_settings(settings.as_ref().map(|j| &j.0), topic_partitions, topic_replication_factor)
            .or_raise(),
    )
}

/// Offers a stream table to the federation (as `cluster/schema.table`); returns that stream id. Idempotent.
#[pg_extern(schema = "pgtrickle")]
fn publish_stream_table(name: &str) -> String {
    federation::publish(name).or_raise()
}

/// Withdraws a published stream table (with `cascade`, also the federated tables that read it).
#[pg_extern(schema = "pgtrickle")]
fn unpublish_stream_table(name: &str, cascade: default!(bool, false)) {
    federation::unpublish(name, cascade).or_raise()
}

/// Creates a federated stream table: `query` reads mirrors `CLUSTER.STREAM_TABLE` of the `sources`
/// (`kafka://FEDERATION/CLUSTER/STREAM_TABLE`), kept up to date from the broker as the coordinator's log records
/// batches. `consistency => 'causal'` applies all sources up to one common cut of the log in one transaction.
/// Returns the table's id at the coordinator (`cluster/schema.table`).
#[pg_extern(schema = "pgtrickle")]
fn create_federated_stream_table(
    name: &str,
    query: &str,
    sources: Vec<String>,
    consistency: default!(&str, "'eventual'"),
    schedule: default!(Option<&str>, "NULL"),
) -> String {
    federation::federated::create(name, query, &sources, consistency, schedule).or_raise()
}

/// Drops a federated stream table, its mirrors, and its record at the coordinator.
#[pg_extern(schema = "pgtrickle")]
fn drop_federated_stream_table(name: &str) {
    federation::federated::drop(name).or_raise()
}
