//! The NATS JetStream backend of the change log (async-nats): one JetStream stream per federation (named after the
//! topic prefix, file storage, subjects `<prefix>.>`) with a subject per published stream.
//!
//! - **Publish**: every message carries a de-duplication id (`Nats-Msg-Id`, from stream, incarnation, producer
//!   epoch, seq and chunk: [`shared_model::nats_settings::message_id`]) and the send waits for JetStream's
//!   acknowledgement of each. A send retried after a lost acknowledgement is stored once, and the acknowledgement
//!   names the first copy's stream sequence: that is the position recorded in the frontier.
//! - **Read**: an ordered consumer per source (ephemeral, flow-controlled, recreated by the client on a gap),
//!   filtered to the source's subject and started at the position the subscriber stored; positions are stream
//!   sequences, which grow along a subject with gaps (other subjects' messages sit between).
//! - **Chunks** stay under the server's `max_payload` (announced when the client connects).
//!
//! The client runs on a runtime of its own with one worker thread (signals blocked), so the connection answers the
//! server's pings and the consumers' heartbeats arrive while the PostgreSQL worker sleeps between rounds; the
//! worker's thread only blocks on it. Nothing here calls into PostgreSQL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::stream::{SelectAll, StreamExt};
use shared_model::nats_settings::{self, NatsLogin, NatsOptions};

use super::{BatchCopy, LogConsumer, LogProducer, Polled, Received};
use crate::federation::broker_config::BrokerConfig;
use crate::federation::runtime::with_signals_blocked;

/// Chunks stay at least this far below the server's `max_payload`: room for the headers.
const HEADER_ROOM: usize = 4096;

/// How long a publish may wait for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection's event callback saw.
#[derive(Default)]
struct ConnectionState {
    disconnected: AtomicBool,
    refused: Mutex<Option<String>>,
}

impl ConnectionState {
    fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why the server refused a connection, with the HINT.
fn refusal(why: impl std::fmt::Display) -> String {
    format!(
        "the NATS server refused this cluster's connection: {why} (HINT: check user/password, token, nkey.seed, \
         creds.file and tls.* in pgtrickle.pgt_federation.broker_settings and pg_trickle.broker_properties_file, \
         then SELECT pg_reload_conf())"
    )
}

/// A connected client with its own runtime.
struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    state: Arc<ConnectionState>,
    stream_config: stream::Config,
    /// Whether the federation's stream is known to exist on this connection.
    stream_ready: bool,
    /// Last, so that it is dropped after everything whose tasks run on it.
    runtime: tokio::runtime::Runtime,
}

fn server_addresses(servers: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<async_nats::ServerAddr>().map_err(|e| format!("NATS server address \"{s}\": {e}")))
        .collect()
}

/// rustls is linked with two crypto providers here (ring for async-nats, aws-lc-rs for other crates), so it cannot
/// pick one by itself: TLS connections use ring, installed once per process.
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // An error means a provider is installed already, which is as good.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    });
}

impl Connection {
    fn open(config: &BrokerConfig, name: &str) -> Result<Connection, String> {
        install_crypto_provider();
        let options = nats_settings::parse(&config.properties).map_err(|e| format!("{e} (HINT: {})", e.hint()))?;
        let addresses = server_addresses(&config.bootstrap_servers)?;
        if addresses.is_empty() {
            return Err("the federation names no NATS server (HINT: pgtrickle-coordinator federation --servers \
                        host:4222)"
                .into());
        }
        let runtime = with_signals_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(2)
                .thread_name("pg_trickle-nats")
                .enable_all()
                .build()
        })
        .map_err(|e| format!("cannot start the NATS client's runtime: {e}"))?;
        let state = Arc::new(ConnectionState::default());
        let client = runtime.block_on(connect(&options, addresses, name, state.clone()))?;
        // The context starts a task of its own: it must be built inside the runtime.
        let jetstream = {
            let _inside = runtime.enter();
            jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).build(client.clone())
        };
        let stream_config = stream::Config {
            name: nats_settings::stream_name(&config.topic_prefix),
            subjects: vec![format!("{}.>", config.topic_prefix)],
            storage: stream::StorageType::File,
            num_replicas: config.topics.replication_factor.max(1) as usize,
            max_age: Duration::from_secs(options.max_age_seconds),
            max_bytes: options.max_bytes,
            description: Some("pg_trickle federation change log".into()),
            ..Default::default()
        };
        Ok(Connection { runtime, client, jetstream, state, stream_config, stream_ready: false })
    }

    /// Creates the federation's stream unless it exists.
    fn ensure_stream(&mut self) -> Result<(), String> {
        if self.stream_ready {
            return Ok(());
        }
        let (jetstream, config) = (&self.jetstream, self.stream_config.clone());
        let name = config.name.clone();
        self.runtime.block_on(jetstream.get_or_create_stream(config)).map_err(|e| {
            format!(
                "cannot create the JetStream stream {name}: {e} (HINT: the server must run with JetStream enabled \
                 (nats-server -js), and no other stream may hold the federation's subjects)"
            )
        })?;
        self.stream_ready = true;
        Ok(())
    }
}

