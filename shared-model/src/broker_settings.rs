//! How a cluster talks to the federation's broker: librdkafka client properties under librdkafka's own key names
//! (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …), from two places, and the topic settings its
//! publisher creates topics with.
//!
//! - **Catalog settings** (`pgtrickle.pgt_federation.broker_settings`, set by SQL): what may be seen by anyone
//!   who can read the catalog or a `pg_dump` of it. Secrets are refused there.
//! - **The properties file** (`pg_trickle.broker_properties_file`, a Kafka-style `client.properties`: `key=value`
//!   lines): credentials. It is read when a worker starts and again on every reload (SIGHUP), so a rotated password
//!   takes effect with `SELECT pg_reload_conf()`, without restarting anything.
//!
//! A key set in both places is an error rather than a silent override: an operator who moved a setting into the
//! file and forgot the catalog copy would otherwise not know which one is in force. Keys the protocol depends on
//! (idempotence, acks, offsets, the bootstrap servers the coordinators hand out) are refused in both: a setting
//! that turned off idempotence or enabled auto-commit would break exactly-once apply without any error.
//!
//! Everything here is pure; the extension validates values by building a librdkafka configuration from the
//! merged map (unknown keys and bad values are librdkafka's own errors), and shows [`redacted`] maps only.

use std::collections::BTreeMap;

/// Keys the protocol sets itself and that no setting may change.
pub const OWNED_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "enable.partition.eof",
];

/// Whether a key holds a secret: refused in the catalog, shown redacted.
pub fn is_secret(key: &str) -> bool {
    const SECRET_PARTS: &[&str] =
        &["password", "secret", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "token", "seed"];
    SECRET_PARTS.iter().any(|part| key.contains(part))
}

/// Written in place of a secret's value.
pub const REDACTED: &str = "********";

/// Why settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerSettingsError {
    #[error("\"{key}\" is not a librdkafka property name (lower-case letters, digits, '.', '_')")]
    BadKey { key: String },
    #[error("\"{key}\" is set by pg_trickle itself (the exactly-once protocol depends on it) and cannot be changed")]
    Owned { key: String },
    #[error("\"{key}\" holds a secret and cannot be stored in the catalog, where pg_dump and catalog readers see it")]
    Secret { key: String },
    #[error("the value of \"{key}\" must be a string, number or boolean")]
    NotScalar { key: String },
    #[error("\"{key}\" has a value with a line break or NUL")]
    BadValue { key: String },
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("\"{key}\" is set twice in the properties file (lines {first} and {second})")]
    Repeated { key: String, first: usize, second: usize },
    #[error("\"{key}\" is set both in the catalog's broker settings and in the properties file")]
    Conflict { key: String },
}

impl BrokerSettingsError {
    /// What the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::BadKey { .. } => "Use librdkafka's property names, e.g. security.protocol or ssl.ca.location.",
            Self::Owned { .. } => "Leave it out; bootstrap.servers comes from the coordinators' federation settings.",
            Self::Secret { .. } => {
                "Put credentials in the file named by pg_trickle.broker_properties_file (key=value lines), then \
                 SELECT pg_reload_conf()."
            }
            Self::NotScalar { .. } | Self::BadValue { .. } => "Write each value as one line of text.",
            Self::Syntax { .. } | Self::Repeated { .. } => {
                "The file holds key=value lines; '#' and '!' start comment lines."
            }
            Self::Conflict { .. } => "Keep each key in one place: secrets in the file, the rest in either one.",
        }
    }
}

fn check_key(key: &str) -> Result<(), BrokerSettingsError> {
    let well_formed = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        && !key.starts_with('.')
        && !key.ends_with('.');
    if !well_formed {
        return Err(BrokerSettingsError::BadKey { key: key.to_string() });
    }
    if OWNED_KEYS.contains(&key) {
        return Err(BrokerSettingsError::Owned { key: key.to_string() });
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), BrokerSettingsError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(BrokerSettingsError::BadValue { key: key.to_string() });
    }
    Ok(())
}

