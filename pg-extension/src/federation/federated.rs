//! Federated stream tables: a local stream table over mirrors of streams published by other clusters.
//!
//! Creating one validates every source URL here (syntax, this federation, its backend), asks the coordinator
//! for each stream's columns, creates the mirrors and the local stream table, records them, and last asks the
//! coordinator to record the federated table (which refuses unknown streams, unregistered clusters, duplicate
//! names and cycles). Everything local happens in the caller's transaction, so a refusal leaves nothing behind.
//! Then it asks each source's producer for a snapshot batch, which bootstraps the mirrors. In causal mode the
//! stream table has no schedule: the subscriber refreshes it in the transaction that applies each cut.

use std::collections::BTreeSet;
use std::time::Duration;

use coordinator::api::CreateFederatedTable;
use coordinator::client::ClientError;
use shared_model::{ColumnDef, Consistency, FederatedTableId, SourceUrl};

use super::changelog::channel_name;
use super::runtime::block_on;
use super::{client, coordinator_error, membership, mirror};
use crate::api::define;
use crate::catalog;
use crate::error::{PgTrickleError, Result};
use crate::query::render::quote_ident;

fn invalid(argument: &'static str, message: String, hint: &str) -> PgTrickleError {
    PgTrickleError::InvalidArgument { argument, message, hint: hint.into() }
}

pub fn create(
    name: &str,
    query: &str,
    sources: &[String],
    consistency: &str,
    schedule: Option<&str>,
) -> Result<String> {
    let member = membership()?.ok_or(PgTrickleError::NotRegistered)?;
    let consistency: Consistency = consistency.parse().map_err(|e: shared_model::ids::ParseError| {
        invalid("consistency", e.to_string(), "Write 'eventual' (the default) or 'causal'.")
    })?;
    if consistency == Consistency::Causal && schedule.is_some() {
        return Err(invalid(
            "schedule",
            "a causal federated stream table has no schedule".into(),
            "Leave schedule out: the subscriber refreshes it in the transaction that applies each cut.",
        ));
    }
    if sources.is_empty() {
        return Err(invalid(
            "sources",
            "no source given".into(),
            "Pass ARRAY['kafka://federation/cluster/stream_table', …].",
        ));
    }
    let registered_backend =
        catalog::scalar::<String>("SELECT backend FROM pgtrickle.pgt_federation", &[])?.unwrap_or_default();
    let mut urls = Vec::new();
    let mut seen = BTreeSet::new();
    for text in sources {
        let url = SourceUrl::parse(text).map_err(|e| {
            invalid(
                "sources",
                e.to_string(),
                "A source is SCHEME://FEDERATION/CLUSTER/STREAM_TABLE, e.g. kafka://coordinator/cluster_a/order_agg.",
            )
        })?;
        if url.federation.to_string() != member.federation_name {
            return Err(invalid(
                "sources",
                format!(
                    "{text} names federation \"{}\"; this cluster is in \"{}\"",
                    url.federation, member.federation_name
                ),
                "Use the federation name register_federation() returned as the URL's host.",
            ));
        }
        if url.backend.to_string() != registered_backend {
            return Err(invalid(
                "sources",
                format!(
                    "{text} asks for backend {}; this federation's change log is {registered_backend}",
                    url.backend
                ),
                &match registered_backend.parse() {
                    Ok(backend) => format!(
                        "This federation's backend is {registered_backend}: write {}.",
                        SourceUrl { backend, ..url.clone() }
                    ),
                    Err(_) => "Use the scheme of the federation's change-log backend.".into(),
                },
            ));
        }
        if !seen.insert(url.stream.clone()) {
            return Err(invalid("sources", format!("{} is listed twice", url.stream), "List each source once."));
        }
        urls.push(url);
    }
    let plain = |part: &str| {
        part.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
            && part.len() <= 63
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        return Err(invalid(
            "name",
            format!("\"{name}\" is not a lower-case identifier (or schema.identifier)"),
            "Federated stream tables are named like their id at the coordinator: lower-case letters, digits and _.",
        ));
    }
    let (schema, table) = define::resolve_new_name(name)?;
    let table_id = FederatedTableId::parse(&format!("{}/{schema}.{table}", member.cluster_name)).map_err(|e| {
        invalid("name", e.to_string(), "Federated stream tables need lower-case identifier names (schema and table).")
    })?;

    let client = client(&member.coordinator_url, Duration::from_secs(15))?;
    // Columns of every source, from the log (an unknown stream is refused here, before anything is created).
    let mut columns: Vec<Vec<ColumnDef>> = Vec::new();
    for url in &urls {
        match block_on(client.stream(&url.stream))? {
            Ok(view) => columns.push(view.columns),
            Err(ClientError::Api { status: 404, .. }) => {
                let cluster = url.stream.cluster();
                let registered = match block_on(client.cluster(cluster))? {
                    Ok(_) => true,
                    Err(ClientError::Api { status: 404, .. }) => false,
                    Err(e) => return Err(coordinator_error(e)),
                };
                if !registered {
                    return Err(PgTrickleError::Coordinator {
                        code: "unknown_cluster".into(),
                        message: format!("cluster {cluster} is not registered with the federation (unknown_cluster)"),
                        hint: "Register it first (pgtrickle.register_federation on that cluster), or check the URL; \
                               `pgtrickle-coordinator clusters` lists the registered clusters."
                            .into(),
                        rejected: true,
                    });
                }
                return Err(PgTrickleError::Coordinator {
                    code: "unknown_stream".into(),
                    message: format!("stream {} is not published (unknown_stream)", url.stream),
                    hint: "Publish it on its cluster first (pgtrickle.publish_stream_table), or check the URL; \
                           `pgtrickle-coordinator streams` lists the published streams."
                        .into(),
                    rejected: true,
                });
            }
            Err(error) => return Err(coordinator_error(error)),
        }
    }
    for url in &urls {
        let taken = catalog::scalar::<String>(
            "SELECT ft.table_id FROM pgtrickle.pgt_federation_sources s JOIN pgtrickle.pgt_federated_tables ft \
             USING (pgt_id) WHERE s.stream_id = $1",
            &[url.stream.to_string().into()],
        )?;
        if let Some(other) = taken {
            return Err(PgTrickleError::AlreadyExists(format!(
                "mirror of {} (read by federated table {other})",
                url.stream
            )));
        }
    }

    // Local objects, in this transaction.
    let mut mirrors = Vec::new();
    for (url, cols) in urls.iter().zip(&columns) {
        mirrors.push(mirror::create(&url.stream, cols)?);
    }
    let schedule = match consistency {
        Consistency::Eventual => Some(schedule.unwrap_or("1s")),
        Consistency::Causal => None,
    };
    let qualified =
        format!("{}.{}", crate::query::render::quote_ident(&schema), crate::query::render::quote_ident(&table));
    define::create(&qualified, query, schedule, "auto")?;
    let st = catalog::find_by_name(&qualified)?;
    let prefix = catalog::scalar::<String>("SELECT topic_prefix FROM pgtrickle.pgt_federation", &[])?
        .unwrap_or_else(|| "pgtrickle".into());

    let applied = block_on(client.create_federated_table(&CreateFederatedTable {
        table: table_id.clone(),
        sources: urls.clone(),
        consistency,
    }))?
    .map_err(coordinator_error)?;
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_federated_tables (pgt_id, table_id, consistency, created_index) VALUES ($1, $2, $3, $4)",
        &[st.pgt_id.into(), table_id.to_string().into(), consistency.to_string().into(), (applied.index as i64).into()],
    )?;
    for ((url, cols), relid) in urls.iter().zip(&columns).zip(&mirrors) {
        catalog::exec_with(
            "INSERT INTO pgtrickle.pgt_federation_sources (stream_id, pgt_id, source_url, mirror_relid, topic, columns) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                url.stream.to_string().into(),
                st.pgt_id.into(),
                url.to_string().into(),
                (*relid).into(),
                channel_name(&prefix, &url.stream).into(),
                pgrx::JsonB(serde_json::to_value(cols).unwrap_or_default()).into(),
            ],
        )?;
    }
    // Bootstrap: each producer answers with a snapshot batch. If this fails, the subscriber asks again when it
    // finds it cannot start from what the log has.
    for url in &urls {
        if let Err(error) = block_on(client.request_reinitialize(&url.stream, &format!("bootstrap of {table_id}")))? {
            pgrx::notice!(
                "pg_trickle: snapshot of {} not requested yet ({error}); the subscriber will ask",
                url.stream
            );
        }
    }
    Ok(table_id.to_string())
}

