//! Classification and rendering of defining queries (pure; no PostgreSQL needed).

use super::render::{self, StorageShape};
use super::*;

fn facts() -> CatalogFacts {
    let mut facts = CatalogFacts::default();
    facts.columns.insert("orders".into(), vec!["id".into(), "region".into(), "amount".into()]);
    facts.columns.insert("public.regions".into(), vec!["code".into(), "label".into()]);
    for aggregate in ["count", "sum", "avg", "min", "max", "string_agg"] {
        facts.aggregates.insert(aggregate.into());
    }
    facts.window_functions.insert("row_number".into());
    facts
}

fn classify_sql(sql: &str) -> Classification {
    classify(&parse(sql).expect("parses"), &facts())
}

fn plan(sql: &str) -> DifferentialPlan {
    match classify_sql(sql) {
        Classification::Differential(plan) => *plan,
        Classification::FullOnly(reason) => panic!("{sql} should be differential: {reason}"),
    }
}

fn reason(sql: &str) -> String {
    match classify_sql(sql) {
        Classification::FullOnly(reason) => reason,
        Classification::Differential(_) => panic!("{sql} should not be differential"),
    }
}

#[test]
fn filter_project_over_one_table() {
    let plan = plan("SELECT id, amount * 2 AS doubled FROM orders WHERE amount > 10");
    assert_eq!(plan.kind, PlanKind::Project);
    assert_eq!(plan.sources.len(), 1);
    assert_eq!(plan.sources[0].alias.value, "orders");
}

#[test]
fn wildcards_expand_to_the_catalog_columns() {
    let plan = plan("SELECT * FROM orders o");
    let items: Vec<String> = plan.items().iter().map(|e| e.to_string()).collect();
    assert_eq!(items, vec!["o.\"id\"", "o.\"region\"", "o.\"amount\""]);
    let plan = plan_join_star();
    assert_eq!(plan.items().len(), 5);
}

fn plan_join_star() -> DifferentialPlan {
    plan("SELECT o.*, r.* FROM orders o JOIN public.regions r ON r.code = o.region")
}

#[test]
fn group_by_with_the_supported_aggregates() {
    let plan = plan(
        "SELECT region, count(*), sum(amount), avg(amount), min(id), max(id), count(id) FROM orders GROUP BY region",
    );
    let PlanKind::Aggregate { keys, aggs } = &plan.kind else { panic!("aggregate expected") };
    assert_eq!(keys, &vec![0]);
    let funcs: Vec<AggFunc> = aggs.iter().map(|a| a.func).collect();
    use AggFunc::*;
    assert_eq!(funcs, vec![CountStar, Sum, Avg, Min, Max, Count]);
    assert!(plan.has_min_max());
}

#[test]
fn inner_joins_of_two_sources() {
    for sql in [
        "SELECT o.id, r.label FROM orders o JOIN public.regions r ON r.code = o.region",
        "SELECT o.id, r.label FROM orders o INNER JOIN public.regions r ON r.code = o.region",
        "SELECT o.id, r.label FROM orders o, public.regions r WHERE r.code = o.region",
    ] {
        assert_eq!(plan(sql).sources.len(), 2, "{sql}");
    }
}

