//! The application API under `/v1`: writes (through the Raft log), reads of the replicated state, and the
//! long-poll watches of the event log and of federated tables' cuts.

use std::time::{Duration, Instant};

use crate::server::proposer::ProposeError;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shared_model::{
    Applied, ClusterName, Command, FederatedTableId, IdempotencyKey, MessageKey, ProducerFence, Request, StreamId,
    SystemIdentifier,
};
use utoipa::IntoParams;

use super::{now_ms, parse_body, relation, AppState, Failure};
use crate::api::*;
use crate::server::metrics::{CommandLabel, OutcomeLabels};

/// `?cascade=true|false`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CascadeQuery {
    /// Also remove everything that depends on the object.
    pub cascade: Option<bool>,
}

/// `?cascade=…&system_identifier=…&producer_epoch=…` of an unpublish.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnpublishQuery {
    /// Also remove everything that depends on the stream.
    pub cascade: Option<bool>,
    /// The withdrawing server's `system_identifier` (with `producer_epoch`): refused, like a frontier advance, when
    /// that server no longer holds the cluster's name.
    pub system_identifier: Option<String>,
    /// The producer epoch that server holds.
    pub producer_epoch: Option<u64>,
}

/// `?consistency=linearizable|stale`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `linearizable` (default: confirmed by the leader) or `stale` (this node's state as it is).
    pub consistency: Option<ReadConsistency>,
}

/// Read consistency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

/// `?after=I&wait_ms=D&limit=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Return records with a larger log index.
    pub after: Option<u64>,
    /// Wait up to this long (ms, at most 60000) for the first record.
    pub wait_ms: Option<u64>,
    /// Most records per page (1–10000, default 1000).
    pub limit: Option<usize>,
}

/// `?after_seq=N&wait_ms=D`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The seq the consumer applied: points after it are returned.
    pub after_seq: Option<u64>,
    /// Wait up to this long (ms, at most 60000) for a batch after `after_seq` or a reinitialize request.
    pub wait_ms: Option<u64>,
}

/// `?after=T&wait_ms=D`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CutQuery {
    /// Wait for a cut newer than this global time.
    pub after: Option<u64>,
    /// Wait up to this long (ms, at most 60000).
    pub wait_ms: Option<u64>,
}

/// One object of the state as JSON, or 404 with the message `missing` builds.
fn found<T>(
    app: &AppState,
    view: impl FnOnce(&shared_model::State) -> Option<T>,
    missing: impl FnOnce() -> String,
) -> Result<Json<T>, Failure> {
    app.sm.with_state(view).map(Json).ok_or_else(|| Failure::not_found(missing()))
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(t)| t).map_err(|e| Failure::bad_request("bad_query", e.body_text()))
}

/// Proposes a command through Raft and returns its outcome.
pub async fn propose(app: &AppState, headers: &HeaderMap, command: Command) -> Result<Applied, Failure> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let client = header(CLIENT_HEADER).unwrap_or_else(|| "anonymous".into());
    let request_id = header(IDEMPOTENCY_HEADER).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let key = IdempotencyKey::new(&client, &request_id)
        .map_err(|e| Failure::bad_request("bad_idempotency_key", e.to_string()))?;
    let kind = command.kind();
    let started = Instant::now();
    let request = Request { key, command, proposed_at_unix_ms: now_ms() };
    let result = app.proposer.propose(request).await;
    app.metrics
        .write_seconds
        .get_or_create(&CommandLabel { command: kind.into() })
        .observe(started.elapsed().as_secs_f64());
    let outcome = |o: &str| OutcomeLabels { command: kind.into(), outcome: o.into() };
    match result {
        Ok(executed) => match executed.result {
            Ok(applied) => {
                app.metrics.writes.get_or_create(&outcome("applied")).inc();
                Ok(applied)
            }
            Err(e) => {
                app.metrics.writes.get_or_create(&outcome(e.code())).inc();
                Err(Failure::command(&e))
            }
        },
        Err(ProposeError::NotLeader(leader)) => {
            Err(Failure::unavailable("not_leader", format!("leadership moved (leader now {leader:?}); retry")))
        }
        Err(ProposeError::Raft(e)) => Err(Failure::unavailable("raft_unavailable", e)),
    }
}

