//! The StatusStore on ScyllaDB (the `scylla` driver).
//!
//! One partition per resident. A merge writes each fact as a cell or row
//! whose write timestamp is the fact's own time and whose TTL ends its
//! retention, in one unlogged single-partition batch per resident: no read
//! before the write, no lightweight transaction (see [`cells`] for why the
//! result does not depend on order). A lookup is one prepared,
//! token-aware, single-partition read; many lookups are many concurrent
//! reads, never `IN` over partitions.

pub mod cells;
pub mod config;
pub mod cql;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures_util::{StreamExt, TryStreamExt, stream};
use healthcode_core::{AuditCursor, AuditEntry, AuditPage, Facts, SITE_RISKS_KEY, UnixMicros};
use healthcode_store::{FactsUpdate, ScanPage, StatusStore, StoreError, decode_entry, encode_entry, retained};
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::cells::{StoredRow, Write};
pub use crate::config::{Consistency, ScyllaConfig};
use crate::cql::{Cql, FACTS_COMPONENT, ROWS_PER_RESIDENT, Register, SCHEMA_VERSION, VISIT_BUCKET_MICROS};

/// The row type of [`Cql::read_facts`].
type ReadRow =
    (Option<i64>, Option<i64>, Option<i64>, Option<Vec<u8>>, Option<i8>, Option<i64>, Option<String>, Option<Vec<u8>>);

pub struct ScyllaStore {
    session: Session,
    read: PreparedStatement,
    /// The greatest scan row, when `read` stopped before the scans.
    read_latest_scan: PreparedStatement,
    /// The read of the site-risk registry's (larger) partition.
    read_site_risks: PreparedStatement,
    site_visit: PreparedStatement,
    site_visitors: PreparedStatement,
    scan: PreparedStatement,
    registers: [PreparedStatement; Register::ALL.len()],
    /// Rows with a payload (overrides) and without (negatives).
    row: PreparedStatement,
    bare_row: PreparedStatement,
    audit_write: PreparedStatement,
    audit_first: PreparedStatement,
    audit_after: PreparedStatement,
    write_profile: ExecutionProfileHandle,
    config: ScyllaConfig,
}

