//! Typed, validated names and identifiers of the federation.
//!
//! Every name that crosses a process boundary (HTTP, the Raft log, SQL) is parsed into one of these types first, so
//! the rest of the code never handles an unchecked string. Names follow PostgreSQL's unquoted identifier rules
//! (lower case, `[a-z_][a-z0-9_$]*`, at most 63 bytes) because a cluster name becomes the schema of the mirrors on
//! the consuming cluster and a stream names a real table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name, id or URL could not be parsed. The message says what is wrong and what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParseError {
    /// Which kind of value was being parsed ("cluster name", "stream id", …).
    pub what: String,
    /// The offending input, as given.
    pub input: String,
    /// What is wrong with it, including the expected form.
    pub reason: String,
}

impl ParseError {
    fn new(what: &str, input: &str, reason: impl Into<String>) -> Self {
        ParseError { what: what.to_string(), input: input.to_string(), reason: reason.into() }
    }
}

/// PostgreSQL's limit on identifier length (NAMEDATALEN - 1).
pub const MAX_IDENT_LEN: usize = 63;

fn check_ident(what: &str, input: &str) -> Result<(), ParseError> {
    if input.is_empty() {
        return Err(ParseError::new(what, input, "it is empty"));
    }
    if input.len() > MAX_IDENT_LEN {
        return Err(ParseError::new(
            what,
            input,
            format!("it is {} bytes long, the limit is {MAX_IDENT_LEN}", input.len()),
        ));
    }
    let first = input.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first == b'_') {
        return Err(ParseError::new(what, input, "it must start with a lower-case letter or '_'"));
    }
    if let Some(bad) = input.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '$'))
    {
        return Err(ParseError::new(
            what,
            input,
            format!("character {bad:?} is not allowed (use lower-case letters, digits, '_' and '$')"),
        ));
    }
    Ok(())
}

macro_rules! identifier_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates a name.
            pub fn parse(input: &str) -> Result<Self, ParseError> {
                check_ident($what, input)?;
                Ok($name(input.to_string()))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                check_ident($what, &s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier_type!(
    /// A PostgreSQL cluster's name inside the federation (`cluster_a`); also the mirror schema on consumers.
    ClusterName,
    "cluster name"
);
identifier_type!(
    /// A schema or table identifier.
    Ident,
    "identifier"
);
identifier_type!(
    /// The federation's name: the host part of every source URL (`kafka://FEDERATION/…`).
    FederationName,
    "federation name"
);

/// A relation on one cluster: `cluster/schema.table`. Both published streams and federated tables are named so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelationId {
    /// The cluster that owns the relation.
    pub cluster: ClusterName,
    /// Its schema (`public` when the text form leaves it out).
    pub schema: Ident,
    /// Its table name.
    pub table: Ident,
}

impl RelationId {
    /// Builds an id from already-validated parts.
    pub fn new(cluster: ClusterName, schema: Ident, table: Ident) -> Self {
        RelationId { cluster, schema, table }
    }

    fn parse_as(what: &str, input: &str) -> Result<Self, ParseError> {
        let Some((cluster, qualified)) = input.split_once('/') else {
            return Err(ParseError::new(what, input, "expected CLUSTER/SCHEMA.TABLE, e.g. cluster_a/public.order_agg"));
        };
        let cluster = ClusterName::parse(cluster).map_err(|e| ParseError::new(what, input, e.to_string()))?;
        let (schema, table) = split_qualified(what, input, qualified)?;
        Ok(RelationId { cluster, schema, table })
    }

    /// `schema.table` without the cluster.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

fn split_qualified(what: &str, input: &str, qualified: &str) -> Result<(Ident, Ident), ParseError> {
    let (schema, table) = match qualified.split_once('.') {
        Some((s, t)) => (s, t),
        None => ("public", qualified),
    };
    let schema = Ident::parse(schema).map_err(|e| ParseError::new(what, input, e.to_string()))?;
    let table = Ident::parse(table).map_err(|e| ParseError::new(what, input, e.to_string()))?;
    Ok((schema, table))
}

impl fmt::Display for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.cluster, self.schema, self.table)
    }
}

impl FromStr for RelationId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        RelationId::parse_as("relation id", s)
    }
}

impl TryFrom<String> for RelationId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        s.parse()
    }
}

impl From<RelationId> for String {
    fn from(r: RelationId) -> String {
        r.to_string()
    }
}

