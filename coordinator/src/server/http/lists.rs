//! The list endpoints, paginated and filtered: `?cluster=` keeps one cluster's items, `?after=` starts after an id
//! (the last one of the previous page), `?limit=` bounds the page. Items come in id order (the state's maps are
//! ordered by cluster first, so a cluster's items are one range); when more remain, the answer carries
//! `x-pgtrickle-next-after` and a `Link: <…>; rel="next"`. Without `limit` the whole list comes in one answer, as
//! before. Pages are read from the state as it stands at each request: an item that exists through the whole
//! listing is listed exactly once, whatever is written meanwhile; items added or removed meanwhile may or may not
//! appear (as with etcd's paginated range reads without a revision).

use std::collections::BTreeMap;
use std::ops::Bound;

use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use shared_model::{ClusterName, FederatedTableId, StreamId};
use utoipa::IntoParams;

use super::app::{query, ReadConsistency};
use super::{AppState, Failure, NEXT_AFTER_HEADER};
use crate::api::*;

/// Largest page.
pub const MAX_LIMIT: usize = 10_000;

/// `?consistency=&cluster=&after=&limit=` of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `linearizable` (default: confirmed by the leader) or `stale` (this node's state as it is).
    pub consistency: Option<ReadConsistency>,
    /// Only the items of this cluster.
    pub cluster: Option<String>,
    /// Only items after this id (`cluster` or `cluster/schema.table`): the `x-pgtrickle-next-after` of the previous
    /// page.
    pub after: Option<String>,
    /// At most this many items (1 to 10,000; default: all).
    pub limit: Option<usize>,
}

struct Page<K> {
    cluster: Option<ClusterName>,
    after: Option<K>,
    limit: usize,
}

fn parse_page<K>(q: &ListQuery, parse_key: impl Fn(&str) -> Result<K, String>) -> Result<Page<K>, Failure> {
    let cluster =
        q.cluster.as_deref().map(ClusterName::parse).transpose().map_err(|e| Failure::invalid(e.to_string()))?;
    let after = q.after.as_deref().map(parse_key).transpose().map_err(Failure::invalid)?;
    let limit = match q.limit {
        None => usize::MAX,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => return Err(Failure::invalid(format!("limit {n} is out of range: give 1 to {MAX_LIMIT}"))),
    };
    Ok(Page { cluster, after, limit })
}

/// One page of `map`: items after the cursor, of the wanted cluster, as views; and the cursor of the next page.
fn page_of<K: Ord + Clone, V, T>(
    map: &BTreeMap<K, V>,
    page: &Page<K>,
    cluster_of: impl Fn(&K) -> &ClusterName,
    view: impl Fn(&K) -> Option<T>,
) -> (Vec<T>, Option<K>) {
    let start = page.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
    let mut items = Vec::new();
    let mut last = None;
    for key in map.range((start, Bound::Unbounded)).map(|(k, _)| k) {
        if let Some(wanted) = &page.cluster {
            match cluster_of(key).cmp(wanted) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => {}
            }
        }
        if items.len() == page.limit {
            return (items, last);
        }
        if let Some(v) = view(key) {
            items.push(v);
            last = Some(key.clone());
        }
    }
    (items, None)
}

/// The JSON list with the next page's cursor in headers.
fn answer<T: Serialize>(uri: &OriginalUri, items: Vec<T>, next: Option<String>) -> Response {
    let mut resp = Json(items).into_response();
    if let Some(next) = next {
        let query: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k != "after")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .chain([("after".to_string(), next.clone())])
            .collect();
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        let link = format!("<{}?{query}>; rel=\"next\"", uri.path());
        if let (Ok(next), Ok(link)) = (HeaderValue::from_str(&next), HeaderValue::from_str(&link)) {
            resp.headers_mut().insert(NEXT_AFTER_HEADER, next);
            resp.headers_mut().insert(header::LINK, link);
        }
    }
    resp
}

fn stream_key(text: &str) -> Result<StreamId, String> {
    StreamId::parse(text).map_err(|e| format!("after: {e}"))
}

/// Registered clusters.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", params(ListQuery),
    responses((status = 200, body = Vec<ClusterView>), (status = 304), (status = 401, body = ApiError), (status = 400, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_clusters(
    State(app): State<AppState>,
    uri: OriginalUri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let page = parse_page(&query(q)?, |t| ClusterName::parse(t).map_err(|e| format!("after: {e}")))?;
    let (items, next) = app.sm.with_state(|s| page_of(s.clusters(), &page, |k| k, |name| views::cluster(s, name)));
    Ok(answer(&uri, items, next.map(|k| k.to_string())))
}

/// Published streams with their frontiers.
#[utoipa::path(get, path = "/v1/streams", tag = "streams", params(ListQuery),
    responses((status = 200, body = Vec<StreamView>), (status = 304), (status = 401, body = ApiError), (status = 400, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_streams(
    State(app): State<AppState>,
    uri: OriginalUri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let page = parse_page(&query(q)?, stream_key)?;
    let (items, next) = app.sm.with_state(|s| page_of(s.streams(), &page, |k| &k.0.cluster, |id| views::stream(s, id)));
    Ok(answer(&uri, items, next.map(|k| k.to_string())))
}

/// Federated tables with their newest cuts.
#[utoipa::path(get, path = "/v1/federated-tables", tag = "federated tables", params(ListQuery),
    responses((status = 200, body = Vec<FederatedTableView>), (status = 304), (status = 401, body = ApiError), (status = 400, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_federated_tables(
    State(app): State<AppState>,
    uri: OriginalUri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let page = parse_page(&query(q)?, |t| {
        t.parse().map(FederatedTableId).map_err(|e: shared_model::ParseError| format!("after: {e}"))
    })?;
    let (items, next) =
        app.sm.with_state(|s| page_of(s.federated_tables(), &page, |k| &k.0.cluster, |id| views::federated(s, id)));
    Ok(answer(&uri, items, next.map(|k| k.to_string())))
}

/// Committed frontiers of every stream.
#[utoipa::path(get, path = "/v1/frontiers", tag = "frontiers", params(ListQuery),
    responses((status = 200, body = Vec<FrontierView>), (status = 304), (status = 401, body = ApiError), (status = 400, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_frontiers(
    State(app): State<AppState>,
    uri: OriginalUri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let page = parse_page(&query(q)?, stream_key)?;
    let (items, next) =
        app.sm.with_state(|s| page_of(s.streams(), &page, |k| &k.0.cluster, |id| views::frontier(s, id)));
    Ok(answer(&uri, items, next.map(|k| k.to_string())))
}
