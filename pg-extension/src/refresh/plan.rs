//! Deciding how a defining query is maintained: the query module's pure classification, fed with
//! what the catalog says (source kinds and columns, which functions are aggregates or volatile).

use std::collections::{HashMap, HashSet};

use pgrx::prelude::*;

use crate::catalog;
use crate::cdc;
use crate::error::{PgTrickleError, Result};
use crate::query::{self, render, CatalogFacts, Classification, DifferentialPlan};

/// A relation the defining query reads.
#[derive(Debug, Clone)]
pub struct Source {
    pub relid: pg_sys::Oid,
    /// `table`, `stream_table` or `view` (views, materialized views and foreign tables have no capture).
    pub kind: String,
    /// The name as written in the query.
    pub written: String,
}

/// Everything known about a defining query.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub sources: Vec<Source>,
    pub volatile_functions: Vec<String>,
    /// The differential plan, or why only recompute applies.
    pub classification: Classification,
}

impl Analysis {
    pub fn plan(&self) -> Option<&DifferentialPlan> {
        match &self.classification {
            Classification::Differential(plan) => Some(plan),
            Classification::FullOnly(_) => None,
        }
    }

    /// `project`, `aggregate` or `other` (recompute only).
    pub fn plan_kind(&self) -> &'static str {
        match self.plan().map(|p| &p.kind) {
            Some(query::PlanKind::Project) => "project",
            Some(query::PlanKind::Aggregate { .. }) => "aggregate",
            None => "other",
        }
    }

    pub fn full_reason(&self) -> Option<String> {
        match &self.classification {
            Classification::FullOnly(reason) => Some(reason.clone()),
            Classification::Differential(_) => None,
        }
    }

    fn demote(&mut self, reason: String) {
        if matches!(self.classification, Classification::Differential(_)) {
            self.classification = Classification::FullOnly(reason);
        }
    }
}

/// Parses and classifies a defining query. PostgreSQL must already have accepted the query.
pub fn analyze(defining_query: &str) -> Result<Analysis> {
    let parsed = match query::parse(defining_query) {
        Ok(parsed) => parsed,
        Err(problem) => {
            // PostgreSQL accepted it, our parser did not: it can still be recomputed.
            return Ok(Analysis {
                sources: resolve_sources_via_postgres(defining_query)?,
                volatile_functions: Vec::new(),
                classification: Classification::FullOnly(format!("not analysed ({})", problem.0)),
            });
        }
    };
    let mut sources = Vec::new();
    let mut facts = CatalogFacts::default();
    for name in query::referenced_relations(&parsed) {
        let written = name.to_string();
        let Some(relid) = catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[written.clone().into()])?
        else {
            continue; // a CTE name or similar: PostgreSQL has already resolved the query
        };
        let kind = source_kind(relid)?;
        facts.columns.insert(written.clone(), cdc::user_columns(relid)?.into_iter().map(|(n, _)| n).collect());
        if !sources.iter().any(|s: &Source| s.relid == relid) {
            sources.push(Source { relid, kind, written });
        }
    }
    let functions = query::referenced_functions(&parsed);
    let mut volatile_functions = Vec::new();
    if !functions.is_empty() {
        Spi::connect(|client| -> Result<()> {
            let sql =
                "SELECT proname::text, bool_or(prokind = 'a'), bool_or(prokind = 'w'), bool_or(provolatile = 'v') \
                       FROM pg_proc WHERE proname::text = ANY($1) GROUP BY proname ORDER BY proname";
            for row in client.select(sql, None, &[functions.clone().into()])? {
                let name: String = row.get(1)?.unwrap_or_default();
                if row.get::<bool>(2)?.unwrap_or(false) {
                    facts.aggregates.insert(name.clone());
                }
                if row.get::<bool>(3)?.unwrap_or(false) {
                    facts.window_functions.insert(name.clone());
                }
                // An aggregate such as count() is never volatile in practice; only flag plain functions.
                if row.get::<bool>(4)?.unwrap_or(false) && !facts.aggregates.contains(&name) {
                    volatile_functions.push(name);
                }
            }
            Ok(())
        })?;
    }
    let mut analysis = Analysis { sources, volatile_functions, classification: query::classify(&parsed, &facts) };
    if let Some(function) = analysis.volatile_functions.first().cloned() {
        analysis.demote(format!("volatile function {function}() gives other rows on every evaluation"));
    }
    if let Some(view) = analysis.sources.iter().find(|s| s.kind == "view").cloned() {
        analysis.demote(format!("{} has no change capture (view, materialized view or foreign table)", view.written));
    }
    // Every source of a plan must be one of the resolved relations (self-joins included).
    if let Some(plan) = analysis.plan() {
        let known: HashSet<String> = analysis.sources.iter().map(|s| s.written.clone()).collect();
        if plan.sources.iter().any(|s| !known.contains(&s.name.to_string())) {
            analysis.demote("a FROM item is not a table".into());
        }
    }
    Ok(analysis)
}

