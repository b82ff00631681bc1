//! What restoring a checkpoint does, decided before anything is changed: the stream tables in an order where
//! each comes after the stream tables it reads, and the relations outside the checkpoint they read (which the
//! target database must have). Federation entries are refused here for now: they need the coordinators (a
//! registration under a new server identity), which a local restore cannot do in its transaction.

use std::collections::{BTreeMap, BTreeSet};

use super::items::{Item, QualifiedName, RefreshMode, StreamTableStatus};

/// A stream table to recreate.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTableDef {
    pub name: QualifiedName,
    pub query: String,
    pub schedule_secs: Option<f64>,
    pub refresh_mode: RefreshMode,
    pub status: StreamTableStatus,
}

/// The restore, decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RestorePlan {
    /// In creation order: every stream table after those it reads.
    pub stream_tables: Vec<StreamTableDef>,
    /// Tables and views read by the stream tables that the checkpoint does not define.
    pub external_sources: BTreeSet<QualifiedName>,
}

/// Why a checkpoint cannot be restored as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the checkpoint holds federation entries ({kinds}), which restore_from_checkpoint cannot recreate yet")]
    Federation { kinds: String },
    #[error("the checkpoint defines stream table {0} twice")]
    Duplicate(QualifiedName),
    #[error("the checkpoint has a dependency of {0}, which it does not define")]
    UnknownStreamTable(QualifiedName),
    #[error("the checkpoint's stream tables read each other in a cycle among: {0}")]
    Cycle(String),
}

/// Orders the checkpoint's stream tables for creation and collects what they read from outside it.
pub fn restore_plan(items: &[Item]) -> Result<RestorePlan, PlanError> {
    let federation: BTreeSet<&str> = items
        .iter()
        .filter(|i| {
            matches!(
                i,
                Item::Federation { .. }
                    | Item::Publication { .. }
                    | Item::FederatedTable { .. }
                    | Item::FederatedSource { .. }
            )
        })
        .map(Item::kind)
        .collect();
    if !federation.is_empty() {
        return Err(PlanError::Federation { kinds: federation.into_iter().collect::<Vec<_>>().join(", ") });
    }
    let mut defs: BTreeMap<QualifiedName, StreamTableDef> = BTreeMap::new();
    let mut order_seen: Vec<QualifiedName> = Vec::new();
    for item in items {
        if let Item::StreamTable { name, query, schedule_secs, refresh_mode, status, .. } = item {
            let def = StreamTableDef {
                name: name.clone(),
                query: query.clone(),
                schedule_secs: *schedule_secs,
                refresh_mode: *refresh_mode,
                status: *status,
            };
            if defs.insert(name.clone(), def).is_some() {
                return Err(PlanError::Duplicate(name.clone()));
            }
            order_seen.push(name.clone());
        }
    }
    let mut reads: BTreeMap<&QualifiedName, BTreeSet<&QualifiedName>> = BTreeMap::new();
    let mut external_sources = BTreeSet::new();
    for item in items {
        if let Item::Dependency { stream_table, source, .. } = item {
            if !defs.contains_key(stream_table) {
                return Err(PlanError::UnknownStreamTable(stream_table.clone()));
            }
            if defs.contains_key(source) {
                reads.entry(stream_table).or_default().insert(source);
            } else {
                // Whatever its kind, a source the checkpoint does not define must exist in the target.
                external_sources.insert(source.clone());
            }
        }
    }
    // Repeatedly the first stream table, in the checkpoint's own order, whose sources are all created: a
    // stable order, and a cycle shows as stream tables that never become ready.
    let mut done: BTreeSet<&QualifiedName> = BTreeSet::new();
    let mut pending: Vec<&QualifiedName> = order_seen.iter().collect();
    let mut ordered: Vec<StreamTableDef> = Vec::with_capacity(defs.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|name| reads.get(name).is_none_or(|s| s.iter().all(|x| done.contains(x))));
        let Some(at) = ready else {
            let names: Vec<String> = pending.iter().map(|n| n.to_string()).collect();
            return Err(PlanError::Cycle(names.join(", ")));
        };
        let name = pending.remove(at);
        done.insert(name);
        ordered.push(defs[name].clone());
    }
    Ok(RestorePlan { stream_tables: ordered, external_sources })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::items::Watermark;

    fn st(name: &str) -> Item {
        Item::StreamTable {
            name: QualifiedName::new("public", name),
            query: format!("SELECT * FROM src_{name}"),
            schedule_secs: Some(1.0),
            refresh_mode: RefreshMode::Auto,
            status: StreamTableStatus::Active,
            settings: Default::default(),
            refresh_sql: None,
        }
    }

    fn dep(st: &str, source: &str) -> Item {
        Item::Dependency {
            stream_table: QualifiedName::new("public", st),
            source: QualifiedName::new("public", source),
            source_kind: crate::checkpoint::SourceKind::Table,
            consumed: Watermark { snapshot: None, xid: None, change_id: None },
        }
    }

    fn names(plan: &RestorePlan) -> Vec<&str> {
        plan.stream_tables.iter().map(|d| d.name.name.as_str()).collect()
    }

    #[test]
    fn stream_tables_come_after_what_they_read_and_outside_sources_are_listed() {
        // c reads b (defined later), b reads a and the table t; d stands alone.
        let items =
            vec![st("c"), st("a"), st("d"), st("b"), dep("c", "b"), dep("b", "a"), dep("b", "t"), dep("a", "t")];
        let plan = restore_plan(&items).unwrap();
        assert_eq!(names(&plan), vec!["a", "d", "b", "c"]);
        assert_eq!(plan.external_sources, BTreeSet::from([QualifiedName::new("public", "t")]));
    }

    #[test]
    fn cycles_duplicates_strays_and_federation_entries_are_refused() {
        assert!(matches!(restore_plan(&[st("a"), st("b"), dep("a", "b"), dep("b", "a")]), Err(PlanError::Cycle(_))));
        assert!(matches!(restore_plan(&[st("a"), st("a")]), Err(PlanError::Duplicate(_))));
        assert!(matches!(restore_plan(&[st("a"), dep("x", "a")]), Err(PlanError::UnknownStreamTable(_))));
        let federated = Item::FederatedTable {
            stream_table: QualifiedName::new("public", "a"),
            table_id: "c/public.a".into(),
            consistency: crate::model::Consistency::Eventual,
            applied_cut_at: 0,
        };
        assert!(matches!(restore_plan(&[st("a"), federated]), Err(PlanError::Federation { .. })));
    }
}