pub fn drop(name: &str) -> Result<()> {
    let member = membership()?.ok_or(PgTrickleError::NotRegistered)?;
    let st = catalog::find_by_name(name)?;
    let table_id = catalog::scalar::<String>(
        "SELECT table_id FROM pgtrickle.pgt_federated_tables WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?
    .ok_or_else(|| {
        invalid(
            "name",
            format!("{} is not a federated stream table", st.qualified()),
            "Drop a local stream table with pgtrickle.drop_stream_table(name).",
        )
    })?;
    let mirrors = catalog::column::<String>(
        "SELECT mirror_relid::regclass::text FROM pgtrickle.pgt_federation_sources WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    let schemas = catalog::column::<String>(
        "SELECT DISTINCT c.relnamespace::regnamespace::text FROM pgtrickle.pgt_federation_sources s \
         JOIN pg_class c ON c.oid = s.mirror_relid WHERE s.pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    catalog::exec_with("DELETE FROM pgtrickle.pgt_federated_tables WHERE pgt_id = $1", &[st.pgt_id.into()])?;
    define::drop(&st.qualified(), false)?;
    catalog::allow_internal_ddl()?;
    for mirror in mirrors {
        catalog::exec(&format!("DROP TABLE {mirror}"))?;
    }
    // A mirror schema this left empty goes too (one holding anything else stays).
    for schema in schemas {
        let empty = catalog::scalar::<bool>(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = $1::regnamespace) \
             AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = $1::regnamespace) \
             AND NOT EXISTS (SELECT 1 FROM pg_type WHERE typnamespace = $1::regnamespace)",
            &[schema.clone().into()],
        )?
        .unwrap_or(false);
        if empty {
            catalog::exec(&format!("DROP SCHEMA {schema}"))?;
        }
    }
    catalog::end_internal_ddl()?;
    let id = FederatedTableId::parse(&table_id)
        .map_err(|e| PgTrickleError::Internal(format!("stored federated table id {table_id}: {e}")))?;
    let client = client(&member.coordinator_url, Duration::from_secs(15))?;
    match block_on(client.drop_federated_table(&id, false))? {
        Ok(_) => Ok(()),
        // Already gone at the coordinator (dropped with its sources): nothing more to undo here.
        Err(ClientError::Api { status: 404, .. }) => Ok(()),
        Err(error) => Err(coordinator_error(error)),
    }
}

