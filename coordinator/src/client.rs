//! The coordinator client library: no server dependencies, so the extension links it too.
//!
//! A [`Client`] holds the list of coordinator nodes (`http://c1:7070,c2:7070,c3:7070`), prefers the node that
//! last answered or was named leader, fails over to the others on connection errors, and retries on `503 no_leader`
//! until its deadline. Every write carries one idempotency key for all its attempts, so a retry after a lost reply
//! is applied once. [`Client::watch_events`] follows the event log over one streamed response (module `watch`),
//! resuming where it stopped when it has to switch nodes, so each record is delivered once and in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shared_model::{Applied, ClusterName, FederatedTableId, LogIndex, ProducerFence, StreamId};

use crate::api::*;

mod watch;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator answered with an error.
    #[error("{status}: {} ({}){}", error.message, error.code, error.hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Api { status: u16, error: ApiError },
    /// No node could be reached, or none had a leader, before the deadline.
    #[error("no coordinator answered within {waited:?}: {last}")]
    Unavailable { waited: Duration, last: String },
    /// A node list or URL is malformed.
    #[error("invalid coordinator URL {0:?}: expected http://host:port[,host:port…]")]
    BadUrl(String),
    /// The answer did not decode.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// The API error code, if the coordinator answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

/// Items per page when the client reads a whole list.
pub const LIST_PAGE: usize = 1000;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bearer token for writes.
    pub token: Option<String>,
    /// Who writes (first half of every idempotency key).
    pub client_id: String,
    /// Overall deadline of one call, retries included.
    pub deadline: Duration,
    /// Timeout of one HTTP attempt (long polls add their wait).
    pub attempt_timeout: Duration,
    /// PEM of the CA that signed the coordinators' certificates (https:// endpoints); default: system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            client_id: format!("client-{}", uuid::Uuid::new_v4().simple()),
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(5),
            ca_pem: None,
        }
    }
}

/// A coordinator client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nodes: std::sync::Arc<Vec<String>>,
    preferred: std::sync::Arc<AtomicUsize>,
    http: reqwest::Client,
    options: ClientOptions,
}

/// Parses `http://a:1,b:2,https://c:3` into base URLs (a scheme carries over to the hosts after it).
pub fn parse_nodes(spec: &str) -> Result<Vec<String>, ClientError> {
    let mut scheme = "http";
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (s, rest) = match part.split_once("://") {
            Some((s, rest)) => (s, rest),
            None => (scheme, part),
        };
        if s != "http" && s != "https" {
            return Err(ClientError::BadUrl(spec.into()));
        }
        scheme = s;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || !host.contains(':') {
            return Err(ClientError::BadUrl(spec.into()));
        }
        out.push(format!("{s}://{host}"));
    }
    if out.is_empty() {
        return Err(ClientError::BadUrl(spec.into()));
    }
    Ok(out)
}