impl ScyllaStore {
    /// Connects, creates the keyspace and tables when missing, checks the
    /// schema version and prepares every statement.
    pub async fn connect(config: ScyllaConfig) -> Result<ScyllaStore, StoreError> {
        let cql = Cql::new(&config.keyspace).map_err(|e| StoreError::storage_from("the keyspace", e))?;
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &config.local_datacenter {
            // LOCAL_* consistency means "in this datacenter": stay in it.
            policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
        }
        let policy = policy.build();
        let read_profile = ExecutionProfile::builder()
            .consistency(config.read_consistency.into())
            .request_timeout(Some(config.read_timeout))
            .load_balancing_policy(policy.clone())
            .speculative_execution_policy(config.speculative_after.map(|after| {
                Arc::new(SimpleSpeculativeExecutionPolicy { max_retry_count: 2, retry_interval: after }) as _
            }))
            .build()
            .into_handle();
        let write_profile = ExecutionProfile::builder()
            .consistency(config.write_consistency.into())
            .request_timeout(Some(config.write_timeout))
            .load_balancing_policy(policy)
            .build()
            .into_handle();
        // Schema statements at start may wait on a busy cluster far longer
        // than a fact write should; every fact statement names its own profile.
        let schema_profile = ExecutionProfile::builder()
            .consistency(config.write_consistency.into())
            .request_timeout(Some(SCHEMA_TIMEOUT))
            .build()
            .into_handle();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .default_execution_profile_handle(schema_profile);
        if let Some((user, password)) = &config.credentials {
            builder = builder.user(user.clone(), password.clone());
        }
        let session = builder.build().await.map_err(|e| StoreError::unavailable_from("connecting to ScyllaDB", e))?;
        // Several processes starting together on a new keyspace race their
        // CREATE ... IF NOT EXISTS: on Cassandra one of them then found its
        // just-created table missing ("table schema_version does not exist").
        // The steps are idempotent, so the race is retried; a keyspace of a
        // newer schema is refused at once.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(10)
            .with_jitter();
        (|| create_schema(&session, &cql, &config))
            .retry(backoff)
            .when(|e| !matches!(e, SchemaError::Newer(_)))
            .notify(|e, wait| {
                tracing::warn!(
                    error = e as &dyn std::error::Error,
                    retry_in_ms = wait.as_millis() as u64,
                    "creating the schema failed, retrying"
                )
            })
            .await
            .map_err(|e| match e {
                SchemaError::Newer(why) => StoreError::storage(why),
                SchemaError::Failed(e) => e,
            })?;

        let prepare_fact = |text: String, profile: &ExecutionProfileHandle| {
            let session = &session;
            let profile = profile.clone();
            async move {
                let mut stmt = prepare(session, text).await?;
                // Every statement here may run twice with the same effect:
                // writes carry their own timestamps.
                stmt.set_is_idempotent(true);
                stmt.set_execution_profile_handle(Some(profile));
                Ok::<_, StoreError>(stmt)
            }
        };
        let read = prepare_fact(cql.read_facts(), &read_profile).await?;
        let read_site_risks = prepare_fact(cql.read_site_risks(), &read_profile).await?;
        let read_latest_scan = prepare_fact(cql.read_latest_scan(), &read_profile).await?;
        let site_visit = prepare_fact(cql.write_site_visit(), &write_profile).await?;
        let site_visitors = prepare_fact(cql.read_site_visitors(), &read_profile).await?;
        let scan = prepare_fact(cql.scan_residents(), &read_profile).await?;
        let mut registers = Vec::with_capacity(Register::ALL.len());
        for register in Register::ALL {
            registers.push(prepare_fact(cql.write_register(register), &write_profile).await?);
        }
        let row = prepare_fact(cql.write_row(true), &write_profile).await?;
        let bare_row = prepare_fact(cql.write_row(false), &write_profile).await?;
        let audit_write = prepare_fact(cql.write_audit_entry(), &write_profile).await?;
        let audit_first = prepare_fact(cql.read_audit_first(), &read_profile).await?;
        let audit_after = prepare_fact(cql.read_audit_after(), &read_profile).await?;
        tracing::info!(
            nodes = config.nodes.join(","),
            keyspace = %config.keyspace,
            read_consistency = ?config.read_consistency,
            write_consistency = ?config.write_consistency,
            "ScyllaDB store ready"
        );
        Ok(ScyllaStore {
            session,
            read,
            read_latest_scan,
            read_site_risks,
            site_visit,
            site_visitors,
            scan,
            registers: registers.try_into().expect("one statement per register"),
            row,
            bare_row,
            audit_write,
            audit_first,
            audit_after,
            write_profile,
            config,
        })
    }

    /// One unlogged batch per resident: a single partition, so ScyllaDB
    /// applies it as one mutation.
    async fn write_resident(&self, update: &FactsUpdate, now: UnixMicros) -> Result<(), StoreError> {
        let writes = cells::writes(&update.facts, self.config.retention, now);
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        batch.set_execution_profile_handle(Some(self.write_profile.clone()));
        let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(writes.len());
        let resident = CqlValue::Text(update.resident.clone());
        for write in writes {
            match write {
                Write::Register { register, value, ttl } => {
                    batch.append_statement(self.registers[register as usize].clone());
                    values.push(vec![
                        CqlValue::BigInt(value),
                        CqlValue::Int(ttl),
                        CqlValue::BigInt(value),
                        resident.clone(),
                    ]);
                }
                Write::Row { kind, at, event_id, payload, timestamp, ttl } => {
                    let mut bound = vec![
                        resident.clone(),
                        CqlValue::TinyInt(kind as i8),
                        CqlValue::BigInt(at),
                        CqlValue::Text(event_id),
                    ];
                    if payload.is_empty() {
                        batch.append_statement(self.bare_row.clone());
                    } else {
                        batch.append_statement(self.row.clone());
                        bound.push(CqlValue::Blob(payload));
                    }
                    bound.extend([CqlValue::BigInt(timestamp), CqlValue::Int(ttl)]);
                    values.push(bound);
                }
            }
        }
        self.session.batch(&batch, values).await.map_err(|e| store_error("write", &e))?;
        self.index_visits(update, now).await
    }

