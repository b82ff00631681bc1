//! The change log a federation's batches travel through, behind one interface: the publisher sends a batch's
//! messages to its stream's channel and gets the broker's durable acknowledgement with the position of the last
//! message; the subscriber reads channels from positions it stores itself (in its apply transactions) and gets
//! each message with its position. Positions are whole numbers that grow along a channel; gaps are allowed. What
//! a backend does not have to provide: transactions, consumer groups, committed offsets — exactly-once effect
//! comes from the protocol (seq dedup in the consumer's transaction, the frontier in the replicated log).
//!
//! Two backends, chosen by the federation (`pgtrickle-coordinator federation --backend kafka|nats`):
//! - [`kafka`]: a topic per stream, one partition, an idempotent producer, an assign-mode consumer; positions are
//!   offsets.
//! - [`nats`]: one JetStream stream per federation with a subject per published stream, publish acks, message
//!   de-duplication ids, ordered consumers; positions are stream sequences.
//!
//! A channel is named `<prefix>.<cluster>.<schema>.<table>` on both: a Kafka topic, or a NATS subject.

pub mod kafka;
pub mod nats;

use std::time::Duration;

use shared_model::{Backend, StreamId};

use super::broker_config::BrokerConfig;

/// The channel of a stream: `<prefix>.<cluster>.<schema>.<table>`.
pub fn channel_name(prefix: &str, stream: &StreamId) -> String {
    let r = &stream.0;
    format!("{prefix}.{}.{}.{}", r.cluster, r.schema, r.table)
}

/// Which copy of which batch the messages of a send are (Kafka keys them by stream; NATS de-duplicates by it).
#[derive(Debug, Clone, Copy)]
pub struct BatchCopy<'a> {
    pub stream: &'a StreamId,
    pub incarnation: u64,
    pub producer_epoch: u64,
    pub seq: u64,
}

/// Sends batches, each acknowledged by the broker before the send returns.
pub trait LogProducer {
    /// Serves pending callbacks; false once the broker connection was lost (then drop this producer and build a
    /// new one: the machine is told, and sends again what the lost broker acknowledged).
    fn healthy(&mut self) -> bool;
    /// Why the broker refused this client (TLS or login), if it did; the text carries the HINT.
    fn refused(&mut self) -> Option<String>;
    /// Makes sure the channel can be written (creates the topic or the stream), unless done already.
    fn ensure_channel(&mut self, channel: &str) -> Result<(), String>;
    /// The largest message this broker takes: batches are chunked below it.
    fn max_message_bytes(&self) -> usize;
    /// Sends the messages of one batch copy to `channel` in order, waits until the broker acknowledged every
    /// one, and returns the position of the last.
    fn send_batch(&mut self, channel: &str, copy: BatchCopy<'_>, messages: &[Vec<u8>]) -> Result<i64, String>;
}

/// One message as the subscriber needs it.
pub struct Received {
    pub channel: String,
    pub position: i64,
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

/// Reads channels from stored positions.
pub trait LogConsumer {
    /// Reads each channel from `next` on (`None`: from its beginning), forgetting what was read before; channels
    /// are made to exist first, so the reader never asks the broker about one it does not have.
    fn assign(&mut self, positions: &[(String, Option<i64>)]) -> Result<(), String>;
    /// Messages available within `wait` (at most `limit`), in position order per channel, and the first error.
    fn poll(&mut self, wait: Duration, limit: usize) -> Polled;
}

/// A producer for the federation's backend.
pub fn connect_producer(config: &BrokerConfig) -> Result<Box<dyn LogProducer>, String> {
    Ok(match config.backend {
        Backend::Kafka => Box::new(kafka::KafkaProducer::connect(config)?),
        Backend::Nats => Box::new(nats::NatsProducer::connect(config)?),
    })
}

/// A consumer for the federation's backend; `client_id` names it to the broker.
pub fn connect_consumer(config: &BrokerConfig, client_id: &str) -> Result<Box<dyn LogConsumer>, String> {
    Ok(match config.backend {
        Backend::Kafka => Box::new(kafka::KafkaConsumer::connect(config, client_id)?),
        Backend::Nats => Box::new(nats::NatsConsumer::connect(config, client_id)?),
    })
}
