//! How a cluster talks to a NATS JetStream change log: the same two places as the Kafka settings
//! ([`crate::broker_settings`]: the catalog for what may be seen, the properties file for credentials), but a
//! closed vocabulary, because no client library validates NATS options for us. The keys follow the names NATS
//! operators know from `nats` contexts and server configuration:
//!
//! | key | meaning |
//! |-----|---------|
//! | `user`, `password` | user/password login (password: secret) |
//! | `token` | token login (secret) |
//! | `nkey.seed` | NKey login: the user's seed, `SU…` (secret) |
//! | `creds.file` | a `.creds` file (JWT + NKey seed), as `nsc` writes it |
//! | `tls.required` | `true`: connect only over TLS |
//! | `tls.ca.file` | PEM file of the CA(s) that signed the servers' certificates |
//! | `tls.cert.file`, `tls.key.file` | client certificate and key (mutual TLS), both or neither |
//! | `stream.max.age.seconds` | how long JetStream keeps a batch (default 604800, Kafka's 7-day retention; 0: no age limit) |
//! | `stream.max.bytes` | the stream's size limit (-1: none) |
//!
//! At most one login method may be set: a server that accepts several would otherwise pick one without telling.
//! Everything here is pure; the extension turns [`NatsOptions`] into `async_nats::ConnectOptions`.

use std::collections::BTreeMap;

/// Every key a NATS change log accepts, with what it means (shown in the error for an unknown key).
pub const KEYS: &[&str] = &[
    "user",
    "password",
    "token",
    "nkey.seed",
    "creds.file",
    "tls.required",
    "tls.ca.file",
    "tls.cert.file",
    "tls.key.file",
    "stream.max.age.seconds",
    "stream.max.bytes",
];

/// How long the federation's stream keeps a batch unless set: Kafka's default retention (7 days), so that a
/// federation does not fill a disk by default on either backend.
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 7 * 24 * 3600;

/// How the client logs in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NatsLogin {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    NKeySeed(String),
    CredentialsFile(String),
}

/// The options of a NATS change-log client, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatsOptions {
    pub login: NatsLogin,
    pub tls_required: bool,
    pub tls_ca_file: Option<String>,
    /// Client certificate and key files (mutual TLS).
    pub tls_client: Option<(String, String)>,
    /// 0: no age limit ([`DEFAULT_MAX_AGE_SECONDS`] unless set).
    pub max_age_seconds: u64,
    /// -1: no size limit.
    pub max_bytes: i64,
}

/// Why NATS settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsSettingsError {
    #[error("\"{key}\" is not a NATS change-log setting; known: {}", KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("\"{key}\" must be {expected}; got {value:?}")]
    BadValue { key: String, expected: &'static str, value: String },
    #[error("\"{missing}\" is needed with \"{given}\"")]
    Incomplete { given: &'static str, missing: &'static str },
    #[error("more than one login method is set ({0}); a server that accepts several would pick one without telling")]
    SeveralLogins(String),
    #[error("a NATS stream has no partitions: topic_partitions must be 1, got {0}")]
    Partitions(i32),
    #[error("a JetStream stream has 1 to 5 replicas; topic_replication_factor {0} is out of range")]
    Replicas(i32),
}

impl NatsSettingsError {
    /// What the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::UnknownKey { .. } => {
                "This federation's change log is NATS JetStream: use the NATS keys (user, password, token, nkey.seed, \
                 creds.file, tls.*), not librdkafka's."
            }
            Self::BadValue { .. } => "tls.required is true or false; the stream limits are whole numbers.",
            Self::Incomplete { .. } => "Set both user and password, or both tls.cert.file and tls.key.file.",
            Self::SeveralLogins(_) => "Keep one of user/password, token, nkey.seed or creds.file.",
            Self::Partitions(_) | Self::Replicas(_) => {
                "SELECT pgtrickle.set_broker_settings('{}', topic_partitions => 1, topic_replication_factor => 3);"
            }
        }
    }
}