macro_rules! relation_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub RelationId);

        impl $name {
            /// Parses `cluster/schema.table` (schema defaults to `public`).
            pub fn parse(input: &str) -> Result<Self, ParseError> {
                RelationId::parse_as($what, input).map($name)
            }

            /// The cluster that owns it.
            pub fn cluster(&self) -> &ClusterName {
                &self.0.cluster
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }
    };
}

relation_newtype!(
    /// A published stream: a local stream table offered to the federation, `cluster/schema.table`.
    StreamId,
    "stream id"
);
relation_newtype!(
    /// A federated stream table, named by its owner (consuming) cluster: `cluster/schema.table`.
    FederatedTableId,
    "federated table id"
);

/// The change-log backend a source URL names by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Backend {
    /// Apache Kafka (or any Kafka-protocol broker).
    Kafka,
    /// NATS JetStream.
    Nats,
}

impl Backend {
    /// The URL scheme of this backend.
    pub fn scheme(self) -> &'static str {
        match self {
            Backend::Kafka => "kafka",
            Backend::Nats => "nats",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

impl FromStr for Backend {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "kafka" => Ok(Backend::Kafka),
            "nats" => Ok(Backend::Nats),
            _ => Err(ParseError::new("backend", s, "expected \"kafka\" or \"nats\"")),
        }
    }
}

/// A federated table's source: `SCHEME://FEDERATION/CLUSTER/[SCHEMA.]STREAM_TABLE`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceUrl {
    /// The change-log backend.
    pub backend: Backend,
    /// The federation the source belongs to.
    pub federation: FederationName,
    /// The published stream.
    pub stream: StreamId,
}

impl SourceUrl {
    /// Parses a source URL, saying which part is wrong.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "source URL";
        const FORM: &str =
            "expected SCHEME://FEDERATION/CLUSTER/STREAM_TABLE, e.g. kafka://coordinator/cluster_a/order_agg";
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(ParseError::new(WHAT, input, FORM));
        };
        let backend: Backend = scheme
            .parse()
            .map_err(|_| ParseError::new(WHAT, input, format!("unknown scheme {scheme:?}: use kafka:// or nats://")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 3 {
            return Err(ParseError::new(WHAT, input, FORM));
        }
        let federation = FederationName::parse(parts[0]).map_err(|e| ParseError::new(WHAT, input, e.to_string()))?;
        let cluster = ClusterName::parse(parts[1]).map_err(|e| ParseError::new(WHAT, input, e.to_string()))?;
        let (schema, table) = split_qualified(WHAT, input, parts[2])?;
        Ok(SourceUrl { backend, federation, stream: StreamId(RelationId { cluster, schema, table }) })
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.stream.0;
        write!(f, "{}://{}/{}/{}.{}", self.backend, self.federation, r.cluster, r.schema, r.table)
    }
}

impl FromStr for SourceUrl {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SourceUrl {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<SourceUrl> for String {
    fn from(u: SourceUrl) -> String {
        u.to_string()
    }
}

/// A PostgreSQL server's `system_identifier` (`pg_control_system()`): set by initdb, kept by physical copies
/// (streaming standbys, pg_basebackup, a copied data directory), new after a logical dump and restore. It tells
/// one server's registration of a cluster name from another's. Travels as a decimal string, because JSON readers
/// such as jq hold numbers as doubles and would round a 64-bit identifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SystemIdentifier(pub u64);

impl SystemIdentifier {
    /// Parses the decimal text form.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        input
            .parse::<u64>()
            .map(SystemIdentifier)
            .map_err(|_| ParseError::new("system identifier", input, "expected an unsigned 64-bit decimal number"))
    }
}

impl fmt::Display for SystemIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for SystemIdentifier {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<SystemIdentifier> for String {
    fn from(s: SystemIdentifier) -> String {
        s.to_string()
    }
}

/// Identifies one write so that a retry after a lost reply is applied once: the writing client (usually the
/// cluster name or an operator's tool) plus a request id unique for that client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IdempotencyKey {
    /// Who writes (`cluster_a`, `cli@host`…); 1–128 printable characters.
    pub client: String,
    /// Unique per client, e.g. a UUID or a counter.
    pub request_id: String,
}

impl IdempotencyKey {
    /// Longest accepted client or request id.
    pub const MAX_PART_LEN: usize = 128;

