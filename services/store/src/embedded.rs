//! The one-machine store: facts in a redb file under the data directory.
//!
//! A merge is one write transaction (read, join, write back), committed with
//! an fsync before it returns. Facts are kept as a version byte followed by a
//! postcard encoding of [`Facts`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use healthcode_core::Facts;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{FactsUpdate, StatusStore, StoreError};

const FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("facts");
const ENCODING_V1: u8 = 1;

fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Storage(e.into().to_string())
}

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir/store.redb` for this process alone
    /// (`healthcode up`): redb keeps its page cache across transactions.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, ConcurrencyMode::ExclusiveWriter)
    }

    /// Opens the store so that other processes of this machine may open it
    /// too (separate materializer and lookup roles). redb coordinates them
    /// with byte-range locks and rereads pages another process may have
    /// changed, so every transaction costs more than in [`Self::open`].
    pub fn open_shared(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, ConcurrencyMode::MultiWriter)
    }

    fn open_with(dir: &Path, mode: ConcurrencyMode) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage(format!("creating {}: {e}", dir.display())))?;
        let db = Database::builder().set_concurrency_mode(mode).create(dir.join("store.redb")).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(FACTS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| StoreError::Storage(e.to_string()))?
    }
}

pub fn encode_facts(facts: &Facts) -> Vec<u8> {
    let mut out = vec![ENCODING_V1];
    out.extend(postcard::to_allocvec(facts).expect("facts always serialize"));
    out
}

pub fn decode_facts(bytes: &[u8]) -> Result<Facts, StoreError> {
    match bytes.split_first() {
        Some((&ENCODING_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Storage(format!("undecodable facts: {e}")))
        }
        Some((v, _)) => Err(StoreError::Storage(format!("facts encoded with unknown version {v}"))),
        None => Err(StoreError::Storage("empty facts value".into())),
    }
}

#[async_trait]
impl StatusStore for EmbeddedStore {
    async fn merge(&self, updates: Vec<FactsUpdate>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let count = updates.len();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(FACTS).map_err(storage)?;
                for update in updates {
                    let stored = match table.get(update.resident.as_str()).map_err(storage)? {
                        Some(v) => decode_facts(v.value())?,
                        None => Facts::default(),
                    };
                    let merged = stored.merged(&update.facts);
                    table.insert(update.resident.as_str(), encode_facts(&merged).as_slice()).map_err(storage)?;
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
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(FACTS).map_err(storage)?;
            residents
                .iter()
                .map(|r| match table.get(r.as_str()).map_err(storage)? {
                    Some(v) => decode_facts(v.value()).map(Some),
                    None => Ok(None),
                })
                .collect()
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
        future[0] = 2;
        assert!(decode_facts(&future).is_err());
        assert!(decode_facts(&[]).is_err());
        assert!(decode_facts(&[ENCODING_V1, 0xff]).is_err());
    }
}
