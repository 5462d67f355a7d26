//! The materializer: reads events from the log, folds each batch into one
//! facts update per resident, appends its decisions to the audit record,
//! merges the facts into the store, and only then commits the log
//! positions. A crash between the merge and the commit
//! replays the batch, which the facts merge absorbs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use healthcode_core::{AuditEntry, Facts, Validator};
use healthcode_log::{Delivered, LogConsumer, LogError, Position};
use healthcode_store::{FactsUpdate, StatusStore};
use tokio_util::sync::CancellationToken;

/// Told what a merge wrote once it is durable: a lookup cache in the same
/// process keeps up with the materializer without rereading the store.
#[async_trait::async_trait]
pub trait MergeObserver: Send + Sync {
    async fn merged(&self, updates: &[FactsUpdate]);
}

#[derive(Clone, Debug)]
pub struct MaterializerConfig {
    /// The consumer group the materializers of a deployment share (a
    /// partitioned log spreads its partitions over them).
    pub group: String,
    /// Most records folded into one store write.
    pub batch_size: usize,
    /// How long one poll waits for records.
    pub poll_wait: Duration,
    /// Once records arrived, how long to keep gathering before writing a
    /// batch that is not full: fewer, larger store writes under load.
    pub linger: Duration,
    /// Upper bound of the backoff between store retries.
    pub max_retry_delay: Duration,
}

impl Default for MaterializerConfig {
    fn default() -> Self {
        MaterializerConfig {
            group: "healthcode-materializer".to_owned(),
            // Each resident merged into the embedded store rewrites its
            // B-tree leaf, and a batch rewrites the interior pages above the
            // leaves it touched once: 20,000 shares them ten times wider
            // than 2,000 (materialising a 1M-resident three-day backlog:
            // 31k events/s at 2,000, 55k at 20,000, 60k at 50,000; the disk
            // writes about 200 MB/s either way). Under light load batches
            // stay small: `linger` ends them.
            batch_size: 20_000,
            poll_wait: Duration::from_millis(200),
            linger: Duration::from_millis(20),
            max_retry_delay: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaterializerError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// Shutdown came before a rebuild reached the log's end.
    #[error("stopped before reaching the end of the log")]
    Interrupted,
}

/// What a rebuild read and how long it took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaughtUp {
    /// Log records merged (or set aside as poison).
    pub records: u64,
    pub seconds: f64,
}

pub struct Materializer {
    consumer: Box<dyn LogConsumer>,
    store: Arc<dyn StatusStore>,
    validator: Validator,
    config: MaterializerConfig,
    observer: Option<Arc<dyn MergeObserver>>,
}

/// What one batch folded into: updates per resident, and the records that
/// can never be applied with the reason.
#[derive(Debug)]
pub struct Folded {
    /// Shared: a retried merge and the observer take the same updates.
    pub updates: Arc<[FactsUpdate]>,
    /// The batch's decisions (overrides, site risks) for the audit record.
    pub decisions: Arc<[AuditEntry]>,
    pub events: usize,
    /// Index in the batch and reason.
    pub poison: Vec<(usize, String)>,
}

/// Folds a batch of log records into one facts update per resident.
pub fn fold(batch: &[Delivered], validator: &Validator) -> Folded {
    let mut per_resident: foldhash::HashMap<String, Facts> = foldhash::HashMap::default();
    let (mut events, mut poison, mut decisions) = (0, Vec::new(), Vec::new());
    for (index, delivered) in batch.iter().enumerate() {
        match healthcode_core::record::decode(&delivered.record.payload, validator) {
            Ok((mut event, by)) => {
                decisions.extend(AuditEntry::of(&event, &event.resident_id, by));
                let resident = std::mem::take(&mut event.resident_id);
                per_resident.entry(resident).or_default().apply(event);
                events += 1;
            }
            Err(reason) => poison.push((index, reason.to_string())),
        }
    }
    let updates = per_resident.into_iter().map(|(resident, facts)| FactsUpdate { resident, facts }).collect();
    Folded { updates, decisions: decisions.into(), events, poison }
}

impl Materializer {
    pub fn new(
        consumer: Box<dyn LogConsumer>,
        store: Arc<dyn StatusStore>,
        validator: Validator,
        config: MaterializerConfig,
    ) -> Self {
        Materializer { consumer, store, validator, config, observer: None }
    }

