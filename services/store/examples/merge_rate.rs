//! How fast an embedded store merges facts: batches of 20,000 updates (the
//! materializer's default) for residents drawn at random from a city of
//! `residents`, as pseudonyms are spread over the key space.
//!
//! cargo run --release -p healthcode-store --example merge_rate -- [lsm|btree] [residents] [merges] [reads]
//!
//! Prints the rate every 10 s and at the end; the store is written under a
//! temporary directory on the same disk as `$TMPDIR`. With `reads`, then
//! reads that many random residents back in batches of 500 on 8 tasks at a
//! time, as a verify's BatchGetStatus calls read them.

use std::time::Instant;

use futures_util::StreamExt;

use healthcode_core::{Facts, UnixMicros};
use healthcode_store::{EmbeddedStore, FactsUpdate, LsmStore, StatusStore};

const BATCH: u64 = 20_000;

/// 32 hex characters spread over the key space, as the edge's pseudonyms
/// are (splitmix64 of the resident's number).
fn pseudonym(n: u64) -> String {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    format!("{:016x}{:016x}", mix(n), mix(!n))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "lsm".into());
    let residents: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let merges: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000_000);
    let reads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let retention = healthcode_core::Limits::default().retention;
    let cache = healthcode_store::embedded::DEFAULT_CACHE_BYTES;
    let store: std::sync::Arc<dyn StatusStore> = match kind.as_str() {
        "btree" => std::sync::Arc::new(EmbeddedStore::open_sized(dir.path(), retention, false, cache).unwrap()),
        "lsm" => std::sync::Arc::new(LsmStore::open(dir.path(), retention, cache).unwrap()),
        other => panic!("store {other:?}: lsm or btree"),
    };
    // Recent times: facts past retention would be dropped, not merged.
    let base = UnixMicros::now().0 - 3_600_000_000;
    // A fixed xorshift: the same residents every run, no dependency.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (started, mut reported, mut done) = (Instant::now(), Instant::now(), 0);
    while done < merges {
        let batch: Vec<FactsUpdate> = (0..BATCH)
            .map(|i| {
                let at = Some(UnixMicros(base + (done + i) as i64));
                FactsUpdate {
                    resident: pseudonym(next() % residents),
                    facts: Facts { latest_negatives: [at, None], latest_test: at, updated_at: at, ..Facts::default() },
                }
            })
            .collect();
        store.merge(batch.into()).await.unwrap();
        done += BATCH;
        if reported.elapsed().as_secs() >= 10 {
            println!("{done} merges, {:.0}/s so far", done as f64 / started.elapsed().as_secs_f64());
            reported = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{kind}: {done} merges over {residents} residents in {secs:.1} s = {:.0} merges/s ({:.1} ms per batch of {BATCH})",
        done as f64 / secs,
        secs * 1000.0 / (done / BATCH) as f64
    );
    if reads == 0 {
        return;
    }
    let started = Instant::now();
    let batches: Vec<Vec<String>> =
        (0..reads.div_ceil(500)).map(|_| (0..500).map(|_| pseudonym(next() % residents)).collect()).collect();
    let found = futures_util::stream::iter(batches)
        .map(|batch| {
            let store = store.clone();
            async move { tokio::spawn(async move { store.get_many(&batch).await.unwrap() }).await.unwrap() }
        })
        .buffer_unordered(8)
        .map(|read| read.iter().filter(|f| f.is_some()).count())
        .fold(0, |all, n| async move { all + n })
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!("{kind}: {reads} random reads in {secs:.1} s = {:.0} reads/s ({found} found)", reads as f64 / secs);
}
