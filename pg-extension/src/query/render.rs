//! SQL text for the two ways of computing a refresh: recompute (the whole result, with row identities)
//! and delta (only the rows that change, from the sources' unconsumed change rows).
//!
//! Row identity (`__pgt_row_id`) is canonical, so both ways agree on it: for GROUP BY stream tables it
//! is a hash of the group key; for every other query it is a hash of the row's content together with
//! its ordinal among identical rows (1…n). A delta therefore only needs, per distinct content, the net
//! change in multiplicity and how many copies the stream table holds now.
//!
//! Pure string building over the parsed plan; the refresh module supplies the change-buffer CTEs.

use sqlparser::ast::{Ident, ObjectName, TableAlias, TableFactor};

use super::{AggFunc, DifferentialPlan, PlanKind};

/// Quotes an identifier the way PostgreSQL's `quote_ident` does (always quoting is also correct).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `ROW(p."a", p."b")::text`: the canonical text of some columns of a relation alias.
pub fn row_text(prefix: &str, columns: &[String]) -> String {
    let list: Vec<String> = columns.iter().map(|c| format!("{prefix}.{}", quote_ident(c))).collect();
    format!("ROW({})::text", list.join(", "))
}

/// Column names of a stream table's storage: identity, user columns, then bookkeeping columns.
#[derive(Debug, Clone)]
pub struct StorageShape {
    /// The stream table, quoted and schema-qualified.
    pub table: String,
    pub user_columns: Vec<String>,
    /// Bookkeeping columns (name, SQL type) that aggregates need; empty for other shapes.
    pub aux_columns: Vec<(String, String)>,
}

