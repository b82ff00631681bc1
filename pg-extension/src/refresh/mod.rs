//! Refreshing one stream table: compute what changes (differentially from the sources' change
//! rows, or by recomputing and diffing), apply it to the storage table, and append the same rows as
//! one batch (seq = previous + 1) to the stream table's own change buffer, all in the caller's
//! transaction. A refresh that finds nothing to change produces no batch, so seqs stay gap-free.

pub mod plan;

use crate::catalog::{self, Dependency, StreamTable};
use crate::cdc;
use crate::error::Result;
use crate::query::render::{self, quote_ident, StorageShape};

/// Who asked for the refresh (recorded in the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Scheduler,
    Create,
    Alter,
    /// The publisher answering a coordinator's reinitialize request with a snapshot batch.
    Publisher,
    /// The subscriber refreshing a causal federated stream table in the transaction that applied a cut.
    Subscriber,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduler => "scheduler",
            Trigger::Create => "create",
            Trigger::Alter => "alter",
            Trigger::Publisher => "publisher",
            Trigger::Subscriber => "subscriber",
        }
    }
}

/// What was asked: bring up to date (cheapest correct way), or rebuild and emit a snapshot batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    UpToDate,
    Reinitialize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Differential,
    Full,
    Snapshot,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Differential => "differential",
            Method::Full => "full",
            Method::Snapshot => "reinitialize",
        }
    }
}

/// The result of one refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub method: &'static str,
    /// The batch written, if anything changed.
    pub batch_seq: Option<i64>,
    pub inserted: i64,
    pub deleted: i64,
}

/// Refreshes `st`, whose catalog row the caller has locked.
pub fn refresh(st: &StreamTable, trigger: Trigger, request: Request) -> Result<Outcome> {
    let started_at = unix_now();
    // JIT compilation costs more than these statements run; the caller's setting is restored after.
    let jit = catalog::scalar::<String>("SELECT current_setting('jit')", &[])?.unwrap_or_else(|| "on".into());
    catalog::exec("SELECT set_config('jit', 'off', true)")?;
    let outcome = refresh_inner(st, trigger, request, started_at);
    catalog::exec_with("SELECT set_config('jit', $1, true)", &[jit.into()])?;
    outcome
}