/// If `defining_query` (the new query of the stream table `relid`) reads `relid` itself or any stream
/// table downstream of it, the cycle it would close, as `a -> b -> a`.
pub fn cycle_path(defining_query: &str, relid: pg_sys::Oid) -> Result<Option<String>> {
    let Ok(parsed) = query::parse(defining_query) else { return Ok(None) };
    for name in query::referenced_relations(&parsed) {
        let Some(source) = catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[name.to_string().into()])?
        else {
            continue;
        };
        // Walk downstream from relid; reaching `source` means source already depends on relid.
        let path = catalog::scalar::<String>(
            "WITH RECURSIVE down(relid, path) AS ( \
               SELECT $1::oid, ARRAY[$1::oid] \
               UNION ALL \
               SELECT st.pgt_relid, down.path || st.pgt_relid FROM down \
               JOIN pgtrickle.pgt_dependencies d ON d.source_relid = down.relid \
               JOIN pgtrickle.pgt_stream_tables st ON st.pgt_id = d.pgt_id \
               WHERE NOT st.pgt_relid = ANY (down.path)) \
             SELECT array_to_string(ARRAY(SELECT p::regclass::text FROM unnest(path || $1::oid) p), ' -> ') \
             FROM down WHERE relid = $2 LIMIT 1",
            &[relid.into(), source.into()],
        )?;
        if path.is_some() {
            return Ok(path);
        }
    }
    Ok(None)
}

fn source_kind(relid: pg_sys::Oid) -> Result<String> {
    let is_stream_table = catalog::scalar::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = $1)",
        &[relid.into()],
    )?
    .unwrap_or(false);
    if is_stream_table {
        return Ok("stream_table".into());
    }
    let relkind = catalog::scalar::<String>("SELECT relkind::text FROM pg_class WHERE oid = $1", &[relid.into()])?
        .unwrap_or_default();
    Ok(match relkind.as_str() {
        "r" | "p" => "table".into(),
        _ => "view".into(),
    })
}

/// Sources of a query our parser cannot read, from PostgreSQL's own dependency tracking: a
/// temporary view records every relation the query uses.
fn resolve_sources_via_postgres(defining_query: &str) -> Result<Vec<Source>> {
    catalog::exec(&format!("CREATE TEMP VIEW __pgt_probe AS {defining_query}"))?;
    let relids = catalog::column::<pg_sys::Oid>(
        "SELECT DISTINCT d.refobjid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
         WHERE r.ev_class = 'pg_temp.__pgt_probe'::regclass AND d.refclassid = 'pg_class'::regclass \
         AND d.refobjid <> 'pg_temp.__pgt_probe'::regclass",
        &[],
    )?;
    catalog::exec("DROP VIEW pg_temp.__pgt_probe")?;
    let mut sources = Vec::new();
    for relid in relids {
        let written = catalog::scalar::<String>("SELECT $1::regclass::text", &[relid.into()])?.unwrap_or_default();
        sources.push(Source { relid, kind: source_kind(relid)?, written });
    }
    Ok(sources)
}

/// After the storage table exists: SUM/AVG are kept exactly only over integer and numeric values
/// (floating-point sums drift with the order of additions).
pub fn check_exact_aggregates(analysis: &mut Analysis, column_types: &[(String, String)]) {
    let Some(plan) = analysis.plan() else { return };
    let inexact = render::aggregate_positions_needing_exact_types(plan).into_iter().find(|(position, func)| {
        let ty = column_types.get(*position).map(|(_, t)| t.as_str()).unwrap_or("");
        match func {
            query::AggFunc::Sum => !matches!(ty, "bigint" | "numeric"),
            _ => ty != "numeric",
        }
    });
    if let Some((position, _)) = inexact {
        let column = column_types.get(position).map(|(n, _)| n.clone()).unwrap_or_default();
        analysis.demote(format!("column {column} sums floating-point (or non-numeric) values"));
    }
}

/// Which maintenance a refresh mode gets for this query, or the error for an impossible request.
pub fn effective_mode(analysis: &Analysis, refresh_mode: &str) -> Result<&'static str> {
    match (refresh_mode, analysis.plan()) {
        ("full", _) => Ok("full"),
        (_, Some(_)) => Ok("differential"),
        ("auto", None) => Ok("full"),
        (_, None) => {
            if let Some(function) = analysis.volatile_functions.first() {
                return Err(PgTrickleError::VolatileFunction { function: function.clone() });
            }
            Err(PgTrickleError::NotDifferential { reason: analysis.full_reason().unwrap_or_default() })
        }
    }
}

/// The source names the differential plan uses, mapped to their relation ids.
pub fn plan_source_relids(analysis: &Analysis) -> HashMap<String, pg_sys::Oid> {
    analysis.sources.iter().map(|s| (s.written.clone(), s.relid)).collect()
}
