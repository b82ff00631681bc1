//! The seed's whole federation for tests, benchmarks and the demo: three coordinators, a change-log server, and PostgreSQL
//! clusters a, b, c… each with pg_trickle created in `postgres` and registered as `cluster_a`, `cluster_b`, …

use shared_model::Backend;

use crate::changelog::LogServer;
use crate::coordinators::{Coordinators, TOKEN};
use crate::{Clusters, Result};

/// Everything a federation test needs, torn down on drop (clusters first, so workers stop before the services).
pub struct Federation {
    pub clusters: Clusters,
    /// The change log's server (Kafka or NATS).
    pub broker: LogServer,
    pub coordinators: Coordinators,
    /// One federation at a time per test process: seven servers each are what two cores can take.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `cluster_a`, `cluster_b`, … for cluster index 0, 1, …
pub fn cluster_name(index: usize) -> String {
    format!("cluster_{}", (b'a' + index as u8) as char)
}

impl Federation {
    /// Starts coordinators, a Kafka broker and `count` clusters (plus `settings`), and registers every cluster.
    pub fn start(count: usize, settings: &[&str]) -> Result<Federation> {
        Federation::start_on(Backend::Kafka, count, settings)
    }

    /// The same on the given change-log backend.
    pub fn start_on(backend: Backend, count: usize, settings: &[&str]) -> Result<Federation> {
        Federation::start_with(LogServer::start(backend)?, count, settings)
    }

    /// The same with a change-log server of the caller's choosing (e.g. [`LogServer::start_persistent`]); the
    /// federation's backend is the server's.
    pub fn start_with(broker: impl Into<LogServer>, count: usize, settings: &[&str]) -> Result<Federation> {
        let broker = broker.into();
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let coordinators = Coordinators::start(3)?;
        let backend = broker.backend().to_string();
        coordinators.cli(&["federation", "--backend", &backend, "--servers", &broker.address()])?;
        let token = format!("pg_trickle.coordinator_token={TOKEN}");
        let mut all: Vec<&str> =
            vec![&token, "pg_trickle.federation_poll_interval=20", "pg_trickle.scheduler_interval=100"];
        all.extend_from_slice(settings);
        let clusters = Clusters::start(count, &all)?;
        let endpoints = coordinators.endpoints();
        for index in 0..count {
            let mut client = clusters[index].connect("postgres")?;
            client.batch_execute("CREATE EXTENSION pg_trickle")?;
            client.query_one(
                "SELECT * FROM pgtrickle.register_federation($1, $2)",
                &[&endpoints, &cluster_name(index)],
            )?;
        }
        Ok(Federation { clusters, broker, coordinators, _one_at_a_time: guard })
    }

    /// A connection to cluster `index`'s `postgres` database.
    pub fn connect(&self, index: usize) -> Result<postgres::Client> {
        self.clusters[index].connect("postgres")
    }

    /// A connection to cluster `index` once it accepts one again (after a restart), within 30 s.
    pub fn reconnect(&self, index: usize) -> postgres::Client {
        crate::wait_for(std::time::Duration::from_secs(30), || self.connect(index).ok()).expect("reconnect")
    }
}

impl Federation {
    /// The federation's change-log backend.
    pub fn backend(&self) -> Backend {
        self.broker.backend()
    }

    /// Loses every batch the change log holds (see [`LogServer::lose_everything`]).
    pub fn lose_change_log(&mut self) -> Result<()> {
        // The prefix the coordinators hand out, so the loss covers what the clusters really wrote.
        let prefix = self
            .coordinator(|c| async move { c.federation().await })
            .map_err(|e| std::io::Error::other(format!("reading the federation's topic prefix: {e}")))?
            .changelog
            .topic_prefix;
        self.broker.lose_everything(&prefix)
    }

    /// Runs one call of the coordinator client library against the coordinators (as client `testkit`).
    pub fn coordinator<T, F: std::future::Future<Output = T>>(
        &self,
        call: impl FnOnce(coordinator::client::Client) -> F,
    ) -> T {
        let options = coordinator::client::ClientOptions {
            token: Some(TOKEN.into()),
            client_id: "testkit".into(),
            ..Default::default()
        };
        let client = coordinator::client::Client::new(&self.coordinators.endpoints(), options).expect("client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(call(client))
    }

    /// The whole retained frontier of a stream, as the coordinators' log records it.
    pub fn frontier(&self, stream: &str) -> shared_model::Frontier {
        let id = shared_model::StreamId::parse(stream).expect("a stream id");
        let view = self
            .coordinator(|client| async move { client.frontier_history(&id, 0, std::time::Duration::ZERO).await })
            .expect("frontier history");
        view.frontier().expect("a well-formed frontier")
    }
}
