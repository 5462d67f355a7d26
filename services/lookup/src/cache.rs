//! The lookup's cache of resident facts (quick_cache: CLOCK-Pro over sharded
//! locks, so a hit is a read lock and a reference bit, with no per-read
//! housekeeping; moka's read path was 11% of a lookup's CPU). A read younger
//! than `fresh_for` is answered without the store; concurrent lookups of one
//! resident share one store read (a placeholder while nothing is cached, the
//! entry's own once-cell while it refreshes). Entries are kept for
//! `stale_for` after their last write as the last known facts: when the
//! store fails or misses the deadline, they answer, flagged stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use healthcode_core::Facts;
use healthcode_store::{FactsUpdate, StatusStore, StoreError};
use quick_cache::sync::{EntryAction, EntryResult};

use crate::tokens::TokenSlot;

/// A resident's facts as last read or merged, shared by every answer made
/// from them (never copied per lookup), with the status token last signed
/// for them.
#[derive(Debug)]
pub struct Known {
    pub facts: Option<Facts>,
    read_at: Instant,
    /// When this value went into the cache: it lives `stale_for` from then.
    stored_at: Instant,
    /// What the entry weighs besides its key (see [`facts_bytes`]).
    bytes: usize,
    pub token: TokenSlot,
    /// The one refresh of these facts from the store that concurrent
    /// lookups share once they are no longer fresh.
    refreshed: tokio::sync::OnceCell<Arc<Known>>,
    /// For the city's site-risk registry: the active risks these facts
    /// hold, derived once per cached value (every lookup needs them, and a
    /// lock around them made lookups wait on each other).
    pub site_risks: std::sync::OnceLock<Arc<healthcode_core::SiteRisks>>,
}

impl Known {
    /// The facts that replace `before`'s (merged into, or read again),
    /// with its status token: the token is reused only while it vouches
    /// for what these facts answer (see [`crate::tokens`]).
    fn following(before: Option<&Known>, facts: Option<Facts>, read_at: Instant) -> Arc<Known> {
        Self::with_token(facts, read_at, before.map(|b| b.token.carried()).unwrap_or_default())
    }

