//! The B-tree store: facts in a redb file under the data directory, which
//! several processes of one machine may open (separate roles); `up` keeps
//! its facts in [`crate::LsmStore`] instead (decision 14).
//!
//! A merge is one write transaction (read, join, write back), committed with
//! an fsync before it returns. Facts are kept as a version byte followed by a
//! postcard encoding of [`Facts`]. Facts past retention are invisible at
//! once and deleted by [`StatusStore::purge_expired`]. The audit record is
//! its own table, keyed (subject, issued_at, entry id), with its own
//! retention.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use healthcode_core::{AuditCursor, AuditEntry, AuditPage, Facts, UnixMicros};
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{
    DEFAULT_AUDIT_RETENTION, FactsUpdate, ScanPage, StatusStore, StoreError, decode_entry, encode_entry,
    on_blocking_pool, purged_row, retained, scan_page,
};

const FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("facts");
/// Every kept visit by site: (site_id, scanned_at, resident).
const SITE_VISITS: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("site_visits");
/// The audit record: (subject, issued_at, entry id) to an encoded entry.
const AUDIT: TableDefinition<(&str, i64, &str), &[u8]> = TableDefinition::new("audit");
/// Version 2 added the override audit trail (and notes) to the facts;
/// version 3 the visits and site risks.
const ENCODING: u8 = 3;

fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::storage_from("redb", e.into())
}

/// The default page cache (`--store-cache-bytes`): redb's own default is
/// 1 GiB, and with the log's and the lookup cache that took `up` past 3 GiB
/// through the 13M round.
pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    retention: Duration,
    audit_retention: Duration,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir/store.redb` for this process
    /// alone (`up` on a data directory that has this store): redb keeps its
    /// page cache across transactions.
    pub fn open(dir: &Path, retention: Duration) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, retention, ConcurrencyMode::ExclusiveWriter, DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open`] or [`Self::open_shared`] with at most `cache_bytes` of
    /// pages held in memory (`--store-cache-bytes`).
    pub fn open_sized(
        dir: &Path,
        retention: Duration,
        shared: bool,
        cache_bytes: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        let mode = if shared { ConcurrencyMode::MultiWriter } else { ConcurrencyMode::ExclusiveWriter };
        Self::open_with(dir, retention, mode, cache_bytes)
    }

    /// Opens the store so that other processes of this machine may open it
    /// too (separate materializer and lookup roles). redb coordinates them
    /// with byte-range locks and rereads pages another process may have
    /// changed, so every transaction costs more than in [`Self::open`].
    pub fn open_shared(dir: &Path, retention: Duration) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, retention, ConcurrencyMode::MultiWriter, DEFAULT_CACHE_BYTES)
    }

    fn open_with(
        dir: &Path,
        retention: Duration,
        mode: ConcurrencyMode,
        cache_bytes: usize,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::storage_from(format!("creating {}", dir.display()), e))?;
        let db = Database::builder()
            .set_concurrency_mode(mode)
            .set_cache_size(cache_bytes)
            .create(dir.join("store.redb"))
            .map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(FACTS).map_err(storage)?;
        txn.open_table(SITE_VISITS).map_err(storage)?;
        txn.open_table(AUDIT).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(EmbeddedStore { db: Arc::new(db), retention, audit_retention: DEFAULT_AUDIT_RETENTION })
    }

    /// Keeps the audit record for `retention` (`--audit-retention`) instead
    /// of [`DEFAULT_AUDIT_RETENTION`].
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        on_blocking_pool(&self.db, f).await
    }
}

/// Stores a resident's facts, or deletes the row when nothing is left.
fn put(table: &mut redb::Table<&str, &[u8]>, resident: &str, facts: Option<&Facts>) -> Result<(), StoreError> {
    match facts {
        Some(facts) => table.insert(resident, encode_facts(facts).as_slice()).map(drop),
        None => table.remove(resident).map(drop),
    }
    .map_err(storage)
}

pub fn encode_facts(facts: &Facts) -> Vec<u8> {
    let mut out = vec![ENCODING];
    out.extend(postcard::to_allocvec(facts).expect("facts always serialize"));
    out
}

