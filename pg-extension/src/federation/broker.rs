//! The Kafka edge of the change log (rdkafka): one topic per published stream with a single partition (a stream's
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

use super::runtime::with_signals_blocked;

/// Chunks of a batch stay under this many bytes (librdkafka's default `message.max.bytes` is 1,000,000).
pub const MAX_MESSAGE_BYTES: usize = 900_000;

/// How long a send may wait for the broker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The topic of a stream: `<prefix>.<cluster>.<schema>.<table>`.
pub fn topic_name(prefix: &str, stream: &shared_model::StreamId) -> String {
    let r = &stream.0;
    format!("{prefix}.{}.{}.{}", r.cluster, r.schema, r.table)
}

/// Whether a Kafka error means the connection to the broker was lost.
fn is_disconnect(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

/// Collects delivery reports on the thread that polls the producer, and notes a lost broker connection.
#[derive(Default)]
pub struct Deliveries {
    reports: Mutex<Vec<Result<i64, String>>>,
    disconnected: std::sync::atomic::AtomicBool,
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_disconnect(&error) {
            self.disconnected.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = reason;
    }
}

/// Creates topics (one partition each) through the admin API, remembering which exist.
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    created: std::collections::BTreeSet<String>,
}

impl Topics {
    pub fn connect(bootstrap_servers: &str) -> Result<Self, String> {
        let admin =
            with_signals_blocked(|| base_config(bootstrap_servers).create::<AdminClient<DefaultClientContext>>())
                .map_err(|e| format!("cannot create a Kafka admin client for {bootstrap_servers}: {e}"))?;
        Ok(Topics { admin, created: Default::default() })
    }

    /// Creates the topics not created through this client yet; an existing topic is fine.
    pub fn ensure(&mut self, runtime: &tokio::runtime::Runtime, topics: &[&str]) -> Result<(), String> {
        let missing: Vec<NewTopic> = topics
            .iter()
            .filter(|t| !self.created.contains(**t))
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = runtime
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

fn base_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "5000")
        .set("reconnect.backoff.max.ms", "5000")
        .set("log_level", "3");
    config
}

impl KafkaProducer {
    pub fn connect(bootstrap_servers: &str) -> Result<Self, String> {
        with_signals_blocked(|| {
            let producer = base_config(bootstrap_servers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "0")
                .set("message.timeout.ms", ACK_TIMEOUT.as_millis().to_string())
                .create_with_context::<_, BaseProducer<Deliveries>>(Deliveries::default())
                .map_err(|e| format!("cannot create a Kafka producer for {bootstrap_servers}: {e}"))?;
            Ok(producer)
        })
        .and_then(|producer| Ok(KafkaProducer { producer, topics: Topics::connect(bootstrap_servers)? }))
    }

    /// Serves pending callbacks; false once the broker connection was lost (then drop this producer).
    pub fn healthy(&self) -> bool {
        self.producer.poll(Duration::ZERO);
        !self.producer.context().disconnected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates the topic unless this producer already did.
    pub fn ensure_topic(&mut self, runtime: &tokio::runtime::Runtime, topic: &str) -> Result<(), String> {
        self.topics.ensure(runtime, &[topic])
    }

    /// Sends the messages to partition 0 of `topic` in order and waits until the broker acknowledged every one;
    /// returns the offset of the last.
    pub fn send_all(&self, topic: &str, key: &str, messages: &[Vec<u8>]) -> Result<i64, String> {
        self.producer.context().reports.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for message in messages {
            let mut record = BaseRecord::to(topic).partition(0).key(key).payload(message);
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

/// One message as the subscriber needs it.
pub struct Received {
    pub topic: String,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// What a poll found.
pub struct Polled {
    pub messages: Vec<Received>,
    /// A broker error, as text.
    pub error: Option<String>,
    /// The broker connection was lost: drop this consumer.
    pub disconnected: bool,
}

/// An assign-mode consumer over partition 0 of several topics.
pub struct KafkaConsumer {
    consumer: BaseConsumer,
}

impl KafkaConsumer {
    pub fn connect(bootstrap_servers: &str, client_id: &str) -> Result<Self, String> {
        with_signals_blocked(|| {
            let consumer = base_config(bootstrap_servers)
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
                .create::<BaseConsumer>()
                .map_err(|e| format!("cannot create a Kafka consumer for {bootstrap_servers}: {e}"))?;
            Ok(KafkaConsumer { consumer })
        })
    }

    /// Reads each topic from the offset after `next` (`None`: from the beginning).
    pub fn assign(&self, positions: &[(String, Option<i64>)]) -> Result<(), String> {
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

    /// Messages available within `wait` (at most `limit`), and the first broker error.
    pub fn poll(&self, wait: Duration, limit: usize) -> Polled {
        let mut out = Vec::new();
        let mut error = None;
        let mut disconnected = false;
        let mut timeout = wait;
        while out.len() < limit {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => out.push(Received {
                    topic: message.topic().to_string(),
                    offset: message.offset(),
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
        Polled { messages: out, error, disconnected }
    }
}
