//! The broker envelope: chunking under a message limit, reassembly from any order with redeliveries,
//! and refusal of damaged, forged, foreign or contradictory messages.

use proptest::prelude::*;
use shared_model::envelope::{decode_envelope, Assembler, Batch, EnvelopeError, RowAction, RowChange};
use shared_model::{codec, BatchKind, ColumnDef, MessageKey, StreamId};

fn key() -> MessageKey {
    MessageKey::from_bytes([9; 32])
}

/// A delta batch of incarnation 3, epoch 2.
fn delta(seq: u64, columns: Vec<ColumnDef>, rows: Vec<RowChange>) -> Batch {
    Batch { stream: stream(), incarnation: 3, producer_epoch: 2, seq, kind: BatchKind::Delta, columns, rows }
}

fn stream() -> StreamId {
    StreamId::parse("cluster_a/public.order_agg").unwrap()
}

fn row_strategy(columns: usize) -> impl Strategy<Value = RowChange> {
    (
        prop::bool::ANY,
        any::<i64>(),
        prop::collection::vec(prop::option::weighted(0.8, "[a-zA-Z0-9 ,.'\"\\\\é€]{0,300}"), columns..=columns),
    )
        .prop_map(|(insert, row_id, values)| RowChange {
            action: if insert { RowAction::Insert } else { RowAction::Delete },
            row_id,
            values,
        })
}

