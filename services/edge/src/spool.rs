//! The edge's local spool: when the event log is unreachable or too slow,
//! accepted events are written here (durably, on this machine) and the
//! station is told ACCEPTED. A drainer forwards them to the log with
//! exponential backoff and jitter once it is back. Facts merge in any order,
//! so the drain order does not matter, and a record that reached the log
//! after all (a slow append that completed late) is merely a duplicate.
//!
//! The spool is an embedded log of its own: appends are group-committed and
//! fsynced, the drainer is a consumer that commits what the real log took.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use healthcode_log::{EmbeddedLog, EventLog, LogConsumer, LogError, Record};
use healthcode_rpc::ServiceError;
use tokio_util::sync::CancellationToken;

const DRAINER: &str = "edge-spool-drainer";

pub struct Spool {
    log: EmbeddedLog,
    depth: Arc<AtomicU64>,
    capacity: u64,
    retry_after: Duration,
}

impl Spool {
    /// Opens (or reopens, with what a previous run left) the spool in `dir`.
    pub async fn open(dir: &Path, capacity: u64, retry_after: Duration) -> Result<(Spool, SpoolDrainer), LogError> {
        let log = EmbeddedLog::open(dir)?;
        let consumer = log.consumer(DRAINER).await?;
        let depth = Arc::new(AtomicU64::new(consumer.lag().unwrap_or(0)));
        metrics::gauge!("healthcode_edge_spool_records").set(depth.load(Ordering::SeqCst) as f64);
        metrics::gauge!("healthcode_edge_spool_capacity_records").set(capacity as f64);
        let drainer = SpoolDrainer { consumer, depth: depth.clone() };
        Ok((Spool { log, depth, capacity, retry_after }, drainer))
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::SeqCst)
    }

    /// Keeps the records until the log takes them. RESOURCE_EXHAUSTED when
    /// the spool is full; UNAVAILABLE when the local disk fails too.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), ServiceError> {
        let n = records.len() as u64;
        if self.depth.load(Ordering::SeqCst) + n > self.capacity {
            metrics::counter!("healthcode_edge_spool_refused_total").increment(n);
            return Err(ServiceError::ResourceExhausted {
                what: "edge spool",
                detail: format!(
                    "the event log is unreachable and the spool holds its limit of {} events",
                    self.capacity
                ),
                retry_after: self.retry_after,
            });
        }
        self.log.append(records).await.map_err(|e| ServiceError::Unavailable {
            what: "event log and edge spool",
            detail: e.to_string(),
            retry_after: self.retry_after,
        })?;
        let depth = self.depth.fetch_add(n, Ordering::SeqCst) + n;
        metrics::gauge!("healthcode_edge_spool_records").set(depth as f64);
        metrics::counter!("healthcode_edge_spooled_total").increment(n);
        Ok(())
    }

    pub async fn close(&self) -> Result<(), LogError> {
        self.log.close().await
    }
}

/// Forwards spooled records to the event log.
pub struct SpoolDrainer {
    consumer: Box<dyn LogConsumer>,
    depth: Arc<AtomicU64>,
}

impl SpoolDrainer {
    /// Runs until `shutdown`; what is left stays spooled for the next start.
    pub async fn run(mut self, log: Arc<dyn EventLog>, max_delay: Duration, shutdown: CancellationToken) {
        loop {
            let polled = tokio::select! {
                polled = self.consumer.poll(1_000, Duration::from_millis(500)) => polled,
                _ = shutdown.cancelled() => return,
            };
            let batch = match polled {
                Ok(batch) if batch.is_empty() => continue,
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "reading the edge spool failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let records: Vec<Record> = batch.iter().map(|d| d.record.clone()).collect();
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(max_delay)
                .with_jitter()
                .without_max_times();
            let forward = (|| log.append(records.clone())).retry(backoff).notify(|e, wait| {
                tracing::warn!(
                    error = e as &dyn std::error::Error,
                    retry_in_ms = wait.as_millis() as u64,
                    "draining the edge spool: log refused"
                );
            });
            tokio::select! {
                result = forward => if let Err(e) = result {
                    // Unreachable without a retry limit; the batch stays spooled.
                    tracing::error!(error = &e as &dyn std::error::Error, "draining the edge spool gave up");
                    continue;
                },
                _ = shutdown.cancelled() => return,
            }
            let last = batch.iter().map(|d| d.position).max_by_key(|p| p.offset).expect("non-empty");
            if let Err(e) = self.consumer.commit(&[last]).await {
                // Replayed after a restart: duplicates the facts merge absorbs.
                tracing::warn!(error = &e as &dyn std::error::Error, "committing the edge spool failed");
            }
            let n = batch.len() as u64;
            let before = self.depth.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| Some(d.saturating_sub(n)));
            let depth = before.unwrap_or(0).saturating_sub(n);
            metrics::gauge!("healthcode_edge_spool_records").set(depth as f64);
            metrics::counter!("healthcode_edge_spool_drained_total").increment(n);
            tracing::info!(records = n, left = depth, "drained spooled events into the log");
        }
    }
}