pub fn write_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/clusters", post(register_cluster))
        .route("/v1/clusters/{cluster}", axum::routing::delete(deregister_cluster))
        .route("/v1/clusters/{cluster}/checkpoints", post(record_checkpoint))
        .route("/v1/federation", axum::routing::put(configure_federation))
        .route("/v1/streams", post(publish_stream))
        .route("/v1/streams/{cluster}/{name}", axum::routing::delete(unpublish_stream))
        .route("/v1/streams/{cluster}/{name}/reinitialize", post(reinitialize))
        .route("/v1/federated-tables", post(create_federated_table))
        .route("/v1/federated-tables/{cluster}/{name}", axum::routing::delete(drop_federated_table))
        .route("/v1/frontiers", post(advance_frontiers))
}

pub fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/clusters", get(super::lists::list_clusters))
        .route("/v1/clusters/{cluster}", get(get_cluster))
        .route("/v1/federation", get(get_federation))
        .route("/v1/streams", get(super::lists::list_streams))
        .route("/v1/streams/{cluster}/{name}", get(get_stream))
        .route("/v1/federated-tables", get(super::lists::list_federated_tables))
        .route("/v1/federated-tables/{cluster}/{name}", get(get_federated_table))
        .route("/v1/frontiers", get(super::lists::list_frontiers))
        .route("/v1/frontiers/{cluster}/{name}", get(get_frontier))
        .route("/v1/dag", get(get_dag))
        .route("/v1/dag/dot", get(get_dag_dot))
}

pub fn watch_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(super::event_stream::event_stream))
        .route("/v1/cut/{cluster}/{name}", get(cut))
        .route("/v1/frontiers/{cluster}/{name}/history", get(frontier_history))
}

// ----- writes --------------------------------------------------------------------------------------------------

/// Register (or update) a PostgreSQL cluster; returns the federation's broker settings.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = RegisterCluster,
    params(("idempotency-key" = Option<String>, Header, description = "Request id: a retry with the same id is applied once"),
           ("x-pgtrickle-client" = Option<String>, Header, description = "Writing client (first half of the idempotency key)")),
    responses((status = 200, body = Registered), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError, description = "The cluster was deregistered since (a retried request id)"),
              (status = 409, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn register_cluster(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Registered>, Failure> {
    let req: RegisterCluster = parse_body(&body)?;
    let name = req.name.clone();
    let command = Command::RegisterCluster {
        name: req.name,
        endpoint: req.endpoint,
        capabilities: req.capabilities,
        system_identifier: req.system_identifier,
        known_epoch: req.known_epoch,
        takeover: req.takeover,
    };
    // The federation's message key is issued with its first registration (a no-op once it exists).
    if app.sm.with_state(|s| s.message_key().is_none()) {
        let key = MessageKey::from_bytes(rand::random());
        propose(&app, &HeaderMap::new(), Command::IssueMessageKey { key }).await?;
    }
    let applied = propose(&app, &headers, command).await?;
    let (federation, cluster, key) = app
        .sm
        .with_state(|s| (views::federation(s), views::cluster(s, &name), s.message_key().map(MessageKey::to_hex)));
    let message_key =
        key.ok_or_else(|| Failure::unavailable("no_message_key", "the message key is not applied yet"))?;
    // Gone again only if a deregistration committed right after: the caller sees that as any other race.
    let cluster = cluster
        .ok_or_else(|| Failure::command(&shared_model::CommandError::UnknownCluster { cluster: name.to_string() }))?;
    Ok(Json(Registered { applied, cluster, federation, message_key }))
}

/// Deregister a cluster (with `cascade`, also everything it publishes or owns and what depends on those).
#[utoipa::path(delete, path = "/v1/clusters/{cluster}", tag = "clusters", params(("cluster" = String, Path), CascadeQuery),
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn deregister_cluster(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(cluster): Path<String>,
    q: Result<Query<CascadeQuery>, QueryRejection>,
) -> Result<Json<Applied>, Failure> {
    let q = query(q)?;
    let name = ClusterName::parse(&cluster).map_err(|e| Failure::invalid(e.to_string()))?;
    Ok(Json(propose(&app, &headers, Command::DeregisterCluster { name, cascade: q.cascade.unwrap_or(false) }).await?))
}

/// Record a checkpoint a cluster wrote to object storage.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/checkpoints", tag = "clusters", params(("cluster" = String, Path)),
    request_body = RecordCheckpoint,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn record_checkpoint(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(cluster): Path<String>,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let cluster = ClusterName::parse(&cluster).map_err(|e| Failure::invalid(e.to_string()))?;
    let req: RecordCheckpoint = parse_body(&body)?;
    Ok(Json(propose(&app, &headers, Command::RecordCheckpoint { cluster, checkpoint: req.checkpoint }).await?))
}

/// Set the federation's name and change-log (broker) settings.
#[utoipa::path(put, path = "/v1/federation", tag = "federation", request_body = FederationView,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 409, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn configure_federation(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let req: FederationView = parse_body(&body)?;
    Ok(Json(propose(&app, &headers, Command::ConfigureFederation { name: req.name, changelog: req.changelog }).await?))
}

/// Publish a local stream table to the federation (or update its columns and upstream edges).
#[utoipa::path(post, path = "/v1/streams", tag = "streams", request_body = PublishStream,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn publish_stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let req: PublishStream = parse_body(&body)?;
    let command = Command::PublishStream {
        stream: req.stream,
        columns: req.columns,
        upstream: req.upstream,
        base_seq: req.base_seq,
    };
    Ok(Json(propose(&app, &headers, as_producer(req.producer, command)).await?))
}