    /// The resident's visits in the by-site index, one row each (other
    /// partitions than the resident's, so not in its batch). Written after
    /// the facts: a retried merge writes both again.
    async fn index_visits(&self, update: &FactsUpdate, now: UnixMicros) -> Result<(), StoreError> {
        let writes = update.facts.visits.iter().filter_map(|v| {
            let ttl = cells::ttl_seconds(v.scanned_at, self.config.retention, now)?;
            let day = v.scanned_at.0.div_euclid(VISIT_BUCKET_MICROS);
            let values = (v.site_id.as_str(), day, v.scanned_at.0, update.resident.as_str(), v.scanned_at.0, ttl);
            Some(async move { self.session.execute_unpaged(&self.site_visit, values).await.map(drop) })
        });
        futures_util::future::try_join_all(writes).await.map_err(|e| store_error("write", &e))?;
        Ok(())
    }

    async fn read_resident(&self, resident: &str, now: UnixMicros) -> Result<Option<Facts>, StoreError> {
        let statement = if resident == SITE_RISKS_KEY { &self.read_site_risks } else { &self.read };
        let mut rows = self.read_rows(statement, resident).await?;
        // Scans sort last in the partition: a read cut at its row limit
        // (a resident with hundreds of visits) may not have reached them.
        if resident != SITE_RISKS_KEY && rows.len() >= ROWS_PER_RESIDENT as usize {
            rows.extend(self.read_rows(&self.read_latest_scan, resident).await?);
        }
        let facts = cells::facts_from_rows(&rows).map_err(|e| StoreError::storage_from("undecodable facts", e))?;
        // TTLs count whole seconds from the server's clock: cut exactly here.
        Ok(facts.and_then(|f| retained(f, self.config.retention, now)))
    }