async fn connect(
    options: &NatsOptions,
    addresses: Vec<async_nats::ServerAddr>,
    name: &str,
    state: Arc<ConnectionState>,
) -> Result<async_nats::Client, String> {
    let mut connect = match &options.login {
        NatsLogin::None => async_nats::ConnectOptions::new(),
        NatsLogin::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsLogin::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        NatsLogin::NKeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
        NatsLogin::CredentialsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("cannot read creds.file \"{path}\": {e}"))?,
    };
    if options.tls_required {
        connect = connect.require_tls(true);
    }
    if let Some(ca) = &options.tls_ca_file {
        connect = connect.add_root_certificates(PathBuf::from(ca));
    }
    if let Some((cert, key)) = &options.tls_client {
        connect = connect.add_client_certificate(PathBuf::from(cert), PathBuf::from(key));
    }
    let events = state.clone();
    connect = connect.name(name).connection_timeout(Duration::from_secs(10)).event_callback(move |event| {
        let events = events.clone();
        async move {
            match event {
                async_nats::Event::Disconnected | async_nats::Event::Closed => {
                    events.disconnected.store(true, Ordering::Relaxed)
                }
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                    *events.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(refusal("authorization violation"));
                }
                _ => {}
            }
        }
    });
    connect.connect(addresses).await.map_err(|error| {
        // A certificate the client does not trust comes back as an I/O error: its text tells.
        let text = error.to_string().to_ascii_lowercase();
        let tls_failure = ["certificate", "tls", "handshake"].iter().any(|word| text.contains(word));
        match error.kind() {
            async_nats::ConnectErrorKind::Authentication
            | async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Tls => refusal(&error),
            _ if tls_failure => refusal(&error),
            _ => format!("cannot connect to NATS: {error}"),
        }
    })
}

/// Publishes batches to the federation's stream.
pub struct NatsProducer {
    connection: Connection,
}

impl NatsProducer {
    pub fn connect(config: &BrokerConfig) -> Result<Self, String> {
        Ok(NatsProducer { connection: Connection::open(config, "pg_trickle publisher")? })
    }
}

impl LogProducer for NatsProducer {
    fn healthy(&mut self) -> bool {
        !self.connection.state.disconnected.load(Ordering::Relaxed)
    }

    fn refused(&mut self) -> Option<String> {
        self.connection.state.refused()
    }

    fn ensure_channel(&mut self, _subject: &str) -> Result<(), String> {
        self.connection.ensure_stream()
    }

    fn max_message_bytes(&self) -> usize {
        let announced = self.connection.client.server_info().max_payload;
        announced.saturating_sub(HEADER_ROOM).clamp(1024, super::kafka::MAX_MESSAGE_BYTES)
    }

    fn send_batch(&mut self, subject: &str, copy: BatchCopy<'_>, messages: &[Vec<u8>]) -> Result<i64, String> {
        let Connection { runtime, jetstream, .. } = &self.connection;
        runtime.block_on(async {
            // All chunks are sent before the first acknowledgement is awaited (JetStream keeps a subject's order).
            let mut pending = Vec::with_capacity(messages.len());
            for (chunk, message) in messages.iter().enumerate() {
                let id = nats_settings::message_id(copy.stream, copy.incarnation, copy.producer_epoch, copy.seq, chunk);
                let publish =
                    jetstream::message::PublishMessage::build().payload(message.clone().into()).message_id(id);
                let ack = jetstream
                    .send_publish(subject.to_string(), publish)
                    .await
                    .map_err(|e| format!("cannot publish to {subject}: {e}"))?;
                pending.push(ack);
            }
            let mut last = -1i64;
            for ack in pending {
                let ack = ack.await.map_err(|e| format!("{subject}: not acknowledged: {e}"))?;
                last = last.max(ack.sequence as i64);
            }
            Ok(last)
        })
    }
}

