//! The lookup's cache of resident facts (moka). A read younger than
//! `fresh_for` is answered without the store; concurrent lookups of one
//! resident share one store read (moka serialises computations per key, and
//! the later ones find the entry fresh). Entries are kept for `stale_for` as
//! the last known facts: when the store fails or misses the deadline, they
//! answer, flagged stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use healthcode_core::Facts;
use healthcode_store::{FactsUpdate, StatusStore, StoreError};

use crate::tokens::TokenSlot;
use moka::ops::compute::{CompResult, Op};

/// A resident's facts as last read or merged, shared by every answer made
/// from them (never copied per lookup), with the status token last signed
/// for them.
#[derive(Debug)]
pub struct Known {
    pub facts: Option<Facts>,
    read_at: Instant,
    pub token: TokenSlot,
}

impl Known {
    fn new(facts: Option<Facts>, read_at: Instant) -> Arc<Known> {
        Arc::new(Known { facts, read_at, token: TokenSlot::default() })
    }
}

/// Where an answer came from.
#[derive(Clone, Debug)]
pub enum Read {
    /// Read from the store now.
    Store(Arc<Known>),
    /// From the cache, younger than `fresh_for`.
    Cached(Arc<Known>),
    /// From the cache, older: the store failed or was too slow.
    Stale(Arc<Known>),
}

impl Read {
    pub fn known(&self) -> &Arc<Known> {
        match self {
            Read::Store(k) | Read::Cached(k) | Read::Stale(k) => k,
        }
    }

    pub fn stale(&self) -> bool {
        matches!(self, Read::Stale(_))
    }
}

pub struct FactsCache {
    entries: moka::future::Cache<String, Arc<Known>, foldhash::fast::RandomState>,
    fresh_for: Duration,
    /// Counts calls of [`FactsCache::merged`]: a batch read that a merge
    /// overtook may hold facts from before it, so it is kept as not fresh.
    merges: AtomicU64,
}

/// What a status token adds to an entry once signed (it is not reweighed).
const TOKEN_BYTES: usize = 200;

/// About what an entry holds in memory: the key, the facts with their
/// strings, a status token.
fn entry_bytes(key: &str, known: &Known) -> usize {
    let facts = known.facts.as_ref().map_or(0, |f| {
        let overrides: usize = f
            .overrides
            .iter()
            .map(|o| {
                size_of::<healthcode_core::OverrideFact>() + o.event_id.len() + o.authority_id.len() + o.note.len()
            })
            .sum();
        let scan = f.latest_scan.as_ref().map_or(0, |s| s.event_id.len() + s.site_id.len() + s.station_id.len());
        let visits: usize = f.visits.iter().map(|v| size_of::<healthcode_core::VisitFact>() + v.site_id.len()).sum();
        let risks: usize = f
            .site_risks
            .iter()
            .map(|r| size_of::<healthcode_core::SiteRiskFact>() + r.risk_id.len() + r.event_id.len() + r.note.len())
            .sum();
        overrides + scan + visits + risks
    });
    key.len() + size_of::<Known>() + facts + TOKEN_BYTES
}