fn batch_strategy() -> impl Strategy<Value = Batch> {
    (1usize..5)
        .prop_flat_map(|columns| {
            (any::<u64>(), prop::bool::ANY, prop::collection::vec(row_strategy(columns), 0..120), Just(columns))
        })
        .prop_map(|(seq, snapshot, rows, columns)| Batch {
            stream: stream(),
            incarnation: 3,
            producer_epoch: 2,
            seq,
            kind: if snapshot { BatchKind::Snapshot } else { BatchKind::Delta },
            columns: (0..columns).map(|i| ColumnDef::new(&format!("c{i}"), "text")).collect(),
            rows,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunks_fit_the_limit_and_reassemble_in_any_order(
        batch in batch_strategy(),
        limit in 1_500usize..20_000,
        order_seed in any::<u64>(),
        duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let messages = batch.encode_chunks(limit, &key()).unwrap();
        prop_assert!(!messages.is_empty());
        for message in &messages {
            prop_assert!(message.len() <= limit, "{} > {}", message.len(), limit);
        }
        // Shuffle deterministically and redeliver some chunks.
        let mut deliveries: Vec<Vec<u8>> = messages.clone();
        for d in &duplicates {
            deliveries.push(messages[d.index(messages.len())].clone());
        }
        let mut state = order_seed | 1;
        for i in (1..deliveries.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            deliveries.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut assembler = Assembler::default();
        let mut completed = Vec::new();
        for message in deliveries {
            if let Some(done) = assembler.add(decode_envelope(&message, &key()).unwrap()).unwrap() {
                completed.push(done);
            }
        }
        // A redelivery after completion starts a new partial batch; what matters is one complete copy, equal.
        prop_assert!(!completed.is_empty());
        prop_assert_eq!(&completed[0], &batch);
    }

    #[test]
    fn any_flipped_byte_is_detected(batch in batch_strategy(), position in any::<prop::sample::Index>(), bit in 0u8..8) {
        let messages = batch.encode_chunks(64 * 1024, &key()).unwrap();
        let mut damaged = messages[0].clone();
        let at = position.index(damaged.len());
        damaged[at] ^= 1 << bit;
        prop_assert!(decode_envelope(&damaged, &key()).is_err());
        prop_assert!(decode_envelope(&damaged[..damaged.len() - 1], &key()).is_err());
    }
}

#[test]
fn an_empty_batch_is_one_message() {
    let batch = Batch {
        stream: stream(),
        incarnation: 3,
        producer_epoch: 2,
        seq: 7,
        kind: BatchKind::Snapshot,
        columns: vec![ColumnDef::new("a", "int")],
        rows: vec![],
    };
    let messages = batch.encode_chunks(1024, &key()).unwrap();
    assert_eq!(messages.len(), 1);
    let mut assembler = Assembler::default();
    assert_eq!(assembler.add(decode_envelope(&messages[0], &key()).unwrap()).unwrap(), Some(batch));
    assert_eq!(assembler.pending(), 0);
}

#[test]
fn impossible_limits_and_bad_rows_are_refused_with_the_reason() {
    let columns = vec![ColumnDef::new("a", "text")];
    let big = RowChange { action: RowAction::Insert, row_id: 9, values: vec![Some("x".repeat(5_000))] };
    let batch = delta(1, columns.clone(), vec![big]);
    assert!(matches!(batch.encode_chunks(2_000, &key()), Err(EnvelopeError::RowTooLarge { row_id: 9, .. })));
    assert!(matches!(batch.encode_chunks(10, &key()), Err(EnvelopeError::LimitTooSmall { .. })));
    let wrong = RowChange { action: RowAction::Delete, row_id: 3, values: vec![None, None] };
    let batch = delta(1, columns, vec![wrong]);
    assert!(matches!(batch.encode_chunks(2_000, &key()), Err(EnvelopeError::Arity { expected: 1, found: 2, .. })));
}

#[test]
fn foreign_records_and_contradicting_chunks_are_refused() {
    let state_record = codec::encode(&("not an envelope".to_string(), 1u64));
    assert!(matches!(decode_envelope(&state_record, &key()), Err(EnvelopeError::Unauthenticated)));
    // Even authenticated, a state record is not an envelope.
    let mut tagged = state_record.clone();
    tagged.extend_from_slice(&key().tag(&state_record));
    assert!(matches!(decode_envelope(&tagged, &key()), Err(EnvelopeError::Codec(codec::CodecError::BadMagic { .. }))));

    let rows: Vec<RowChange> = (0..50)
        .map(|i| RowChange { action: RowAction::Insert, row_id: i, values: vec![Some(format!("value {i:040}"))] })
        .collect();
    let batch = Batch {
        stream: stream(),
        incarnation: 3,
        producer_epoch: 2,
        seq: 4,
        kind: BatchKind::Delta,
        columns: vec![ColumnDef::new("v", "text")],
        rows,
    };
    let messages = batch.encode_chunks(1_500, &key()).unwrap();
    assert!(messages.len() >= 2);
    let mut assembler = Assembler::default();
    let first = decode_envelope(&messages[0], &key()).unwrap();
    assert_eq!(assembler.add(first.clone()).unwrap(), None);
    let mut lying = first.clone();
    lying.rows[0].row_id += 1;
    assert!(matches!(assembler.add(lying), Err(EnvelopeError::Conflict { what: "rows", .. })));
    let mut other_kind = decode_envelope(&messages[1], &key()).unwrap();
    other_kind.kind = BatchKind::Snapshot;
    assert!(matches!(assembler.add(other_kind), Err(EnvelopeError::Conflict { what: "batch kind", .. })));
    // The refusals changed nothing: the real chunks still complete the batch.
    let mut result = None;
    for message in &messages[1..] {
        result = assembler.add(decode_envelope(message, &key()).unwrap()).unwrap();
    }
    assert_eq!(result, Some(batch));
}

proptest! {
    #[test]
    fn a_message_under_another_key_is_refused_before_decoding(batch in batch_strategy(), other in any::<[u8; 32]>()) {
        prop_assume!(other != [9; 32]);
        let forged = batch.encode_chunks(64 * 1024, &MessageKey::from_bytes(other)).unwrap();
        for message in &forged {
            prop_assert!(matches!(decode_envelope(message, &key()), Err(EnvelopeError::Unauthenticated)));
        }
    }
}

#[test]
fn incarnations_never_mix_in_reassembly() {
    let rows: Vec<RowChange> = (0..50)
        .map(|i| RowChange { action: RowAction::Insert, row_id: i, values: vec![Some(format!("value {i:040}"))] })
        .collect();
    let make = |incarnation| Batch {
        stream: stream(),
        incarnation,
        producer_epoch: 2,
        seq: 4,
        kind: BatchKind::Delta,
        columns: vec![ColumnDef::new("v", "text")],
        rows: rows.clone(),
    };
    let old = make(3).encode_chunks(1_500, &key()).unwrap();
    let new = make(8).encode_chunks(1_500, &key()).unwrap();
    assert!(old.len() >= 2);
    let mut assembler = Assembler::default();
    // Every chunk but the last of each: nothing completes from a mix of the two lives of the stream.
    for message in old[..old.len() - 1].iter().chain(&new[..new.len() - 1]) {
        assert_eq!(assembler.add(decode_envelope(message, &key()).unwrap()).unwrap(), None);
    }
    let done = assembler.add(decode_envelope(new.last().unwrap(), &key()).unwrap()).unwrap().unwrap();
    assert_eq!(done, make(8));
    assert_eq!(assembler.pending(), 1);
}