type Messages = std::pin::Pin<Box<dyn futures::Stream<Item = (String, Result<jetstream::Message, String>)> + Send>>;

/// Reads sources' subjects through ordered consumers.
pub struct NatsConsumer {
    connection: Connection,
    /// Every assigned subject's messages, merged.
    messages: SelectAll<Messages>,
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        let _inside = self.connection.runtime.enter();
        self.messages = SelectAll::new();
    }
}

impl NatsConsumer {
    pub fn connect(config: &BrokerConfig, client_id: &str) -> Result<Self, String> {
        Ok(NatsConsumer { connection: Connection::open(config, client_id)?, messages: SelectAll::new() })
    }
}

impl LogConsumer for NatsConsumer {
    fn assign(&mut self, positions: &[(String, Option<i64>)]) -> Result<(), String> {
        {
            // The previous consumers end when dropped (their tasks are the runtime's).
            let _inside = self.connection.runtime.enter();
            self.messages = SelectAll::new();
        }
        if let Some(why) = self.connection.state.refused() {
            return Err(why);
        }
        self.connection.ensure_stream()?;
        let Connection { runtime, jetstream, stream_config, .. } = &self.connection;
        let merged = runtime.block_on(async {
            let stream = jetstream
                .get_stream(&stream_config.name)
                .await
                .map_err(|e| format!("cannot open the JetStream stream {}: {e}", stream_config.name))?;
            let mut merged = SelectAll::new();
            for (subject, next) in positions {
                let deliver_policy = match next {
                    Some(next) if *next >= 1 => {
                        consumer::DeliverPolicy::ByStartSequence { start_sequence: *next as u64 }
                    }
                    _ => consumer::DeliverPolicy::All,
                };
                let config = consumer::pull::OrderedConfig {
                    filter_subject: subject.clone(),
                    deliver_policy,
                    ..Default::default()
                };
                let messages = stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| format!("cannot create a consumer of {subject}: {e}"))?
                    .messages()
                    .await
                    .map_err(|e| format!("cannot read {subject}: {e}"))?;
                let subject = subject.clone();
                let tagged: Messages = Box::pin(messages.map(move |m| (subject.clone(), m.map_err(|e| e.to_string()))));
                merged.push(tagged);
            }
            Ok::<_, String>(merged)
        })?;
        let _inside = self.connection.runtime.enter();
        self.messages = merged;
        Ok(())
    }

    fn poll(&mut self, wait: Duration, limit: usize) -> Polled {
        let Connection { runtime, state, .. } = &self.connection;
        let messages = &mut self.messages;
        let (mut out, mut error, mut disconnected) = (Vec::new(), None, false);
        runtime.block_on(async {
            let mut timeout = wait;
            while out.len() < limit && !messages.is_empty() {
                match tokio::time::timeout(timeout, messages.next()).await {
                    Err(_elapsed) => break,
                    Ok(None) => {
                        error = Some("the NATS consumers ended".to_string());
                        disconnected = true;
                        break;
                    }
                    Ok(Some((subject, Ok(message)))) => match message.info() {
                        Ok(info) => out.push(Received {
                            channel: subject,
                            position: info.stream_sequence as i64,
                            payload: message.payload.to_vec(),
                        }),
                        Err(e) => {
                            error = Some(format!("{subject}: a message without JetStream metadata: {e}"));
                            break;
                        }
                    },
                    Ok(Some((subject, Err(e)))) => {
                        // The ordered consumer recreates itself after this: the next poll goes on.
                        error = Some(format!("{subject}: {e}"));
                        break;
                    }
                }
                timeout = Duration::ZERO;
            }
        });
        if let Some(why) = state.refused() {
            error = Some(why);
            disconnected = true;
        } else if state.disconnected.load(Ordering::Relaxed) {
            // Read again from the stored positions on a new connection, as after a Kafka broker's restart.
            error.get_or_insert_with(|| "the connection to the NATS server was lost".to_string());
            disconnected = true;
        }
        Polled { messages: out, error, disconnected }
    }
}