impl FactsCache {
    /// At most `capacity` residents and about `max_bytes` of facts: an entry
    /// weighs its size, but never less than `max_bytes / capacity`, so one
    /// weight bounds both (a resident with 64 long override notes weighs
    /// what it holds; typical ones count as residents).
    pub fn new(capacity: u64, max_bytes: u64, fresh_for: Duration, stale_for: Duration) -> FactsCache {
        let floor = (max_bytes / capacity.max(1)).clamp(1, u64::from(u32::MAX));
        FactsCache {
            // Keys are pseudonyms (HMAC output): a fast seeded hash is enough.
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |key: &String, known: &Arc<Known>| {
                    (entry_bytes(key, known) as u64).clamp(floor, u64::from(u32::MAX)) as u32
                })
                .time_to_live(stale_for)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            fresh_for,
            merges: AtomicU64::new(0),
        }
    }

    fn fresh(&self, known: &Known) -> bool {
        known.read_at.elapsed() < self.fresh_for
    }

    /// One resident's facts within `deadline`; `Err` only when the store
    /// failed and nothing is cached.
    pub async fn read(&self, key: &str, store: &dyn StatusStore, deadline: Duration) -> Result<Read, ReadError> {
        // Most lookups find fresh facts: answer them without the entry's
        // compute lock, which only a read of the store needs.
        if let Some(known) = self.entries.get(key).await
            && self.fresh(&known)
        {
            return Ok(Read::Cached(known));
        }
        let load = self.entries.entry_by_ref(key).and_try_compute_with(|entry| async move {
            match entry {
                Some(e) if self.fresh(e.value()) => Ok::<_, StoreError>(Op::Nop),
                _ => {
                    let facts = store.get(key).await?;
                    Ok(Op::Put(Known::new(facts, Instant::now())))
                }
            }
        });
        let failure = match tokio::time::timeout(deadline, load).await {
            Ok(Ok(result)) => {
                // Unchanged: the entry was fresh (another caller's read, or the window).
                let hit = matches!(result, CompResult::Unchanged(_));
                let known = result.into_entry().expect("computed or fresh").into_value();
                return Ok(if hit { Read::Cached(known) } else { Read::Store(known) });
            }
            Ok(Err(e)) => ReadError::Store(e),
            Err(_) => ReadError::Late(deadline),
        };
        match self.entries.get(key).await {
            Some(known) => Ok(Read::Stale(known)),
            None => Err(failure),
        }
    }

    /// Many residents' facts, in order: the fresh ones from the cache, the
    /// rest in one store read within `deadline`. `Err` when the store failed
    /// and one of them is not cached.
    pub async fn read_many(
        &self,
        keys: &[String],
        store: &dyn StatusStore,
        deadline: Duration,
    ) -> Result<Vec<Read>, ReadError> {
        let mut out: Vec<Option<Read>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.entries.get(key).await {
                Some(known) if self.fresh(&known) => out.push(Some(Read::Cached(known))),
                _ => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let wanted: Vec<String> = missing.iter().map(|i| keys[*i].clone()).collect();
        let merges_before = self.merges.load(Ordering::SeqCst);
        match tokio::time::timeout(deadline, store.get_many(&wanted)).await {
            Ok(Ok(read)) => {
                for (i, facts) in missing.into_iter().zip(read) {
                    let read_at = Instant::now();
                    let known = Known::new(facts, read_at);
                    // Unlike a single read, this read held no entry's lock:
                    // a merge may have come between the store's answer and
                    // now and found nothing to fold into. The entry is then
                    // kept as not fresh, so the next lookup rereads. Decided
                    // under the entry's lock, which a merge of it waits for.
                    let _ = self
                        .entries
                        .entry_by_ref(&keys[i])
                        .and_compute_with(|_| {
                            let overtaken = self.merges.load(Ordering::SeqCst) != merges_before;
                            let value = match overtaken {
                                false => Some(known.clone()),
                                true => read_at.checked_sub(self.fresh_for).map(|t| Known::new(known.facts.clone(), t)),
                            };
                            std::future::ready(value.map_or(Op::Nop, Op::Put))
                        })
                        .await;
                    out[i] = Some(Read::Store(known));
                }
            }
            failed => {
                let mut failure = Some(match failed {
                    Ok(Err(e)) => ReadError::Store(e),
                    _ => ReadError::Late(deadline),
                });
                for i in missing {
                    match self.entries.get(&keys[i]).await {
                        Some(known) => out[i] = Some(Read::Stale(known)),
                        None => return Err(failure.take().expect("returned at the first miss")),
                    }
                }
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every slot filled")).collect())
    }
}

/// Why a read has no answer, not even a stale one.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(StoreError),
    #[error("no answer within {} ms", .0.as_millis())]
    Late(Duration),
}

impl FactsCache {
    /// Folds updates the materializer of this process merged into the store
    /// into the cached facts (a join, so it is safe in any order). Residents
    /// not cached stay so. The process that runs both wires this to the
    /// materializer's `MergeObserver`.
    pub async fn merged(&self, updates: &[FactsUpdate]) {
        // Before any entry: a batch read that checks after this sees it.
        self.merges.fetch_add(1, Ordering::SeqCst);
        for update in updates {
            self.entries
                .entry_by_ref(&update.resident)
                .and_compute_with(|entry| async move {
                    match entry {
                        Some(e) => {
                            let known = e.into_value();
                            let facts = Some(known.facts.clone().unwrap_or_default().merged(&update.facts));
                            Op::Put(Known::new(facts, known.read_at))
                        }
                        None => Op::Nop,
                    }
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use healthcode_core::UnixMicros;
    use tokio::sync::Semaphore;

    use super::*;

    /// A store whose batch reads answer what it held when they began, and
    /// wait for a permit before answering.
    struct SlowBatchStore {
        facts: std::sync::Mutex<Option<Facts>>,
        gate: Semaphore,
        reads: AtomicU64,
    }

    #[async_trait::async_trait]
    impl StatusStore for SlowBatchStore {
        async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError> {
            let mut facts = self.facts.lock().unwrap();
            for u in updates.iter() {
                *facts = Some(facts.clone().unwrap_or_default().merged(&u.facts));
            }
            Ok(())
        }
        async fn get(&self, _: &str) -> Result<Option<Facts>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.facts.lock().unwrap().clone())
        }
        async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let held = self.facts.lock().unwrap().clone();
            self.gate.acquire().await.unwrap().forget();
            Ok(residents.iter().map(|_| held.clone()).collect())
        }
        async fn purge_expired(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn scan(&self, _: Option<String>, _: usize) -> Result<healthcode_store::ScanPage, StoreError> {
            unreachable!("lookups never scan")
        }
        async fn count_visitors(&self, _: &str, _: UnixMicros, _: UnixMicros) -> Result<u64, StoreError> {
            unreachable!("lookups never count visitors")
        }
        async fn record_decisions(&self, _: Arc<[healthcode_core::AuditEntry]>) -> Result<(), StoreError> {
            unreachable!("the cache never writes the audit record")
        }
        async fn decisions(
            &self,
            _: &str,
            _: Option<healthcode_core::AuditCursor>,
            _: usize,
        ) -> Result<healthcode_core::AuditPage, StoreError> {
            unreachable!("the cache never reads the audit record")
        }
    }

    #[tokio::test]
    async fn a_merge_that_overtakes_a_batch_read_is_not_lost() {
        let store =
            Arc::new(SlowBatchStore { facts: Default::default(), gate: Semaphore::new(0), reads: AtomicU64::new(0) });
        let cache = Arc::new(FactsCache::new(100, 1 << 20, Duration::from_secs(3600), Duration::from_secs(3600)));
        let keys = vec!["p1".to_owned()];
        let read = {
            let (cache, store, keys) = (cache.clone(), store.clone(), keys.clone());
            tokio::spawn(async move { cache.read_many(&keys, &*store, Duration::from_secs(10)).await })
        };
        while store.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The materializer writes the store, then tells the cache, while the
        // batch read still holds what the store had before.
        let positive = UnixMicros(1_800_000_000_000_000);
        let update = FactsUpdate {
            resident: "p1".into(),
            facts: Facts { latest_positive: Some(positive), latest_test: Some(positive), ..Facts::default() },
        };
        store.merge(vec![update.clone()].into()).await.unwrap();
        cache.merged(&[update]).await;
        store.gate.add_permits(1);
        let first = read.await.unwrap().unwrap();
        assert_eq!(first[0].known().facts, None, "the batch read answers what it read");

        let next = cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(next, Read::Store(_)), "the overtaken read must not be taken as fresh: {next:?}");
        assert_eq!(next.known().facts.as_ref().and_then(|f| f.latest_positive), Some(positive));
    }

    fn heavy_facts() -> Facts {
        let overrides = (0..64)
            .map(|i| healthcode_core::OverrideFact {
                issued_at: UnixMicros(1_800_000_000_000_000 + i),
                event_id: format!("o{i}"),
                expires_at: UnixMicros(1_800_000_100_000_000),
                color: healthcode_core::Color::Yellow,
                authority_id: "cdc".into(),
                note: "n".repeat(1024),
            })
            .collect();
        Facts { overrides, ..Facts::default() }
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes_and_in_residents() {
        let (capacity, max_bytes) = (1_000, 400_000);
        let cache = FactsCache::new(capacity, max_bytes, Duration::from_secs(60), Duration::from_secs(60));
        let heavy = heavy_facts();
        assert!(entry_bytes("k", &Known::new(Some(heavy.clone()), Instant::now())) > 64 * 1024);
        for i in 0..20 {
            cache.entries.insert(format!("heavy{i}"), Known::new(Some(heavy.clone()), Instant::now())).await;
        }
        cache.entries.run_pending_tasks().await;
        assert!(cache.entries.weighted_size() <= max_bytes, "{} bytes", cache.entries.weighted_size());
        assert!(cache.entries.entry_count() < 20, "twenty residents of 70 KB each do not fit in 400 KB");

        for i in 0..3_000 {
            cache.entries.insert(format!("light{i}"), Known::new(None, Instant::now())).await;
        }
        cache.entries.run_pending_tasks().await;
        assert!(cache.entries.entry_count() <= capacity, "{} residents", cache.entries.entry_count());
    }
}