/// One value of the catalog's settings as JSON gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Text(String),
    Number(String),
    Bool(bool),
    /// null, an array or an object.
    Other,
}

/// Validates catalog settings: well-formed keys, not owned, not secret; scalar one-line values (as text).
pub fn catalog_settings(
    entries: impl IntoIterator<Item = (String, SettingValue)>,
) -> Result<BTreeMap<String, String>, BrokerSettingsError> {
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        check_key(&key)?;
        if is_secret(&key) {
            return Err(BrokerSettingsError::Secret { key });
        }
        let text = match value {
            SettingValue::Text(text) | SettingValue::Number(text) => text,
            SettingValue::Bool(flag) => flag.to_string(),
            SettingValue::Other => return Err(BrokerSettingsError::NotScalar { key }),
        };
        check_value(&key, &text)?;
        out.insert(key, text);
    }
    Ok(out)
}

/// Parses a properties file: `key=value` (or `key: value`) lines, surrounding blanks trimmed, `#` and `!` comment
/// lines, blank lines ignored. Secrets are allowed here; owned keys are not; a key may appear once.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, BrokerSettingsError> {
    let mut out = BTreeMap::new();
    let mut lines_of = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(BrokerSettingsError::Syntax { line, reason: "expected key=value".into() });
        };
        let key = trimmed[..split].trim();
        let value = trimmed[split + 1..].trim();
        check_key(key).map_err(|e| match e {
            BrokerSettingsError::BadKey { key } => {
                BrokerSettingsError::Syntax { line, reason: format!("\"{key}\" is not a librdkafka property name") }
            }
            other => other,
        })?;
        check_value(key, value)?;
        if let Some(first) = lines_of.insert(key.to_string(), line) {
            return Err(BrokerSettingsError::Repeated { key: key.to_string(), first, second: line });
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

/// The settings in force: both maps, which must not share a key.
pub fn merge(
    catalog: &BTreeMap<String, String>,
    file: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BrokerSettingsError> {
    if let Some(key) = catalog.keys().find(|key| file.contains_key(*key)) {
        return Err(BrokerSettingsError::Conflict { key: key.clone() });
    }
    Ok(catalog.iter().chain(file.iter()).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The map with every secret's value replaced by [`REDACTED`]: the only form ever shown.
pub fn redacted(settings: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    settings.iter().map(|(k, v)| (k.clone(), if is_secret(k) { REDACTED.to_string() } else { v.clone() })).collect()
}

/// How the publisher creates a stream's topic. Every stream is read and written on partition 0 only (its batches
/// must stay in order); more partitions are allowed for brokers whose policy demands a minimum, and stay empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings { partitions: 1, replication_factor: 1 }
    }
}

impl TopicSettings {
    /// Checks the bounds Kafka itself has (at least one partition and one replica).
    pub fn new(partitions: i32, replication_factor: i32) -> Result<Self, String> {
        if !(1..=10_000).contains(&partitions) {
            return Err(format!("topic partitions must be between 1 and 10000; got {partitions}"));
        }
        if !(1..=32).contains(&replication_factor) {
            return Err(format!("topic replication factor must be between 1 and 32; got {replication_factor}"));
        }
        Ok(TopicSettings { partitions, replication_factor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn catalog_refuses_secrets_owned_keys_and_structures() {
        let ok = catalog_settings([
            ("security.protocol".to_string(), SettingValue::Text("SASL_SSL".into())),
            ("socket.keepalive.enable".to_string(), SettingValue::Bool(true)),
            ("message.max.bytes".to_string(), SettingValue::Number("2000000".into())),
        ])
        .unwrap();
        assert_eq!(ok["socket.keepalive.enable"], "true");
        assert_eq!(ok["message.max.bytes"], "2000000");
        for (key, error) in [
            ("sasl.password", BrokerSettingsError::Secret { key: "sasl.password".into() }),
            ("ssl.key.password", BrokerSettingsError::Secret { key: "ssl.key.password".into() }),
            ("enable.idempotence", BrokerSettingsError::Owned { key: "enable.idempotence".into() }),
            ("bootstrap.servers", BrokerSettingsError::Owned { key: "bootstrap.servers".into() }),
            ("Security.Protocol", BrokerSettingsError::BadKey { key: "Security.Protocol".into() }),
            ("a b", BrokerSettingsError::BadKey { key: "a b".into() }),
        ] {
            assert_eq!(catalog_settings([(key.to_string(), SettingValue::Text("x".into()))]), Err(error));
        }
        assert_eq!(
            catalog_settings([("client.rack".to_string(), SettingValue::Other)]),
            Err(BrokerSettingsError::NotScalar { key: "client.rack".into() })
        );
        assert_eq!(
            catalog_settings([("client.rack".to_string(), SettingValue::Text("a\nb".into()))]),
            Err(BrokerSettingsError::BadValue { key: "client.rack".into() })
        );
    }

    #[test]
    fn properties_file_syntax() {
        let parsed = parse_properties(
            "# credentials\n! also a comment\n\n sasl.username = pgt \nsasl.password=p=ss:word\nssl.ca.location: /etc/ca.pem\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            map(&[("sasl.username", "pgt"), ("sasl.password", "p=ss:word"), ("ssl.ca.location", "/etc/ca.pem")])
        );
        assert_eq!(
            parse_properties("sasl.username=a\nsasl.username=b"),
            Err(BrokerSettingsError::Repeated { key: "sasl.username".into(), first: 1, second: 2 })
        );
        assert!(matches!(parse_properties("just words"), Err(BrokerSettingsError::Syntax { line: 1, .. })));
        assert!(matches!(parse_properties("x\ny z=1"), Err(BrokerSettingsError::Syntax { line: 1, .. })));
        assert_eq!(parse_properties("acks=0"), Err(BrokerSettingsError::Owned { key: "acks".into() }));
    }

    #[test]
    fn merge_refuses_a_key_in_both_places_and_redaction_hides_secrets() {
        let catalog = map(&[("security.protocol", "SASL_SSL")]);
        let file = map(&[("sasl.password", "hunter2"), ("sasl.username", "pgt")]);
        let merged = merge(&catalog, &file).unwrap();
        assert_eq!(merged.len(), 3);
        let shown = redacted(&merged);
        assert_eq!(shown["sasl.password"], REDACTED);
        assert_eq!(shown["sasl.username"], "pgt");
        assert_eq!(
            merge(&catalog, &map(&[("security.protocol", "SSL")])),
            Err(BrokerSettingsError::Conflict { key: "security.protocol".into() })
        );
    }

    #[test]
    fn topic_settings_bounds() {
        assert_eq!(TopicSettings::new(1, 3), Ok(TopicSettings { partitions: 1, replication_factor: 3 }));
        assert!(TopicSettings::new(0, 1).is_err());
        assert!(TopicSettings::new(1, 0).is_err());
        assert!(TopicSettings::new(i32::MAX, 1).is_err());
    }

    proptest! {
        /// Whatever valid settings are written to a file (in any order, with comments and blank lines between)
        /// read back the same.
        #[test]
        fn properties_round_trip(
            entries in proptest::collection::btree_map("[a-z][a-z0-9_]{0,8}(\\.[a-z0-9_]{1,8}){0,3}",
                "[ -~]{0,40}", 0..12),
            comment in "[#!][ -~]{0,20}",
        ) {
            let entries: BTreeMap<String, String> = entries
                .into_iter()
                .filter(|(k, _)| !OWNED_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k, v.trim().to_string()))
                .collect();
            let mut text = String::new();
            for (key, value) in entries.iter().rev() {
                text.push_str(&format!("{comment}\n\n  {key} = {value}\n"));
            }
            prop_assert_eq!(parse_properties(&text), Ok(entries.clone()));
            // Redaction changes values only, never which keys there are.
            let shown = redacted(&entries);
            prop_assert_eq!(shown.keys().collect::<Vec<_>>(), entries.keys().collect::<Vec<_>>());
            for (key, value) in &shown {
                prop_assert!(value == REDACTED || !is_secret(key));
            }
        }
    }
}
