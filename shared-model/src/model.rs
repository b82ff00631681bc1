//! Value types shared by commands, events and state: columns, broker positions, consistency modes, settings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{Backend, ParseError};

/// A Raft log index. The index at which a `FrontierAdvanced` commits is that batch's global timestamp.
pub type LogIndex = u64;

/// One column of a published stream, as the consumer must create it in the mirror.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ColumnDef {
    /// Column name as PostgreSQL stores it (any non-empty name up to 63 bytes).
    pub name: String,
    /// The type as `format_type()` prints it, e.g. `bigint`, `numeric(12,2)`, `text[]`.
    pub type_name: String,
}

impl ColumnDef {
    /// Builds a column definition (validated by the command that carries it).
    pub fn new(name: &str, type_name: &str) -> Self {
        ColumnDef { name: name.to_string(), type_name: type_name.to_string() }
    }
}

/// Checks that `text` has the shape of a type name as `format_type()` prints one, so that it can be written into
/// DDL and casts: an identifier or quoted identifier, optionally schema-qualified, lower-case words
/// (`double precision`, `character varying`, `with time zone`, `day to second`), at most two type modifiers of
/// digits in parentheses, and array brackets — e.g. `numeric(12,2)`, `timestamp(3) with time zone`,
/// `"Mood"[]`, `public.us_postal_code`. Nothing else (no quote, semicolon, comment or unbalanced parenthesis)
/// passes, so a checked name can never end a statement or a column definition. Whether the type exists is for
/// the consumer's PostgreSQL to say (`to_regtype`).
pub fn check_type_name(text: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("{text:?} is not a type name: {why}"));
    if text.is_empty() || text.len() > 256 {
        return refuse("1 to 256 bytes");
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    // One identifier (plain lower-case or double-quoted), returning where it ends.
    let ident = |mut i: usize| -> Option<usize> {
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            loop {
                match bytes.get(i)? {
                    b'"' if bytes.get(i + 1) == Some(&b'"') => i += 2,
                    b'"' => return (i > start).then_some(i + 1),
                    0 => return None,
                    _ => i += 1,
                }
            }
        }
        let start = i;
        while let Some(c) = bytes.get(i) {
            let ok = c.is_ascii_lowercase() || *c == b'_' || (i > start && (c.is_ascii_digit() || *c == b'$'));
            if !ok {
                break;
            }
            i += 1;
        }
        (i > start).then_some(i)
    };
    let Some(end) = ident(i) else { return refuse("it must start with an identifier") };
    i = end;
    if bytes.get(i) == Some(&b'.') {
        let Some(end) = ident(i + 1) else { return refuse("a qualified name needs an identifier after the dot") };
        i = end;
    }
    let mut modifiers = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j].is_ascii_lowercase() {
                    j += 1;
                }
                if j == start {
                    return refuse("words are lower-case letters, one space apart");
                }
                i = j;
            }
            b'(' if modifiers == 0 || bytes[i - 1] != b')' => {
                modifiers += 1;
                if modifiers > 2 {
                    return refuse("too many type modifiers");
                }
                let close = match text[i..].find(')') {
                    Some(offset) => i + offset,
                    None => return refuse("unbalanced parenthesis"),
                };
                let inside = &text[i + 1..close];
                let parts: Vec<&str> = inside.split(',').map(|p| p.trim_start_matches(' ')).collect();
                let digits = |p: &&str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit());
                if parts.is_empty() || parts.len() > 2 || !parts.iter().all(digits) {
                    return refuse("type modifiers are one or two numbers");
                }
                i = close + 1;
            }
            b'[' => {
                let close = match text[i..].find(']') {
                    Some(offset) => i + offset,
                    None => return refuse("unbalanced bracket"),
                };
                if !text[i + 1..close].bytes().all(|c| c.is_ascii_digit()) || close - i > 6 {
                    return refuse("array bounds are digits");
                }
                i = close + 1;
                if i < bytes.len() && bytes[i] != b'[' {
                    return refuse("array brackets end the name");
                }
            }
            _ => return refuse("unexpected character"),
        }
    }
    Ok(())
}

/// Where a batch sits in the broker: Kafka partition + offset, or (partition 0) a JetStream stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokerPosition {
    /// Kafka partition (0 for NATS).
    pub partition: i32,
    /// Offset of the batch's last message (Kafka offset or JetStream sequence).
    pub offset: i64,
}

/// What a federated table promises its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Consistency {
    /// Each source is applied up to its own committed frontier, independently (the default).
    #[default]
    Eventual,
    /// All sources are applied up to one common cut of the log, in one transaction.
    Causal,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Eventual => "eventual",
            Consistency::Causal => "causal",
        })
    }
}

impl FromStr for Consistency {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "eventual" => Ok(Consistency::Eventual),
            "causal" => Ok(Consistency::Causal),
            _ => Err(ParseError {
                what: "consistency".into(),
                input: s.into(),
                reason: "expected \"eventual\" or \"causal\"".into(),
            }),
        }
    }
}

/// What a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BatchKind {
    /// The delta of one refresh.
    Delta,
    /// The whole contents (bootstrap or REINITIALIZE).
    Snapshot,
}

/// The federation's change-log settings, handed to every cluster at registration so the broker is configured once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeLogSettings {
    /// Which broker the federation uses.
    pub backend: Backend,
    /// Comma-separated `host:port` list of the broker.
    pub bootstrap_servers: String,
    /// Prefix of per-stream topics (`pgtrickle` gives `pgtrickle.<cluster>.<schema>.<table>`).
    pub topic_prefix: String,
}

impl Default for ChangeLogSettings {
    fn default() -> Self {
        ChangeLogSettings {
            backend: Backend::Kafka,
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: "pgtrickle".into(),
        }
    }
}

/// A checkpoint a cluster wrote to object storage, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointRecord {
    /// Where the checkpoint file is (`file://…`, `s3://…`).
    pub url: String,
    /// The trailer checksum of the file, hex.
    pub checksum: String,
    /// Compressed size.
    pub size_bytes: u64,
    /// When the cluster took it (milliseconds since the Unix epoch, the cluster's clock).
    pub taken_at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::check_type_name;

    #[test]
    fn type_names_as_format_type_prints_them_pass() {
        for name in [
            "bigint",
            "integer[]",
            "numeric(12,2)",
            "numeric(12, 2)",
            "character varying(10)",
            "double precision",
            "timestamp with time zone",
            "timestamp(3) without time zone",
            "time(2) with time zone[]",
            "interval day to second(3)",
            "interval year to month",
            "bit varying(5)",
            "\"Mood\"",
            "\"my \"\"odd\"\" type\"[]",
            "public.us_postal_code",
            "\"Sales\".\"Amount\"",
            "text[][]",
            "int4[3]",
            "money",
            "jsonb",
        ] {
            assert_eq!(check_type_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn anything_that_could_leave_a_column_definition_is_refused() {
        for name in [
            "",
            "int); DROP TABLE t; --",
            "int, x text",
            "int) , x (text",
            "text COLLATE \"C\"",
            "int -- comment",
            "int /* c */",
            "'text'",
            "text;",
            "Integer",
            "numeric(12,2",
            "numeric(a)",
            "numeric(1,2,3)",
            "int[]x",
            "int[",
            "\"unterminated",
            "\"\"",
            "int\u{0}",
            "int  array",
            " int",
            "int\ttext",
            "a.b.c",
        ] {
            assert!(check_type_name(name).is_err(), "{name:?} passed");
        }
    }
}
