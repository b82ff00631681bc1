//! Heap bytes the idempotency cache spends per remembered answer of a batched advance (100 `FrontierAdvanced`
//! events), held as values (as before decision 59) and held encoded (`StoredResult`), counted by a global
//! allocator that tracks live bytes. `cargo run --release -p benches --bin idempotency_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use shared_model::idempotency::StoredResult;
use shared_model::{Applied, BatchKind, BrokerPosition, Event, StreamId};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ANSWERS: usize = 10_000;
const ADVANCES: u64 = 100;

fn answer(c: usize) -> Result<Applied, shared_model::CommandError> {
    let events = (0..ADVANCES)
        .map(|s| Event::FrontierAdvanced {
            stream: StreamId::parse(&format!("site{:04}/public.t{s:03}", c % 1000)).unwrap(),
            seq: c as u64 + 1,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: c as i64 * 1000 + s as i64 },
            producer_epoch: 1,
        })
        .collect();
    Ok(Applied { index: c as u64, events })
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let before = live();
    let values: Vec<_> = (0..ANSWERS).map(answer).collect();
    let as_values = (live() - before) as f64 / ANSWERS as f64;
    drop(values);
    let before = live();
    let encoded: Vec<StoredResult> = (0..ANSWERS).map(|c| StoredResult::new(&answer(c))).collect();
    let as_encoded = (live() - before) as f64 / ANSWERS as f64;
    let encoded_len = encoded.iter().map(StoredResult::encoded_len).sum::<usize>() as f64 / ANSWERS as f64;
    println!(
        "{}",
        serde_json::json!({"measure": "idempotency_answer_heap_bytes", "advances_per_answer": ADVANCES,
                           "as_values": as_values, "encoded": as_encoded, "encoded_len": encoded_len})
    );
}
