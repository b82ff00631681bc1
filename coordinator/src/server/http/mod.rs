//! The HTTP surface of a node, split like openraft's examples: Raft RPC ([`raft`]), management ([`admin`]) and the
//! application API ([`app`]), plus health, metrics and the OpenAPI document ([`docs`]).
//!
//! Cross-cutting rules live in layers, not in handlers:
//! - bearer tokens guard every request when configured: the write token everything, a read-only token reads
//!   (health and metrics optionally open);
//! - writes reaching a follower are forwarded to the leader (once: a forwarded request carries a header);
//! - reads are linearizable by default (read index on the leader, forwarded from followers);
//!   `?consistency=stale` is served locally;
//! - every error leaves as typed JSON `{code, message, hint}`, including axum's own rejections.

pub mod admin;
pub mod app;
pub mod docs;
pub mod event_stream;
pub mod lists;
pub mod raft;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use shared_model::{CommandError, ErrorClass, RelationId};

use super::Coordinator;
use crate::api::{ApiError, FORWARDED_HEADER};

/// Shared state of the handlers.
pub type AppState = Arc<Coordinator>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A typed error response.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub error: ApiError,
    pub retry_after: Option<u64>,
}

impl Failure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, hint: Option<&str>) -> Self {
        Failure { status, error: ApiError::new(code, message, hint), retry_after: None }
    }

    /// A rejected command, by its class.
    pub fn command(e: &CommandError) -> Self {
        let status = match e.class() {
            ErrorClass::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
        };
        Failure { status, error: ApiError::from(e), retry_after: None }
    }

    /// No leader (yet): retry shortly.
    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: ApiError::new(
                code,
                message,
                Some("The cluster is electing a leader or lost its quorum; retry shortly."),
            ),
            retry_after: Some(1),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "not_found", what, None)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_argument",
            message,
            Some("Correct the argument and retry."),
        )
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, code, message, None)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.error)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a JSON body: 400 for malformed JSON, 422 for well-formed JSON with invalid values (bad names…).
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    if body.is_empty() {
        return Err(Failure::bad_request("malformed_json", "the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Failure::invalid(e.to_string()),
        _ => Failure::bad_request("malformed_json", format!("the body is not valid JSON: {e}")),
    })
}

/// `cluster` + `schema.table` path segments as a relation id (422 when malformed).
pub fn relation(cluster: &str, name: &str) -> Result<RelationId, Failure> {
    format!("{cluster}/{name}").parse().map_err(|e: shared_model::ParseError| Failure::invalid(e.to_string()))
}

/// The whole router of a node.
pub fn router(app: AppState) -> Router {
    let writes = app::write_routes()
        .merge(admin::leader_routes())
        .layer(middleware::from_fn_with_state(app.clone(), forward_writes));
    let reads = app::read_routes()
        .layer(middleware::from_fn_with_state(app.clone(), conditional_reads))
        .layer(middleware::from_fn_with_state(app.clone(), linearizable_reads));
    Router::new()
        .merge(writes)
        .merge(reads)
        .merge(app::watch_routes())
        .merge(admin::local_routes())
        .merge(raft::routes().layer(DefaultBodyLimit::max(super::config::raft_body_limit(app.body_limit))))
        .merge(docs::routes())
        .fallback(|| async { Failure::not_found("no such route; see /openapi.json") })
        .layer(DefaultBodyLimit::max(app.body_limit))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::from_fn_with_state(app.clone(), typed_errors))
        .with_state(app)
}

/// Carries the cursor of the next page of a list (the id to pass as `after`).
pub const NEXT_AFTER_HEADER: HeaderName = HeaderName::from_static("x-pgtrickle-next-after");

/// Conditional reads: every answer carries `ETag: W/"<applied log index>"` (the log index names a version of the
/// state on every node), and a request whose `If-None-Match` names the current version gets 304 without the
/// handler running, so polling an unchanged state costs a header. The index is read before the handler: at worst
/// the tag is older than the content, which costs one unneeded full answer later, never a wrong 304.
async fn conditional_reads(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let version = app.sm.applied().map_or(0, |l| l.index);
    let etag = format!("W/\"{version}\"");
    let matches = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let tag = HeaderValue::from_str(&etag).expect("an ASCII tag");
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::OK {
        resp.headers_mut().insert(header::ETAG, tag);
    }
    resp
}

/// Paths that answer without a token when the node runs with `--open-health`.
const HEALTH_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The API's description is public: it holds no data.
const PUBLIC_PATHS: [&str; 1] = ["/openapi.json"];

