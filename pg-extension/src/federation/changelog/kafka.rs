//! The Kafka backend of the change log (rdkafka): one topic per published stream with a single partition (a stream's
//! batches keep their order), an idempotent producer with `acks=all` whose sends wait for the broker's
//! acknowledgement, and an assign-mode consumer: positions are stored by the subscriber in its own apply
//! transactions, never committed to the broker (Kafka transactions are not relied on; exactly-once effect comes
//! from seq dedup in the consumer's transaction).
//!
//! librdkafka starts threads of its own; every client is created with all signals blocked so those threads never
//! run PostgreSQL's signal handlers, and no callback here calls into PostgreSQL.
//!
//! A broker that forgets a topic (tansu restarted with empty storage) answers metadata requests for it with a null
//! topic name, on which librdkafka 2.12 crashes inside its own thread — which would take the whole PostgreSQL
//! server down. So: topics are always created (admin request, idempotent) before a producer or consumer names
//! them; clients reconnect only after a long backoff; and a client that reports a lost broker connection is
//! dropped at once and replaced, after its topics exist again, by a fresh one.
//!
//! Clients are built from a [`BrokerConfig`] (TLS, SASL and other librdkafka properties; see [`super::broker_config`]).
//! A refused handshake or login (`SSL`, `Authentication`) is noted by the client's context and ends a wait at once
//! with that reason, instead of a send waiting for its acknowledgement timeout.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use shared_model::broker_settings::TopicSettings;

use super::{BatchCopy, LogConsumer, LogProducer, Polled, Received};
use crate::federation::broker_config::BrokerConfig;
use crate::federation::runtime::{new_runtime, with_signals_blocked};

/// Chunks of a batch stay under this many bytes (librdkafka's default `message.max.bytes` is 1,000,000).
pub const MAX_MESSAGE_BYTES: usize = 900_000;

/// How long a send may wait for the broker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a Kafka error means the connection to the broker was lost.
fn is_disconnect(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

/// Whether a Kafka error means the broker refused this client's TLS handshake or credentials.
fn is_refusal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// What a client's librdkafka threads reported: a lost connection, a refused handshake or login.
#[derive(Default)]
pub struct ClientState {
    disconnected: std::sync::atomic::AtomicBool,
    refused: Mutex<Option<String>>,
}

impl ClientState {
    fn note(&self, error: &KafkaError, reason: &str) {
        if is_disconnect(error) {
            self.disconnected.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // A failed TLS handshake is reported as a transport failure by some paths: its reason tells.
        if is_refusal(error) || reason.contains("SSL handshake failed") {
            let why = if reason.is_empty() { error.to_string() } else { reason.to_string() };
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
    }

    /// Why the broker refused this client, if it did.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone().map(|why| {
            format!(
                "the broker refused this cluster's connection: {why} (HINT: check security.protocol, sasl.* and \
                 ssl.* in pgtrickle.pgt_federation.broker_settings and pg_trickle.broker_properties_file, then \
                 SELECT pg_reload_conf())"
            )
        })
    }
}

impl ClientContext for ClientState {
    fn error(&self, error: KafkaError, reason: &str) {
        self.note(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ClientState {}

/// Collects delivery reports on the thread that polls the producer, and what [`ClientState`] notes.
#[derive(Default)]
pub struct Deliveries {
    reports: Mutex<Vec<Result<i64, String>>>,
    state: ClientState,
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        self.state.note(&error, reason);
    }
}

/// Creates topics through the admin API (with the configured partitions and replication), remembering which exist.
pub struct Topics {
    /// Admin requests are async in rdkafka: they run here, on the worker's thread.
    runtime: tokio::runtime::Runtime,
    admin: AdminClient<DefaultClientContext>,
    settings: TopicSettings,
    created: std::collections::BTreeSet<String>,
}

impl Topics {
    pub fn connect(config: &BrokerConfig) -> Result<Self, String> {
        let admin = with_signals_blocked(|| base_config(config).create::<AdminClient<DefaultClientContext>>())
            .map_err(|e| format!("cannot create a Kafka admin client for {}: {e}", config.bootstrap_servers))?;
        let runtime = new_runtime().map_err(|e| e.to_string())?;
        Ok(Topics { runtime, admin, settings: config.topics, created: Default::default() })
    }

    /// Creates the topics not created through this client yet; an existing topic is fine.
    pub fn ensure(&mut self, topics: &[&str]) -> Result<(), String> {
        let (partitions, replicas) = (self.settings.partitions, self.settings.replication_factor);
        let missing: Vec<NewTopic> = topics
            .iter()
            .filter(|t| !self.created.contains(**t))
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replicas)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self
            .runtime
            .block_on(self.admin.create_topics(missing.iter(), &options))
            .map_err(|e| format!("cannot create topics: {e}"))?;
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.created.insert(name);
                }
                Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
            }
        }
        Ok(())
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let report = match result {
            Ok(message) => Ok(message.offset()),
            Err((error, _)) => Err(error.to_string()),
        };
        self.reports.lock().unwrap_or_else(|e| e.into_inner()).push(report);
    }
}

