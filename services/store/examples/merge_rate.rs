//! How fast the embedded store merges facts: batches of 2,000 residents (the
//! materializer's default), fresh and already known.
//!
//! cargo run --release -p healthcode-store --example merge_rate -- [batches]

use std::time::Instant;

use healthcode_core::{Facts, UnixMicros};
use healthcode_store::{EmbeddedStore, FactsUpdate, StatusStore};

#[tokio::main]
async fn main() {
    let batches: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), healthcode_core::Limits::default().retention).unwrap();
    // Recent times: facts past retention would be dropped, not merged.
    let base = UnixMicros::now().0 - 3_600_000_000;
    let batch = |b: u64| -> Vec<FactsUpdate> {
        (b * 2000..(b + 1) * 2000)
            .map(|i| FactsUpdate {
                resident: format!("r{i:09}"),
                facts: Facts {
                    latest_negatives: [Some(UnixMicros(base + i as i64)), None],
                    latest_test: Some(UnixMicros(base + i as i64)),
                    updated_at: Some(UnixMicros(base + i as i64)),
                    ..Facts::default()
                },
            })
            .collect()
    };
    for (label, offset) in [("new residents", 0), ("known residents", 0)] {
        let started = Instant::now();
        for b in 0..batches {
            store.merge(batch(b + offset).into()).await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{label}: {} merges in {secs:.2} s = {:.0} residents/s, {:.1} ms per batch of 2000",
            batches * 2000,
            (batches * 2000) as f64 / secs,
            secs * 1000.0 / batches as f64
        );
    }
}
