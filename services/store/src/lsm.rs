//! The one-process store: facts in a log-structured merge tree (fjall) under
//! the data directory.
//!
//! Why not the B-tree ([`crate::EmbeddedStore`]) here: a merge touches
//! residents spread over the whole key space, and a copy-on-write B-tree
//! rewrites a leaf and its interior pages for each of them (about 20 KB
//! written per event once the city no longer fits in the page cache). An LSM
//! tree appends the batch to its journal and memtable and sorts it into
//! tables in the background, so a merge costs the reads and one journal
//! fsync. The price: one process only (fjall locks its directory), so
//! separate roles on one machine keep the B-tree, which redb shares between
//! processes.
//!
//! A merge reads every resident's stored facts, joins, and writes the batch
//! with one fsync of the journal; a lock keeps merges (and the purge) one at
//! a time, so no read-join-write loses another's write. Keys of the two
//! ordered indexes are `len(prefix) ‖ prefix ‖ time ‖ suffix`, the time
//! big-endian with its sign bit flipped so that bytes sort as numbers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fjall::config::{CompressionPolicy, PinningPolicy};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode, UserKey};
use healthcode_core::{AuditCursor, AuditEntry, AuditPage, Facts, UnixMicros};

use crate::embedded::{decode_facts, encode_facts};
use crate::{
    DEFAULT_AUDIT_RETENTION, FactsUpdate, ScanPage, StatusStore, StoreError, decode_entry, encode_entry,
    on_blocking_pool, purged_row, retained, scan_page,
};

fn storage(e: fjall::Error) -> StoreError {
    StoreError::storage_from("fjall", e)
}

/// The directory under the store's directory that holds the LSM tree: its
/// presence says which embedded store a data directory has.
pub const LSM_DIR: &str = "lsm";

/// The journal's bound: writes not yet in tables, in memory and on disk.
const JOURNAL_BYTES: u64 = 128 << 20;

/// At most this many threads read a merge's residents, each at least
/// [`MERGE_READS_PER_THREAD`] of them.
const MERGE_READ_THREADS: usize = 4;
const MERGE_READS_PER_THREAD: usize = 1_000;

/// Merges idle this long: the next read flushes the facts' memtable.
const FLUSH_WHEN_IDLE: Duration = Duration::from_secs(5);

/// Table options for the facts, which every lookup and every merge reads
/// by key in random order (fjall applies them when a keyspace is created;
/// an existing store keeps its own until rebuilt):
/// - data blocks uncompressed: values of about 100 bytes with 32-byte
///   random keys shrink only 1.4x under LZ4, and each read missing the
///   block cache paid a decompression (10% of a 13M verify, and the
///   compactions of a drain decompress and compress every block again);
/// - index and filter blocks pinned in memory on every level, not only the
///   first two: about 20 MB of index and 16 MB of filters for 13M residents,
///   searched on every read instead of fetched through the block cache.
///
/// Measured in docs/benchmarks.md ("Verify on other table options").
fn point_read_options(options: KeyspaceCreateOptions) -> KeyspaceCreateOptions {
    options
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        .index_block_pinning_policy(PinningPolicy::all(true))
        .filter_block_pinning_policy(PinningPolicy::all(true))
}

#[derive(Clone)]
pub struct LsmStore {
    inner: Arc<Inner>,
    retention: Duration,
    audit_retention: Duration,
}

struct Inner {
    db: Database,
    facts: Keyspace,
    /// Every kept visit by site: (site_id, scanned_at, resident) to nothing.
    site_visits: Keyspace,
    /// The audit record: (subject, issued_at, entry id) to an encoded entry.
    audit: Keyspace,
    /// Held by each read-join-write (merge, purge).
    writer: Mutex<()>,
    /// When the facts' memtable was last written, in microseconds after
    /// `opened` plus one; 0 once it is flushed (or being flushed).
    unflushed_since: AtomicU64,
    opened: Instant,
    flush_when_idle: Duration,
    /// Threads for a merge's reads: one per core, at most
    /// [`MERGE_READ_THREADS`] (counted once: std reads cgroup files for it).
    merge_read_threads: usize,
}