    /// Builds a key, rejecting empty, over-long or non-printable parts.
    pub fn new(client: &str, request_id: &str) -> Result<Self, ParseError> {
        for (what, part) in [("idempotency client", client), ("idempotency request id", request_id)] {
            if part.is_empty() || part.len() > Self::MAX_PART_LEN {
                return Err(ParseError::new(what, part, format!("must be 1 to {} bytes", Self::MAX_PART_LEN)));
            }
            if part.chars().any(|c| c.is_control()) {
                return Err(ParseError::new(what, part, "control characters are not allowed"));
            }
        }
        Ok(IdempotencyKey { client: client.to_string(), request_id: request_id.to_string() })
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.client, self.request_id)
    }
}

/// OpenAPI: every id travels as a string in its text form.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;

    macro_rules! string_schema {
        ($($t:ty => $pattern:literal, $desc:literal;)*) => {$(
            impl utoipa::PartialSchema for $t {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new().schema_type(Type::String).pattern(Some($pattern)).description(Some($desc)).into()
                }
            }
            impl utoipa::ToSchema for $t {}
        )*};
    }

    string_schema! {
        super::ClusterName => "^[a-z_][a-z0-9_$]{0,62}$", "A cluster name (PostgreSQL identifier).";
        super::Ident => "^[a-z_][a-z0-9_$]{0,62}$", "A PostgreSQL identifier.";
        super::FederationName => "^[a-z_][a-z0-9_$]{0,62}$", "The federation's name.";
        super::RelationId => "^[a-z_][a-z0-9_$]{0,62}/([a-z_][a-z0-9_$]{0,62}\\.)?[a-z_][a-z0-9_$]{0,62}$", "cluster/schema.table";
        super::StreamId => "^[a-z_][a-z0-9_$]{0,62}/([a-z_][a-z0-9_$]{0,62}\\.)?[a-z_][a-z0-9_$]{0,62}$", "A published stream: cluster/schema.table";
        super::FederatedTableId => "^[a-z_][a-z0-9_$]{0,62}/([a-z_][a-z0-9_$]{0,62}\\.)?[a-z_][a-z0-9_$]{0,62}$", "A federated table: cluster/schema.table";
        super::SystemIdentifier => "^[0-9]{1,20}$", "A PostgreSQL server's system_identifier, in decimal.";
        super::SourceUrl => "^(kafka|nats)://[a-z_][a-z0-9_$]{0,62}/[a-z_][a-z0-9_$]{0,62}/([a-z_][a-z0-9_$]{0,62}\\.)?[a-z_][a-z0-9_$]{0,62}$", "SCHEME://FEDERATION/CLUSTER/[SCHEMA.]STREAM_TABLE";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_round_trips_and_defaults_schema() {
        let s = StreamId::parse("cluster_a/order_agg").unwrap();
        assert_eq!(s.to_string(), "cluster_a/public.order_agg");
        assert_eq!(StreamId::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let e = ClusterName::parse("Cluster-A").unwrap_err();
        assert!(e.to_string().contains("lower-case"), "{e}");
        let e = StreamId::parse("cluster_a").unwrap_err();
        assert!(e.reason.contains("CLUSTER/SCHEMA.TABLE"), "{e}");
        let e = ClusterName::parse(&"a".repeat(64)).unwrap_err();
        assert!(e.reason.contains("64 bytes"), "{e}");
        let e = StreamId::parse("c/s.t-x").unwrap_err();
        assert!(e.reason.contains("'-'"), "{e}");
    }

    #[test]
    fn source_urls_parse_and_reject() {
        let u = SourceUrl::parse("nats://coordinator/cluster_a/order_agg").unwrap();
        assert_eq!(u.backend, Backend::Nats);
        assert_eq!(u.stream.to_string(), "cluster_a/public.order_agg");
        assert_eq!(SourceUrl::parse(&u.to_string()).unwrap(), u);
        assert!(SourceUrl::parse("http://c/a/b").unwrap_err().reason.contains("unknown scheme"));
        assert!(SourceUrl::parse("kafka://c/a").unwrap_err().reason.contains("SCHEME://FEDERATION"));
        assert!(SourceUrl::parse("kafka:/c/a/b").is_err());
    }

    #[test]
    fn system_identifiers_travel_as_decimal_strings() {
        let id = SystemIdentifier(7_311_954_316_468_451_331);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"7311954316468451331\"");
        assert_eq!(serde_json::from_str::<SystemIdentifier>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SystemIdentifier>("\"-1\"").is_err());
        assert!(serde_json::from_str::<SystemIdentifier>("\"18446744073709551616\"").is_err());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let ok: StreamId = serde_json::from_str("\"a/s.t\"").unwrap();
        assert_eq!(ok.to_string(), "a/s.t");
        assert!(serde_json::from_str::<StreamId>("\"A/s.t\"").is_err());
    }
}