/// An idempotent producer, plus an admin client to create topics.
pub struct KafkaProducer {
    producer: BaseProducer<Deliveries>,
    topics: Topics,
}

/// Our defaults, then the configured properties (validated: none of them is one the protocol owns), then the
/// bootstrap servers.
pub(crate) fn base_config(config: &BrokerConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "5000")
        .set("reconnect.backoff.max.ms", "5000")
        .set("log_level", "3");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.bootstrap_servers);
    client
}

impl KafkaProducer {
    pub fn connect(config: &BrokerConfig) -> Result<Self, String> {
        let servers = &config.bootstrap_servers;
        with_signals_blocked(|| {
            let producer = base_config(config)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "0")
                .set("message.timeout.ms", ACK_TIMEOUT.as_millis().to_string())
                .create_with_context::<_, BaseProducer<Deliveries>>(Deliveries::default())
                .map_err(|e| format!("cannot create a Kafka producer for {servers}: {e}"))?;
            Ok(producer)
        })
        .and_then(|producer| Ok(KafkaProducer { producer, topics: Topics::connect(config)? }))
    }

    /// Why the broker refused this producer (TLS or login), if it did.
    fn refused_now(&self) -> Option<String> {
        self.producer.context().state.refused()
    }
}

impl LogProducer for KafkaProducer {
    fn healthy(&mut self) -> bool {
        self.producer.poll(Duration::ZERO);
        !self.producer.context().state.disconnected.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refused(&mut self) -> Option<String> {
        self.refused_now()
    }

    /// An admin request that got no answer is explained by the producer's own connection when the broker refused
    /// it (the admin client's errors are not served).
    fn ensure_channel(&mut self, topic: &str) -> Result<(), String> {
        self.topics.ensure(&[topic]).map_err(|error| {
            self.producer.poll(Duration::ZERO);
            self.refused_now().unwrap_or(error)
        })
    }

    fn max_message_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }

    /// Partition 0 of the topic, keyed by the stream; returns the offset of the last message.
    fn send_batch(&mut self, topic: &str, copy: BatchCopy<'_>, messages: &[Vec<u8>]) -> Result<i64, String> {
        let key = copy.stream.to_string();
        self.producer.context().reports.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for message in messages {
            let mut record = BaseRecord::to(topic).partition(0).key(&key).payload(message);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        self.producer.poll(Duration::from_millis(50));
                    }
                    Err((error, _)) => return Err(format!("cannot send to {topic}: {error}")),
                }
            }
        }
        // Served by polling in 1 ms steps: rdkafka's flush() waits in 100 ms steps, which would add up to 100 ms
        // to every batch's way to the broker.
        let deadline = std::time::Instant::now() + ACK_TIMEOUT + Duration::from_secs(5);
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() > deadline {
                return Err(format!("{topic}: no acknowledgement within {:?}", ACK_TIMEOUT + Duration::from_secs(5)));
            }
            if let Some(why) = self.refused_now() {
                return Err(why);
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let reports = std::mem::take(&mut *self.producer.context().reports.lock().unwrap_or_else(|e| e.into_inner()));
        if reports.len() != messages.len() {
            return Err(format!("{topic}: {} of {} messages acknowledged", reports.len(), messages.len()));
        }
        let mut last = -1;
        for report in reports {
            let offset = report.map_err(|e| format!("{topic}: not acknowledged: {e}"))?;
            if offset < 0 {
                // librdkafka reports a retried message the broker already had (DUPLICATE_SEQUENCE_NUMBER after a
                // broker restart) as delivered at offset -1: the copy's position is unknown, so it cannot be
                // recorded; the batch is sent again as a new copy.
                return Err(format!("{topic}: a message was acknowledged without its offset (a retry the broker had)"));
            }
            last = last.max(offset);
        }
        Ok(last)
    }
}