/// Checks the topic settings as a JetStream stream takes them: one "partition", 1–5 replicas.
pub fn check_topics(partitions: i32, replication_factor: i32) -> Result<(), NatsSettingsError> {
    if partitions != 1 {
        return Err(NatsSettingsError::Partitions(partitions));
    }
    if !(1..=5).contains(&replication_factor) {
        return Err(NatsSettingsError::Replicas(replication_factor));
    }
    Ok(())
}

/// Validates the merged settings (catalog and properties file) into options.
pub fn parse(settings: &BTreeMap<String, String>) -> Result<NatsOptions, NatsSettingsError> {
    if let Some(key) = settings.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(NatsSettingsError::UnknownKey { key: key.clone() });
    }
    let get = |key: &str| settings.get(key).cloned();
    let number = |key: &str, expected: &'static str| -> Result<Option<i64>, NatsSettingsError> {
        get(key)
            .map(|value| {
                value.trim().parse::<i64>().map_err(|_| NatsSettingsError::BadValue {
                    key: key.to_string(),
                    expected,
                    value: value.clone(),
                })
            })
            .transpose()
    };
    let tls_required = match get("tls.required").as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(NatsSettingsError::BadValue {
                key: "tls.required".into(),
                expected: "true or false",
                value: other.to_string(),
            })
        }
    };
    let mut logins = Vec::new();
    match (get("user"), get("password")) {
        (Some(user), Some(password)) => logins.push(("user/password", NatsLogin::UserPassword { user, password })),
        (Some(_), None) => return Err(NatsSettingsError::Incomplete { given: "user", missing: "password" }),
        (None, Some(_)) => return Err(NatsSettingsError::Incomplete { given: "password", missing: "user" }),
        (None, None) => {}
    }
    if let Some(token) = get("token") {
        logins.push(("token", NatsLogin::Token(token)));
    }
    if let Some(seed) = get("nkey.seed") {
        logins.push(("nkey.seed", NatsLogin::NKeySeed(seed)));
    }
    if let Some(path) = get("creds.file") {
        logins.push(("creds.file", NatsLogin::CredentialsFile(path)));
    }
    if logins.len() > 1 {
        return Err(NatsSettingsError::SeveralLogins(logins.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")));
    }
    let tls_client = match (get("tls.cert.file"), get("tls.key.file")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            return Err(NatsSettingsError::Incomplete { given: "tls.cert.file", missing: "tls.key.file" })
        }
        (None, Some(_)) => {
            return Err(NatsSettingsError::Incomplete { given: "tls.key.file", missing: "tls.cert.file" })
        }
        (None, None) => None,
    };
    let max_age = number("stream.max.age.seconds", "a whole number of seconds, 0 or more")?
        .unwrap_or(DEFAULT_MAX_AGE_SECONDS as i64);
    if max_age < 0 {
        return Err(NatsSettingsError::BadValue {
            key: "stream.max.age.seconds".into(),
            expected: "a whole number of seconds, 0 or more",
            value: max_age.to_string(),
        });
    }
    let max_bytes = number("stream.max.bytes", "a whole number of bytes, or -1")?.unwrap_or(-1);
    if max_bytes < -1 || max_bytes == 0 {
        return Err(NatsSettingsError::BadValue {
            key: "stream.max.bytes".into(),
            expected: "a whole number of bytes, or -1",
            value: max_bytes.to_string(),
        });
    }
    Ok(NatsOptions {
        login: logins.pop().map(|(_, login)| login).unwrap_or_default(),
        tls_required,
        tls_ca_file: get("tls.ca.file"),
        tls_client,
        max_age_seconds: max_age as u64,
        max_bytes,
    })
}

