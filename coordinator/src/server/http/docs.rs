//! Health, readiness, Prometheus metrics and the OpenAPI document describing every endpoint.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, app, event_stream, lists, AppState, Failure};
use crate::api::*;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI description of the coordinator's HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(title = "pgtrickle-coordinator", description = "Admin API of the pg_trickle federation coordinator."),
    paths(
        app::register_cluster, app::deregister_cluster, app::record_checkpoint, app::configure_federation,
        app::publish_stream, app::unpublish_stream, app::reinitialize, app::create_federated_table,
        app::drop_federated_table, app::advance_frontiers, lists::list_clusters, app::get_cluster, app::get_federation,
        lists::list_streams, app::get_stream, lists::list_federated_tables, app::get_federated_table, lists::list_frontiers,
        app::get_frontier, app::get_dag, app::get_dag_dot, app::events, event_stream::event_stream, app::cut, app::frontier_history,
        admin::status, admin::init, admin::add_learner, admin::change_membership, admin::snapshot,
        healthz, readyz, metrics
    ),
    components(schemas(ApiError, EventRecord, ReadyView, app::ReadConsistency)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Liveness: the process serves HTTP.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReadyView {
    pub ready: bool,
    pub leader: Option<u64>,
    pub applied_index: Option<u64>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, content_type = "application/json"), (status = 401, body = ApiError)))]
pub async fn healthz() -> Json<&'static str> {
    Json("ok")
}

/// Readiness: a leader is known and this node applies the log.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = ReadyView), (status = 401, body = ApiError), (status = 503, body = ApiError)))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let m = app.raft.metrics().borrow().clone();
    if m.current_leader.is_some() && m.running_state.is_ok() {
        Json(ReadyView { ready: true, leader: m.current_leader, applied_index: m.last_applied.map(|l| l.index) })
            .into_response()
    } else {
        Failure::unavailable("not_ready", "no leader is known yet").into_response()
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 401, body = ApiError)))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.encode()).into_response()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