impl LsmStore {
    /// Opens (or creates) the store in `dir/lsm` with at most `cache_bytes`
    /// of blocks held in memory (`--store-cache-bytes`).
    pub fn open(dir: &Path, retention: Duration, cache_bytes: usize) -> Result<LsmStore, StoreError> {
        let path = dir.join(LSM_DIR);
        std::fs::create_dir_all(&path)
            .map_err(|e| StoreError::storage_from(format!("creating {}", path.display()), e))?;
        // What is not yet flushed to tables is in memtables and in the
        // journal, so the journal's bound is also the bound on memtables
        // waiting for a flush (fjall's default, 512 MiB, let them take a
        // third of the process through a city round).
        let db = Database::builder(&path)
            .cache_size(cache_bytes as u64)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .map_err(storage)?;
        let keyspace = |name: &str, options: KeyspaceCreateOptions| db.keyspace(name, || options).map_err(storage);
        let options = |memtable: u64| KeyspaceCreateOptions::default().max_memtable_size(memtable);
        let (facts, site_visits, audit) = (
            keyspace("facts", point_read_options(options(32 << 20)))?,
            keyspace("site_visits", options(16 << 20))?,
            keyspace("audit", options(8 << 20))?,
        );
        let opened = Instant::now();
        let inner = Inner {
            db,
            facts,
            site_visits,
            audit,
            writer: Mutex::new(()),
            // What the journal brought back is in the memtable too.
            unflushed_since: AtomicU64::new(1),
            opened,
            flush_when_idle: FLUSH_WHEN_IDLE,
            merge_read_threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(MERGE_READ_THREADS),
        };
        Ok(LsmStore { inner: Arc::new(inner), retention, audit_retention: DEFAULT_AUDIT_RETENTION })
    }

    /// Keeps the audit record for `retention` (`--audit-retention`) instead
    /// of [`DEFAULT_AUDIT_RETENTION`].
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        on_blocking_pool(&self.inner, f).await
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panicked writer left no half-written batch: batches are atomic.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wrote_facts(&self) {
        self.unflushed_since.store(self.opened.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
    }

    /// Every read first searches the active memtable, a skip list of up to
    /// 32 MiB that only more writes would flush; after a surge it would stay
    /// while lookups and verify read around it (13% of a 13M verify,
    /// docs/benchmarks.md). Once merges have been idle a while, the first
    /// read hands it to fjall's flush workers. Done on a read because only
    /// reads gain from it, so an idle store needs no timer.
    fn flush_if_idle(&self) {
        let since = self.unflushed_since.load(Ordering::Relaxed);
        if since == 0 {
            return;
        }
        let idle = (self.opened.elapsed().as_micros() as u64 + 1).saturating_sub(since);
        if idle < self.flush_when_idle.as_micros() as u64
            || self.unflushed_since.compare_exchange(since, 0, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        match self.facts.rotate_memtable() {
            Ok(_) => tracing::debug!(idle_ms = idle / 1000, "facts memtable handed to flush after merges went idle"),
            Err(e) => tracing::warn!(error = %e, "could not flush the idle facts memtable"),
        }
    }

    fn read_facts(&self, resident: &str) -> Result<Option<Facts>, StoreError> {
        self.facts.get(resident).map_err(storage)?.map(|v| decode_facts(&v)).transpose()
    }

    /// The stored facts of each of `residents`, in their order. A merge
    /// holds the writer's lock through its reads, and the materializer
    /// waits for each merge: read on one thread, a drain kept only 1.42 of
    /// two cores busy (docs/benchmarks.md). Large batches are read on
    /// several threads.
    fn read_many<T: Sync>(&self, residents: &[(&str, T)], threads: usize) -> Result<Vec<Option<Facts>>, StoreError> {
        let read = |part: &[(&str, T)]| part.iter().map(|(r, _)| self.read_facts(r)).collect::<Result<Vec<_>, _>>();
        let threads = threads.min(residents.len() / MERGE_READS_PER_THREAD);
        if threads < 2 {
            return read(residents);
        }
        let part = residents.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = residents.chunks(part).map(|p| scope.spawn(move || read(p))).collect();
            let mut all = Vec::with_capacity(residents.len());
            for part in parts {
                all.extend(part.join().map_err(|_| StoreError::storage("a merge's read thread panicked"))??);
            }
            Ok(all)
        })
    }