/// Withdraw a published stream.
#[utoipa::path(delete, path = "/v1/streams/{cluster}/{name}", tag = "streams",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), UnpublishQuery),
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn unpublish_stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<UnpublishQuery>, QueryRejection>,
) -> Result<Json<Applied>, Failure> {
    let q = query(q)?;
    let stream = StreamId(relation(&cluster, &name)?);
    let producer = match (q.system_identifier, q.producer_epoch) {
        (None, None) => None,
        (Some(system_identifier), Some(producer_epoch)) => Some(ProducerFence {
            cluster: stream.cluster().clone(),
            system_identifier: SystemIdentifier::parse(&system_identifier)
                .map_err(|e| Failure::invalid(format!("system_identifier: {e}")))?,
            producer_epoch,
        }),
        _ => return Err(Failure::invalid("give system_identifier and producer_epoch together, or neither")),
    };
    let command = Command::UnpublishStream { stream, cascade: q.cascade.unwrap_or(false) };
    Ok(Json(propose(&app, &headers, as_producer(producer, command)).await?))
}

/// The command on behalf of a producing server, when one is named.
fn as_producer(producer: Option<ProducerFence>, command: Command) -> Command {
    match producer {
        Some(fence) => Command::AsProducer { fence, command: Box::new(command) },
        None => command,
    }
}

/// Ask the producer of a stream for a snapshot batch.
#[utoipa::path(post, path = "/v1/streams/{cluster}/{name}/reinitialize", tag = "streams",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table")), request_body = Reinitialize,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 413, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn reinitialize(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let stream = StreamId(relation(&cluster, &name)?);
    let req: Reinitialize = parse_body(&body)?;
    Ok(Json(propose(&app, &headers, Command::RequestReinitialize { stream, reason: req.reason }).await?))
}

/// Create a federated stream table over published streams (rejected if it would close a cycle).
#[utoipa::path(post, path = "/v1/federated-tables", tag = "federated tables", request_body = CreateFederatedTable,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn create_federated_table(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let req: CreateFederatedTable = parse_body(&body)?;
    let command =
        Command::CreateFederatedTable { table: req.table, sources: req.sources, consistency: req.consistency };
    Ok(Json(propose(&app, &headers, command).await?))
}

/// Drop a federated table.
#[utoipa::path(delete, path = "/v1/federated-tables/{cluster}/{name}", tag = "federated tables",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), CascadeQuery),
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn drop_federated_table(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<CascadeQuery>, QueryRejection>,
) -> Result<Json<Applied>, Failure> {
    let q = query(q)?;
    let table = FederatedTableId(relation(&cluster, &name)?);
    Ok(Json(propose(&app, &headers, Command::DropFederatedTable { table, cascade: q.cascade.unwrap_or(false) }).await?))
}