    async fn read_rows(&self, statement: &PreparedStatement, resident: &str) -> Result<Vec<StoredRow>, StoreError> {
        let result = self.session.execute_unpaged(statement, (resident,)).await.map_err(|e| store_error("read", &e))?;
        let rows = result.into_rows_result().map_err(|e| StoreError::storage_from("reading facts", e))?;
        rows.rows::<ReadRow>()
            .map_err(|e| StoreError::storage_from("facts table has unexpected columns", e))?
            .map(|row| {
                row.map(|(latest_positive, latest_test, updated_at, latest_scan, kind, at, event_id, payload)| {
                    StoredRow { latest_positive, latest_test, updated_at, latest_scan, kind, at, event_id, payload }
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::storage_from("undecodable facts row", e))
    }
}

/// Token ranges a whole-store scan is split into, read in parallel.
const SCAN_SHARDS: u64 = 16;

/// `n` contiguous token ranges (after, last] covering the whole ring.
fn ring_shards(n: u64) -> Vec<(i64, i64)> {
    let width = (u64::MAX / n) as i128;
    (0..n as i128)
        .map(|k| {
            let after = i64::MIN as i128 + k * width;
            let last = if k + 1 == n as i128 { i64::MAX as i128 } else { after + width };
            (after as i64, last as i64)
        })
        .collect()
}

/// A scan cursor: the token to start after and the range's last token.
/// (Murmur3 never assigns i64::MIN, so "after i64::MIN" is the ring's start.)
fn token_range(cursor: &str) -> Option<(i64, i64)> {
    let (after, last) = cursor.split_once(':')?;
    Some((after.parse().ok()?, last.parse().ok()?))
}

/// Why the schema step failed: a keyspace written by a newer build (final),
/// or anything else (retried).
#[derive(Debug, thiserror::Error)]
enum SchemaError {
    #[error("{0}")]
    Newer(String),
    #[error(transparent)]
    Failed(#[from] StoreError),
}

async fn create_schema(session: &Session, cql: &Cql, config: &ScyllaConfig) -> Result<(), SchemaError> {
    let ddl = [
        cql.create_keyspace(&config.replication),
        cql.create_facts_table(),
        cql.create_site_visits_table(),
        cql.create_audit_table(),
        cql.create_schema_version_table(),
    ];
    for statement in ddl {
        // DDL waits for schema agreement (the driver's default) before the next step.
        session
            .query_unpaged(statement, ())
            .await
            .map_err(|e| StoreError::storage_from(format!("creating the schema in {}", config.keyspace), e))?;
    }
    let select = prepare(session, cql.select_schema_version()).await?;
    let found = session
        .execute_unpaged(&select, (FACTS_COMPONENT,))
        .await
        .map_err(|e| store_error("read", &e))?
        .into_rows_result()
        .map_err(|e| StoreError::storage_from("reading the schema version", e))?
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|e| StoreError::storage_from("reading the schema version", e))?
        .and_then(|(v,)| v);
    if let Some(version) = found
        && version > SCHEMA_VERSION
    {
        return Err(SchemaError::Newer(format!(
            "keyspace {} has schema version {version}; this build knows version {SCHEMA_VERSION} only",
            config.keyspace
        )));
    }
    let record = prepare(session, cql.record_schema_version()).await?;
    session
        .execute_unpaged(&record, (FACTS_COMPONENT, SCHEMA_VERSION, UnixMicros::now().0, i64::from(SCHEMA_VERSION)))
        .await
        .map_err(|e| store_error("write", &e))?;
    Ok(())
}

async fn prepare(session: &Session, text: String) -> Result<PreparedStatement, StoreError> {
    session.prepare(text).await.map_err(|e| StoreError::storage_from("preparing", e))
}

/// Transient failures (timeouts, unavailable replicas, overload, lost
/// connections) are `Unavailable`, so the lookup answers stale and the
/// materializer retries; a refused statement is `Storage`.
fn store_error(op: &'static str, e: &ExecutionError) -> StoreError {
    let refused = match e {
        ExecutionError::BadQuery(_) | ExecutionError::PrepareError(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::AuthenticationError
                | DbError::Unauthorized
                | DbError::ConfigError
        ),
        _ => false,
    };
    let kind = if refused { "refused" } else { "unavailable" };
    metrics::counter!("healthcode_store_errors_total", "store" => "scylla", "op" => op, "kind" => kind).increment(1);
    if refused {
        StoreError::storage_from(format!("ScyllaDB {op}"), e.clone())
    } else {
        StoreError::unavailable_from(format!("ScyllaDB {op}"), e.clone())
    }
}

#[async_trait]
impl StatusStore for ScyllaStore {
    async fn merge(&self, updates: Arc<[FactsUpdate]>) -> Result<(), StoreError> {
        let started = Instant::now();
        let count = updates.len() as u64;
        let now = UnixMicros::now();
        let writes: Vec<_> = updates.iter().map(|update| self.write_resident(update, now)).collect();
        stream::iter(writes).buffer_unordered(self.config.write_concurrency).try_collect::<()>().await?;
        metrics::histogram!("healthcode_store_merge_seconds", "store" => "scylla").record(started.elapsed());
        metrics::counter!("healthcode_store_merged_residents_total", "store" => "scylla").increment(count);
        Ok(())
    }

    async fn get(&self, resident: &str) -> Result<Option<Facts>, StoreError> {
        let started = Instant::now();
        let facts = self.read_resident(resident, UnixMicros::now()).await;
        metrics::histogram!("healthcode_store_read_seconds", "store" => "scylla").record(started.elapsed());
        facts
    }

    async fn get_many(&self, residents: &[String]) -> Result<Vec<Option<Facts>>, StoreError> {
        let started = Instant::now();
        let now = UnixMicros::now();
        let reads: Vec<_> = residents.iter().map(|r| self.read_resident(r, now)).collect();
        let facts = stream::iter(reads).buffered(self.config.read_concurrency).try_collect().await;
        metrics::histogram!("healthcode_store_read_seconds", "store" => "scylla").record(started.elapsed());
        facts
    }

    async fn scan(&self, cursor: Option<String>, limit: usize) -> Result<ScanPage, StoreError> {
        let (after, last) = match &cursor {
            Some(c) => token_range(c).ok_or_else(|| StoreError::storage(format!("not a scan cursor: {c}")))?,
            None => (i64::MIN, i64::MAX),
        };
        let limit = limit.clamp(1, i32::MAX as usize);
        let result = self
            .session
            .execute_unpaged(&self.scan, (after, last, limit as i32))
            .await
            .map_err(|e| store_error("read", &e))?;
        let rows = result.into_rows_result().map_err(|e| StoreError::storage_from("scanning residents", e))?;
        let keys: Vec<(i64, String)> = rows
            .rows::<(i64, String)>()
            .map_err(|e| StoreError::storage_from("facts table has unexpected columns", e))?
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::storage_from("undecodable resident key", e))?;
        let now = UnixMicros::now();
        let reads: Vec<_> = keys.iter().map(|(_, r)| self.read_resident(r, now)).collect();
        let facts: Vec<Option<Facts>> =
            stream::iter(reads).buffered(self.config.read_concurrency).try_collect().await?;
        let next = keys.last().filter(|_| keys.len() == limit).map(|(token, _)| format!("{token}:{last}"));
        let residents = keys
            .into_iter()
            .zip(facts)
            .filter_map(|((_, resident), facts)| facts.map(|facts| FactsUpdate { resident, facts }))
            .collect();
        Ok(ScanPage { residents, next })
    }

    /// The ring in `SCAN_SHARDS` equal token ranges.
    fn scan_shards(&self) -> Vec<Option<String>> {
        ring_shards(SCAN_SHARDS).into_iter().map(|(after, last)| Some(format!("{after}:{last}"))).collect()
    }

    async fn count_visitors(&self, site_id: &str, from: UnixMicros, until: UnixMicros) -> Result<u64, StoreError> {
        let from = from.max(UnixMicros::now().saturating_sub(self.config.retention));
        if from >= until {
            return Ok(0);
        }
        let mut residents = std::collections::HashSet::new();
        let (first, last) = (from.0.div_euclid(VISIT_BUCKET_MICROS), (until.0 - 1).div_euclid(VISIT_BUCKET_MICROS));
        for day in first..=last {
            let mut rows = self
                .session
                .execute_iter(self.site_visitors.clone(), (site_id, day, from.0, until.0))
                .await
                .map_err(|e| StoreError::unavailable_from("ScyllaDB read of site visits", e))?
                .rows_stream::<(String,)>()
                .map_err(|e| StoreError::storage_from("site_visits has unexpected columns", e))?;
            while let Some(row) = rows.next().await {
                let (resident,) = row.map_err(|e| StoreError::unavailable_from("ScyllaDB read of site visits", e))?;
                residents.insert(resident);
            }
        }
        Ok(residents.len() as u64)
    }

    /// Every cell carries its TTL: ScyllaDB expires facts by itself.
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// One row per entry, its write timestamp the entry's issued_at, so a
    /// rewrite of the same entry is the same cell.
    async fn record_decisions(&self, entries: Arc<[AuditEntry]>) -> Result<(), StoreError> {
        let now = UnixMicros::now();
        let writes = entries.iter().filter_map(|entry| {
            let ttl = cells::ttl_seconds(entry.issued_at, self.config.audit_retention, now)?;
            let at = entry.issued_at.0;
            let values = (entry.subject.as_str(), at, entry.entry_id(), encode_entry(entry), at, ttl);
            Some(async move { self.session.execute_unpaged(&self.audit_write, values).await.map(drop) })
        });
        futures_util::future::try_join_all(writes).await.map_err(|e| store_error("write", &e))?;
        Ok(())
    }

    async fn decisions(
        &self,
        subject: &str,
        after: Option<AuditCursor>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.clamp(1, i32::MAX as usize - 1);
        // One more than asked: whether a next page exists.
        let asked = (limit + 1) as i32;
        let result = match &after {
            None => self.session.execute_unpaged(&self.audit_first, (subject, asked)).await,
            Some(c) => {
                let values = (subject, c.issued_at.0, c.entry_id.as_str(), asked);
                self.session.execute_unpaged(&self.audit_after, values).await
            }
        }
        .map_err(|e| store_error("read", &e))?;
        let rows = result.into_rows_result().map_err(|e| StoreError::storage_from("reading the audit record", e))?;
        // TTLs count whole seconds from the server's clock: cut exactly here.
        // Newest first, so everything after the first expired entry is too.
        let now = UnixMicros::now();
        let mut entries = Vec::with_capacity(limit + 1);
        for row in rows.rows::<(Vec<u8>,)>().map_err(|e| StoreError::storage_from("audit_record columns", e))? {
            let (bytes,) = row.map_err(|e| StoreError::storage_from("undecodable audit row", e))?;
            let entry = decode_entry(&bytes)?;
            if !entry.retained(self.config.audit_retention, now) {
                break;
            }
            entries.push(entry);
        }
        Ok(AuditPage::from_one_past(entries, limit))
    }
}

/// How long connecting may take before the process reports the store down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limit of each schema statement at start (create, version check).
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_shards_cover_the_ring_once() {
        let shards = ring_shards(SCAN_SHARDS);
        assert_eq!(shards.len(), SCAN_SHARDS as usize);
        assert_eq!((shards[0].0, shards.last().unwrap().1), (i64::MIN, i64::MAX));
        for pair in shards.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "each range starts after the previous one's last token");
            assert!(pair[0].0 < pair[0].1);
        }
        assert_eq!(token_range("-5:17"), Some((-5, 17)));
        assert_eq!(token_range("17"), None);
    }
}
