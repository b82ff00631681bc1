//! Management routes: cluster formation, membership changes, this node's status and state snapshots.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::{BasicNode, ServerState, SnapshotMeta};

use super::{parse_body, AppState, Failure};
use crate::api::*;

/// Routes that must run on the leader (forwarded like writes).
pub fn leader_routes() -> Router<AppState> {
    Router::new().route("/v1/admin/learners", post(add_learner)).route("/v1/admin/membership", post(change_membership))
}

/// Routes answered by the node itself.
pub fn local_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/init", post(init))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/snapshot", get(snapshot))
}

fn members(app: &AppState) -> Vec<MemberView> {
    let metrics = app.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let health = app.peers_health.snapshot();
    let last = metrics.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(id, node)| {
            // openraft reports replication only on the leader, for the other members.
            let replication = metrics.replication.as_ref().filter(|_| *id != app.id).map(|progress| {
                let matched = progress.get(id).copied().flatten().map(|l| l.index);
                replication_view(matched, last, health.get(id), app.lag_threshold)
            });
            MemberView { id: *id, addr: node.addr.clone(), voter: voters.contains(id), replication }
        })
        .collect()
}

/// A member is failing when its latest RPCs failed, behind when it trails by more than the threshold (or nothing
/// is matched yet), ok otherwise.
pub fn replication_view(
    matched: Option<u64>,
    last: u64,
    health: Option<&crate::server::network::PeerHealth>,
    lag_threshold: u64,
) -> ReplicationView {
    let lag_entries = last.saturating_sub(matched.unwrap_or(0));
    let failures = health.map_or(0, |h| h.consecutive_failures);
    let state = if failures >= 3 {
        ReplicationState::Failing
    } else if matched.is_none() && last > 0 || lag_entries > lag_threshold {
        ReplicationState::Behind
    } else {
        ReplicationState::Ok
    };
    let error = health.and_then(|h| h.last_error.as_ref());
    ReplicationView {
        state,
        matched_index: matched,
        lag_entries,
        last_error: error.map(|(_, what)| what.clone()),
        last_error_age_secs: error.map(|(at, _)| at.elapsed().as_secs()),
        consecutive_failures: failures,
    }
}

/// This node's view of the Raft cluster.
#[utoipa::path(get, path = "/v1/admin/status", tag = "admin", responses((status = 200, body = StatusView), (status = 401, body = ApiError)))]
pub async fn status(State(app): State<AppState>) -> Json<StatusView> {
    let m = app.raft.metrics().borrow().clone();
    let state = match m.state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    };
    Json(StatusView {
        node_id: app.id,
        addr: app.addr.clone(),
        state: state.into(),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        members: members(&app),
    })
}

/// Form a new cluster with these voters (or the node's configured peers), run once on one node.
#[utoipa::path(post, path = "/v1/admin/init", tag = "admin", request_body = InitCluster,
    responses((status = 200, body = Vec<MemberView>), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 409, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])))]
pub async fn init(State(app): State<AppState>, body: Bytes) -> Result<Json<Vec<MemberView>>, Failure> {
    let req: InitCluster = if body.is_empty() { InitCluster::default() } else { parse_body(&body)? };
    let mut members: BTreeMap<u64, String> = if req.members.is_empty() { app.peers.clone() } else { req.members };
    if members.is_empty() {
        members.insert(app.id, app.addr.clone());
    }
    if !members.contains_key(&app.id) {
        return Err(Failure::invalid(format!("the members must include this node ({})", app.id)));
    }
    if members.keys().any(|id| *id == 0) || members.values().any(|a| !a.contains(':')) {
        return Err(Failure::invalid("members are ID (>= 1) => HOST:PORT"));
    }
    let nodes: BTreeMap<u64, BasicNode> = members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
    match app.raft.initialize(nodes).await {
        Ok(()) => Ok(Json(self::members(&app))),
        Err(e) => Err(Failure::new(
            axum::http::StatusCode::CONFLICT,
            "already_initialized",
            e.to_string(),
            Some("The cluster is formed already; use add-learner and change-membership to change it."),
        )),
    }
}

/// Add a learner (a non-voting node that catches up); returns when it has caught up.
#[utoipa::path(post, path = "/v1/admin/learners", tag = "admin", request_body = AddLearner,
    responses((status = 200, body = Vec<MemberView>), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn add_learner(State(app): State<AppState>, body: Bytes) -> Result<Json<Vec<MemberView>>, Failure> {
    let req: AddLearner = parse_body(&body)?;
    if req.id == 0 || !req.addr.contains(':') {
        return Err(Failure::invalid("a learner needs an id >= 1 and an address HOST:PORT"));
    }
    app.raft.add_learner(req.id, BasicNode { addr: req.addr }, true).await.map_err(membership_failure)?;
    Ok(Json(members(&app)))
}

/// Change the voter set (joint consensus; nodes leaving become learners and are then removed).
#[utoipa::path(post, path = "/v1/admin/membership", tag = "admin", request_body = ChangeMembership,
    responses((status = 200, body = Vec<MemberView>), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 503, body = ApiError)),
    security(("bearer" = [])))]
pub async fn change_membership(State(app): State<AppState>, body: Bytes) -> Result<Json<Vec<MemberView>>, Failure> {
    let req: ChangeMembership = parse_body(&body)?;
    if req.voters.is_empty() {
        return Err(Failure::invalid("the voter set cannot be empty"));
    }
    app.raft.change_membership(req.voters, false).await.map_err(membership_failure)?;
    Ok(Json(members(&app)))
}

/// A membership change that met a leader change or a change still in progress is worth repeating (503: the
/// client retries, against the new leader; repeating a change that already took effect is a no-op); anything
/// else is refused (409).
fn membership_failure(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
) -> Failure {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
    match &e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Failure::unavailable("not_leader", format!("leadership moved during the membership change: {e}"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))) => {
            Failure::unavailable("membership_in_progress", e.to_string())
        }
        _ => Failure::new(axum::http::StatusCode::CONFLICT, "membership_error", e.to_string(), None),
    }
}

/// The node's current state as a snapshot file (the bytes `serve --bootstrap-from` reads).
#[utoipa::path(get, path = "/v1/admin/snapshot", tag = "admin",
    responses((status = 200, description = "Snapshot bytes", content_type = "application/octet-stream"), (status = 401, body = ApiError)))]
pub async fn snapshot(State(app): State<AppState>) -> Response {
    // Read the applied id and membership before taking the state's read lock (the lock is not re-entrant).
    let meta = SnapshotMeta {
        last_log_id: app.sm.applied(),
        last_membership: app.sm.membership(),
        snapshot_id: format!("export-{}", super::now_ms()),
    };
    let bytes = app.sm.with_state(|state| raft_store::snapshot::encode(&meta, state));
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}