fn refresh_inner(st: &StreamTable, trigger: Trigger, request: Request, started_at: f64) -> Result<Outcome> {
    let deps = catalog::dependencies(st.pgt_id)?;
    lock_sources(&deps)?;

    let method = choose_method(st, &deps, request)?;
    let Some(method) = method else {
        catalog::exec_with(
            "UPDATE pgtrickle.pgt_stream_tables SET last_refresh_at = now(), next_due_at = now() + schedule, \
             status = CASE WHEN status = 'ERROR' THEN 'ACTIVE' ELSE status END, last_error = NULL, \
             consecutive_failures = 0 WHERE pgt_id = $1",
            &[st.pgt_id.into()],
        )?;
        if trigger == Trigger::Manual {
            record_history(st.pgt_id, started_at, "differential", "NO_CHANGE", trigger, None, 0, 0)?;
        }
        return Ok(Outcome { method: "none", batch_seq: None, inserted: 0, deleted: 0 });
    };

    let mut analysis = plan::analyze(&st.defining_query)?;
    let user_columns = cdc::user_columns(st.relid)?;
    plan::check_exact_aggregates(&mut analysis, &user_columns);
    let shape = StorageShape {
        table: st.qualified(),
        user_columns: user_columns.iter().map(|(n, _)| n.clone()).collect(),
        aux_columns: if st.plan_kind == "other" {
            Vec::new()
        } else {
            analysis.plan().map(render::aux_columns).unwrap_or_default()
        },
    };
    let delta = format!("pg_temp.{}", quote_ident(&format!("__pgt_delta_{}", st.pgt_id)));
    let fresh = format!("pg_temp.{}", quote_ident(&format!("__pgt_new_{}", st.pgt_id)));
    let rows = format!("pg_temp.{}", quote_ident(&format!("__pgt_rows_{}", st.pgt_id)));
    drop_temp_tables(&[&delta, &fresh, &rows])?;
    catalog::exec(&format!("CREATE TEMP TABLE {fresh} AS SELECT * FROM {} WITH NO DATA", shape.table))?;
    catalog::exec(&format!(
        "CREATE TEMP TABLE {delta} AS SELECT NULL::\"char\" AS __pgt_action, {cols} FROM {table} WITH NO DATA",
        cols = shape.all_columns(None),
        table = shape.table
    ))?;
    let insert_delta = format!("INSERT INTO {delta} (__pgt_action, {})", shape.all_columns(None));
    let marks = cdc::advance_watermarks_cte(st.pgt_id, &deps);

    let differential_plan = analysis.plan().filter(|_| method == Method::Differential);
    match (method, differential_plan) {
        (Method::Differential, Some(plan)) => {
            let source_relids = plan::plan_source_relids(&analysis);
            let mut change_ctes = Vec::new();
            let mut names = Vec::new();
            for (index, source) in plan.sources.iter().enumerate() {
                let relid = source_relids[&source.name.to_string()];
                let dep = deps.iter().find(|d| d.source_relid == relid).ok_or_else(|| {
                    crate::error::PgTrickleError::Internal(format!("no dependency row for {}", source.name))
                })?;
                let name = format!("__pgt_d{index}");
                change_ctes.push(format!("{name} AS ({})", cdc::delta_cte_body(dep, !plan.cannot_fail())?));
                names.push(name);
            }
            let prefix = format!("__pgt_marks AS ({marks}), {}", change_ctes.join(", "));
            if let Some(statement) = render::single_statement(plan, &shape, &prefix, &names, &insert_delta) {
                catalog::exec(&statement)?;
            } else {
                let tables = render::DeltaTables { rows: &rows, regrouped: &fresh, insert_delta: &insert_delta };
                two_statement_delta(plan, &shape, &change_ctes, &prefix, &names, &tables)?;
            }
        }
        _ => {
            let recompute = match (analysis.plan(), st.plan_kind.as_str()) {
                (Some(plan), "aggregate") => render::recompute_aggregate(plan, &shape, None),
                _ => render::recompute_by_content(&st.defining_query, &shape),
            };
            catalog::exec(&format!(
                "WITH __pgt_marks AS ({marks}) INSERT INTO {fresh} ({cols}) {recompute}",
                cols = shape.all_columns(None)
            ))?;
            let row = |p: &str| format!("ROW({})::text", shape.all_columns(Some(p)));
            if method == Method::Snapshot {
                catalog::exec(&format!(
                    "{insert_delta} SELECT 'I', {cols} FROM {fresh} n",
                    cols = shape.all_columns(Some("n"))
                ))?;
            } else {
                catalog::exec(&format!(
                    "{insert_delta} SELECT 'D', {old} FROM {table} o WHERE NOT EXISTS \
                     (SELECT 1 FROM {fresh} n WHERE n.__pgt_row_id = o.__pgt_row_id AND {rn} = {ro}) \
                     UNION ALL SELECT 'I', {new} FROM {fresh} n WHERE NOT EXISTS \
                     (SELECT 1 FROM {table} o WHERE o.__pgt_row_id = n.__pgt_row_id AND {rn} = {ro})",
                    old = shape.all_columns(Some("o")),
                    new = shape.all_columns(Some("n")),
                    table = shape.table,
                    rn = row("n"),
                    ro = row("o"),
                ))?;
            }
        }
    }

    if method != Method::Snapshot {
        // An update that leaves a row as it was is no change at all.
        let stored = |p: &str| format!("ROW({})::text", shape.all_columns(Some(p)));
        catalog::exec(&format!(
            "DELETE FROM {delta} a USING {delta} b WHERE a.__pgt_row_id = b.__pgt_row_id \
             AND a.__pgt_action <> b.__pgt_action AND {} = {}",
            stored("a"),
            stored("b")
        ))?;
    }
    let deleted = count(&format!("SELECT count(*) FROM {delta} WHERE __pgt_action = 'D'"))?;
    let inserted = count(&format!("SELECT count(*) FROM {delta} WHERE __pgt_action = 'I'"))?;
    let produces_batch = method == Method::Snapshot || deleted > 0 || inserted > 0;
    let batch_seq = if produces_batch { Some(st.last_batch_seq + 1) } else { None };

    if let Some(seq) = batch_seq {
        apply(st, &shape, &delta, method, seq)?;
    }
    let deleted = if method == Method::Snapshot { current_rows(st)? } else { deleted };
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_stream_tables SET last_batch_seq = coalesce($2, last_batch_seq), \
         row_count = CASE WHEN $3 THEN $4 ELSE row_count + $4 - $5 END, \
         last_refresh_at = now(), next_due_at = now() + schedule, \
         status = CASE WHEN status = 'ERROR' THEN 'ACTIVE' ELSE status END, last_error = NULL, \
         consecutive_failures = 0, needs_reinit = false WHERE pgt_id = $1",
        &[st.pgt_id.into(), batch_seq.into(), (method == Method::Snapshot).into(), inserted.into(), deleted.into()],
    )?;
    let status = if produces_batch { "OK" } else { "NO_CHANGE" };
    if produces_batch || trigger != Trigger::Scheduler {
        record_history(st.pgt_id, started_at, method.as_str(), status, trigger, batch_seq, inserted, deleted)?;
    }
    drop_temp_tables(&[&delta, &fresh, &rows])?;
    for dep in deps.iter().filter(|d| d.source_kind == "table") {
        cdc::prune(dep.source_relid, None)?;
    }
    cdc::prune(st.relid, batch_seq.or(Some(st.last_batch_seq)))?;
    Ok(Outcome { method: method.as_str(), batch_seq, inserted, deleted })
}