    fn with_token(facts: Option<Facts>, read_at: Instant, token: TokenSlot) -> Arc<Known> {
        let bytes = facts_bytes(facts.as_ref());
        let (refreshed, site_risks) = (tokio::sync::OnceCell::new(), Default::default());
        Arc::new(Known { facts, read_at, stored_at: Instant::now(), bytes, token, refreshed, site_risks })
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

/// An entry's weight: its bytes, but never less than `floor` (the byte
/// bound over the resident bound), so one weight bounds both.
#[derive(Clone)]
struct Weight {
    floor: u64,
}

impl quick_cache::Weighter<String, Arc<Known>> for Weight {
    fn weight(&self, key: &String, known: &Arc<Known>) -> u64 {
        ((key.len() + known.bytes) as u64).max(self.floor)
    }
}

type Entries = quick_cache::sync::Cache<String, Arc<Known>, Weight, foldhash::fast::RandomState>;

pub struct FactsCache {
    entries: Entries,
    fresh_for: Duration,
    stale_for: Duration,
    /// Counts calls of [`FactsCache::merged`]: a read of the store that a
    /// merge overtook may hold facts from before it, so it is kept as not
    /// fresh.
    merges: AtomicU64,
}

/// What a status token adds to an entry once signed (it is not reweighed).
const TOKEN_BYTES: usize = 200;

/// About what an entry holds in memory besides its key: the facts with
/// their strings, a status token.
fn facts_bytes(facts: Option<&Facts>) -> usize {
    let facts = facts.map_or(0, |f| {
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
    size_of::<Known>() + facts + TOKEN_BYTES
}

impl FactsCache {
    /// At most `capacity` residents and about `max_bytes` of facts: an entry
    /// weighs its size, but never less than `max_bytes / capacity`, so one
    /// weight bounds both (a resident with 64 long override notes weighs
    /// what it holds; typical ones count as residents).
    pub fn new(capacity: u64, max_bytes: u64, fresh_for: Duration, stale_for: Duration) -> FactsCache {
        let floor = (max_bytes / capacity.max(1)).max(1);
        // Keys are pseudonyms (HMAC output): a fast seeded hash is enough.
        let entries = quick_cache::sync::Cache::with(
            usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            max_bytes.max(1),
            Weight { floor },
            foldhash::fast::RandomState::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
        FactsCache { entries, fresh_for, stale_for, merges: AtomicU64::new(0) }
    }

    fn fresh(&self, known: &Known) -> bool {
        known.read_at.elapsed() < self.fresh_for
    }

    /// The cached facts of `key` unless older than `stale_for`.
    fn cached(&self, key: &str) -> Option<Arc<Known>> {
        self.entries.get(key).filter(|known| known.stored_at.elapsed() < self.stale_for)
    }

    /// What a read of the store that began at `merges_before` leaves in the
    /// cache: its facts, fresh unless a merge came since (that merge may
    /// have found nothing to fold into, or been overwritten by this read),
    /// in which case they are kept as not fresh so the next lookup rereads.
    /// `before` is the value it replaces, if any.
    fn cached_read(&self, facts: Option<Facts>, merges_before: u64, before: Option<&Known>) -> Arc<Known> {
        let read_at = Instant::now();
        let overtaken = self.merges.load(Ordering::SeqCst) != merges_before;
        let read_at = overtaken.then(|| read_at.checked_sub(self.fresh_for)).flatten().unwrap_or(read_at);
        Known::following(before, facts, read_at)
    }

    /// Reads `key` from the store: what to cache (see `cached_read`) and
    /// what to answer; `before` is the cached value it replaces, if any.
    async fn read_store(
        &self,
        key: &str,
        store: &dyn StatusStore,
        before: Option<&Known>,
    ) -> Result<(Arc<Known>, Arc<Known>), StoreError> {
        let merges_before = self.merges.load(Ordering::SeqCst);
        let cached = self.cached_read(store.get(key).await?, merges_before, before);
        Ok((cached.clone(), self.answer(cached)))
    }

    /// Reads `key` from the store and caches it; the answer is the fresh
    /// read even when the cache keeps it as not fresh.
    async fn load(&self, key: &str, store: &dyn StatusStore, before: &Known) -> Result<Arc<Known>, StoreError> {
        let (cached, answer) = self.read_store(key, store, Some(before)).await?;
        self.entries.insert(key.to_owned(), cached);
        Ok(answer)
    }

    /// The answer of a read of the store that left `cached`: the cached
    /// value itself (its token slot shared) unless kept as not fresh, then
    /// the same facts as read now.
    fn answer(&self, cached: Arc<Known>) -> Arc<Known> {
        if self.fresh(&cached) { cached } else { Known::following(Some(&cached), cached.facts.clone(), Instant::now()) }
    }

    /// One resident's facts within `deadline`; `Err` only when the store
    /// failed and nothing is cached.
    pub async fn read(&self, key: &str, store: &dyn StatusStore, deadline: Duration) -> Result<Read, ReadError> {
        let failure = match self.cached(key) {
            Some(known) if self.fresh(&known) => return Ok(Read::Cached(known)),
            // Not fresh: one refresh per cached value, shared by every
            // lookup that holds it; the value stays cached for a stale answer.
            Some(old) => {
                let refresh = old.refreshed.get_or_try_init(|| self.load(key, store, &old));
                match tokio::time::timeout(deadline, refresh).await {
                    Ok(Ok(known)) => return Ok(Read::Store(known.clone())),
                    Ok(Err(e)) => ReadError::Store(e),
                    Err(_) => ReadError::Late(deadline),
                }
            }
            // Nothing cached: the first lookup reads under a placeholder
            // that the others wait for.
            None => {
                let first = async {
                    match self.entries.get_value_or_guard_async(key).await {
                        // Another lookup's read, answered while we waited.
                        Ok(known) if self.fresh(&known) => Ok(Read::Cached(known)),
                        // An entry too old to answer, that `cached` did not give.
                        Ok(old) => self.load(key, store, &old).await.map(Read::Store),
                        Err(guard) => {
                            let (cached, answer) = self.read_store(key, store, None).await?;
                            let _ = guard.insert(cached);
                            Ok(Read::Store(answer))
                        }
                    }
                };
                match tokio::time::timeout(deadline, first).await {
                    Ok(Ok(read)) => return Ok(read),
                    Ok(Err(e)) => ReadError::Store(e),
                    Err(_) => ReadError::Late(deadline),
                }
            }
        };
        match self.cached(key) {
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
        // Each with the cached value its read replaces, if any.
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.cached(key) {
                Some(known) if self.fresh(&known) => out.push(Some(Read::Cached(known))),
                old => {
                    out.push(None);
                    missing.push((i, old));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let wanted: Vec<String> = missing.iter().map(|(i, _)| keys[*i].clone()).collect();
        let merges_before = self.merges.load(Ordering::SeqCst);
        match tokio::time::timeout(deadline, store.get_many(&wanted)).await {
            Ok(Ok(read)) => {
                for ((i, old), facts) in missing.into_iter().zip(read) {
                    // This read held no placeholder: a merge may have come
                    // between the store's answer and now, so it is cached as
                    // not fresh then (see `cached_read`).
                    let cached = self.cached_read(facts, merges_before, old.as_deref());
                    self.entries.insert(keys[i].clone(), cached.clone());
                    out[i] = Some(Read::Store(self.answer(cached)));
                }
            }
            failed => {
                let mut failure = Some(match failed {
                    Ok(Err(e)) => ReadError::Store(e),
                    _ => ReadError::Late(deadline),
                });
                for (i, _) in missing {
                    match self.cached(&keys[i]) {
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
    /// not cached stay so; a first read of one in flight is waited for, so
    /// its answer gets the update too. The process that runs both wires this
    /// to the materializer's `MergeObserver`.
    pub async fn merged(&self, updates: &[FactsUpdate]) {
        // Before any entry: a read that checks after this sees it.
        self.merges.fetch_add(1, Ordering::SeqCst);
        for update in updates {
            let joined = |_: &String, known: &mut Arc<Known>| {
                let facts = Some(known.facts.clone().unwrap_or_default().merged(&update.facts));
                *known = Known::following(Some(known), facts, known.read_at);
                EntryAction::Retain(())
            };
            // Vacant: a placeholder taken here and dropped, so nothing is cached.
            match self.entries.entry_async(update.resident.as_str(), joined).await {
                EntryResult::Retained(()) | EntryResult::Vacant(_) => {}
                EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => {
                    unreachable!("the join retains every entry it finds and waits without a timeout")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use healthcode_core::UnixMicros;
    use tokio::sync::Semaphore;

    use super::*;

    /// A store whose batch reads (and single reads, with `gate_gets`)
    /// answer what it held when they began, and wait for a permit before
    /// answering.
    struct SlowBatchStore {
        facts: std::sync::Mutex<Option<Facts>>,
        gate: Semaphore,
        reads: AtomicU64,
        gate_gets: bool,
    }

    impl SlowBatchStore {
        fn new(gate_gets: bool) -> Arc<SlowBatchStore> {
            Arc::new(SlowBatchStore {
                facts: Default::default(),
                gate: Semaphore::new(0),
                reads: AtomicU64::new(0),
                gate_gets,
            })
        }
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
            let held = self.facts.lock().unwrap().clone();
            if self.gate_gets {
                self.gate.acquire().await.unwrap().forget();
            }
            Ok(held)
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
        let store = SlowBatchStore::new(false);
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

    fn positive_update() -> FactsUpdate {
        let positive = UnixMicros(1_800_000_000_000_000);
        FactsUpdate {
            resident: "p1".into(),
            facts: Facts { latest_positive: Some(positive), latest_test: Some(positive), ..Facts::default() },
        }
    }

    /// Lets every spawned task of this (current-thread) runtime run up to
    /// its next wait.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_merge_during_a_first_read_of_a_resident_is_not_lost() {
        let store = SlowBatchStore::new(true);
        let cache = Arc::new(FactsCache::new(100, 1 << 20, Duration::from_secs(3600), Duration::from_secs(3600)));
        let read = {
            let (cache, store) = (cache.clone(), store.clone());
            tokio::spawn(async move { cache.read("p1", &*store, Duration::from_secs(10)).await })
        };
        settle().await;
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        // The store holds the update; the read in flight saw it without.
        let update = positive_update();
        store.merge(vec![update.clone()].into()).await.unwrap();
        let merged = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.merged(&[update]).await })
        };
        settle().await;
        store.gate.add_permits(1);
        assert_eq!(read.await.unwrap().unwrap().known().facts, None, "the read answers what it read");
        merged.await.unwrap();

        store.gate.add_permits(10);
        let next = cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap();
        assert!(next.known().facts.as_ref().is_some_and(|f| f.latest_positive.is_some()), "{next:?}");
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_a_resident_share_one_store_read_and_fall_back_stale() {
        // Nothing is ever fresh: every lookup refreshes what is cached.
        let store = SlowBatchStore::new(true);
        let cache = Arc::new(FactsCache::new(100, 1 << 20, Duration::ZERO, Duration::from_secs(3600)));
        store.gate.add_permits(1);
        assert!(matches!(cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap(), Read::Store(_)));
        let lookups: Vec<_> = (0..10)
            .map(|_| {
                let (cache, store) = (cache.clone(), store.clone());
                tokio::spawn(async move { cache.read("p1", &*store, Duration::from_secs(10)).await })
            })
            .collect();
        settle().await;
        store.gate.add_permits(1);
        for lookup in lookups {
            assert!(matches!(lookup.await.unwrap().unwrap(), Read::Store(_)));
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 2, "ten lookups, one refresh");

        // A refresh that misses its deadline answers the cached facts, stale.
        let late = cache.read("p1", &*store, Duration::from_millis(20)).await.unwrap();
        assert!(late.stale(), "{late:?}");
    }

    #[tokio::test]
    async fn a_status_token_outlives_merges_and_rereads_that_leave_the_answer_as_it_was() {
        use healthcode_proto::v1 as pb;
        let dir = tempfile::tempdir().unwrap();
        let (signing, keys) = (dir.path().join("signing.toml"), dir.path().join("keys.toml"));
        healthcode_status_token::Signer::generate(&signing, &keys, "k1").unwrap();
        let signer = healthcode_status_token::Signer::from_file(&signing, Duration::from_secs(3600)).unwrap();
        let tokens = crate::tokens::TokenReuse::new(Arc::new(signer), Duration::from_secs(60));
        let answer = |color: pb::Color| pb::ResidentStatus {
            resident_id: "r1".into(),
            color: color as i32,
            ..Default::default()
        };
        let scan = |at: i64| FactsUpdate {
            resident: "p1".into(),
            facts: Facts {
                latest_scan: Some(healthcode_core::ScanFact {
                    scanned_at: UnixMicros(at),
                    event_id: format!("s{at}"),
                    site_id: "site".into(),
                    station_id: "st".into(),
                    kind: healthcode_core::ScanKind::VenueEntry,
                }),
                ..Facts::default()
            },
        };
        let store = SlowBatchStore::new(false);
        let fresh_for = Duration::from_millis(50);
        let cache = FactsCache::new(100, 1 << 20, fresh_for, Duration::from_secs(3600));
        let now = UnixMicros::now();
        store.merge(vec![scan(1)].into()).await.unwrap();
        let first = cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap();
        let signed = tokens.token(&first.known().token, &answer(pb::Color::Green), now);

        // A scan merged in: new facts, the same answer, the same token.
        store.merge(vec![scan(2)].into()).await.unwrap();
        cache.merged(&[scan(2)]).await;
        let merged = cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(merged, Read::Cached(_)), "{merged:?}");
        assert!(!Arc::ptr_eq(first.known(), merged.known()), "the merge made new facts");
        assert_eq!(tokens.token(&merged.known().token, &answer(pb::Color::Green), now), signed);

        // Reread from the store once no longer fresh: still the same token.
        std::thread::sleep(fresh_for + Duration::from_millis(10));
        let reread = cache.read("p1", &*store, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(reread, Read::Store(_)), "{reread:?}");
        assert_eq!(tokens.token(&reread.known().token, &answer(pb::Color::Green), now), signed);

        // A changed answer is signed anew.
        let red = tokens.token(&reread.known().token, &answer(pb::Color::Red), now);
        assert_ne!(red, signed);
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
        assert!(Known::following(None, Some(heavy.clone()), Instant::now()).bytes > 64 * 1024);
        for i in 0..20 {
            cache.entries.insert(format!("heavy{i}"), Known::following(None, Some(heavy.clone()), Instant::now()));
        }
        assert!(cache.entries.weight() <= max_bytes, "{} bytes", cache.entries.weight());
        assert!(cache.entries.len() < 20, "twenty residents of 70 KB each do not fit in 400 KB");

        for i in 0..3_000 {
            cache.entries.insert(format!("light{i}"), Known::following(None, None, Instant::now()));
        }
        assert!(cache.entries.len() as u64 <= capacity, "{} residents", cache.entries.len());
    }
}
