//! Reads the catalog into checkpoint items. Each query builds the item's JSON line in SQL, by name (schema and
//! relation names resolved from OIDs here, so the checkpoint restores onto another server), and the line is then
//! decoded into the typed [`Item`]: an unexpected catalog value fails here, before anything is written.

use shared_model::checkpoint::Item;

use crate::error::{PgTrickleError, Result};

/// `{"schema": …, "name": …}` of a relation's OID column.
fn rel(oid_column: &str) -> String {
    format!(
        "(SELECT json_build_object('schema', n.nspname::text, 'name', c.relname::text) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {oid_column})"
    )
}

const ST_NAME: &str = "json_build_object('schema', st.pgt_schema::text, 'name', st.pgt_name::text)";
const UTC_TIME: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

/// One query per item kind, in the order items are written (definitions before what refers to them).
fn queries() -> Vec<String> {
    vec![
        format!(
            "SELECT json_build_object('type', 'stream_table', 'name', {ST_NAME}, 'query', st.defining_query, \
             'schedule_secs', extract(epoch FROM st.schedule)::float8, 'refresh_mode', st.refresh_mode, 'status', st.status, \
             'settings', '{{}}'::json, 'refresh_sql', NULL)::text \
             FROM pgtrickle.pgt_stream_tables st ORDER BY st.pgt_id"
        ),
        format!(
            "SELECT json_build_object('type', 'dependency', 'stream_table', {ST_NAME}, 'source', {source}, \
             'source_kind', d.source_kind, 'consumed', json_build_object('snapshot', d.consumed_snapshot::text, \
             'xid', d.consumed_xid::text::numeric, 'change_id', d.consumed_change_id))::text \
             FROM pgtrickle.pgt_dependencies d JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             ORDER BY st.pgt_id, d.source_relid",
            source = rel("d.source_relid")
        ),
        format!(
            "SELECT json_build_object('type', 'refresh_cost', 'stream_table', {ST_NAME}, \
             'refreshes', count(*), 'failures', count(*) FILTER (WHERE h.status = 'ERROR'), \
             'mean_ms', coalesce(avg(extract(epoch FROM h.finished_at - h.started_at) * 1000), 0)::float8, \
             'max_ms', coalesce(max(extract(epoch FROM h.finished_at - h.started_at) * 1000), 0)::float8, \
             'last_refresh_at', to_char(max(h.finished_at) AT TIME ZONE 'UTC', {UTC_TIME}))::text \
             FROM pgtrickle.pgt_refresh_history h JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             GROUP BY st.pgt_id, st.pgt_schema, st.pgt_name ORDER BY st.pgt_id"
        ),
        // Never the message key or broker credentials: those are re-issued by registering again.
        "SELECT json_build_object('type', 'federation', 'coordinator_url', coordinator_url, \
         'cluster', cluster_name, 'federation', federation_name, 'backend', backend, \
         'bootstrap_servers', bootstrap_servers, 'topic_prefix', topic_prefix, \
         'registered_at_index', registered_at_index, 'producer_epoch', producer_epoch)::text \
         FROM pgtrickle.pgt_federation"
            .to_string(),
        format!(
            "SELECT json_build_object('type', 'publication', 'stream_table', {ST_NAME}, 'stream_id', p.stream_id, \
             'base_seq', p.base_seq, 'published_seq', p.published_seq)::text \
             FROM pgtrickle.pgt_publications p JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) ORDER BY st.pgt_id"
        ),
        format!(
            "SELECT json_build_object('type', 'federated_table', 'stream_table', {ST_NAME}, 'table_id', f.table_id, \
             'consistency', initcap(f.consistency), 'applied_cut_at', f.applied_cut_at)::text \
             FROM pgtrickle.pgt_federated_tables f JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             ORDER BY st.pgt_id"
        ),
        format!(
            "SELECT json_build_object('type', 'federated_source', 'stream_table', {ST_NAME}, \
             'stream_id', s.stream_id, 'source_url', s.source_url, 'mirror', {mirror}, 'topic', s.topic, \
             'columns', s.columns, 'applied_seq', s.applied_seq, 'applied_offset', s.applied_offset)::text \
             FROM pgtrickle.pgt_federation_sources s JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) \
             ORDER BY st.pgt_id, s.stream_id",
            mirror = rel("s.mirror_relid")
        ),
    ]
}

/// Every item of this database's `pg_trickle` state.
pub fn items() -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for sql in queries() {
        for line in crate::catalog::column::<String>(&sql, &[])? {
            let item: Item = serde_json::from_str(&line).map_err(|e| {
                PgTrickleError::Internal(format!("the catalog holds a value a checkpoint cannot carry: {e}: {line}"))
            })?;
            items.push(item);
        }
    }
    Ok(items)
}