/// Differential refresh through a temporary table of weighted rows: one statement captures them (and
/// recomputes MIN/MAX groups that lost rows) under one snapshot; a second turns them into the delta.
fn two_statement_delta(
    plan: &crate::query::DifferentialPlan,
    shape: &StorageShape,
    change_ctes: &[String],
    prefix: &str,
    names: &[String],
    tables: &render::DeltaTables,
) -> Result<()> {
    // Planned only (WITH NO DATA): gives the weighted-rows table its column types.
    catalog::exec(&format!(
        "CREATE TEMP TABLE {} AS WITH {} {} WITH NO DATA",
        tables.rows,
        change_ctes.join(", "),
        render::weighted_rows(plan, shape, names)
    ))?;
    catalog::exec(&render::capture_statement(plan, shape, prefix, names, tables))?;
    if matches!(plan.kind, crate::query::PlanKind::Project) {
        // Fresh statistics keep the planner off nested loops over what it guesses is one row.
        catalog::exec(&format!("ANALYZE {}", tables.rows))?;
    }
    catalog::exec(&render::delta_statement(plan, shape, tables))?;
    Ok(())
}

/// Seconds since the Unix epoch (when a refresh started; no query needed to know it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Drops the refresh's temporary tables that exist (quietly: no NOTICE reaches the caller).
fn drop_temp_tables(names: &[&str]) -> Result<()> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let existing = catalog::column::<String>(
        "SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL",
        &[names.into()],
    )?;
    if !existing.is_empty() {
        catalog::exec(&format!("DROP TABLE {}", existing.join(", ")))?;
    }
    Ok(())
}

fn count(sql: &str) -> Result<i64> {
    Ok(catalog::scalar::<i64>(sql, &[])?.unwrap_or(0))
}