/// An assign-mode consumer over partition 0 of several topics, and an admin client that creates them first.
pub struct KafkaConsumer {
    consumer: BaseConsumer<ClientState>,
    topics: Topics,
}

impl KafkaConsumer {
    pub fn connect(config: &BrokerConfig, client_id: &str) -> Result<Self, String> {
        with_signals_blocked(|| {
            let consumer = base_config(config)
                .set("group.id", client_id)
                .set("client.id", client_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // tansu answers a metadata request for a missing topic (e.g. after a restart with empty storage)
                // with a null topic name unless it may create the topic, and librdkafka 2.12 crashes on that
                // null name in its metadata cache. Letting the request create the topic avoids the null name.
                .set("allow.auto.create.topics", "true")
                .set("fetch.wait.max.ms", "50")
                .set("topic.metadata.refresh.interval.ms", "2000")
                .create_with_context::<_, BaseConsumer<ClientState>>(ClientState::default())
                .map_err(|e| format!("cannot create a Kafka consumer for {}: {e}", config.bootstrap_servers))?;
            Ok(consumer)
        })
        .and_then(|consumer| Ok(KafkaConsumer { consumer, topics: Topics::connect(config)? }))
    }

    /// Why the broker refused this consumer's connection (TLS or login), if it did. Serves pending events: call
    /// it only when the consumer's position does not matter (it is assigned again before reading).
    fn refused(&self) -> Option<String> {
        // Each poll serves at most one event, and one that carried an error returns nothing: poll a bounded
        // number of times rather than until nothing comes back.
        let drain = || {
            for _ in 0..100 {
                if self.consumer.context().refused().is_some() {
                    break;
                }
                let _ = self.consumer.poll(Duration::ZERO);
            }
        };
        drain();
        if self.consumer.context().refused().is_none() {
            // A consumer that was never assigned may not have connected yet: a metadata request makes it try.
            let _ = self.consumer.fetch_metadata(None, Duration::from_secs(3));
            drain();
        }
        self.consumer.context().refused()
    }
}

impl LogConsumer for KafkaConsumer {
    /// An unanswered admin request is explained by the consumer's own connection when the broker refused it.
    fn assign(&mut self, positions: &[(String, Option<i64>)]) -> Result<(), String> {
        let names: Vec<&str> = positions.iter().map(|(t, _)| t.as_str()).collect();
        if let Err(error) = self.topics.ensure(&names) {
            return Err(self.refused().unwrap_or(error));
        }
        let mut list = TopicPartitionList::new();
        for (topic, next) in positions {
            let offset = match next {
                Some(offset) => Offset::Offset(*offset),
                None => Offset::Beginning,
            };
            list.add_partition_offset(topic, 0, offset).map_err(|e| format!("{topic}: {e}"))?;
        }
        self.consumer.assign(&list).map_err(|e| format!("cannot assign topics: {e}"))
    }

    fn poll(&mut self, wait: Duration, limit: usize) -> Polled {
        let mut out = Vec::new();
        let mut error = None;
        let mut disconnected = false;
        let mut timeout = wait;
        while out.len() < limit {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => out.push(Received {
                    channel: message.topic().to_string(),
                    position: message.offset(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => {
                    disconnected = is_disconnect(&e);
                    error = Some(e.to_string());
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        // A refused handshake or login reaches the context, not always the poll: it is the poll's error then,
        // and the consumer is replaced (by one built from the settings in force then).
        if let Some(why) = self.consumer.context().refused() {
            error = Some(why);
            disconnected = true;
        }
        Polled { messages: out, error, disconnected }
    }
}