/// The JetStream stream holding a federation's change log: the topic prefix with every character a stream name
/// may not hold (`.`, `*`, `>`, blanks, path separators) replaced by `_`, upper-cased as streams usually are.
pub fn stream_name(topic_prefix: &str) -> String {
    topic_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// The de-duplication id of one message (`Nats-Msg-Id`): the same chunk of the same copy of a batch always gets
/// the same id, so a send retried after a lost acknowledgement is stored once and acknowledged with the first
/// copy's sequence. The producer epoch is part of it: a producer restarted under a new epoch writes a different
/// batch under a seq an older epoch may have used, and that batch must not be taken for the old one.
pub fn message_id(stream: &crate::StreamId, incarnation: u64, producer_epoch: u64, seq: u64, chunk: usize) -> String {
    format!("{stream}/i{incarnation}/e{producer_epoch}/s{seq}/c{chunk}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn logins_tls_and_limits() {
        let defaults = NatsOptions { max_bytes: -1, max_age_seconds: DEFAULT_MAX_AGE_SECONDS, ..Default::default() };
        assert_eq!(parse(&map(&[])), Ok(defaults));
        assert_eq!(parse(&map(&[("stream.max.age.seconds", "0")])).unwrap().max_age_seconds, 0);
        let options = parse(&map(&[
            ("user", "pgt"),
            ("password", "pw"),
            ("tls.required", "true"),
            ("tls.ca.file", "/etc/ca.pem"),
            ("tls.cert.file", "/c.pem"),
            ("tls.key.file", "/k.pem"),
            ("stream.max.age.seconds", "86400"),
        ]))
        .unwrap();
        assert_eq!(options.login, NatsLogin::UserPassword { user: "pgt".into(), password: "pw".into() });
        assert!(options.tls_required);
        assert_eq!(options.tls_client, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(options.max_age_seconds, 86400);
        assert_eq!(parse(&map(&[("token", "t")])).unwrap().login, NatsLogin::Token("t".into()));
        assert_eq!(
            parse(&map(&[("creds.file", "/u.creds")])).unwrap().login,
            NatsLogin::CredentialsFile("/u.creds".into())
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse(&map(&[("security.protocol", "SSL")])), Err(NatsSettingsError::UnknownKey { .. })));
        assert_eq!(
            parse(&map(&[("user", "pgt")])),
            Err(NatsSettingsError::Incomplete { given: "user", missing: "password" })
        );
        assert!(matches!(
            parse(&map(&[("token", "t"), ("nkey.seed", "SU")])),
            Err(NatsSettingsError::SeveralLogins(_))
        ));
        assert!(matches!(parse(&map(&[("tls.required", "yes")])), Err(NatsSettingsError::BadValue { .. })));
        assert!(matches!(parse(&map(&[("tls.key.file", "/k")])), Err(NatsSettingsError::Incomplete { .. })));
        assert!(matches!(parse(&map(&[("stream.max.bytes", "0")])), Err(NatsSettingsError::BadValue { .. })));
        assert!(matches!(parse(&map(&[("stream.max.age.seconds", "-5")])), Err(NatsSettingsError::BadValue { .. })));
        assert_eq!(check_topics(3, 1), Err(NatsSettingsError::Partitions(3)));
        assert_eq!(check_topics(1, 7), Err(NatsSettingsError::Replicas(7)));
        assert_eq!(check_topics(1, 3), Ok(()));
        // The secrets among the keys are the ones the catalog refuses.
        for key in ["password", "token", "nkey.seed"] {
            assert!(crate::broker_settings::is_secret(key), "{key} must count as a secret");
        }
    }

    #[test]
    fn names() {
        assert_eq!(stream_name("pgtrickle"), "PGTRICKLE");
        assert_eq!(stream_name("acme.prod fed>*"), "ACME_PROD_FED__");
        let stream = crate::StreamId::parse("cluster_a/public.order_agg").unwrap();
        assert_eq!(message_id(&stream, 2, 3, 17, 0), "cluster_a/public.order_agg/i2/e3/s17/c0");
    }

    proptest! {
        /// Message ids differ whenever any of their parts differ (no two chunks of different copies collide).
        #[test]
        fn message_ids_are_distinct(a in (0u64..4, 0u64..4, 0u64..40, 0usize..4), b in (0u64..4, 0u64..4, 0u64..40, 0usize..4)) {
            let stream = crate::StreamId::parse("cluster_a/public.t").unwrap();
            let id = |(i, e, s, c): (u64, u64, u64, usize)| message_id(&stream, i, e, s, c);
            prop_assert_eq!(id(a) == id(b), a == b);
        }

        /// A stream name holds only the characters JetStream allows.
        #[test]
        fn stream_names_are_valid(prefix in "[ -~]{1,30}") {
            let name = stream_name(&prefix);
            prop_assert!(name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_'));
        }
    }
}