fn current_rows(st: &StreamTable) -> Result<i64> {
    Ok(catalog::scalar::<i64>(
        "SELECT row_count FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?
    .unwrap_or(0))
}

/// Holds off TRUNCATE (and DROP) of every source until the refresh commits, so that a TRUNCATE
/// marker is either visible to this refresh's statements or written after it.
fn lock_sources(deps: &[Dependency]) -> Result<()> {
    let names: Vec<String> = deps.iter().map(|d| format!("{}", d.source_relid.to_u32())).collect();
    if names.is_empty() {
        return Ok(());
    }
    let relations = catalog::column::<String>(
        &format!("SELECT oid::regclass::text FROM pg_class WHERE oid IN ({}) ORDER BY oid", names.join(", ")),
        &[],
    )?;
    if !relations.is_empty() {
        catalog::exec(&format!("LOCK TABLE {} IN ACCESS SHARE MODE", relations.join(", ")))?;
    }
    Ok(())
}

/// `None` when nothing can have changed since the last refresh.
fn choose_method(st: &StreamTable, deps: &[Dependency], request: Request) -> Result<Option<Method>> {
    if request == Request::Reinitialize || st.needs_reinit {
        return Ok(Some(Method::Snapshot));
    }
    let mut any_change = deps.iter().any(|d| !d.has_buffer());
    let mut truncated = false;
    for dep in deps.iter().filter(|d| d.has_buffer()) {
        let (changed, with_truncate) = cdc::pending_changes(dep)?;
        any_change |= changed;
        truncated |= with_truncate;
    }
    if deps.is_empty() {
        any_change = true; // a query over no relation (e.g. over functions) can only be recomputed
    }
    if !any_change {
        return Ok(None);
    }
    Ok(Some(if st.effective_mode == "differential" && !truncated { Method::Differential } else { Method::Full }))
}

/// Applies the delta table to the storage table and appends it to the change buffer as batch `seq`.
fn apply(st: &StreamTable, shape: &StorageShape, delta: &str, method: Method, seq: i64) -> Result<()> {
    let buffer = st.buffer();
    let user: Vec<String> = shape.user_columns.iter().map(|c| quote_ident(c)).collect();
    let user = user.join(", ");
    let user_from_delta: Vec<String> = shape.user_columns.iter().map(|c| format!("d.{}", quote_ident(c))).collect();
    let append_to_buffer = |action: &str| {
        catalog::exec(&format!(
            "INSERT INTO {buffer} (action, batch_seq, __pgt_row_id, {user}) \
             SELECT '{action}', {seq}, d.__pgt_row_id, {cols} FROM {delta} d WHERE d.__pgt_action = '{action}'",
            cols = user_from_delta.join(", ")
        ))
    };
    if method == Method::Snapshot {
        catalog::exec(&format!("TRUNCATE {}", shape.table))?;
        catalog::exec(&format!("INSERT INTO {buffer} (action, batch_seq) VALUES ('T', {seq})"))?;
    } else {
        catalog::exec(&format!(
            "DELETE FROM {table} o USING {delta} d WHERE d.__pgt_action = 'D' AND o.__pgt_row_id = d.__pgt_row_id",
            table = shape.table
        ))?;
        append_to_buffer("D")?;
    }
    catalog::exec(&format!(
        "INSERT INTO {table} ({all}) SELECT {all_d} FROM {delta} d WHERE d.__pgt_action = 'I'",
        table = shape.table,
        all = shape.all_columns(None),
        all_d = shape.all_columns(Some("d")),
    ))?;
    append_to_buffer("I")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn record_history(
    pgt_id: i64,
    started_at: f64,
    action: &str,
    status: &str,
    trigger: Trigger,
    batch_seq: Option<i64>,
    inserted: i64,
    deleted: i64,
) -> Result<()> {
    let kind = batch_seq.map(|_| if action == "reinitialize" { "snapshot" } else { "delta" });
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, action, status, triggered_by, batch_seq, \
         batch_kind, rows_inserted, rows_deleted) VALUES ($1, to_timestamp($2), $3, $4, $5, $6, $7, $8, $9)",
        &[
            pgt_id.into(),
            started_at.into(),
            action.into(),
            status.into(),
            trigger.as_str().into(),
            batch_seq.into(),
            kind.into(),
            inserted.into(),
            deleted.into(),
        ],
    )?;
    Ok(())
}

/// Records a failed refresh (in a transaction of its own, after the failed one rolled back).
pub fn record_failure(pgt_id: i64, started_at: f64, message: &str, trigger: Trigger) -> Result<()> {
    let max_backoff = f64::from(crate::config::MAX_BACKOFF_SECONDS.get());
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_stream_tables SET status = 'ERROR', last_error = $2, \
         consecutive_failures = consecutive_failures + 1, \
         next_due_at = now() + least(coalesce(schedule, interval '1 second') * power(2, least(consecutive_failures, 20)), \
                                     make_interval(secs => $3)) \
         WHERE pgt_id = $1",
        &[pgt_id.into(), message.into(), max_backoff.into()],
    )?;
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, action, status, triggered_by, error) \
         VALUES ($1, to_timestamp($2), 'full', 'ERROR', $3, $4)",
        &[pgt_id.into(), started_at.into(), trigger.as_str().into(), message.into()],
    )?;
    Ok(())
}
