//! What authenticating envelopes costs per batch: encoding a batch into tagged messages and verifying + decoding
//! them, next to the HMAC-SHA256 alone over the same bytes (the peer: the share authentication adds).
//!
//! A batch of 1,000 changed rows of a four-column stream table (bigint, text, numeric, timestamptz as text), the
//! size of a busy refresh.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shared_model::envelope::{decode_envelope, Batch, RowAction, RowChange};
use shared_model::{BatchKind, ColumnDef, MessageKey, StreamId};

fn batch(rows: usize) -> Batch {
    Batch {
        stream: StreamId::parse("cluster_a/public.order_agg").unwrap(),
        incarnation: 7,
        producer_epoch: 3,
        seq: 42,
        kind: BatchKind::Delta,
        columns: vec![
            ColumnDef::new("user_id", "bigint"),
            ColumnDef::new("name", "text"),
            ColumnDef::new("total", "numeric(12,2)"),
            ColumnDef::new("updated_at", "timestamp with time zone"),
        ],
        rows: (0..rows as i64)
            .map(|i| RowChange {
                action: if i % 3 == 0 { RowAction::Delete } else { RowAction::Insert },
                row_id: i * 7919,
                values: vec![
                    Some(i.to_string()),
                    Some(format!("user {i}")),
                    Some(format!("{}.{:02}", i * 13, i % 100)),
                    Some("2026-12-01 03:04:05.123456+00".into()),
                ],
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let key = MessageKey::from_bytes([7; 32]);
    let batch = batch(1_000);
    let messages = batch.encode_chunks(900_000, &key).unwrap();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    println!(
        "1,000-row batch: {} message(s), {bytes} bytes, of which {} bytes of tags",
        messages.len(),
        32 * messages.len()
    );
    let mut group = c.benchmark_group("envelope_1000_rows");
    group.bench_function("encode_and_tag", |b| b.iter(|| black_box(batch.encode_chunks(900_000, &key).unwrap())));
    group.bench_function("verify_and_decode", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(decode_envelope(message, &key).unwrap());
            }
        })
    });
    group.bench_function("hmac_alone", |b| {
        b.iter(|| {
            for message in &messages {
                black_box(key.tag(&message[..message.len() - 32]));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