#[test]
fn everything_else_is_recomputed_with_a_reason() {
    let cases = [
        ("SELECT DISTINCT region FROM orders", "DISTINCT"),
        ("SELECT region, count(*) FROM orders GROUP BY region HAVING count(*) > 1", "HAVING"),
        ("SELECT id FROM orders ORDER BY id LIMIT 5", "LIMIT"),
        ("SELECT id FROM orders UNION SELECT 1", "set operations"),
        ("SELECT count(*) FROM orders", "without GROUP BY"),
        ("SELECT o.id FROM orders o LEFT JOIN public.regions r ON r.code = o.region", "inner joins"),
        ("SELECT id FROM orders WHERE id IN (SELECT 1)", "subqueries"),
        ("SELECT id, row_number() OVER () FROM orders", "window"),
        ("SELECT region, string_agg(id::text, ',') FROM orders GROUP BY region", "COUNT/SUM/AVG/MIN/MAX"),
        ("SELECT region, count(DISTINCT id) FROM orders GROUP BY region", "COUNT/SUM/AVG/MIN/MAX"),
        ("SELECT region, sum(amount) + 1 FROM orders GROUP BY region", "COUNT/SUM/AVG/MIN/MAX"),
        ("SELECT amount, count(*) FROM orders GROUP BY region", "neither a GROUP BY expression"),
        ("SELECT count(*) AS n FROM orders GROUP BY region", "not in the select list"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ("SELECT * FROM generate_series(1, 3)", "table functions"),
        ("SELECT a.id FROM orders a JOIN orders b ON a.id = b.id JOIN orders c ON c.id = a.id", "more than two"),
    ];
    for (sql, expected) in cases {
        let reason = reason(sql);
        assert!(reason.contains(expected), "{sql}: {reason}");
    }
}

#[test]
fn parse_refuses_what_is_not_one_select() {
    assert!(parse("").is_err());
    assert!(parse("DELETE FROM orders").is_err());
    assert!(parse("SELECT 1; SELECT 2").is_err());
}

#[test]
fn referenced_names_skip_ctes_and_fold_case() {
    let query =
        parse("WITH c AS (SELECT 1) SELECT * FROM orders JOIN \"Mixed\".t ON true, c WHERE now() > now()").unwrap();
    let relations: Vec<String> = referenced_relations(&query).iter().map(|n| n.to_string()).collect();
    assert_eq!(relations, vec!["orders", "\"Mixed\".t"]);
    assert_eq!(referenced_functions(&query), vec!["now"]);
}

#[test]
fn rendered_delta_reads_change_ctes_under_the_sources_aliases() {
    let plan = plan("SELECT o.id, r.label FROM orders o JOIN public.regions r ON r.code = o.region");
    let shape = StorageShape {
        table: "\"s\".\"st\"".into(),
        user_columns: vec!["id".into(), "label".into()],
        aux_columns: vec![],
    };
    let names = ["d0".to_string(), "d1".to_string()];
    let tables = render::DeltaTables { rows: "rows_t", regrouped: "re_t", insert_delta: "INSERT INTO t" };
    let sql = render::capture_statement(&plan, &shape, "m AS (SELECT 1)", &names, &tables);
    assert!(sql.contains("FROM d0 AS o JOIN public.regions AS r"), "{sql}");
    assert!(sql.contains("FROM orders AS o JOIN d1 AS r"), "{sql}");
    assert!(sql.contains("-(o.__pgt_sign * r.__pgt_sign)"), "{sql}");
    assert!(sql.starts_with("WITH m AS (SELECT 1), __pgt_rows AS ("), "{sql}");
    assert!(sql.ends_with("INSERT INTO rows_t SELECT * FROM __pgt_rows"), "{sql}");
}

#[test]
fn aggregate_plans_keep_bookkeeping_columns() {
    let plan = plan("SELECT region, sum(amount) AS s, avg(amount) AS a, count(*) AS n FROM orders GROUP BY region");
    let aux: Vec<String> = render::aux_columns(&plan).into_iter().map(|(n, _)| n).collect();
    assert_eq!(aux, vec!["__pgt_count", "__pgt_nn1", "__pgt_nn2", "__pgt_sum2"]);
}

#[test]
fn plans_whose_expressions_cannot_fail_skip_netting() {
    assert!(plan("SELECT id, region FROM orders WHERE amount > 10 AND region IS NOT NULL").cannot_fail());
    assert!(plan("SELECT region, sum(amount), count(*) FROM orders GROUP BY region").cannot_fail());
    assert!(!plan("SELECT id, amount / 2 AS half FROM orders").cannot_fail());
    assert!(!plan("SELECT id FROM orders WHERE amount::int > 1").cannot_fail());
    assert!(!plan("SELECT region, sum(amount * 2) FROM orders GROUP BY region").cannot_fail());
}