    /// Tells `observer` every merge this materializer made durable.
    pub fn with_observer(mut self, observer: Arc<dyn MergeObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is finished
    /// (merged and committed) unless the store is failing at that moment.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), MaterializerError> {
        while !shutdown.is_cancelled() {
            if self.step(&shutdown).await?.is_none() {
                break;
            }
        }
        tracing::info!("materializer stopped");
        Ok(())
    }

    /// Rebuilds: merges every record from the group's position (a new
    /// group starts at the oldest record kept) up to where the log ends
    /// when it starts, then leaves the group. Events that arrive meanwhile
    /// are the running materializer's; merging them twice changes nothing.
    pub async fn catch_up(mut self, shutdown: CancellationToken) -> Result<CaughtUp, MaterializerError> {
        let started = Instant::now();
        let mut left: HashMap<u32, u64> =
            self.consumer.end_offsets().await?.into_iter().map(|p| (p.partition, p.offset)).collect();
        let total: u64 = left.values().sum();
        let mut caught = CaughtUp::default();
        while !left.is_empty() {
            if shutdown.is_cancelled() {
                return Err(MaterializerError::Interrupted);
            }
            let Some(batch) = self.step(&shutdown).await? else {
                return Err(MaterializerError::Interrupted);
            };
            caught.records += batch.len() as u64;
            for p in batch {
                if left.get(&p.partition).is_some_and(|end| p.offset + 1 >= *end) {
                    left.remove(&p.partition);
                }
            }
            if caught.records % 100_000 < self.config.batch_size as u64 {
                tracing::info!(records = caught.records, of_at_most = total, "rebuilding");
            }
        }
        self.consumer.leave_group().await?;
        caught.seconds = started.elapsed().as_secs_f64();
        Ok(caught)
    }

    /// Gathers one batch, merges it, sets its poison aside and commits it.
    /// Returns the positions committed (none when nothing came), or `None`
    /// when shutdown interrupted it.
    async fn step(&mut self, shutdown: &CancellationToken) -> Result<Option<Vec<Position>>, MaterializerError> {
        let batch = tokio::select! {
            batch = self.gather() => batch?,
            _ = shutdown.cancelled() => return Ok(None),
        };
        if let Some(lag) = self.consumer.lag() {
            metrics::gauge!("healthcode_materializer_lag_records").set(lag as f64);
        }
        if batch.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let Some(poison) = self.apply(&batch, shutdown).await else { return Ok(None) };
        for (index, reason) in poison {
            if !self.dead_letter(&batch[index], &reason, shutdown).await {
                return Ok(None);
            }
        }
        let positions: Vec<Position> = batch.iter().map(|d| d.position).collect();
        self.consumer.commit(&last_per_partition(&positions)).await?;
        if let Some(lag) = self.consumer.lag() {
            metrics::gauge!("healthcode_materializer_lag_records").set(lag as f64);
        }
        Ok(Some(positions))
    }

    /// Up to `batch_size` records: waits `poll_wait` for the first, then
    /// gathers for at most `linger` more.
    async fn gather(&mut self) -> Result<Vec<Delivered>, LogError> {
        let mut batch = self.consumer.poll(self.config.batch_size, self.config.poll_wait).await?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let until = tokio::time::Instant::now() + self.config.linger;
        while batch.len() < self.config.batch_size {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            batch.extend(self.consumer.poll(self.config.batch_size - batch.len(), left).await?);
        }
        Ok(batch)
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(self.config.max_retry_delay)
            .with_jitter()
            .without_max_times()
    }

