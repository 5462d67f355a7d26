//! A store that fails on command, wrapped around a real one: for the
//! fault-injection suite and `healthcode ... --fault-injection` (the admin
//! endpoint `/faults/store` switches it). Off, it only forwards and counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use healthcode_core::{AuditCursor, AuditEntry, AuditPage, Facts, UnixMicros};

use crate::{FactsUpdate, ScanPage, StatusStore, StoreError};

/// The switches of a [`FaultyStore`], shared with whoever injects faults.
#[derive(Debug, Default)]
pub struct StoreFaults {
    down: AtomicBool,
    /// Added to every call, in microseconds.
    delay_us: AtomicU64,
    reads: AtomicU64,
    refusals: AtomicU64,
}

impl StoreFaults {
    /// Every call fails with `Unavailable` while down.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Every call takes at least this long.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Calls failed on purpose so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::SeqCst)
    }

    /// Read calls (`get`, `get_many`) that reached the store.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    async fn enter(&self) -> Result<(), StoreError> {
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if self.is_down() {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("fault injected: store down"));
        }
        Ok(())
    }
}

pub struct FaultyStore {
    inner: Arc<dyn StatusStore>,
    faults: Arc<StoreFaults>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn StatusStore>) -> (FaultyStore, Arc<StoreFaults>) {
        let faults = Arc::new(StoreFaults::default());
        (FaultyStore { inner, faults: faults.clone() }, faults)
    }
}

#[async_trait]
impl StatusStore for FaultyStore {
    async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError> {
        self.faults.enter().await?;
        self.inner.merge(updates).await
    }

    async fn scan(&self, cursor: Option<String>, limit: usize) -> Result<ScanPage, StoreError> {
        self.faults.enter().await?;
        self.inner.scan(cursor, limit).await
    }

    fn scan_shards(&self) -> Vec<Option<String>> {
        self.inner.scan_shards()
    }

    async fn get(&self, resident: &str) -> Result<Option<Facts>, StoreError> {
        self.faults.reads.fetch_add(1, Ordering::SeqCst);
        self.faults.enter().await?;
        self.inner.get(resident).await
    }

    async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError> {
        self.faults.reads.fetch_add(1, Ordering::SeqCst);
        self.faults.enter().await?;
        self.inner.get_many(residents).await
    }

    async fn count_visitors(&self, site_id: &str, from: UnixMicros, until: UnixMicros) -> Result<u64, StoreError> {
        self.faults.enter().await?;
        self.inner.count_visitors(site_id, from, until).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.faults.enter().await?;
        self.inner.purge_expired().await
    }

    async fn record_decisions(&self, entries: Arc<[AuditEntry]>) -> Result<(), StoreError> {
        self.faults.enter().await?;
        self.inner.record_decisions(entries).await
    }

    async fn decisions(
        &self,
        subject: &str,
        after: Option<AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        self.faults.enter().await?;
        self.inner.decisions(subject, after, limit).await
    }
}
