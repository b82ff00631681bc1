//! The broker settings in force on this server: the backend and servers the coordinators handed out, the catalog's
//! client properties (`pgt_federation.broker_settings`, no secrets), the properties file named by
//! `pg_trickle.broker_properties_file` (credentials), and the topic settings. The rules (which keys, secrets,
//! conflicts) are `shared_model::broker_settings`, and for NATS `shared_model::nats_settings`; this module reads
//! the file and checks the result: librdkafka itself is asked whether it accepts a Kafka configuration.
//!
//! The workers read the file when they start and again after each reload (SIGHUP) — [`FileProperties`] — so a
//! rotated credential takes effect with `SELECT pg_reload_conf()`. A worker compares the [`BrokerConfig`] of each
//! round with the one its Kafka clients were built from and rebuilds them when it changed: no restart needed.

use std::collections::BTreeMap;

use shared_model::broker_settings::{self, BrokerSettingsError, SettingValue, TopicSettings};
use shared_model::{nats_settings, Backend};

use crate::config;
use crate::error::{PgTrickleError, Result};

/// Everything a change-log client of this server is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub backend: Backend,
    /// Comma-separated servers (Kafka bootstrap servers, or NATS server URLs).
    pub bootstrap_servers: String,
    /// Names the channels (and the JetStream stream).
    pub topic_prefix: String,
    /// The catalog's settings and the file's, merged (secrets included: never shown).
    pub properties: BTreeMap<String, String>,
    pub topics: TopicSettings,
}

impl BrokerConfig {
    /// What `federation_status()` shows: every property, secrets redacted.
    pub fn shown(&self) -> BTreeMap<String, String> {
        let mut shown = broker_settings::redacted(&self.properties);
        let servers_key = match self.backend {
            Backend::Kafka => "bootstrap.servers",
            Backend::Nats => "servers",
        };
        shown.insert(servers_key.into(), self.bootstrap_servers.clone());
        shown
    }
}

/// The catalog's settings, as stored (validated when they were set).
pub fn stored_settings(json: &serde_json::Value) -> BTreeMap<String, String> {
    json.as_object()
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// Validates settings given to `set_broker_settings` (a JSON object) into the form stored.
pub fn catalog_settings(json: &serde_json::Value) -> Result<BTreeMap<String, String>> {
    let object = json.as_object().ok_or_else(|| PgTrickleError::InvalidArgument {
        argument: "settings",
        message: "broker settings must be a JSON object".into(),
        hint: "SELECT pgtrickle.set_broker_settings('{\"security.protocol\": \"SASL_SSL\"}');".into(),
    })?;
    let entries = object.iter().map(|(key, value)| {
        let value = match value {
            serde_json::Value::String(text) => SettingValue::Text(text.clone()),
            serde_json::Value::Number(number) => SettingValue::Number(number.to_string()),
            serde_json::Value::Bool(flag) => SettingValue::Bool(*flag),
            _ => SettingValue::Other,
        };
        (key.clone(), value)
    });
    broker_settings::catalog_settings(entries).map_err(|e| settings_error("settings", e))
}

fn settings_error(argument: &'static str, error: BrokerSettingsError) -> PgTrickleError {
    PgTrickleError::InvalidArgument { argument, message: error.to_string(), hint: error.hint().into() }
}

/// Why the settings in force cannot be put together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    pub hint: &'static str,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HINT: {})", self.message, self.hint)
    }
}

impl From<BrokerSettingsError> for ConfigError {
    fn from(error: BrokerSettingsError) -> Self {
        ConfigError { message: error.to_string(), hint: error.hint() }
    }
}

/// Reads the properties file named by `pg_trickle.broker_properties_file` now (none set: no properties).
pub fn read_properties_file() -> std::result::Result<BTreeMap<String, String>, ConfigError> {
    let Some(path) = config::broker_properties_file() else { return Ok(BTreeMap::new()) };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        message: format!("cannot read pg_trickle.broker_properties_file \"{path}\": {e}"),
        hint: "The file is read by the server's operating-system user; relative paths start at the data directory.",
    })?;
    broker_settings::parse_properties(&text).map_err(|e| ConfigError {
        message: format!("pg_trickle.broker_properties_file \"{path}\": {e}"),
        hint: e.hint(),
    })
}

/// The file's properties as a worker last read them: again after every reload.
pub struct FileProperties {
    read_at_reload: Option<u64>,
    value: std::result::Result<BTreeMap<String, String>, ConfigError>,
}

impl Default for FileProperties {
    fn default() -> Self {
        FileProperties { read_at_reload: None, value: Ok(BTreeMap::new()) }
    }
}

impl FileProperties {
    /// The properties, re-read when a reload happened since the last read.
    pub fn current(&mut self) -> std::result::Result<&BTreeMap<String, String>, ConfigError> {
        let reloads = super::runtime::reloads();
        if self.read_at_reload != Some(reloads) {
            self.value = read_properties_file();
            self.read_at_reload = Some(reloads);
        }
        self.value.as_ref().map_err(Clone::clone)
    }
}

/// Where the federation's change log is, as the coordinators handed it out.
#[derive(Debug, Clone, Copy)]
pub struct ChangeLogTarget<'a> {
    pub backend: Backend,
    pub servers: &'a str,
    pub topic_prefix: &'a str,
}

/// The configuration in force from its parts; checked the way the backend's client will take it (librdkafka
/// itself for Kafka: unknown keys, bad values).
pub fn effective(
    target: ChangeLogTarget<'_>,
    catalog: &BTreeMap<String, String>,
    file: &BTreeMap<String, String>,
    topics: TopicSettings,
) -> std::result::Result<BrokerConfig, ConfigError> {
    let properties = broker_settings::merge(catalog, file)?;
    let config = BrokerConfig {
        backend: target.backend,
        bootstrap_servers: target.servers.to_string(),
        topic_prefix: target.topic_prefix.to_string(),
        properties,
        topics,
    };
    match config.backend {
        Backend::Kafka => check_with_librdkafka(&config)?,
        Backend::Nats => {
            let nats = |e: nats_settings::NatsSettingsError| ConfigError { message: e.to_string(), hint: e.hint() };
            nats_settings::check_topics(topics.partitions, topics.replication_factor).map_err(nats)?;
            nats_settings::parse(&config.properties).map_err(nats)?;
        }
    }
    Ok(config)
}

/// Builds librdkafka's configuration object (no client, no connection) the way every client is built: its own
/// errors name the key.
fn check_with_librdkafka(config: &BrokerConfig) -> std::result::Result<(), ConfigError> {
    super::changelog::kafka::base_config(config).create_native_config().map(|_| ()).map_err(|e| ConfigError {
        message: format!("librdkafka refuses the broker settings: {e}"),
        hint: "See librdkafka's CONFIGURATION.md for the property names and values it takes.",
    })
}
