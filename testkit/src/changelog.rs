//! The change-log server of a test federation, whichever backend it runs: a Kafka-protocol broker
//! ([`crate::broker::Broker`]) or NATS JetStream ([`crate::nats::NatsServer`]). Tests that hold for both are
//! written once against this and run for each backend ([`backend_tests!`](crate::backend_tests)).

use shared_model::Backend;

use crate::broker::Broker;
use crate::nats::NatsServer;
use crate::Result;

/// The server the federation's batches travel through.
pub enum LogServer {
    Kafka(Broker),
    Nats(NatsServer),
}

impl From<Broker> for LogServer {
    fn from(broker: Broker) -> Self {
        LogServer::Kafka(broker)
    }
}

impl From<NatsServer> for LogServer {
    fn from(server: NatsServer) -> Self {
        LogServer::Nats(server)
    }
}

impl LogServer {
    /// A server whose data lives in memory where the backend allows (Kafka: restarting it loses everything).
    pub fn start(backend: Backend) -> Result<LogServer> {
        Ok(match backend {
            Backend::Kafka => Broker::start()?.into(),
            Backend::Nats => NatsServer::start()?.into(),
        })
    }

    /// A server that keeps every acknowledged message across a SIGKILL and restart.
    pub fn start_persistent(backend: Backend) -> Result<LogServer> {
        Ok(match backend {
            Backend::Kafka => Broker::start_persistent()?.into(),
            Backend::Nats => NatsServer::start()?.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            LogServer::Kafka(_) => Backend::Kafka,
            LogServer::Nats(_) => Backend::Nats,
        }
    }

    /// `127.0.0.1:PORT`: what the federation's servers are set to.
    pub fn address(&self) -> String {
        match self {
            LogServer::Kafka(broker) => broker.address(),
            LogServer::Nats(server) => server.address(),
        }
    }

    /// SIGKILL and start again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        match self {
            LogServer::Kafka(broker) => broker.restart(),
            LogServer::Nats(server) => server.restart(),
        }
    }

    /// Loses every batch the change log holds, with batches in flight: an in-memory Kafka broker restarted
    /// empty; NATS: the federation's stream purged (`prefix` names it).
    pub fn lose_everything(&mut self, topic_prefix: &str) -> Result<()> {
        match self {
            LogServer::Kafka(broker) => broker.restart(),
            LogServer::Nats(server) => {
                server.purge(&shared_model::nats_settings::stream_name(topic_prefix)).map(|_| ())
            }
        }
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        match self {
            LogServer::Kafka(broker) => broker.log(),
            LogServer::Nats(server) => server.log(),
        }
    }

    /// The Kafka broker (panics on another backend: for Kafka-only tests).
    pub fn kafka(&self) -> &Broker {
        match self {
            LogServer::Kafka(broker) => broker,
            LogServer::Nats(_) => panic!("this test needs the Kafka backend"),
        }
    }
}

/// Runs a test written as `fn name(backend: Backend)` once per backend, as `name::kafka` and `name::nats`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn kafka() {
                    super::$name(shared_model::Backend::Kafka)
                }
                #[test]
                fn nats() {
                    super::$name(shared_model::Backend::Nats)
                }
            }
        )+
    };
}