impl Client {
    /// A client for the nodes in `spec`.
    pub fn new(spec: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let nodes = parse_nodes(spec)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if let Some(pem) = &options.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Decode { url: spec.into(), reason: format!("CA certificate: {e}") })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| ClientError::Decode { url: spec.into(), reason: e.to_string() })?;
        Ok(Client { nodes: std::sync::Arc::new(nodes), preferred: Default::default(), http, options })
    }

    /// The node URLs.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// A fresh request id for a write.
    pub fn new_request_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Sends one call with failover and retries. `request_id` makes it a write (idempotent across attempts).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
        request_id: Option<&str>,
        extra_wait: Duration,
    ) -> Result<T, ClientError> {
        Ok(self.call_with_headers(method, path_and_query, body, request_id, extra_wait).await?.0)
    }

    /// [`Client::call`], also returning the answer's headers (pagination cursors, ETag).
    pub async fn call_with_headers<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
        request_id: Option<&str>,
        extra_wait: Duration,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let started = Instant::now();
        let mut attempt = 0usize;
        let mut last = String::from("no attempt made");
        let body = match body {
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| ClientError::Decode { url: path_and_query.into(), reason: e.to_string() })?,
            ),
            None => None,
        };
        while started.elapsed() < self.options.deadline || attempt == 0 {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.nodes.len();
            attempt += 1;
            let url = format!("{}{}", self.nodes[index], path_and_query);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(self.options.attempt_timeout + extra_wait)
                .header(CLIENT_HEADER, &self.options.client_id);
            if let Some(token) = &self.options.token {
                req = req.bearer_auth(token);
            }
            if let Some(id) = request_id {
                req = req.header(IDEMPOTENCY_HEADER, id);
            }
            if let Some(b) = &body {
                req = req.header("content-type", "application/json").body(b.clone());
            }
            match req.send().await {
                Err(e) => {
                    last = format!("{url}: {e}");
                }
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(leader) = resp.headers().get("x-pgtrickle-leader").and_then(|v| v.to_str().ok()) {
                        if let Some(i) = self.nodes.iter().position(|n| n.ends_with(leader)) {
                            self.preferred.store(i, Ordering::Relaxed);
                        }
                    }
                    let headers = resp.headers().clone();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        self.preferred.store(index, Ordering::Relaxed);
                        return serde_json::from_slice(&bytes)
                            .map(|t| (t, headers))
                            .map_err(|e| ClientError::Decode { url, reason: e.to_string() });
                    }
                    let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        ApiError::new("http_error", String::from_utf8_lossy(&bytes).into_owned(), None)
                    });
                    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::BAD_GATEWAY {
                        last = format!("{url}: {} ({})", error.message, error.code);
                    } else {
                        return Err(ClientError::Api { status: status.as_u16(), error });
                    }
                }
            }
            // Back off a little once every node has been tried.
            if attempt.is_multiple_of(self.nodes.len()) {
                tokio::time::sleep(Duration::from_millis(50 * (attempt / self.nodes.len()).min(10) as u64)).await;
            }
        }
        Err(ClientError::Unavailable { waited: started.elapsed(), last })
    }

    /// A binary GET (e.g. `/v1/admin/snapshot`), with failover.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut last = String::new();
        for attempt in 0..self.nodes.len() {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.nodes.len();
            let url = format!("{}{}", self.nodes[index], path);
            let mut req = self.http.get(&url).timeout(self.options.attempt_timeout * 4);
            if let Some(token) = &self.options.token {
                req = req.bearer_auth(token);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| ClientError::Decode { url, reason: e.to_string() })
                }
                Ok(resp) => last = format!("{url}: {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(ClientError::Unavailable { waited: Duration::ZERO, last })
    }

    /// One page of a list endpoint (`/v1/frontiers`, `/v1/streams`, `/v1/federated-tables`, `/v1/clusters`):
    /// items of `cluster` (all when None) after `after`, at most `limit`; and the cursor of the next page.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        path: &str,
        cluster: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", &limit.to_string());
        if let Some(c) = cluster {
            query.append_pair("cluster", c);
        }
        if let Some(a) = after {
            query.append_pair("after", a);
        }
        let path = format!("{path}?{}", query.finish());
        let (items, headers) =
            self.call_with_headers::<(), Vec<T>>(Method::GET, &path, None, None, Duration::ZERO).await?;
        let next = headers.get("x-pgtrickle-next-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok((items, next))
    }

    /// A whole list, read in pages of [`LIST_PAGE`] items so that no answer grows with the federation.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        cluster: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (items, next) = self.list_page(path, cluster, after.as_deref(), LIST_PAGE).await?;
            all.extend(items);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None, None, Duration::ZERO).await
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let id = Self::new_request_id();
        self.call(method, path, body, Some(&id), Duration::ZERO).await
    }

    // ----- writes ---------------------------------------------------------------------------------------------

    /// Registers (or updates) a cluster; returns the federation's broker settings.
    pub async fn register_cluster(&self, body: &RegisterCluster) -> Result<Registered, ClientError> {
        self.write(Method::POST, "/v1/clusters", Some(body)).await
    }
    /// Deregisters a cluster.
    pub async fn deregister_cluster(&self, name: &ClusterName, cascade: bool) -> Result<Applied, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/clusters/{name}?cascade={cascade}"), None).await
    }
    /// Sets the federation's name and change-log settings.
    pub async fn configure_federation(&self, body: &FederationView) -> Result<Applied, ClientError> {
        self.write(Method::PUT, "/v1/federation", Some(body)).await
    }
    /// Publishes a stream.
    pub async fn publish_stream(&self, body: &PublishStream) -> Result<Applied, ClientError> {
        self.write(Method::POST, "/v1/streams", Some(body)).await
    }
    /// Unpublishes a stream; with `producer`, on behalf of that producing server (refused once it no longer
    /// holds the cluster's name and epoch).
    pub async fn unpublish_stream(
        &self,
        stream: &StreamId,
        cascade: bool,
        producer: Option<&ProducerFence>,
    ) -> Result<Applied, ClientError> {
        let fence = producer.map_or(String::new(), |f| {
            format!("&system_identifier={}&producer_epoch={}", f.system_identifier, f.producer_epoch)
        });
        self.write::<(), _>(
            Method::DELETE,
            &format!("/v1/streams/{}?cascade={cascade}{fence}", path_of(&stream.0)),
            None,
        )
        .await
    }
    /// Creates a federated table.
    pub async fn create_federated_table(&self, body: &CreateFederatedTable) -> Result<Applied, ClientError> {
        self.write(Method::POST, "/v1/federated-tables", Some(body)).await
    }
    /// Drops a federated table.
    pub async fn drop_federated_table(&self, table: &FederatedTableId, cascade: bool) -> Result<Applied, ClientError> {
        self.write::<(), _>(
            Method::DELETE,
            &format!("/v1/federated-tables/{}?cascade={cascade}", path_of(&table.0)),
            None,
        )
        .await
    }
    /// Records frontier advances (many streams per call).
    pub async fn advance_frontiers(&self, body: &AdvanceFrontiers) -> Result<Applied, ClientError> {
        self.write(Method::POST, "/v1/frontiers", Some(body)).await
    }
    /// Writes with a caller-chosen request id (so the caller can retry across process restarts).
    pub async fn advance_frontiers_keyed(
        &self,
        body: &AdvanceFrontiers,
        request_id: &str,
    ) -> Result<Applied, ClientError> {
        self.call(Method::POST, "/v1/frontiers", Some(body), Some(request_id), Duration::ZERO).await
    }
    /// Requests a snapshot batch of a stream.
    pub async fn request_reinitialize(&self, stream: &StreamId, reason: &str) -> Result<Applied, ClientError> {
        let body = Reinitialize { reason: reason.into() };
        self.write(Method::POST, &format!("/v1/streams/{}/reinitialize", path_of(&stream.0)), Some(&body)).await
    }
    /// Records a checkpoint.
    pub async fn record_checkpoint(
        &self,
        cluster: &ClusterName,
        body: &RecordCheckpoint,
    ) -> Result<Applied, ClientError> {
        self.write(Method::POST, &format!("/v1/clusters/{cluster}/checkpoints"), Some(body)).await
    }

    // ----- reads ----------------------------------------------------------------------------------------------

    /// Registered clusters.
    pub async fn clusters(&self) -> Result<Vec<ClusterView>, ClientError> {
        self.list_all("/v1/clusters", None).await
    }
    /// Published streams.
    pub async fn streams(&self) -> Result<Vec<StreamView>, ClientError> {
        self.list_all("/v1/streams", None).await
    }
    /// One registered cluster (404 when it is not registered).
    pub async fn cluster(&self, name: &ClusterName) -> Result<ClusterView, ClientError> {
        self.get(&format!("/v1/clusters/{name}")).await
    }
    /// One published stream (404 when it is not published).
    pub async fn stream(&self, stream: &StreamId) -> Result<StreamView, ClientError> {
        self.get(&format!("/v1/streams/{}", path_of(&stream.0))).await
    }
    /// Federated tables.
    pub async fn federated_tables(&self) -> Result<Vec<FederatedTableView>, ClientError> {
        self.list_all("/v1/federated-tables", None).await
    }
    /// Frontiers of every stream.
    pub async fn frontiers(&self) -> Result<Vec<FrontierView>, ClientError> {
        self.list_all("/v1/frontiers", None).await
    }
    /// The federation settings.
    pub async fn federation(&self) -> Result<FederationView, ClientError> {
        self.get("/v1/federation").await
    }
    /// The DAG.
    pub async fn dag(&self) -> Result<DagView, ClientError> {
        self.get("/v1/dag").await
    }
    /// The DAG in Graphviz DOT.
    pub async fn dag_dot(&self) -> Result<String, ClientError> {
        self.get("/v1/dag/dot").await
    }
    /// This node's Raft status (of the first node that answers).
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.get("/v1/admin/status").await
    }
    /// The status of one specific node (no failover).
    pub async fn node_status(&self, node: usize) -> Result<StatusView, ClientError> {
        let one = Client {
            nodes: std::sync::Arc::new(vec![self.nodes[node].clone()]),
            preferred: Default::default(),
            http: self.http.clone(),
            options: ClientOptions { deadline: Duration::ZERO, ..self.options.clone() },
        };
        one.get("/v1/admin/status").await
    }
    /// The newest cut of a federated table, waiting up to `wait` for one newer than `after`.
    pub async fn cut(&self, table: &FederatedTableId, after: LogIndex, wait: Duration) -> Result<CutView, ClientError> {
        let path = format!("/v1/cut/{}?after={after}&wait_ms={}", path_of(&table.0), wait.as_millis());
        self.call::<(), _>(Method::GET, &path, None, None, wait).await
    }
    /// A stream's committed batches after `after_seq`, waiting up to `wait` for one (or a reinitialize request).
    pub async fn frontier_history(
        &self,
        stream: &StreamId,
        after_seq: u64,
        wait: Duration,
    ) -> Result<FrontierHistoryView, ClientError> {
        let path =
            format!("/v1/frontiers/{}/history?after_seq={after_seq}&wait_ms={}", path_of(&stream.0), wait.as_millis());
        self.call::<(), _>(Method::GET, &path, None, None, wait).await
    }
    /// Event records after `after`, waiting up to `wait` for the first one.
    pub async fn events(&self, after: LogIndex, wait: Duration, limit: usize) -> Result<EventsPage, ClientError> {
        let path = format!("/v1/events?after={after}&wait_ms={}&limit={limit}", wait.as_millis());
        self.call::<(), _>(Method::GET, &path, None, None, wait).await
    }
}

/// `cluster/schema.table` as two path segments `cluster/schema.table` (names never contain '/').
fn path_of(r: &shared_model::RelationId) -> String {
    format!("{}/{}.{}", r.cluster, r.schema, r.table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse() {
        assert_eq!(parse_nodes("http://c1:7070,c2:7070").unwrap(), vec!["http://c1:7070", "http://c2:7070"]);
        assert_eq!(parse_nodes("127.0.0.1:1").unwrap(), vec!["http://127.0.0.1:1"]);
        assert!(parse_nodes("ftp://x:1").is_err());
        assert!(parse_nodes("http://nohost").is_err());
        assert!(parse_nodes("").is_err());
    }
}