/// Record that batches are durably in the broker (many streams per request).
#[utoipa::path(post, path = "/v1/frontiers", tag = "frontiers", request_body = AdvanceFrontiers,
    responses((status = 200, body = Applied), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 413, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn advance_frontiers(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Applied>, Failure> {
    let req: AdvanceFrontiers = parse_body(&body)?;
    Ok(Json(
        propose(&app, &headers, Command::AdvanceFrontier { producer: req.producer, advances: req.advances }).await?,
    ))
}

// ----- reads ---------------------------------------------------------------------------------------------------

/// One cluster.
#[utoipa::path(get, path = "/v1/clusters/{cluster}", tag = "clusters", params(("cluster" = String, Path), ReadQuery),
    responses((status = 200, body = ClusterView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_cluster(
    State(app): State<AppState>,
    Path(cluster): Path<String>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<ClusterView>, Failure> {
    query(q)?;
    let name = ClusterName::parse(&cluster).map_err(|e| Failure::invalid(e.to_string()))?;
    found(&app, |s| views::cluster(s, &name), || format!("cluster {name:?} is not registered"))
}

/// The federation's name and change-log settings.
#[utoipa::path(get, path = "/v1/federation", tag = "federation", params(ReadQuery),
    responses((status = 200, body = FederationView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_federation(
    State(app): State<AppState>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<FederationView>, Failure> {
    query(q)?;
    Ok(Json(app.sm.with_state(views::federation)))
}

/// One published stream.
#[utoipa::path(get, path = "/v1/streams/{cluster}/{name}", tag = "streams",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), ReadQuery),
    responses((status = 200, body = StreamView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_stream(
    State(app): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<StreamView>, Failure> {
    query(q)?;
    let id = StreamId(relation(&cluster, &name)?);
    found(&app, |s| views::stream(s, &id), || format!("stream {id} is not published"))
}

/// One federated table.
#[utoipa::path(get, path = "/v1/federated-tables/{cluster}/{name}", tag = "federated tables",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), ReadQuery),
    responses((status = 200, body = FederatedTableView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_federated_table(
    State(app): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<FederatedTableView>, Failure> {
    query(q)?;
    let id = FederatedTableId(relation(&cluster, &name)?);
    found(&app, |s| views::federated(s, &id), || format!("federated table {id} does not exist"))
}

/// The committed frontier of one stream.
#[utoipa::path(get, path = "/v1/frontiers/{cluster}/{name}", tag = "frontiers",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), ReadQuery),
    responses((status = 200, body = FrontierView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 422, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_frontier(
    State(app): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<FrontierView>, Failure> {
    query(q)?;
    let id = StreamId(relation(&cluster, &name)?);
    found(&app, |s| views::frontier(s, &id), || format!("stream {id} is not published"))
}

/// The global DAG: topological order, edges, SCC and diamond groups.
#[utoipa::path(get, path = "/v1/dag", tag = "dag", params(ReadQuery),
    responses((status = 200, body = DagView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_dag(
    State(app): State<AppState>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<DagView>, Failure> {
    query(q)?;
    Ok(Json(app.sm.with_state(views::dag)))
}

/// The global DAG in Graphviz DOT (a JSON string).
#[utoipa::path(get, path = "/v1/dag/dot", tag = "dag", params(ReadQuery),
    responses((status = 200, body = String, content_type = "application/json"), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_dag_dot(
    State(app): State<AppState>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<String>, Failure> {
    query(q)?;
    Ok(Json(app.sm.with_state(|s| s.dag().to_dot())))
}

// ----- watches -------------------------------------------------------------------------------------------------

const MAX_WAIT: Duration = Duration::from_secs(60);

struct WatcherGuard<'a>(&'a AppState);
impl Drop for WatcherGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.watchers.dec();
    }
}

/// Long-poll watch of the event log: records after `after`, waiting up to `wait_ms` for the first. Served from
/// this node's applied records (every record is committed; a follower may lag the leader). 410 when `after` is
/// older than the retained history.
#[utoipa::path(get, path = "/v1/events", tag = "watch", params(EventsQuery),
    responses((status = 200, body = EventsPage), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 410, body = ApiError)))]
pub async fn events(
    State(app): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsPage>, Failure> {
    let q = query(q)?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = app.sm.subscribe_applied();
    app.metrics.watchers.inc();
    let _guard = WatcherGuard(&app);
    loop {
        let last_applied = *applied.borrow_and_update();
        let records =
            app.sm.records_after(after, limit).map_err(|e| Failure::unavailable("store_error", e.to_string()))?;
        if let Some(first) = records.first() {
            if first.index > after + 1 {
                return Err(Failure::new(
                    axum::http::StatusCode::GONE,
                    "compacted",
                    format!("records after {after} are compacted; the oldest retained is {}", first.index),
                    Some("Re-read the current state (GET /v1/streams, /v1/federated-tables) and watch from the oldest retained index."),
                ));
            }
        }
        if !records.is_empty() || wait.is_zero() || tokio::time::Instant::now() >= deadline {
            let mut out: Vec<EventRecord> = Vec::with_capacity(records.len());
            for record in &records {
                let mut view = EventRecord::from(record);
                if let Some(prev) = out.last().filter(|p| p.index == view.index) {
                    view.position = prev.position + 1;
                }
                out.push(view);
            }
            return Ok(Json(EventsPage { records: out, last_applied }));
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Ok(Json(EventsPage { records: vec![], last_applied }));
        }
        app.metrics.watch_wakeups.inc();
    }
}

/// Long-poll of a federated table's newest cut: answers when the cut is newer than `after` or `wait_ms` passed.
#[utoipa::path(get, path = "/v1/cut/{cluster}/{name}", tag = "watch",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), CutQuery),
    responses((status = 200, body = CutView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub async fn cut(
    State(app): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<CutQuery>, QueryRejection>,
) -> Result<Json<CutView>, Failure> {
    let q = query(q)?;
    let id = FederatedTableId(relation(&cluster, &name)?);
    let after = q.after.unwrap_or(0);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    long_poll(&app, wait, None, |s| {
        let t = s
            .federated_tables()
            .get(&id)
            .ok_or_else(|| Failure::not_found(format!("federated table {id} does not exist")))?;
        let view = CutView { table: id.clone(), consistency: t.consistency, cut: t.newest_cut.clone() };
        let ready = view.cut.at > after;
        Ok((view, ready))
    })
    .await
}

/// Answers with what `look` finds in the applied state as soon as it says the answer is ready, or when `wait`
/// passed; wakes up on every applied entry in between, or, with `cluster`, only on the entries that touch that
/// cluster (and federation-wide ones).
async fn long_poll<T>(
    app: &AppState,
    wait: Duration,
    cluster: Option<&ClusterName>,
    look: impl Fn(&shared_model::State) -> Result<(T, bool), Failure>,
) -> Result<Json<T>, Failure> {
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look, so nothing applied after it goes unnoticed.
    let mut applied = app.sm.subscribe_applied();
    let mut narrow = cluster.map(|c| app.wakeups.subscribe(c));
    app.metrics.watchers.inc();
    let _guard = WatcherGuard(app);
    loop {
        applied.borrow_and_update();
        let (view, ready) = app.sm.with_state(&look)?;
        if ready || wait.is_zero() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(view));
        }
        let woken = match narrow.as_mut() {
            Some(subscription) => tokio::time::timeout_at(deadline, subscription.changed()).await.is_ok(),
            None => tokio::time::timeout_at(deadline, applied.changed()).await.is_ok(),
        };
        if !woken {
            return Ok(Json(view));
        }
        app.metrics.watch_wakeups.inc();
    }
}

/// Long-poll of a stream's committed batches after `after_seq` (what a consumer needs to plan its applies):
/// answers when a batch after `after_seq` is committed, a reinitialize request is pending, or `wait_ms` passed.
/// Served from this node's applied state (every point is committed; a follower may lag the leader).
#[utoipa::path(get, path = "/v1/frontiers/{cluster}/{name}/history", tag = "watch",
    params(("cluster" = String, Path), ("name" = String, Path, description = "schema.table"), HistoryQuery),
    responses((status = 200, body = FrontierHistoryView), (status = 401, body = ApiError), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 422, body = ApiError)))]
pub async fn frontier_history(
    State(app): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<FrontierHistoryView>, Failure> {
    let q = query(q)?;
    let id = StreamId(relation(&cluster, &name)?);
    let after_seq = q.after_seq.unwrap_or(0);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    long_poll(&app, wait, Some(id.cluster()), |s| {
        let view = views::frontier_history(s, &id, after_seq)
            .ok_or_else(|| Failure::not_found(format!("stream {id} is not published")))?;
        let news = view.points.last().is_some_and(|p| p.seq > after_seq) || view.pending_reinit.is_some();
        Ok((view, news))
    })
    .await
}
