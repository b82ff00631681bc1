//! Reading a defining query: which relations and functions it names, and whether its shape can be
//! maintained differentially. Pure (no SPI): what PostgreSQL knows (columns, which functions are
//! aggregates) is passed in through [`CatalogFacts`], so the classification is unit-tested here.
//!
//! PostgreSQL remains the judge of validity: a query is first planned by PostgreSQL itself
//! (`CREATE TABLE … AS … WITH NO DATA`); this module only decides how to maintain it.

pub mod render;

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_relations, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A parse failure or an unsupported statement, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem(pub String);

/// Parses exactly one SELECT (or VALUES/UNION…) statement.
pub fn parse(sql: &str) -> Result<Query, ParseProblem> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| ParseProblem(e.to_string()))?;
    match statements.as_slice() {
        [Statement::Query(query)] => Ok((**query).clone()),
        [] => Err(ParseProblem("the query is empty".into())),
        [_] => Err(ParseProblem("a defining query must be a SELECT statement".into())),
        _ => Err(ParseProblem("a defining query must be exactly one statement".into())),
    }
}

/// Relations named anywhere in the query (FROM, joins, subqueries), minus the query's own CTE names.
pub fn referenced_relations(query: &Query) -> Vec<ObjectName> {
    let mut cte_names = HashSet::new();
    let _ = visit_relations(query, |_| ControlFlow::<()>::Continue(()));
    collect_cte_names(query, &mut cte_names);
    let mut found: Vec<ObjectName> = Vec::new();
    let _ = visit_relations(query, |name| {
        let single_cte = name.0.len() == 1 && cte_names.contains(&last_part(name).to_lowercase());
        if !single_cte && !found.contains(name) {
            found.push(name.clone());
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

fn collect_cte_names(query: &Query, names: &mut HashSet<String>) {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            names.insert(cte.alias.name.value.to_lowercase());
            collect_cte_names(&cte.query, names);
        }
    }
}

/// Function names called anywhere in the query, lower-cased, unqualified.
pub fn referenced_functions(query: &Query) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let _ = visit_expressions(query, |expr| {
        if let Expr::Function(function) = expr {
            let name = last_part(&function.name).to_lowercase();
            if !found.contains(&name) {
                found.push(name);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// The last identifier of a possibly qualified name, as PostgreSQL folds it.
pub fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => fold_ident(ident),
        Some(ObjectNamePart::Function(function)) => fold_ident(&function.name),
        None => String::new(),
    }
}

fn fold_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// What the catalog says about the names a query uses.
#[derive(Debug, Default, Clone)]
pub struct CatalogFacts {
    /// User-visible columns of each source, keyed by the source's name as written in the query.
    pub columns: HashMap<String, Vec<String>>,
    /// Function names that are aggregates (any overload).
    pub aggregates: HashSet<String>,
    /// Function names that are window functions.
    pub window_functions: HashSet<String>,
}

/// One source of a differential plan: a table factor of the FROM clause.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSource {
    /// The relation as written (may be schema-qualified).
    pub name: ObjectName,
    /// How the query's expressions refer to it (its alias, or its unqualified name).
    pub alias: Ident,
}

/// The aggregates differential maintenance knows how to update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// An aggregate in the select list.
#[derive(Debug, Clone, PartialEq)]
pub struct AggItem {
    /// Position in the select list (= column position in the stream table).
    pub position: usize,
    pub func: AggFunc,
    /// The argument (None for COUNT(*)).
    pub arg: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanKind {
    /// Filter/project (one source or an inner join of two): each output row has a sign.
    Project,
    /// GROUP BY with COUNT/SUM/AVG/MIN/MAX; `keys` are the select-list positions of the grouping expressions.
    Aggregate { keys: Vec<usize>, aggs: Vec<AggItem> },
}

/// A query that can be maintained differentially, normalised: wildcards expanded, every source aliased.
#[derive(Debug, Clone, PartialEq)]
pub struct DifferentialPlan {
    pub select: Select,
    pub sources: Vec<PlanSource>,
    pub kind: PlanKind,
}

impl DifferentialPlan {
    /// The select-list expressions, in order.
    pub fn items(&self) -> Vec<&Expr> {
        self.select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr,
                _ => unreachable!("wildcards are expanded during classification"),
            })
            .collect()
    }

    /// True when no expression of the plan can raise an error whatever the row: only column
    /// references, literals, comparisons, boolean logic, NULL tests and the maintained aggregates.
    /// Such plans need not net change rows before evaluating them.
    pub fn cannot_fail(&self) -> bool {
        use sqlparser::ast::BinaryOperator as Op;
        let outcome = visit_expressions(&self.select, |expr| {
            let safe = match expr {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) | Expr::Nested(_) => true,
                Expr::IsNull(_) | Expr::IsNotNull(_) | Expr::IsTrue(_) | Expr::IsFalse(_) => true,
                Expr::IsDistinctFrom(..) | Expr::IsNotDistinctFrom(..) => true,
                Expr::UnaryOp { op: sqlparser::ast::UnaryOperator::Not, .. } => true,
                Expr::BinaryOp { op, .. } => {
                    matches!(op, Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq | Op::And | Op::Or)
                }
                Expr::Function(f) => {
                    matches!(last_part(&f.name).as_str(), "count" | "sum" | "avg" | "min" | "max")
                }
                _ => false,
            };
            if safe {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        outcome.is_continue()
    }

    pub fn has_min_max(&self) -> bool {
        matches!(&self.kind, PlanKind::Aggregate { aggs, .. }
            if aggs.iter().any(|a| matches!(a.func, AggFunc::Min | AggFunc::Max)))
    }
}

/// How a query can be maintained.
#[derive(Debug, Clone, PartialEq)]
pub enum Classification {
    Differential(Box<DifferentialPlan>),
    /// Only recompute-and-diff applies, for this reason.
    FullOnly(String),
}

/// Decides whether a query is one of the differential shapes.
pub fn classify(query: &Query, facts: &CatalogFacts) -> Classification {
    match try_classify(query, facts) {
        Ok(plan) => Classification::Differential(Box::new(plan)),
        Err(reason) => Classification::FullOnly(reason),
    }
}

fn try_classify(query: &Query, facts: &CatalogFacts) -> Result<DifferentialPlan, String> {
    if query.with.is_some() {
        return Err("WITH (common table expressions) is recomputed".into());
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err("ORDER BY / LIMIT / OFFSET / FETCH make the result depend on all rows".into());
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err("set operations (UNION, INTERSECT, EXCEPT) and VALUES are recomputed".into());
    };
    let mut select = (**select).clone();
    match &select.distinct {
        None => {}
        Some(Distinct::Distinct) | Some(Distinct::On(_)) => return Err("DISTINCT is recomputed".into()),
    }
    if select.having.is_some() {
        return Err("HAVING is recomputed".into());
    }
    if !select.named_window.is_empty() || select.qualify.is_some() {
        return Err("window definitions are recomputed".into());
    }
    let sources = collect_sources(&mut select)?;
    expand_wildcards(&mut select, &sources, facts)?;
    check_expressions(&select, facts)?;

    let group_exprs = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        GroupByExpr::Expressions(..) => return Err("GROUP BY ROLLUP/CUBE/GROUPING SETS is recomputed".into()),
        GroupByExpr::All(_) => return Err("GROUP BY ALL is recomputed".into()),
    };
    let items: Vec<Expr> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr.clone(),
            _ => unreachable!("wildcards expanded"),
        })
        .collect();
    let any_aggregate = items.iter().any(|e| contains_aggregate(e, facts));
    if group_exprs.is_empty() && !any_aggregate {
        return Ok(DifferentialPlan { select, sources, kind: PlanKind::Project });
    }
    if group_exprs.is_empty() {
        return Err("an aggregate without GROUP BY always returns one row; it is recomputed".into());
    }
    let mut keys = Vec::new();
    let mut aggs = Vec::new();
    for (position, expr) in items.iter().enumerate() {
        if let Some(agg) = as_supported_aggregate(expr, facts)? {
            aggs.push(AggItem { position, func: agg.0, arg: agg.1 });
        } else if group_exprs.contains(expr) {
            keys.push(position);
        } else {
            return Err(format!("select item {expr} is neither a GROUP BY expression nor a supported aggregate"));
        }
    }
    for group_expr in &group_exprs {
        if !items.contains(group_expr) {
            return Err(format!("GROUP BY expression {group_expr} is not in the select list"));
        }
    }
    Ok(DifferentialPlan { select, sources, kind: PlanKind::Aggregate { keys, aggs } })
}

/// Collects the FROM clause's sources: one table, or an inner join / comma join of two tables.
fn collect_sources(select: &mut Select) -> Result<Vec<PlanSource>, String> {
    let mut factors: Vec<&mut TableFactor> = Vec::new();
    for table in select.from.iter_mut() {
        factors.push(&mut table.relation);
        for join in table.joins.iter_mut() {
            match &join.join_operator {
                JoinOperator::Join(JoinConstraint::On(_)) | JoinOperator::Inner(JoinConstraint::On(_)) => {}
                JoinOperator::Join(JoinConstraint::None) | JoinOperator::CrossJoin(_) => {}
                _ => return Err("only inner joins with ON are maintained differentially".into()),
            }
            factors.push(&mut join.relation);
        }
    }
    if factors.is_empty() {
        return Err("a query without FROM is recomputed".into());
    }
    if factors.len() > 2 {
        return Err("joins of more than two sources are recomputed".into());
    }
    let mut sources = Vec::new();
    for factor in factors {
        let TableFactor::Table { name, alias, args: None, .. } = factor else {
            return Err("subqueries and table functions in FROM are recomputed".into());
        };
        if let Some(alias) = alias.as_ref().filter(|a| !a.columns.is_empty()) {
            return Err(format!("column aliases on {} are recomputed", alias.name));
        }
        let alias_ident = match alias {
            Some(alias) => alias.name.clone(),
            None => match name.0.last() {
                Some(ObjectNamePart::Identifier(ident)) => ident.clone(),
                _ => return Err(format!("cannot use {name} as a source")),
            },
        };
        if sources.iter().any(|s: &PlanSource| fold_ident(&s.alias) == fold_ident(&alias_ident)) {
            return Err(format!("{alias_ident} appears twice; give each source its own alias"));
        }
        sources.push(PlanSource { name: name.clone(), alias: alias_ident });
    }
    Ok(sources)
}

fn expand_wildcards(select: &mut Select, sources: &[PlanSource], facts: &CatalogFacts) -> Result<(), String> {
    let columns_of = |source: &PlanSource| -> Result<Vec<SelectItem>, String> {
        let columns = facts
            .columns
            .get(&source.name.to_string())
            .ok_or_else(|| format!("the columns of {} are unknown", source.name))?;
        Ok(columns
            .iter()
            .map(|column| {
                SelectItem::UnnamedExpr(Expr::CompoundIdentifier(vec![
                    source.alias.clone(),
                    Ident::with_quote('"', column.clone()),
                ]))
            })
            .collect())
    };
    let mut expanded = Vec::new();
    for item in select.projection.drain(..) {
        match item {
            SelectItem::Wildcard(options) if is_plain_wildcard(&options) => {
                for source in sources {
                    expanded.extend(columns_of(source)?);
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), options)
                if is_plain_wildcard(&options) =>
            {
                let wanted = last_part(&name);
                let source = sources
                    .iter()
                    .find(|s| fold_ident(&s.alias) == wanted)
                    .ok_or_else(|| format!("{name}.* names no source of the FROM clause"))?;
                expanded.extend(columns_of(source)?);
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err("wildcard options (EXCLUDE, REPLACE…) are recomputed".into())
            }
            other => expanded.push(other),
        }
    }
    select.projection = expanded;
    Ok(())
}

fn is_plain_wildcard(options: &sqlparser::ast::WildcardAdditionalOptions) -> bool {
    options.opt_ilike.is_none()
        && options.opt_exclude.is_none()
        && options.opt_except.is_none()
        && options.opt_replace.is_none()
        && options.opt_rename.is_none()
}

/// Rejects subqueries, window functions and three-part column names anywhere in the select.
fn check_expressions(select: &Select, facts: &CatalogFacts) -> Result<(), String> {
    let outcome = visit_expressions(select, |expr| {
        let problem = match expr {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                Some("subqueries in expressions are recomputed".to_string())
            }
            Expr::Function(f) if f.over.is_some() || facts.window_functions.contains(&last_part(&f.name)) => {
                Some("window functions are recomputed".to_string())
            }
            Expr::CompoundIdentifier(parts) if parts.len() > 2 => {
                Some(format!("write {} as alias.column", Expr::CompoundIdentifier(parts.clone())))
            }
            _ => None,
        };
        match problem {
            Some(problem) => ControlFlow::Break(problem),
            None => ControlFlow::Continue(()),
        }
    });
    match outcome {
        ControlFlow::Break(problem) => Err(problem),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn contains_aggregate(expr: &Expr, facts: &CatalogFacts) -> bool {
    visit_expressions(expr, |e| match e {
        Expr::Function(f) if facts.aggregates.contains(&last_part(&f.name)) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// `Some((func, arg))` for a top-level COUNT/SUM/AVG/MIN/MAX call without DISTINCT, FILTER, ORDER BY;
/// an error for any other expression that contains an aggregate.
fn as_supported_aggregate(expr: &Expr, facts: &CatalogFacts) -> Result<Option<(AggFunc, Option<Expr>)>, String> {
    if !contains_aggregate(expr, facts) {
        return Ok(None);
    }
    let unsupported = || Err(format!("aggregate expression {expr} is recomputed (COUNT/SUM/AVG/MIN/MAX only)"));
    let Expr::Function(function) = expr else {
        return unsupported();
    };
    if function.filter.is_some() || function.over.is_some() || !function.within_group.is_empty() {
        return unsupported();
    }
    let FunctionArguments::List(list) = &function.args else {
        return unsupported();
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() || list.args.len() != 1 {
        return unsupported();
    }
    let name = last_part(&function.name);
    let arg = match &list.args[0] {
        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" => {
            return Ok(Some((AggFunc::CountStar, None)))
        }
        FunctionArg::Unnamed(FunctionArgExpr::Expr(arg)) => arg.clone(),
        _ => return unsupported(),
    };
    if contains_aggregate(&arg, facts) {
        return unsupported();
    }
    let func = match name.as_str() {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "avg" => AggFunc::Avg,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        _ => return unsupported(),
    };
    Ok(Some((func, Some(arg))))
}

#[cfg(test)]
mod tests;