    /// Merges the batch into the store, retrying with backoff. While the
    /// store fails, the consumer is paused (backpressure) but kept polled so
    /// it keeps its partitions. Returns the records that can never be applied
    /// (index in the batch, reason), or `None` when shutdown interrupted the
    /// retries (the batch is replayed).
    async fn apply(&mut self, batch: &[Delivered], shutdown: &CancellationToken) -> Option<Vec<(usize, String)>> {
        let started = Instant::now();
        let folded = fold(batch, &self.validator);
        let failing = std::sync::atomic::AtomicBool::new(false);
        let backoff = self.backoff();
        let (store, consumer) = (&self.store, &mut self.consumer);
        // The audit record first: no decision is in force without its entry.
        let write = || async {
            // Most batches carry none: no extra store call for them.
            if !folded.decisions.is_empty() {
                store.record_decisions(folded.decisions.clone()).await?;
            }
            store.merge(folded.updates.clone()).await
        };
        let merge = write.retry(backoff).notify(|e, wait| {
            failing.store(true, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("healthcode_materializer_store_retries_total").increment(1);
            tracing::warn!(
                error = e as &dyn std::error::Error,
                retry_in_ms = wait.as_millis() as u64,
                "store merge failed, retrying"
            );
        });
        tokio::pin!(merge);
        let mut paused = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                result = &mut merge => break result,
                _ = shutdown.cancelled() => return None,
                // Keeps the consumer alive while the store is down.
                polled = consumer.poll(0, Duration::from_millis(500)), if paused => {
                    if let Err(e) = polled {
                        tracing::warn!(error = &e as &dyn std::error::Error, "polling a paused consumer failed");
                    }
                }
                // Branch conditions are only re-read when a branch fires, so a
                // steady tick notices the first failed attempt.
                _ = tick.tick(), if !paused => {
                    if failing.load(std::sync::atomic::Ordering::Relaxed) {
                        match consumer.pause().await {
                            Ok(()) => paused = true,
                            Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "pausing the consumer failed"),
                        }
                    }
                }
            }
        };
        if paused && let Err(e) = consumer.resume().await {
            tracing::warn!(error = &e as &dyn std::error::Error, "resuming the consumer failed");
        }
        if let Err(e) = result {
            // Unreachable with unlimited retries; keep the batch for replay.
            tracing::error!(error = &e as &dyn std::error::Error, "store merge gave up");
            return None;
        }
        if let Some(observer) = &self.observer {
            observer.merged(&folded.updates).await;
        }
        metrics::counter!("healthcode_materializer_events_total", "result" => "applied")
            .increment(folded.events as u64);
        metrics::histogram!("healthcode_materializer_batch_seconds").record(started.elapsed());
        Some(folded.poison)
    }

    /// Sets a poison record aside so its partition moves on. Returns false
    /// when shutdown interrupted the retries.
    async fn dead_letter(&mut self, record: &Delivered, reason: &str, shutdown: &CancellationToken) -> bool {
        tracing::error!(
            partition = record.position.partition,
            offset = record.position.offset,
            reason,
            "dead-lettering a record that cannot be applied"
        );
        let mut waits = self.backoff().build();
        loop {
            let result = tokio::select! {
                result = self.consumer.dead_letter(record, reason) => result,
                _ = shutdown.cancelled() => return false,
            };
            match result {
                Ok(()) => {
                    metrics::counter!("healthcode_materializer_events_total", "result" => "dead_lettered").increment(1);
                    return true;
                }
                Err(e) => {
                    let wait = waits.next().unwrap_or(self.config.max_retry_delay);
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        retry_in_ms = wait.as_millis() as u64,
                        "dead-letter failed, retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }
}

/// The highest position of each partition: what a commit needs.
fn last_per_partition(positions: &[Position]) -> Vec<Position> {
    let mut last: HashMap<u32, Position> = HashMap::new();
    for p in positions {
        last.entry(p.partition).and_modify(|q| *q = (*q).max(*p)).or_insert(*p);
    }
    last.into_values().collect()
}