impl StorageShape {
    /// All stored columns in storage order, quoted, each prefixed with `prefix.` when given.
    pub fn all_columns(&self, prefix: Option<&str>) -> String {
        let mut names = vec!["__pgt_row_id".to_string()];
        names.extend(self.user_columns.iter().cloned());
        names.extend(self.aux_columns.iter().map(|(n, _)| n.clone()));
        names
            .iter()
            .map(|n| match prefix {
                Some(p) => format!("{p}.{}", quote_ident(n)),
                None => quote_ident(n),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bookkeeping columns an aggregate plan stores next to its visible columns.
pub fn aux_columns(plan: &DifferentialPlan) -> Vec<(String, String)> {
    let PlanKind::Aggregate { aggs, .. } = &plan.kind else {
        // Filter/project: a hash of the row's content finds its current copies in one index probe.
        return vec![("__pgt_content".to_string(), "bigint".to_string())];
    };
    let mut columns = vec![("__pgt_count".to_string(), "bigint".to_string())];
    for agg in aggs {
        match agg.func {
            AggFunc::Sum => columns.push((format!("__pgt_nn{}", agg.position), "bigint".into())),
            AggFunc::Avg => {
                columns.push((format!("__pgt_nn{}", agg.position), "bigint".into()));
                columns.push((format!("__pgt_sum{}", agg.position), "numeric".into()));
            }
            _ => {}
        }
    }
    columns
}

/// Recompute for queries maintained by content identity: the user's query, wrapped to add row ids
/// (and the content hash, when the storage keeps one).
pub fn recompute_by_content(user_query: &str, shape: &StorageShape) -> String {
    let mut columns: Vec<String> = shape.user_columns.iter().map(|c| format!("__pgt_q.{}", quote_ident(c))).collect();
    if shape.aux_columns.iter().any(|(name, _)| name == "__pgt_content") {
        columns.push("hashtextextended(__pgt_q.__pgt_ctext, 0) AS __pgt_content".into());
    }
    format!(
        "SELECT hashtextextended(__pgt_q.__pgt_ctext, row_number() OVER (PARTITION BY __pgt_q.__pgt_ctext)) \
         AS __pgt_row_id, {cols} FROM (SELECT {ctext} AS __pgt_ctext, __pgt_u.* FROM ({user_query}) __pgt_u) __pgt_q",
        cols = columns.join(", "),
        ctext = row_text("__pgt_u", &shape.user_columns),
    )
}

/// Recompute for GROUP BY plans, with the bookkeeping columns, optionally restricted by an extra
/// condition over the source rows (used to recompute only some groups).
pub fn recompute_aggregate(plan: &DifferentialPlan, shape: &StorageShape, restrict: Option<&str>) -> String {
    let PlanKind::Aggregate { keys, aggs } = &plan.kind else {
        unreachable!("recompute_aggregate is only called for aggregate plans")
    };
    let items = plan.items();
    let mut select_list: Vec<String> = items
        .iter()
        .zip(&shape.user_columns)
        .map(|(expr, column)| format!("{expr} AS {}", quote_ident(column)))
        .collect();
    select_list.push("count(*) AS __pgt_count".into());
    for agg in aggs {
        let arg = agg.arg.as_ref().map(|a| a.to_string()).unwrap_or_default();
        match agg.func {
            AggFunc::Sum => select_list.push(format!("count({arg}) AS __pgt_nn{}", agg.position)),
            AggFunc::Avg => {
                select_list.push(format!("count({arg}) AS __pgt_nn{}", agg.position));
                select_list.push(format!("sum({arg})::numeric AS __pgt_sum{}", agg.position));
            }
            _ => {}
        }
    }
    let key_columns: Vec<String> = keys.iter().map(|k| shape.user_columns[*k].clone()).collect();
    let mut where_parts: Vec<String> = plan.select.selection.iter().map(|e| format!("({e})")).collect();
    if let Some(extra) = restrict {
        where_parts.push(format!("({extra})"));
    }
    let where_sql =
        if where_parts.is_empty() { String::new() } else { format!(" WHERE {}", where_parts.join(" AND ")) };
    let inner = format!(
        "SELECT {} FROM {}{where_sql} {}",
        select_list.join(", "),
        from_list(plan, &[None, None]),
        plan.select.group_by
    );
    let outer_columns: Vec<String> =
        std::iter::once(format!("hashtextextended({}, 0)", row_text("__pgt_q", &key_columns)))
            .chain(shape.user_columns.iter().map(|c| format!("__pgt_q.{}", quote_ident(c))))
            .chain(shape.aux_columns.iter().map(|(c, _)| format!("__pgt_q.{}", quote_ident(c))))
            .collect();
    format!("SELECT {} FROM ({inner}) __pgt_q", outer_columns.join(", "))
}

/// The condition "this source row belongs to one of the groups whose ids are in `ids_relation`".
pub fn group_membership(plan: &DifferentialPlan, ids_relation: &str) -> String {
    let PlanKind::Aggregate { keys, .. } = &plan.kind else { unreachable!() };
    let items = plan.items();
    let key_exprs: Vec<String> = keys.iter().map(|k| items[*k].to_string()).collect();
    format!("hashtextextended(ROW({})::text, 0) IN (SELECT __pgt_row_id FROM {ids_relation})", key_exprs.join(", "))
}

/// The FROM list with each source optionally replaced by a CTE of the same alias.
fn from_list(plan: &DifferentialPlan, replacements: &[Option<&str>]) -> String {
    let mut select = plan.select.clone();
    let mut index = 0;
    for table in select.from.iter_mut() {
        let factors = std::iter::once(&mut table.relation).chain(table.joins.iter_mut().map(|j| &mut j.relation));
        for factor in factors {
            if let TableFactor::Table { name, alias, .. } = factor {
                let source = &plan.sources[index];
                if let Some(Some(cte)) = replacements.get(index) {
                    *name = ObjectName::from(vec![Ident::new(*cte)]);
                }
                *alias = Some(TableAlias { name: source.alias.clone(), columns: vec![] });
            }
            index += 1;
        }
    }
    select.from.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}

/// One term of the delta: which sources read their change rows, and the sign of the term's rows.
struct Term {
    replacements: Vec<Option<String>>,
    sign: String,
}

/// Terms of Δ(A ⋈ B) = ΔA ⋈ B_new + A_new ⋈ ΔB − ΔA ⋈ ΔB (signed multisets), or ΔA for one source.
fn delta_terms(plan: &DifferentialPlan, delta_ctes: &[String]) -> Vec<Term> {
    let sign = |i: usize| format!("{}.__pgt_sign", plan.sources[i].alias);
    match plan.sources.len() {
        1 => vec![Term { replacements: vec![Some(delta_ctes[0].clone())], sign: sign(0) }],
        _ => vec![
            Term { replacements: vec![Some(delta_ctes[0].clone()), None], sign: sign(0) },
            Term { replacements: vec![None, Some(delta_ctes[1].clone())], sign: sign(1) },
            Term {
                replacements: vec![Some(delta_ctes[0].clone()), Some(delta_ctes[1].clone())],
                sign: format!("-({} * {})", sign(0), sign(1)),
            },
        ],
    }
}

/// `SELECT sign AS __pgt_sign, <items> FROM … WHERE …` for every term, joined by UNION ALL.
fn signed_rows(plan: &DifferentialPlan, delta_ctes: &[String], items: &[String]) -> String {
    delta_terms(plan, delta_ctes)
        .iter()
        .map(|term| {
            let replacements: Vec<Option<&str>> = term.replacements.iter().map(|r| r.as_deref()).collect();
            let where_sql = plan.select.selection.as_ref().map(|e| format!(" WHERE {e}")).unwrap_or_default();
            format!(
                "SELECT {} AS __pgt_sign, {} FROM {}{where_sql}",
                term.sign,
                items.join(", "),
                from_list(plan, &replacements)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The weighted rows of a differential refresh: `__pgt_sign` (weight) and, for filter/project plans,
/// the output columns; for GROUP BY plans, the key columns and each aggregate's argument `__pgt_a<i>`.
pub fn weighted_rows(plan: &DifferentialPlan, shape: &StorageShape, delta_ctes: &[String]) -> String {
    let exprs = plan.items();
    let items: Vec<String> = match &plan.kind {
        PlanKind::Project => exprs
            .iter()
            .zip(&shape.user_columns)
            .map(|(expr, column)| format!("{expr} AS {}", quote_ident(column)))
            .collect(),
        PlanKind::Aggregate { keys, aggs } => keys
            .iter()
            .map(|k| format!("{} AS {}", exprs[*k], quote_ident(&shape.user_columns[*k])))
            .chain(aggs.iter().filter_map(|a| a.arg.as_ref().map(|arg| format!("{arg} AS __pgt_a{}", a.position))))
            .collect(),
    };
    signed_rows(plan, delta_ctes, &items)
}

/// Tables a differential refresh works through (all temporary, per stream table).
pub struct DeltaTables<'a> {
    /// Weighted rows ([`weighted_rows`]), filled by [`capture_statement`].
    pub rows: &'a str,
    /// Groups recomputed from the sources (MIN/MAX groups that lost rows), storage-shaped.
    pub regrouped: &'a str,
    /// `INSERT INTO <delta table> (__pgt_action, <storage columns>)`.
    pub insert_delta: &'a str,
}

/// The one statement that reads the sources: it runs the caller's CTEs (change rows, watermark
/// update), stores the weighted rows, and recomputes the MIN/MAX groups that lost rows — all under
/// the statement's single snapshot.
pub fn capture_statement(
    plan: &DifferentialPlan,
    shape: &StorageShape,
    prefix_ctes: &str,
    delta_ctes: &[String],
    tables: &DeltaTables,
) -> String {
    let mut statement = format!("WITH {prefix_ctes}, __pgt_rows AS ({})", weighted_rows(plan, shape, delta_ctes));
    if let PlanKind::Aggregate { keys, .. } = &plan.kind {
        if plan.has_min_max() {
            let key_columns: Vec<String> = keys.iter().map(|k| shape.user_columns[*k].clone()).collect();
            let losing_groups = format!(
                "(SELECT hashtextextended({}, 0) AS __pgt_row_id FROM __pgt_rows r WHERE r.__pgt_sign < 0) __pgt_ids",
                row_text("r", &key_columns)
            );
            statement.push_str(&format!(
                ", __pgt_re AS (INSERT INTO {} ({}) {} RETURNING 1)",
                tables.regrouped,
                shape.all_columns(None),
                recompute_aggregate(plan, shape, Some(&group_membership(plan, &losing_groups)))
            ));
        }
    }
    statement.push_str(&format!(" INSERT INTO {} SELECT * FROM __pgt_rows", tables.rows));
    statement
}

/// For GROUP BY plans without MIN/MAX (nothing to recompute from the sources), capture and delta in
/// one statement: the weighted rows stream into the grouping instead of through a temporary table.
pub fn single_statement(
    plan: &DifferentialPlan,
    shape: &StorageShape,
    prefix_ctes: &str,
    delta_ctes: &[String],
    insert_delta: &str,
) -> Option<String> {
    if !matches!(plan.kind, PlanKind::Aggregate { .. }) || plan.has_min_max() {
        return None;
    }
    let tables = DeltaTables { rows: "__pgt_rows", regrouped: "", insert_delta };
    let body = aggregate_delta(plan, shape, &tables);
    let body = body.strip_prefix("WITH ").expect("aggregate_delta starts with its CTEs");
    Some(format!("WITH {prefix_ctes}, __pgt_rows AS ({}), {body}", weighted_rows(plan, shape, delta_ctes)))
}

/// The statement that turns the weighted rows into `('D', old row…)` / `('I', new row…)` rows of
/// the delta table (storage-column order). It reads only the temporary tables and the stream table.
pub fn delta_statement(plan: &DifferentialPlan, shape: &StorageShape, tables: &DeltaTables) -> String {
    match &plan.kind {
        PlanKind::Project => project_delta(shape, tables),
        PlanKind::Aggregate { .. } => aggregate_delta(plan, shape, tables),
    }
}

fn project_delta(shape: &StorageShape, tables: &DeltaTables) -> String {
    let ctext = row_text("r", &shape.user_columns);
    let table = &shape.table;
    let prefixed = |p: &str| -> String {
        shape.user_columns.iter().map(|c| format!("{p}.{}", quote_ident(c))).collect::<Vec<_>>().join(", ")
    };
    format!(
        "WITH __pgt_net AS (SELECT x.* FROM (SELECT {ctext} AS __pgt_ctext, {r_cols}, \
                (sum(r.__pgt_sign) OVER __pgt_w)::bigint AS __pgt_dn, \
                row_number() OVER (__pgt_w ORDER BY r.__pgt_sign DESC) AS __pgt_rn \
              FROM {rows} r WINDOW __pgt_w AS (PARTITION BY {ctext})) x \
            WHERE x.__pgt_rn = 1 AND x.__pgt_dn <> 0), \
         __pgt_plan AS (SELECT n.*, (SELECT count(*) FROM {table} o \
              WHERE o.__pgt_content = hashtextextended(n.__pgt_ctext, 0) AND {o_text} = n.__pgt_ctext) AS n_old \
            FROM __pgt_net n) \
         {insert} SELECT 'D'::\"char\", {old} FROM __pgt_plan p \
           CROSS JOIN LATERAL generate_series(p.n_old + p.__pgt_dn + 1, p.n_old) AS __pgt_k(ordinal) \
           CROSS JOIN LATERAL (SELECT * FROM {table} s \
             WHERE s.__pgt_row_id = hashtextextended(p.__pgt_ctext, __pgt_k.ordinal) OFFSET 0) o \
           WHERE p.__pgt_dn < 0 \
         UNION ALL \
         SELECT 'I'::\"char\", hashtextextended(p.__pgt_ctext, __pgt_k.ordinal), {p_cols}, hashtextextended(p.__pgt_ctext, 0) \
           FROM __pgt_plan p CROSS JOIN LATERAL generate_series(p.n_old + 1, p.n_old + p.__pgt_dn) AS __pgt_k(ordinal) \
           WHERE p.__pgt_dn > 0",
        rows = tables.rows,
        r_cols = prefixed("r"),
        p_cols = prefixed("p"),
        o_text = row_text("o", &shape.user_columns),
        insert = tables.insert_delta,
        old = shape.all_columns(Some("o")),
    )
}

fn aggregate_delta(plan: &DifferentialPlan, shape: &StorageShape, tables: &DeltaTables) -> String {
    let PlanKind::Aggregate { keys, aggs } = &plan.kind else { unreachable!() };
    let key_columns: Vec<String> = keys.iter().map(|k| shape.user_columns[*k].clone()).collect();
    let group_keys: Vec<String> = key_columns.iter().map(|c| format!("r.{}", quote_ident(c))).collect();
    let mut group_items = group_keys.clone();
    group_items.push("sum(r.__pgt_sign)::bigint AS __pgt_dcount".into());
    group_items.push("bool_or(r.__pgt_sign < 0) AS __pgt_has_del".into());
    for agg in aggs {
        let p = agg.position;
        match agg.func {
            AggFunc::CountStar => {}
            AggFunc::Count | AggFunc::Sum | AggFunc::Avg => {
                group_items.push(format!(
                    "sum(CASE WHEN r.__pgt_a{p} IS NOT NULL THEN r.__pgt_sign ELSE 0 END)::bigint AS __pgt_dnn{p}"
                ));
                if agg.func != AggFunc::Count {
                    group_items.push(format!("sum(r.__pgt_sign::numeric * r.__pgt_a{p}) AS __pgt_dsum{p}"));
                }
            }
            AggFunc::Min => {
                group_items.push(format!("min(r.__pgt_a{p}) FILTER (WHERE r.__pgt_sign > 0) AS __pgt_ins{p}"))
            }
            AggFunc::Max => {
                group_items.push(format!("max(r.__pgt_a{p}) FILTER (WHERE r.__pgt_sign > 0) AS __pgt_ins{p}"))
            }
        }
    }
    let recompute_flag = if plan.has_min_max() { "m.__pgt_has_del" } else { "false" };
    let count_new = "(coalesce(o.__pgt_count, 0) + m.__pgt_dcount)";
    let nn_new = |p: usize| format!("(coalesce(o.__pgt_nn{p}, 0) + m.__pgt_dnn{p})");
    let sum_new = |p: usize| format!("(coalesce(o.__pgt_sum{p}, 0) + coalesce(m.__pgt_dsum{p}, 0))");
    let mut new_items = vec!["m.__pgt_row_id".to_string()];
    for (position, column) in shape.user_columns.iter().enumerate() {
        let quoted = quote_ident(column);
        let value = match aggs.iter().find(|a| a.position == position) {
            None => format!("m.{quoted}"),
            Some(agg) => {
                let p = position;
                match agg.func {
                    AggFunc::CountStar => count_new.to_string(),
                    AggFunc::Count => format!("coalesce(o.{quoted}, 0) + m.__pgt_dnn{p}"),
                    AggFunc::Sum => format!(
                        "CASE WHEN {} = 0 THEN NULL ELSE coalesce(o.{quoted}, 0) + coalesce(m.__pgt_dsum{p}, 0) END",
                        nn_new(p)
                    ),
                    AggFunc::Avg => {
                        format!("CASE WHEN {nn} = 0 THEN NULL ELSE {sum} / {nn} END", nn = nn_new(p), sum = sum_new(p))
                    }
                    AggFunc::Min => {
                        format!("CASE WHEN {recompute_flag} THEN NULL ELSE LEAST(o.{quoted}, m.__pgt_ins{p}) END")
                    }
                    AggFunc::Max => {
                        format!("CASE WHEN {recompute_flag} THEN NULL ELSE GREATEST(o.{quoted}, m.__pgt_ins{p}) END")
                    }
                }
            }
        };
        new_items.push(format!("{value} AS {quoted}"));
    }
    new_items.push(format!("{count_new} AS __pgt_count"));
    for agg in aggs {
        let p = agg.position;
        if matches!(agg.func, AggFunc::Sum | AggFunc::Avg) {
            new_items.push(format!("{} AS __pgt_nn{p}", nn_new(p)));
        }
        if agg.func == AggFunc::Avg {
            new_items.push(format!("CASE WHEN {} = 0 THEN NULL ELSE {} END AS __pgt_sum{p}", nn_new(p), sum_new(p)));
        }
    }
    new_items.push(format!("{recompute_flag} AS __pgt_recompute"));
    let table = &shape.table;
    let mut statement = format!(
        "WITH __pgt_g AS (SELECT {group_items} FROM {rows} r GROUP BY {group_by}), \
         __pgt_m AS (SELECT hashtextextended({key_text}, 0) AS __pgt_row_id, g.* FROM __pgt_g g), \
         __pgt_new AS (SELECT {new_items} FROM __pgt_m m LEFT JOIN {table} o ON o.__pgt_row_id = m.__pgt_row_id) \
         {insert} SELECT 'D'::\"char\", {old} FROM {table} o JOIN __pgt_m m ON o.__pgt_row_id = m.__pgt_row_id \
         UNION ALL SELECT 'I'::\"char\", {stored} FROM __pgt_new n WHERE n.__pgt_count > 0 AND NOT n.__pgt_recompute",
        rows = tables.rows,
        group_items = group_items.join(", "),
        group_by = group_keys.join(", "),
        key_text = row_text("g", &key_columns),
        new_items = new_items.join(", "),
        insert = tables.insert_delta,
        old = shape.all_columns(Some("o")),
        stored = shape.all_columns(Some("n")),
    );
    if plan.has_min_max() {
        statement.push_str(&format!(
            " UNION ALL SELECT 'I'::\"char\", {} FROM {} re",
            shape.all_columns(Some("re")),
            tables.regrouped
        ));
    }
    statement
}

/// Expressions whose type decides whether an aggregate can be kept exactly (no float rounding drift).
pub fn aggregate_positions_needing_exact_types(plan: &DifferentialPlan) -> Vec<(usize, AggFunc)> {
    match &plan.kind {
        PlanKind::Aggregate { aggs, .. } => aggs
            .iter()
            .filter(|a| matches!(a.func, AggFunc::Sum | AggFunc::Avg))
            .map(|a| (a.position, a.func))
            .collect(),
        PlanKind::Project => Vec::new(),
    }
}
