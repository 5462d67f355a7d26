//! Where resident facts live. The store only merges and returns facts; the
//! color is computed by the lookup from the facts and `now`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use healthcode_core::{AuditCursor, AuditEntry, AuditPage, Facts, SiteRiskFact, UnixMicros};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod faults;
pub mod lsm;

pub use embedded::EmbeddedStore;
pub use faults::{FaultyStore, StoreFaults};
pub use lsm::LsmStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer now (node down, timeout); retrying may work.
    #[error("status store unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The store's storage failed or holds data it cannot read.
    #[error("status store storage error: {context}")]
    Storage {
        context: String,
        #[source]
        source: Option<Cause>,
    },
}

/// The error an adapter met underneath, kept for the chain (`{:#}` in
/// anyhow, `error.sources` in the logs) rather than flattened into text.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// The store cannot answer now (node down, timeout); retrying may work.
    pub fn unavailable(context: impl Into<String>) -> Self {
        StoreError::Unavailable { context: context.into(), source: None }
    }

    /// As [`StoreError::unavailable`], keeping the error underneath.
    pub fn unavailable_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Unavailable { context: context.into(), source: Some(source.into()) }
    }

    /// The store's storage failed or holds data it cannot read.
    pub fn storage(context: impl Into<String>) -> Self {
        StoreError::Storage { context: context.into(), source: None }
    }

    /// As [`StoreError::storage`], keeping the error underneath.
    pub fn storage_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        StoreError::Storage { context: context.into(), source: Some(source.into()) }
    }
}

/// Facts to fold into one resident's stored facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactsUpdate {
    /// The resident's key in the store.
    pub resident: String,
    pub facts: Facts,
}

#[async_trait]
pub trait StatusStore: Send + Sync + 'static {
    /// Merges each update into the stored facts (a semilattice join, so the
    /// order and repetition of updates do not matter). Durable when `Ok`.
    /// Shared, so a retry of the same updates copies nothing.
    async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError>;

    /// The facts of one resident; `None` when nothing is known.
    async fn get(&self, resident: &str) -> Result<Option<Facts>, StoreError>;

    /// The facts of many residents, in the order asked.
    async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError>;

    /// One page of residents' facts, in the store's own order, from
    /// `cursor`: `None` (the whole store), a shard's start from
    /// [`StatusStore::scan_shards`], or the `next` of the page before; `next`
    /// is `None` at the end of the shard. Residents whose facts retention
    /// has emptied are left out. For whole-city questions (a policy's
    /// shadow evaluation), never for lookups.
    async fn scan(&self, cursor: Option<String>, limit: usize) -> Result<ScanPage, StoreError>;

    /// Where independent scans that together cover the store once start,
    /// to read in parallel (ScyllaDB: ranges of the token ring).
    fn scan_shards(&self) -> Vec<Option<String>> {
        vec![None]
    }

    /// How many distinct residents have a visit kept at `site_id` in
    /// `[from, until)`: who an exposure site exposed. Stores keep an index
    /// by site, written with the visits in [`StatusStore::merge`]; an ops
    /// question (`ListSiteRisks`), never a lookup's.
    async fn count_visitors(&self, site_id: &str, from: UnixMicros, until: UnixMicros) -> Result<u64, StoreError>;

    /// Deletes the facts past retention (see [`retained`]); how many
    /// residents' facts it deleted or shrank.
    /// Reads never return such facts, purged or not. Stores that expire data
    /// by themselves (TTL) have nothing to do here.
    async fn purge_expired(&self) -> Result<u64, StoreError>;

    /// Appends decisions to their subjects' audit records, kept for the
    /// audit retention (not the facts'). Append-only and idempotent: an
    /// entry written again (a redelivered event) is the same entry, keyed
    /// by (subject, issued_at, [`AuditEntry::entry_id`]). Durable when `Ok`.
    async fn record_decisions(&self, entries: Arc<[AuditEntry]>) -> Result<(), StoreError>;

    /// Up to `limit` entries of `subject`'s audit record, newest first
    /// (by issued_at, then entry id), after `after`; entries past the audit
    /// retention are left out. `next` is `None` after the last page.
    async fn decisions(&self, subject: &str, after: Option<AuditCursor>, limit: usize)
    -> Result<AuditPage, StoreError>;
}