/// Facts as version 2 wrote them: the same fields, without visits and risks.
#[derive(serde::Deserialize)]
struct FactsV2 {
    latest_positive: Option<UnixMicros>,
    latest_negatives: [Option<UnixMicros>; healthcode_core::facts::NEGATIVES_KEPT],
    latest_test: Option<UnixMicros>,
    overrides: Vec<healthcode_core::OverrideFact>,
    latest_scan: Option<healthcode_core::ScanFact>,
    updated_at: Option<UnixMicros>,
}

pub fn decode_facts(bytes: &[u8]) -> Result<Facts, StoreError> {
    let undecodable = |e| StoreError::storage_from("undecodable facts", e);
    match bytes.split_first() {
        Some((&ENCODING, rest)) => postcard::from_bytes(rest).map_err(undecodable),
        Some((2, rest)) => {
            let v2: FactsV2 = postcard::from_bytes(rest).map_err(undecodable)?;
            Ok(Facts {
                latest_positive: v2.latest_positive,
                latest_negatives: v2.latest_negatives,
                latest_test: v2.latest_test,
                overrides: v2.overrides,
                latest_scan: v2.latest_scan,
                updated_at: v2.updated_at,
                ..Facts::default()
            })
        }
        Some((v, _)) => Err(StoreError::storage(format!("facts encoded with unknown version {v}"))),
        None => Err(StoreError::storage("empty facts value")),
    }
}

