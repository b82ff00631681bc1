//! Round trips (proptest) and every way a file can be refused.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::model::{ColumnDef, Consistency};

fn header(items: &[Item]) -> Header {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item.kind().to_string()).or_default() += 1;
    }
    Header {
        format: String::new(),
        version: 0,
        extension_version: "0.2.0".into(),
        cluster: Some("site_a".into()),
        database: "app".into(),
        written_at: "2026-12-01T16:00:00.000Z".into(),
        counts,
    }
}

fn encode(items: &[Item]) -> Vec<u8> {
    let mut writer = CheckpointWriter::new(Vec::new(), header(items)).unwrap();
    for item in items {
        writer.item(item).unwrap();
    }
    writer.finish().unwrap().0
}

fn decode(bytes: &[u8]) -> Result<(Header, Vec<Item>), CheckpointError> {
    CheckpointReader::new(bytes)?.read_all()
}

fn zstd_of(text: &str) -> Vec<u8> {
    zstd::encode_all(text.as_bytes(), 3).unwrap()
}

fn name() -> impl Strategy<Value = QualifiedName> {
    ("[a-z_][a-z0-9_]{0,20}", "[a-zA-Z_ \"ä][a-z0-9_ ]{0,40}").prop_map(|(s, n)| QualifiedName::new(s, n))
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (name(), ".{1,200}", proptest::option::of(0.01..1e6f64), any::<bool>(), proptest::option::of(".{0,100}"))
            .prop_map(|(name, query, schedule_secs, full, sql)| Item::StreamTable {
                name,
                query: format!("SELECT {query}"),
                schedule_secs,
                refresh_mode: if full { RefreshMode::Full } else { RefreshMode::Differential },
                status: StreamTableStatus::Active,
                settings: BTreeMap::from([("tier".to_string(), "high".to_string())]),
                refresh_sql: sql,
            }),
        (name(), name(), any::<Option<u64>>(), any::<Option<i64>>()).prop_map(|(st, source, xid, change_id)| {
            Item::Dependency {
                stream_table: st,
                source,
                source_kind: SourceKind::Table,
                consumed: Watermark { snapshot: Some("10:12:11".into()), xid, change_id },
            }
        }),
        proptest::collection::vec(name(), 1..5).prop_map(|members| Item::Group { kind: GroupKind::Diamond, members }),
        (name(), any::<u32>(), 0.0..1e9f64).prop_map(|(st, n, ms)| Item::RefreshCost {
            stream_table: st,
            refreshes: u64::from(n),
            failures: 0,
            mean_ms: ms,
            max_ms: ms * 2.0,
            last_refresh_at: None,
        }),
        (name(), any::<u64>(), any::<u64>()).prop_map(|(st, base, published)| Item::Publication {
            stream_table: st,
            stream_id: "site_a/public.orders".into(),
            base_seq: base,
            published_seq: published,
        }),
        (name(), name(), any::<u64>(), any::<Option<i64>>()).prop_map(|(st, mirror, seq, offset)| {
            Item::FederatedSource {
                stream_table: st,
                stream_id: "site_a/public.orders".into(),
                source_url: "pgtrickle://site_a/public.orders".into(),
                mirror,
                topic: "pgtrickle.fed.site_a.public.orders".into(),
                columns: vec![ColumnDef::new("id", "bigint")],
                applied_seq: seq,
                applied_offset: offset,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn whatever_is_written_reads_back_the_same(items in proptest::collection::vec(item(), 0..40)) {
        let bytes = encode(&items);
        let (header, read) = decode(&bytes).unwrap();
        prop_assert_eq!(header.version, FORMAT_VERSION);
        prop_assert_eq!(header.database, "app");
        prop_assert_eq!(read, items);
    }

    /// A single flipped bit is refused (by zstd's frame checksum, the JSON, or the trailer), never read as
    /// something else (a flip in a frame header field that changes nothing may still read the same items).
    #[test]
    fn a_flipped_bit_is_refused(items in proptest::collection::vec(item(), 1..10), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode(&items);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        match decode(&bytes) {
            Err(_) => {}
            Ok((_, read)) => prop_assert_eq!(read, items),
        }
    }

    /// A file cut anywhere is refused.
    #[test]
    fn a_cut_file_is_refused(items in proptest::collection::vec(item(), 1..10), at in any::<prop::sample::Index>()) {
        let bytes = encode(&items);
        let cut = at.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}

fn sample() -> Vec<Item> {
    vec![
        Item::StreamTable {
            name: QualifiedName::new("public", "order_totals"),
            query: "SELECT customer, sum(amount) FROM orders GROUP BY customer".into(),
            schedule_secs: Some(5.0),
            refresh_mode: RefreshMode::Differential,
            status: StreamTableStatus::Active,
            settings: BTreeMap::new(),
            refresh_sql: None,
        },
        Item::FederatedTable {
            stream_table: QualifiedName::new("public", "dashboard"),
            table_id: "site_c/public.dashboard".into(),
            consistency: Consistency::Causal,
            applied_cut_at: 42,
        },
    ]
}

#[test]
fn each_kind_of_bad_file_has_its_own_error() {
    let good = encode(&sample());
    assert!(matches!(decode(b""), Err(CheckpointError::Empty)));
    assert!(matches!(decode(&zstd_of("")), Err(CheckpointError::Empty)));
    assert!(matches!(decode(b"{\"format\":\"pg_trickle_checkpoint\"}\n"), Err(CheckpointError::Foreign(_))));
    assert!(matches!(decode(&zstd_of("id,name\n1,a\n")), Err(CheckpointError::Foreign(_))));
    assert!(matches!(decode(&zstd_of("{\"format\":\"other\",\"version\":1}\n")), Err(CheckpointError::Foreign(_))));
    let newer = "{\"format\":\"pg_trickle_checkpoint\",\"version\":2,\"whatever\":true}\n";
    assert!(matches!(decode(&zstd_of(newer)), Err(CheckpointError::NewerVersion { found: 2, supported: 1 })));

    // Truncated: the compressed stream cut short, and a complete stream whose trailer is missing.
    assert!(matches!(decode(&good[..good.len() - 10]), Err(CheckpointError::Truncated { .. })));
    let text = String::from_utf8(zstd::decode_all(&good[..]).unwrap()).unwrap();
    let without_trailer: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    assert!(matches!(decode(&zstd_of(&without_trailer)), Err(CheckpointError::Truncated { lines: 2 })));

    // A changed item with the trailer kept: the checksum tells.
    let edited = text.replace("order_totals", "order_totalz");
    assert!(matches!(decode(&zstd_of(&edited)), Err(CheckpointError::ChecksumMismatch { .. })));
    // Lines after the trailer.
    assert!(matches!(decode(&zstd_of(&format!("{text}{{}}\n"))), Err(CheckpointError::Corrupt { .. })));
    // An unknown item type.
    let lines: Vec<&str> = text.lines().collect();
    let unknown = format!("{}\n{{\"type\":\"martian\"}}\n", lines[0]);
    assert!(matches!(decode(&zstd_of(&unknown)), Err(CheckpointError::Corrupt { line: 2, .. })));
}

#[test]
fn the_writer_refuses_what_could_not_be_restored() {
    let mut wrong_counts = header(&sample());
    wrong_counts.counts.insert("stream_table".into(), 5);
    let mut writer = CheckpointWriter::new(Vec::new(), wrong_counts).unwrap();
    for item in &sample() {
        writer.item(item).unwrap();
    }
    assert!(matches!(writer.finish(), Err(CheckpointError::Invalid(_))));

    let mut writer = CheckpointWriter::new(Vec::new(), header(&[])).unwrap();
    let bad_name = Item::Publication {
        stream_table: QualifiedName::new("", "t"),
        stream_id: "a/public.t".into(),
        base_seq: 0,
        published_seq: 0,
    };
    assert!(matches!(writer.item(&bad_name), Err(CheckpointError::Invalid(_))));
}

/// A header line and a stream table line, as docs/CHECKPOINT_FORMAT.md shows them.
#[test]
fn the_lines_read_as_the_format_document_says() {
    let text = String::from_utf8(zstd::decode_all(&encode(&sample())[..]).unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("{\"format\":\"pg_trickle_checkpoint\",\"version\":1,"), "{}", lines[0]);
    assert!(lines[0].ends_with("\"counts\":{\"federated_table\":1,\"stream_table\":1}}"), "{}", lines[0]);
    assert!(
        lines[1].starts_with("{\"type\":\"stream_table\",\"name\":{\"schema\":\"public\",\"name\":\"order_totals\"}")
    );
    assert!(lines[2].contains("\"consistency\":\"Causal\""), "{}", lines[2]);
    assert!(lines[3].starts_with("{\"trailer\":{\"lines\":3,\"sha256\":\""), "{}", lines[3]);
}