    /// Writes `batch` with the journal synced to disk: durable when `Ok`.
    fn commit(batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        batch.durability(Some(PersistMode::SyncAll)).commit().map_err(storage)
    }
}

/// Stores a resident's facts, or deletes the row when nothing is left.
fn put(batch: &mut fjall::OwnedWriteBatch, facts_ks: &Keyspace, resident: impl Into<UserKey>, facts: Option<&Facts>) {
    match facts {
        Some(facts) => batch.insert(facts_ks, resident, encode_facts(facts)),
        None => batch.remove(facts_ks, resident),
    }
}

/// `len(prefix) ‖ prefix`: every key of one site or subject starts so.
fn group(prefix: &str) -> Vec<u8> {
    let len = u16::try_from(prefix.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + prefix.len() + 8);
    out.extend(len.to_be_bytes());
    out.extend(&prefix.as_bytes()[..usize::from(len)]);
    out
}

/// A time that sorts as bytes the way it sorts as a number.
fn ordered(at: i64) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(bytes: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(bytes.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// `group(prefix) ‖ ordered(at) ‖ suffix`.
fn index_key(prefix: &str, at: i64, suffix: &str) -> Vec<u8> {
    let mut key = group(prefix);
    key.extend(ordered(at));
    key.extend(suffix.as_bytes());
    key
}

/// The time and suffix of an [`index_key`].
fn split_index_key(key: &[u8]) -> Option<(i64, &[u8])> {
    let len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    let rest = key.get(2 + len..)?;
    Some((unordered(rest.get(..8)?)?, &rest[8..]))
}

#[async_trait]
impl StatusStore for LsmStore {
    async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = updates.len();
        let retention = self.retention;
        self.blocking(move |inner| {
            let now = UnixMicros::now();
            let cutoff = now.saturating_sub(retention);
            // A batch is not read back before it commits: join a resident's
            // updates first, so each is read and written once.
            let mut joined: HashMap<&str, Facts> = HashMap::with_capacity(updates.len());
            for update in updates.iter() {
                match joined.get_mut(update.resident.as_str()) {
                    Some(facts) => facts.merge(&update.facts),
                    None => drop(joined.insert(&update.resident, update.facts.clone())),
                }
            }
            let joined: Vec<(&str, Facts)> = joined.into_iter().collect();
            let _writer = inner.lock();
            let stored = inner.read_many(&joined, inner.merge_read_threads)?;
            let mut batch = inner.db.batch();
            for ((resident, facts), stored) in joined.iter().zip(stored) {
                for v in facts.visits.iter().filter(|v| v.scanned_at >= cutoff) {
                    batch.insert(&inner.site_visits, index_key(&v.site_id, v.scanned_at.0, resident), []);
                }
                let stored = stored.unwrap_or_default();
                // Facts past retention are gone even before the purge deletes them.
                let merged = retained(stored.merged(facts), retention, now);
                put(&mut batch, &inner.facts, *resident, merged.as_ref());
            }
            Inner::commit(batch)?;
            inner.wrote_facts();
            Ok(())
        })
        .await?;
        metrics::histogram!("healthcode_store_merge_seconds", "store" => "lsm").record(started.elapsed());
        metrics::counter!("healthcode_store_merged_residents_total", "store" => "lsm").increment(count as u64);
        Ok(())
    }

    async fn get(&self, resident: &str) -> Result<Option<Facts>, StoreError> {
        let mut all = self.get_many(&[resident.to_owned()]).await?;
        Ok(all.pop().flatten())
    }

    async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError> {
        let residents = residents.to_vec();
        let retention = self.retention;
        self.blocking(move |inner| {
            inner.flush_if_idle();
            let now = UnixMicros::now();
            residents
                .iter()
                .map(|r| Ok(inner.read_facts(r)?.and_then(|facts| retained(facts, retention, now))))
                .collect()
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, limit: usize) -> Result<ScanPage, StoreError> {
        let retention = self.retention;
        self.blocking(move |inner| {
            let range = match &cursor {
                Some(after) => inner
                    .facts
                    .range::<&[u8], _>((std::ops::Bound::Excluded(after.as_bytes()), std::ops::Bound::Unbounded)),
                None => inner.facts.iter(),
            };
            let rows = range.map(|entry| {
                let (key, value) = entry.into_inner().map_err(storage)?;
                let resident = String::from_utf8(key.to_vec())
                    .map_err(|e| StoreError::storage_from("a resident key is not UTF-8", e))?;
                Ok((resident, decode_facts(&value)?))
            });
            scan_page(rows, limit, retention, UnixMicros::now())
        })
        .await
    }

    async fn count_visitors(&self, site_id: &str, from: UnixMicros, until: UnixMicros) -> Result<u64, StoreError> {
        let (site, retention) = (site_id.to_owned(), self.retention);
        self.blocking(move |inner| {
            let from = from.max(UnixMicros::now().saturating_sub(retention));
            if from >= until {
                return Ok(0);
            }
            let range = index_key(&site, from.0, "")..index_key(&site, until.0, "");
            let mut residents = std::collections::HashSet::new();
            for entry in inner.site_visits.range(range) {
                let key = entry.key().map_err(storage)?;
                if let Some((_, resident)) = split_index_key(&key) {
                    residents.insert(resident.to_vec());
                }
            }
            Ok(residents.len() as u64)
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let (retention, audit_retention) = (self.retention, self.audit_retention);
        let purged = self
            .blocking(move |inner| {
                let now = UnixMicros::now();
                let _writer = inner.lock();
                let mut batch = inner.db.batch();
                let mut purged = 0;
                for entry in inner.facts.iter() {
                    let (key, value) = entry.into_inner().map_err(storage)?;
                    if let Some(kept) = purged_row(&value, retention, now) {
                        put(&mut batch, &inner.facts, key, kept.as_ref());
                        purged += 1;
                    }
                }
                for (keyspace, keep) in [(&inner.site_visits, retention), (&inner.audit, audit_retention)] {
                    let cutoff = now.saturating_sub(keep).0;
                    for entry in keyspace.iter() {
                        let key = entry.key().map_err(storage)?;
                        if split_index_key(&key).is_some_and(|(at, _)| at < cutoff) {
                            batch.remove(keyspace, key);
                        }
                    }
                }
                Inner::commit(batch)?;
                inner.wrote_facts();
                Ok(purged)
            })
            .await?;
        metrics::counter!("healthcode_store_expired_residents_total", "store" => "lsm").increment(purged);
        Ok(purged)
    }

    async fn record_decisions(&self, entries: Arc<[AuditEntry]>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.blocking(move |inner| {
            let mut batch = inner.db.batch();
            for entry in entries.iter() {
                let key = index_key(&entry.subject, entry.issued_at.0, &entry.entry_id());
                batch.insert(&inner.audit, key, encode_entry(entry));
            }
            Inner::commit(batch)
        })
        .await
    }

    async fn decisions(
        &self,
        subject: &str,
        after: Option<AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let (subject, retention) = (subject.to_owned(), self.audit_retention);
        self.blocking(move |inner| {
            let cutoff = UnixMicros::now().saturating_sub(retention).0;
            // No valid time reaches i64::MAX (timestamps end in year 9999).
            let (end_at, end_id) = after.as_ref().map_or((i64::MAX, ""), |a| (a.issued_at.0, a.entry_id.as_str()));
            let range = index_key(&subject, cutoff, "")..index_key(&subject, end_at, end_id);
            let limit = limit.max(1);
            let entries = inner
                .audit
                .range(range)
                .rev()
                .take(limit + 1)
                .map(|row| decode_entry(&row.value().map_err(storage)?))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AuditPage::from_one_past(entries, limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_as_their_times_and_split_back() {
        let times = [i64::MIN, -5, -1, 0, 1, 7, 1 << 40, i64::MAX];
        let keys: Vec<_> = times.iter().map(|&t| index_key("site-1", t, "r")).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys do not sort by time");
        for (key, &t) in keys.iter().zip(&times) {
            assert_eq!(split_index_key(key), Some((t, b"r".as_slice())));
        }
        // A site whose name extends another's is a group of its own.
        let (short, long) = (index_key("s", i64::MAX, ""), index_key("s1", i64::MIN, ""));
        assert!(!long.starts_with(&group("s")));
        assert_ne!(short[..3], long[..3]);
        assert_eq!(split_index_key(b"\x00"), None);
    }

    #[tokio::test]
    async fn a_merge_read_on_several_threads_pairs_each_resident_with_its_own_facts() {
        let dir = tempfile::tempdir().unwrap();
        let store = LsmStore::open(dir.path(), healthcode_core::validation::DEFAULT_RETENTION, 1 << 20).unwrap();
        let now = UnixMicros::now().0;
        let tested = |i: i64| Facts { latest_test: Some(UnixMicros(now - i)), ..Facts::default() };
        // Every third resident has no facts: absent reads keep their place.
        let ids: Vec<String> = (0..5_000).map(|i| format!("r{i:05}")).collect();
        let stored: Arc<[FactsUpdate]> = (0..5_000i64)
            .filter(|i| i % 3 != 0)
            .map(|i| FactsUpdate { resident: ids[i as usize].clone(), facts: tested(i) })
            .collect();
        store.merge(stored).await.unwrap();
        let residents: Vec<(&str, ())> = ids.iter().rev().map(|r| (r.as_str(), ())).collect();
        let expected = |r: &str| {
            let i: i64 = r[1..].parse().unwrap();
            (i % 3 != 0).then(|| tested(i))
        };
        for threads in [1, 3] {
            let read = store.inner.read_many(&residents, threads).unwrap();
            assert_eq!(read.len(), residents.len());
            for ((r, ()), facts) in residents.iter().zip(read) {
                assert_eq!(facts, expected(r), "{r} on {threads} threads");
            }
        }
        // And through a merge of all 5,000 at once: each keeps its own.
        let again: Arc<[FactsUpdate]> =
            ids.iter().map(|r| FactsUpdate { resident: r.clone(), facts: tested(-1) }).collect();
        store.merge(again).await.unwrap();
        for (r, facts) in ids.iter().zip(store.get_many(&ids).await.unwrap()) {
            let mut want = expected(r).unwrap_or_default();
            want.merge(&tested(-1));
            assert_eq!(facts, Some(want), "{r}");
        }
    }

    #[tokio::test]
    async fn the_first_read_after_merges_go_idle_flushes_the_facts_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LsmStore::open(dir.path(), healthcode_core::validation::DEFAULT_RETENTION, 1 << 20).unwrap();
        Arc::get_mut(&mut store.inner).expect("one handle").flush_when_idle = Duration::from_millis(300);
        let tested = Facts { latest_test: Some(UnixMicros::now()), ..Facts::default() };
        let update = |r: &str| vec![FactsUpdate { resident: r.into(), facts: tested.clone() }].into();
        // Reads while merges are recent leave the memtable alone.
        store.merge(update("a")).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_ref(), Some(&tested));
        assert_eq!(store.inner.facts.table_count(), 0, "flushed while merges were recent");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.inner.facts.table_count(), 0, "nothing flushes without a read");
        assert_eq!(store.get("a").await.unwrap().as_ref(), Some(&tested));
        let asked = Instant::now();
        while store.inner.facts.table_count() == 0 {
            assert!(asked.elapsed() < Duration::from_secs(10), "the idle memtable was never flushed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A merge after the flush starts the wait again; nothing is lost.
        store.merge(update("b")).await.unwrap();
        assert!(store.inner.unflushed_since.load(Ordering::Relaxed) > 0, "the new merge is unflushed");
        assert_eq!(store.get_many(&["a".into(), "b".into()]).await.unwrap(), vec![Some(tested.clone()), Some(tested)]);
    }
}