/// Bearer tokens: the write token for everything; the read token for reads (`GET`, `HEAD`, `OPTIONS`) only;
/// health and metrics open when so configured; nothing checked when the node runs without a token.
async fn authorize(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &app.token else { return next.run(req).await };
    let path = req.uri().path();
    if PUBLIC_PATHS.contains(&path) || (app.open_health && HEALTH_PATHS.contains(&path)) {
        return next.run(req).await;
    }
    let reading = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let matches = |expected: &str| given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
    if matches(token) {
        return next.run(req).await;
    }
    let read_only = app.read_token.as_deref().is_some_and(matches);
    if read_only && reading {
        return next.run(req).await;
    }
    if read_only {
        return Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the read-only token cannot write",
            Some("Writes, management and Raft RPC need the coordinator's write token (--token)."),
        )
        .into_response();
    }
    let mut resp = Failure::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if given.is_some() { "wrong bearer token" } else { "this endpoint needs a bearer token" },
        Some(
            "Send `Authorization: Bearer TOKEN`: the coordinator's --token (or the token file in its data dir), or \
             its --read-token for reads.",
        ),
    )
    .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns every non-JSON error (axum rejections, 405…) into the typed JSON form and counts requests.
async fn typed_errors(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    app.metrics
        .http_requests
        .get_or_create(&super::metrics::HttpLabels { method, status: status.as_u16().to_string() })
        .inc();
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_argument",
        _ => "error",
    };
    let hint = (status == StatusCode::PAYLOAD_TOO_LARGE)
        .then_some("Split the request (e.g. fewer frontier advances per call).");
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("error")),
        text => text.to_string(),
    };
    let mut out = Failure::new(status, code, message, hint).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Where the leader is, if known: `Ok(None)` when this node leads.
fn leader_addr(app: &Coordinator) -> Result<Option<String>, Failure> {
    // Borrow, do not clone: this runs on every write and read.
    let receiver = app.raft.metrics();
    let metrics = receiver.borrow();
    match metrics.current_leader {
        Some(id) if id == app.id => Ok(None),
        Some(id) => match metrics.membership_config.membership().get_node(&id) {
            Some(node) => Ok(Some(node.addr.clone())),
            None => Err(Failure::unavailable("no_leader", format!("leader {id} is not in this node's membership yet"))),
        },
        None => Err(Failure::unavailable("no_leader", "no leader is known")),
    }
}

/// Sends the request to the leader and relays its answer.
async fn forward(app: &Coordinator, addr: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, app.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large", None)
                .into_response()
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = app
        .http
        .request(parts.method.clone(), format!("{}://{addr}{path}", app.scheme))
        .timeout(Duration::from_secs(65))
        .header(FORWARDED_HEADER, app.id.to_string())
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_NONE_MATCH] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    for name in [crate::api::CLIENT_HEADER, crate::api::IDEMPOTENCY_HEADER] {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut headers = HeaderMap::new();
            for name in [header::CONTENT_TYPE, header::RETRY_AFTER, header::ETAG, header::LINK, NEXT_AFTER_HEADER] {
                if let Some(v) =
                    resp.headers().get(name.as_str()).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
                {
                    headers.insert(name, v);
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut response = (status, headers, Body::from(bytes)).into_response();
            if let Ok(v) = HeaderValue::from_str(addr) {
                response.headers_mut().insert("x-pgtrickle-leader", v);
            }
            response
        }
        Err(e) => Failure::unavailable("leader_unreachable", format!("cannot reach the leader at {addr}: {e}"))
            .into_response(),
    }
}

/// Writes run on the leader: a follower forwards them.
async fn forward_writes(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    match leader_addr(&app) {
        Ok(None) => next.run(req).await,
        Ok(Some(addr)) => forward(&app, &addr, req).await,
        Err(f) => f.into_response(),
    }
}

/// Linearizable reads: the leader confirms its leadership (read index) and waits until it has applied up to it;
/// followers forward to the leader. `consistency=stale` reads this node's state as it is.
async fn linearizable_reads(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let stale = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "consistency=stale"));
    if stale {
        return next.run(req).await;
    }
    match leader_addr(&app) {
        Ok(None) => match app.raft.ensure_linearizable().await {
            Ok(_) => next.run(req).await,
            Err(e) => Failure::unavailable("not_leader", format!("cannot confirm leadership: {e}")).into_response(),
        },
        Ok(Some(_)) if req.headers().contains_key(FORWARDED_HEADER) => {
            Failure::unavailable("not_leader", "leadership moved while the read was forwarded").into_response()
        }
        Ok(Some(addr)) => forward(&app, &addr, req).await,
        Err(f) => f.into_response(),
    }
}
