//! Raft RPC routes: the bodies are the binary codec of openraft's request types; the answers are the codec of
//! `Result<Response, RaftError>`, so a peer's refusal travels back as a typed remote error.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use raft_store::{NodeId, TypeConfig};
use serde::Serialize;
use shared_model::codec;

use super::{AppState, Failure};
use crate::server::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};

pub fn routes() -> Router<AppState> {
    Router::new().route(APPEND_PATH, post(append)).route(VOTE_PATH, post(vote)).route(SNAPSHOT_PATH, post(snapshot))
}

fn decode<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    codec::decode(body).map_err(|e| Failure::bad_request("bad_raft_rpc", e.to_string()))
}

fn binary<T: Serialize>(value: &T) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], codec::encode(value)).into_response()
}

async fn append(State(app): State<AppState>, body: Bytes) -> Result<Response, Failure> {
    let req: AppendEntriesRequest<TypeConfig> = decode(&body)?;
    Ok(binary(&app.raft.append_entries(req).await))
}

async fn vote(State(app): State<AppState>, body: Bytes) -> Result<Response, Failure> {
    let req: openraft::raft::VoteRequest<NodeId> = decode::<VoteRequest<NodeId>>(&body)?;
    Ok(binary(&app.raft.vote(req).await))
}

async fn snapshot(State(app): State<AppState>, body: Bytes) -> Result<Response, Failure> {
    let req: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
    Ok(binary(&app.raft.install_snapshot(req).await))
}