/// How long the audit record keeps a decision unless set otherwise
/// (`--audit-retention`): a year, against the facts' 30 days.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3_600);

/// The version byte of an encoded [`AuditEntry`].
const AUDIT_ENCODING: u8 = 1;

/// An audit entry as stores keep it: a version byte, then postcard.
pub fn encode_entry(entry: &AuditEntry) -> Vec<u8> {
    let mut out = vec![AUDIT_ENCODING];
    out.extend(postcard::to_allocvec(entry).expect("audit entries always serialize"));
    out
}

pub fn decode_entry(bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    match bytes.split_first() {
        Some((&AUDIT_ENCODING, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::storage_from("undecodable audit entry", e))
        }
        Some((v, _)) => Err(StoreError::storage(format!("audit entry encoded with unknown version {v}"))),
        None => Err(StoreError::storage("empty audit entry")),
    }
}

/// `risks` newest first (by issued_at, then event_id), each with the
/// residents its window exposed (0 once retracted), counted from the
/// store's by-site index: what `ListSiteRisks` and the console show.
pub async fn with_exposed(
    store: &dyn StatusStore,
    mut risks: Vec<SiteRiskFact>,
) -> Result<Vec<(SiteRiskFact, u64)>, StoreError> {
    risks.sort_by(|a, b| (b.issued_at, &b.event_id).cmp(&(a.issued_at, &a.event_id)));
    let mut out = Vec::with_capacity(risks.len());
    for risk in risks {
        let exposed = if risk.retracted {
            0
        } else {
            store.count_visitors(&risk.site_id, risk.risky_from, risk.risky_until).await?
        };
        out.push((risk, exposed));
    }
    Ok(out)
}

/// A page of a [`StatusStore::scan`].
#[derive(Clone, Debug, Default)]
pub struct ScanPage {
    pub residents: Vec<FactsUpdate>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<String>,
}

/// What retention keeps of stored facts at `now`: each fact lives for the
/// retention window after its own time ([`Facts::retained`]); `None` when
/// nothing is left.
pub fn retained(facts: Facts, retention: Duration, now: UnixMicros) -> Option<Facts> {
    Some(facts.retained(now.saturating_sub(retention))).filter(|f| !f.is_empty())
}

/// Runs a store's blocking work on tokio's blocking pool, with a shared
/// handle to what it reads and writes (the embedded stores).
pub(crate) async fn on_blocking_pool<H, T>(
    handle: &Arc<H>,
    f: impl FnOnce(&H) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError>
where
    H: Send + Sync + 'static,
    T: Send + 'static,
{
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || f(&handle))
        .await
        .map_err(|e| StoreError::storage_from("a blocking task of the store failed", e))?
}

/// A [`StatusStore::scan`] page from `rows` (resident and stored facts) in key
/// order: at most `limit` rows read, what retention keeps of each, and the
/// next page's start only after a full page (a short page is the last one).
pub(crate) fn scan_page(
    rows: impl Iterator<Item = Result<(String, Facts), StoreError>>,
    limit: usize,
    retention: Duration,
    now: UnixMicros,
) -> Result<ScanPage, StoreError> {
    let limit = limit.max(1);
    let (mut page, mut read, mut last) = (ScanPage::default(), 0, None);
    for row in rows.take(limit) {
        let (resident, stored) = row?;
        if let Some(facts) = retained(stored, retention, now) {
            page.residents.push(FactsUpdate { resident: resident.clone(), facts });
        }
        (read, last) = (read + 1, Some(resident));
    }
    page.next = last.filter(|_| read == limit);
    Ok(page)
}

/// What the purge does with a stored facts row: `None` leaves it as it is,
/// `Some(None)` deletes it, `Some(Some(facts))` rewrites it. Undecodable rows
/// are left: deleting them would hide the fault.
pub(crate) fn purged_row(bytes: &[u8], retention: Duration, now: UnixMicros) -> Option<Option<Facts>> {
    let stored = embedded::decode_facts(bytes).ok()?;
    let kept = retained(stored.clone(), retention, now);
    (kept.as_ref() != Some(&stored)).then_some(kept)
}