#[async_trait]
impl StatusStore for EmbeddedStore {
    async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = updates.len();
        let retention = self.retention;
        self.blocking(move |db| {
            let now = UnixMicros::now();
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut visits = txn.open_table(SITE_VISITS).map_err(storage)?;
                let cutoff = now.saturating_sub(retention);
                for update in updates.iter() {
                    for v in update.facts.visits.iter().filter(|v| v.scanned_at >= cutoff) {
                        visits
                            .insert((v.site_id.as_str(), v.scanned_at.0, update.resident.as_str()), ())
                            .map_err(storage)?;
                    }
                }
                let mut table = txn.open_table(FACTS).map_err(storage)?;
                for update in updates.iter() {
                    let stored = match table.get(update.resident.as_str()).map_err(storage)? {
                        Some(v) => decode_facts(v.value())?,
                        None => Facts::default(),
                    };
                    // Facts past retention are gone even before the purge deletes them.
                    let merged = retained(stored.merged(&update.facts), retention, now);
                    put(&mut table, &update.resident, merged.as_ref())?;
                }
            }
            txn.commit().map_err(storage)
        })
        .await?;
        metrics::histogram!("healthcode_store_merge_seconds", "store" => "embedded").record(started.elapsed());
        metrics::counter!("healthcode_store_merged_residents_total", "store" => "embedded").increment(count as u64);
        Ok(())
    }

    async fn get(&self, resident: &str) -> Result<Option<Facts>, StoreError> {
        let mut all = self.get_many(&[resident.to_owned()]).await?;
        Ok(all.pop().flatten())
    }

    async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError> {
        let residents = residents.to_vec();
        let retention = self.retention;
        self.blocking(move |db| {
            let now = UnixMicros::now();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(FACTS).map_err(storage)?;
            residents
                .iter()
                .map(|r| match table.get(r.as_str()).map_err(storage)? {
                    Some(v) => Ok(retained(decode_facts(v.value())?, retention, now)),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    async fn scan(&self, cursor: Option<String>, limit: usize) -> Result<ScanPage, StoreError> {
        let retention = self.retention;
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(FACTS).map_err(storage)?;
            let range = match &cursor {
                Some(after) => {
                    table.range::<&str>((std::ops::Bound::Excluded(after.as_str()), std::ops::Bound::Unbounded))
                }
                None => table.range::<&str>(..),
            }
            .map_err(storage)?;
            let rows = range.map(|entry| {
                let (key, value) = entry.map_err(storage)?;
                Ok((key.value().to_owned(), decode_facts(value.value())?))
            });
            scan_page(rows, limit, retention, UnixMicros::now())
        })
        .await
    }

    async fn count_visitors(&self, site_id: &str, from: UnixMicros, until: UnixMicros) -> Result<u64, StoreError> {
        let (site, retention) = (site_id.to_owned(), self.retention);
        self.blocking(move |db| {
            let from = from.max(UnixMicros::now().saturating_sub(retention));
            if from >= until {
                return Ok(0);
            }
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(SITE_VISITS).map_err(storage)?;
            let mut residents = std::collections::HashSet::new();
            for entry in table.range((site.as_str(), from.0, "")..(site.as_str(), until.0, "")).map_err(storage)? {
                let (key, ()) = entry.map(|(k, _)| (k, ())).map_err(storage)?;
                residents.insert(key.value().2.to_owned());
            }
            Ok(residents.len() as u64)
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let (retention, audit_retention) = (self.retention, self.audit_retention);
        let purged = self
            .blocking(move |db| {
                let now = UnixMicros::now();
                let txn = db.begin_write().map_err(storage)?;
                let purged = {
                    let mut table = txn.open_table(FACTS).map_err(storage)?;
                    // Residents whose facts shrink: None when nothing is left.
                    let mut changed: Vec<(String, Option<Facts>)> = Vec::new();
                    for entry in table.iter().map_err(storage)? {
                        let (key, value) = entry.map_err(storage)?;
                        if let Some(kept) = purged_row(value.value(), retention, now) {
                            changed.push((key.value().to_owned(), kept));
                        }
                    }
                    for (resident, kept) in &changed {
                        put(&mut table, resident, kept.as_ref())?;
                    }
                    let mut visits = txn.open_table(SITE_VISITS).map_err(storage)?;
                    let cutoff = now.saturating_sub(retention).0;
                    visits.retain(|(_, at, _), ()| at >= cutoff).map_err(storage)?;
                    let mut audit = txn.open_table(AUDIT).map_err(storage)?;
                    let cutoff = now.saturating_sub(audit_retention).0;
                    audit.retain(|(_, at, _), _| at >= cutoff).map_err(storage)?;
                    changed.len() as u64
                };
                txn.commit().map_err(storage)?;
                Ok(purged)
            })
            .await?;
        metrics::counter!("healthcode_store_expired_residents_total", "store" => "embedded").increment(purged);
        Ok(purged)
    }

    async fn record_decisions(&self, entries: Arc<[AuditEntry]>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut audit = txn.open_table(AUDIT).map_err(storage)?;
                for entry in entries.iter() {
                    let key = (entry.subject.as_str(), entry.issued_at.0, entry.entry_id());
                    audit.insert((key.0, key.1, key.2.as_str()), encode_entry(entry).as_slice()).map_err(storage)?;
                }
            }
            txn.commit().map_err(storage)
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
        self.blocking(move |db| {
            let cutoff = UnixMicros::now().saturating_sub(retention).0;
            let txn = db.begin_read().map_err(storage)?;
            let audit = txn.open_table(AUDIT).map_err(storage)?;
            // No valid time reaches i64::MAX (timestamps end in year 9999).
            let (end_at, end_id) = after.as_ref().map_or((i64::MAX, ""), |a| (a.issued_at.0, a.entry_id.as_str()));
            let range =
                audit.range((subject.as_str(), cutoff, "")..(subject.as_str(), end_at, end_id)).map_err(storage)?;
            let limit = limit.max(1);
            let entries = range
                .rev()
                .take(limit + 1)
                .map(|row| decode_entry(row.map_err(storage)?.1.value()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AuditPage::from_one_past(entries, limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthcode_core::UnixMicros;

    #[test]
    fn facts_encoding_round_trips_and_refuses_unknown_versions() {
        let facts = Facts {
            latest_positive: Some(UnixMicros(7)),
            latest_negatives: [Some(UnixMicros(9)), None],
            ..Facts::default()
        };
        let bytes = encode_facts(&facts);
        assert_eq!(decode_facts(&bytes).unwrap(), facts);
        let mut future = bytes.clone();
        future[0] = ENCODING + 1;
        assert!(decode_facts(&future).is_err());
        assert!(decode_facts(&[]).is_err());
        assert!(decode_facts(&[ENCODING, 0xff]).is_err());
    }
}
