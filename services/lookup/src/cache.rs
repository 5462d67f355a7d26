//! The lookup's cache of resident facts (moka). A read younger than
//! `fresh_for` is answered without the store; concurrent lookups of one
//! resident share one store read (moka serialises computations per key, and
//! the later ones find the entry fresh). Entries are kept for `stale_for` as
//! the last known facts: when the store fails or misses the deadline, they
//! answer, flagged stale.

use std::sync::Arc;
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

    pub fn label(&self) -> &'static str {
        match self {
            Read::Store(_) => "store",
            Read::Cached(_) => "cache",
            Read::Stale(_) => "stale",
        }
    }
}

pub struct FactsCache {
    entries: moka::future::Cache<String, Arc<Known>, foldhash::fast::RandomState>,
    fresh_for: Duration,
}

impl FactsCache {
    pub fn new(capacity: u64, fresh_for: Duration, stale_for: Duration) -> FactsCache {
        FactsCache {
            // Keys are pseudonyms (HMAC output): a fast seeded hash is enough.
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(stale_for)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            fresh_for,
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
        match tokio::time::timeout(deadline, store.get_many(&wanted)).await {
            Ok(Ok(read)) => {
                for (i, facts) in missing.into_iter().zip(read) {
                    let known = Known::new(facts, Instant::now());
                    self.entries.insert(keys[i].clone(), known.clone()).await;
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