/// A source's columns changed (its snapshot batch says so): rebuilds that mirror with the new columns and plans
/// the federated stream table again over it **in place**, in the caller's transaction (the subscriber's apply):
/// the stream table keeps its id, schedule and publication (a federated stream table this cluster publishes goes
/// on publishing: its REINITIALIZE is a snapshot batch for the clusters reading it, with new columns if its own
/// output changed), the federated table keeps its id at the coordinator, its consistency and every source's
/// applied position. Its query is analysed again, so a query the new columns break fails here, visibly, and
/// nothing changes; so does a federated stream table other local stream tables read (their columns could not
/// follow). Returns the new mirror.
pub fn rebuild_mirror(stream: &shared_model::StreamId, columns: &[ColumnDef]) -> Result<pgrx::pg_sys::Oid> {
    let row = catalog::scalar::<pgrx::JsonB>(
        "SELECT jsonb_build_object('pgt_id', s.pgt_id, 'mirror', s.mirror_relid::regclass::text, \
           'mirror_oid', s.mirror_relid::bigint) FROM pgtrickle.pgt_federation_sources s WHERE s.stream_id = $1",
        &[stream.to_string().into()],
    )?
    .ok_or_else(|| PgTrickleError::Internal(format!("{stream} is not mirrored here")))?
    .0;
    let pgt_id = row["pgt_id"].as_i64().unwrap_or_default();
    let old_mirror = row["mirror"].as_str().unwrap_or_default().to_string();
    let old_oid = pgrx::pg_sys::Oid::from(row["mirror_oid"].as_i64().unwrap_or_default() as u32);
    let st = catalog::load(pgt_id, crate::catalog::RowLock::Wait)?
        .ok_or_else(|| PgTrickleError::Internal(format!("federated stream table {pgt_id} vanished")))?;
    // Rebuilding drops the stream table's storage, which local stream tables over it depend on: the source
    // waits, blocked, until the operator removes them (checked before any DDL, so waiting costs nothing).
    let dependents = catalog::dependents(st.relid)?;
    if !dependents.is_empty() {
        return Err(PgTrickleError::ColumnChangeBlocked {
            table: st.qualified(),
            stream: stream.to_string(),
            dependents: dependents.iter().map(|(_, name)| name.clone()).collect::<Vec<_>>().join(", "),
        });
    }
    // Rebuilding drops the stream table's change buffer: batches its publisher has not sent yet would be lost.
    let unsent = catalog::scalar::<i64>(
        "SELECT $2 - published_seq FROM pgtrickle.pgt_publications WHERE pgt_id = $1",
        &[pgt_id.into(), st.last_batch_seq.into()],
    )?
    .unwrap_or(0);
    if unsent > 0 {
        return Err(PgTrickleError::Internal(format!(
            "{} has {unsent} batches its publisher has not sent yet; the rebuild for {stream}'s new columns waits",
            st.qualified()
        )));
    }
    catalog::allow_internal_ddl()?;
    catalog::exec(&format!(
        "ALTER TABLE {old_mirror} RENAME TO {}",
        quote_ident(&format!("__pgt_old_mirror_{}", old_oid.to_u32()))
    ))?;
    let mirror = mirror::create(stream, columns)?;
    define::requery(&st)?;
    // The capture on the old mirror was released by the new plan (it no longer reads it).
    catalog::allow_internal_ddl()?;
    let drop_old = catalog::scalar::<String>("SELECT format('DROP TABLE %s', $1::regclass)", &[old_oid.into()])?
        .ok_or_else(|| PgTrickleError::Internal(format!("the old mirror of {stream} vanished")))?;
    catalog::exec(&drop_old)?;
    catalog::end_internal_ddl()?;
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_federation_sources SET mirror_relid = $2, columns = $3 WHERE stream_id = $1",
        &[
            stream.to_string().into(),
            mirror.into(),
            pgrx::JsonB(serde_json::to_value(columns).unwrap_or_default()).into(),
        ],
    )?;
    Ok(mirror)
}
