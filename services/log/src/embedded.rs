//! The one-machine event log: records in a redb file under the data
//! directory, one partition, group commit.
//!
//! Appends from many concurrent callers are gathered by one writer thread into
//! a single write transaction, so one fsync acknowledges many events. A record
//! is visible to consumers only after its transaction committed, so everything
//! a consumer sees is durable. What is trimmed depends on [`Retention`]: a
//! spool forgets what every group has committed; the event log keeps its
//! records for the retention window, so a lost store can be rebuilt from it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Delivered, EventLog, LogConsumer, LogError, Position, Record};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const GROUP_OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("group_offsets");
/// Dead letters: sequence -> reason length (u32 LE), reason, encoded record.
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// One row per write transaction: its first offset -> (appended at, µs since
/// the epoch; bytes of its records). What retention trims by.
const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");
/// Running totals: `bytes` of the records kept.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Segments looked at per trim: bounds the work one commit does.
const SEGMENTS_PER_TRIM: usize = 1024;

/// What the log forgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Records every group has committed (an edge spool).
    UntilConsumed,
    /// Records older than `window` (by append time: their facts have expired
    /// too), and, while the records held exceed `max_bytes`, the oldest ones
    /// that every group has committed. Unconsumed records within the window
    /// are never trimmed.
    Window { window: Duration, max_bytes: u64 },
}

/// Pending appends the writer takes into one transaction at most.
const MAX_RECORDS_PER_TRANSACTION: usize = 20_000;
/// Appends that may wait for the writer before callers are slowed down.
const QUEUE_DEPTH: usize = 4_096;

/// Microseconds since the epoch, as segments record their append.
fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn storage<E: Into<redb::Error>>(e: E) -> LogError {
    LogError::storage_from("redb", e.into())
}

struct Append {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), LogError>>,
}

/// The page cache of a spool's log.
const SPOOL_CACHE_BYTES: usize = 16 << 20;

/// The default page cache of the event log (`--log-cache-bytes`). The log
/// is read once, in order, right behind its writer, but at an ingest peak
/// the materializer reads it seconds behind: a 13M round at 40x with 128
/// MiB had a freshness p99 of 24 s, against 4.1-4.6 s in two runs at 256
/// MiB (docs/benchmarks.md).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

pub struct EmbeddedLog {
    db: Arc<Database>,
    retention: Retention,
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The next offset to be written: every record below it is durable.
    head: watch::Receiver<u64>,
}

impl EmbeddedLog {
    /// Opens (or creates) a log in `dir/log.redb` that forgets what every
    /// group has committed (a spool), with a small page cache: a spool is
    /// empty but for outages, and then read once in order.
    pub fn open(dir: &Path) -> Result<EmbeddedLog, LogError> {
        Self::open_with(dir, Retention::UntilConsumed, SPOOL_CACHE_BYTES)
    }

    /// Opens (or creates) the log in `dir/log.redb`, trimmed by `retention`,
    /// with at most `cache_bytes` of pages held in memory (redb's own
    /// default, 1 GiB, is more than a log read mostly once needs).
    pub fn open_with(dir: &Path, retention: Retention, cache_bytes: usize) -> Result<EmbeddedLog, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::storage_from(format!("creating {}", dir.display()), e))?;
        let db = Database::builder().set_cache_size(cache_bytes).create(dir.join("log.redb")).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        let next = {
            let records = txn.open_table(RECORDS).map_err(storage)?;
            txn.open_table(GROUP_OFFSETS).map_err(storage)?;
            txn.open_table(DEAD_LETTERS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
            let mut segments = txn.open_table(SEGMENTS).map_err(storage)?;
            // Records written before segments were kept: one segment of
            // unknown size, as old as now (kept for a window from here).
            if let Some((first, _)) = records.first().map_err(storage)? {
                let covered = segments.first().map_err(storage)?.is_some_and(|(s, _)| s.value() <= first.value());
                if !covered {
                    segments.insert(first.value(), (now_micros(), 0)).map_err(storage)?;
                }
            }
            let last = records.last().map_err(storage)?;
            last.map(|(k, _)| k.value() + 1).unwrap_or(0)
        };
        txn.commit().map_err(storage)?;

        let db = Arc::new(db);
        let (head_tx, head) = watch::channel(next);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(&writer_db, rx, next, head_tx))
            .map_err(|e| LogError::storage_from("starting the log writer", e))?;
        Ok(EmbeddedLog { db, retention, appends: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), head })
    }
}

fn write_loop(db: &Database, mut rx: mpsc::Receiver<Append>, mut next: u64, head: watch::Sender<u64>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let mut count = batch[0].records.len();
        while count < MAX_RECORDS_PER_TRANSACTION {
            match rx.try_recv() {
                Ok(a) => {
                    count += a.records.len();
                    batch.push(a);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = write_batch(db, next, &batch);
        metrics::histogram!("healthcode_log_append_seconds", "log" => "embedded").record(started.elapsed());
        match result {
            Ok(()) => {
                next += count as u64;
                head.send_replace(next);
                metrics::counter!("healthcode_log_appended_records_total", "log" => "embedded").increment(count as u64);
                for a in batch {
                    let _ = a.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, records = count, "event log append failed");
                for a in batch {
                    let _ = a.done.send(Err(LogError::storage(format!("appending: {e}"))));
                }
            }
        }
    }
}

fn write_batch(db: &Database, mut next: u64, batch: &[Append]) -> Result<(), LogError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let first = next;
        let mut bytes = 0u64;
        let mut table = txn.open_table(RECORDS).map_err(storage)?;
        let mut buf = Vec::new();
        for record in batch.iter().flat_map(|a| &a.records) {
            encode(record, &mut buf);
            table.insert(next, buf.as_slice()).map_err(storage)?;
            bytes += buf.len() as u64;
            next += 1;
        }
        txn.open_table(SEGMENTS).map_err(storage)?.insert(first, (now_micros(), bytes)).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        let held = meta.get("bytes").map_err(storage)?.map(|v| v.value()).unwrap_or(0);
        meta.insert("bytes", held + bytes).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Value layout: key length (u32 LE), key, payload.
fn encode(record: &Record, buf: &mut Vec<u8>) {
    encode_pair(&record.key, &record.payload, buf);
}

fn decode_record(value: &[u8]) -> Result<Record, LogError> {
    let (key, payload) = decode(value)?;
    Ok(Record { key, payload })
}

/// Two byte strings in one value: first's length (u32 LE), first, second.
fn encode_pair(first: &[u8], second: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&(first.len() as u32).to_le_bytes());
    buf.extend_from_slice(first);
    buf.extend_from_slice(second);
}

fn decode(value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), LogError> {
    let corrupt = || LogError::storage("corrupt value in the embedded log");
    let len_bytes: [u8; 4] = value.get(..4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
    let first_len = u32::from_le_bytes(len_bytes) as usize;
    let first = value.get(4..4 + first_len).ok_or_else(corrupt)?.to_vec();
    Ok((first, value[4 + first_len..].to_vec()))
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let sender = self.appends.lock().expect("append lock").clone().ok_or(LogError::Closed)?;
        let (done, ack) = oneshot::channel();
        sender.send(Append { records, done }).await.map_err(|_| LogError::Closed)?;
        ack.await.map_err(|_| LogError::Closed)?
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let db = self.db.clone();
        let group_name = group.to_owned();
        let committed = tokio::task::spawn_blocking(move || -> Result<u64, LogError> {
            let txn = db.begin_read().map_err(storage)?;
            let offsets = txn.open_table(GROUP_OFFSETS).map_err(storage)?;
            if let Some(offset) = offsets.get(group_name.as_str()).map_err(storage)? {
                return Ok(offset.value());
            }
            // A new group starts at the oldest record still kept.
            let records = txn.open_table(RECORDS).map_err(storage)?;
            let first = records.first().map_err(storage)?;
            Ok(first.map(|(k, _)| k.value()).unwrap_or(0))
        })
        .await
        .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))??;
        Ok(Box::new(EmbeddedConsumer {
            db: self.db.clone(),
            retention: self.retention,
            group: group.to_owned(),
            next: committed,
            committed,
            head: self.head.clone(),
            paused: false,
        }))
    }

    async fn dead_letters(&self) -> Result<Vec<(Record, String)>, LogError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<(Record, String)>, LogError> {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(DEAD_LETTERS).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(storage)? {
                let (_, v) = item.map_err(storage)?;
                let (reason, record) = decode(v.value())?;
                out.push((decode_record(&record)?, String::from_utf8_lossy(&reason).into_owned()));
            }
            Ok(out)
        })
        .await
        .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))?
    }

    async fn close(&self) -> Result<(), LogError> {
        // Dropping the sender lets the writer finish what is queued and stop.
        drop(self.appends.lock().expect("append lock").take());
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))?
                .map_err(|_| LogError::storage("the log writer panicked"))?;
        }
        Ok(())
    }
}

struct EmbeddedConsumer {
    db: Arc<Database>,
    retention: Retention,
    group: String,
    next: u64,
    committed: u64,
    head: watch::Receiver<u64>,
    paused: bool,
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, LogError> {
        if self.paused {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let head = *self.head.borrow_and_update();
            if head > self.next {
                let db = self.db.clone();
                let (from, to) = (self.next, head.min(self.next + max.max(1) as u64));
                let delivered = tokio::task::spawn_blocking(move || read_range(&db, from, to))
                    .await
                    .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))??;
                if let Some(last) = delivered.last() {
                    self.next = last.position.offset + 1;
                } else {
                    // Everything in range was trimmed by another group's progress.
                    self.next = to;
                }
                return Ok(delivered);
            }
            match tokio::time::timeout_at(deadline, self.head.changed()).await {
                Ok(Ok(())) => continue,
                // The writer stopped: nothing more will come.
                Ok(Err(_)) => return Ok(Vec::new()),
                Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        let Some(upto) = positions.iter().map(|p| p.offset + 1).max() else {
            return Ok(());
        };
        if upto <= self.committed {
            return Ok(());
        }
        let (db, group, retention) = (self.db.clone(), self.group.clone(), self.retention);
        tokio::task::spawn_blocking(move || commit_offset(&db, &group, upto, retention))
            .await
            .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))??;
        self.committed = upto;
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        Some(self.head.borrow().saturating_sub(self.committed))
    }

    async fn end_offsets(&self) -> Result<Vec<Position>, LogError> {
        let head = *self.head.borrow();
        let db = self.db.clone();
        let holds_records = tokio::task::spawn_blocking(move || -> Result<bool, LogError> {
            let txn = db.begin_read().map_err(storage)?;
            Ok(txn.open_table(RECORDS).map_err(storage)?.first().map_err(storage)?.is_some())
        })
        .await
        .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))??;
        Ok(if holds_records { vec![Position { partition: 0, offset: head }] } else { Vec::new() })
    }

    async fn leave_group(&mut self) -> Result<(), LogError> {
        let (db, group) = (self.db.clone(), self.group.clone());
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(GROUP_OFFSETS).map_err(storage)?.remove(group.as_str()).map_err(storage)?;
            txn.commit().map_err(storage)
        })
        .await
        .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))?
    }

    async fn pause(&mut self) -> Result<(), LogError> {
        self.paused = true;
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), LogError> {
        self.paused = false;
        Ok(())
    }

    async fn dead_letter(&mut self, record: &Delivered, reason: &str) -> Result<(), LogError> {
        let db = self.db.clone();
        let (mut encoded, mut value) = (Vec::new(), Vec::new());
        encode(&record.record, &mut encoded);
        encode_pair(reason.as_bytes(), &encoded, &mut value);
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut table = txn.open_table(DEAD_LETTERS).map_err(storage)?;
                let next = table.last().map_err(storage)?.map(|(k, _)| k.value() + 1).unwrap_or(0);
                table.insert(next, value.as_slice()).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })
        .await
        .map_err(|e| LogError::storage_from("a blocking task of the log failed", e))?
    }
}

fn read_range(db: &Database, from: u64, to: u64) -> Result<Vec<Delivered>, LogError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(RECORDS).map_err(storage)?;
    let mut out = Vec::with_capacity((to - from) as usize);
    for item in table.range(from..to).map_err(storage)? {
        let (k, v) = item.map_err(storage)?;
        out.push(Delivered {
            position: Position { partition: 0, offset: k.value() },
            record: decode_record(v.value())?,
        });
    }
    Ok(out)
}

fn commit_offset(db: &Database, group: &str, upto: u64, retention: Retention) -> Result<(), LogError> {
    let mut txn = db.begin_write().map_err(storage)?;
    // No fsync of its own: the next append's commit persists it. An offset
    // lost in a crash only replays records, which the facts merge absorbs.
    txn.set_durability(Durability::None).map_err(|e| LogError::storage_from("setting durability", e))?;
    {
        let mut offsets = txn.open_table(GROUP_OFFSETS).map_err(storage)?;
        offsets.insert(group, upto).map_err(storage)?;
        let mut consumed = u64::MAX;
        for item in offsets.iter().map_err(storage)? {
            consumed = consumed.min(item.map_err(storage)?.1.value());
        }
        let trim_below = match retention {
            Retention::UntilConsumed => consumed,
            Retention::Window { window, max_bytes } => trim_segments(&txn, consumed, window, max_bytes)?,
        };
        let mut records = txn.open_table(RECORDS).map_err(storage)?;
        records.retain_in(..trim_below, |_, _| false).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

/// Drops the oldest segments that retention lets go, oldest first, and
/// returns the offset below which records go with them.
fn trim_segments(
    txn: &redb::WriteTransaction,
    consumed: u64,
    window: Duration,
    max_bytes: u64,
) -> Result<u64, LogError> {
    let cutoff = now_micros().saturating_sub(window.as_micros() as u64);
    let mut segments = txn.open_table(SEGMENTS).map_err(storage)?;
    let mut meta = txn.open_table(META).map_err(storage)?;
    let mut held = meta.get("bytes").map_err(storage)?.map(|v| v.value()).unwrap_or(0);
    let oldest: Vec<(u64, (u64, u64))> = segments
        .iter()
        .map_err(storage)?
        .take(SEGMENTS_PER_TRIM + 1)
        .map(|item| item.map(|(k, v)| (k.value(), v.value())).map_err(storage))
        .collect::<Result<_, _>>()?;
    let mut trim_below = 0;
    // A segment ends where the next begins; the newest one looked at stays.
    for pair in oldest.windows(2) {
        let ((start, (at, bytes)), (end, _)) = (pair[0], pair[1]);
        let expired = at < cutoff;
        let over = held > max_bytes && end <= consumed;
        if !(expired || over) {
            break;
        }
        segments.remove(start).map_err(storage)?;
        held = held.saturating_sub(bytes);
        trim_below = end;
    }
    meta.insert("bytes", held).map_err(storage)?;
    Ok(trim_below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encoding_round_trips() {
        let record = Record { key: b"resident".to_vec(), payload: vec![1, 2, 3] };
        let mut buf = Vec::new();
        encode(&record, &mut buf);
        assert_eq!(decode_record(&buf).unwrap(), record);
        let empty = Record { key: vec![], payload: vec![] };
        encode(&empty, &mut buf);
        assert_eq!(decode_record(&buf).unwrap(), empty);
    }

    #[test]
    fn truncated_values_are_an_error_not_a_panic() {
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[9, 0, 0, 0, 1]).is_err());
    }

    fn one(n: usize) -> Vec<Record> {
        vec![Record { key: b"k".to_vec(), payload: vec![n as u8; 100] }]
    }

    /// Appends three records, one transaction (segment) each, lets `group`
    /// consume the first `consumed`, and returns what a new group reads.
    async fn kept_after(retention: Retention, consumed: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open_with(dir.path(), retention, DEFAULT_CACHE_BYTES).unwrap();
        let mut group = log.consumer("materializer").await.unwrap();
        for n in 0..3 {
            log.append(one(n)).await.unwrap();
        }
        let read = group.poll(consumed, Duration::from_secs(5)).await.unwrap();
        group.commit(&[read.last().unwrap().position]).await.unwrap();
        let mut rebuild = log.consumer("rebuild").await.unwrap();
        let kept = rebuild.poll(10, Duration::from_secs(5)).await.unwrap();
        log.close().await.unwrap();
        kept.iter().map(|d| d.record.payload[0]).collect()
    }

    #[tokio::test]
    async fn the_event_log_keeps_consumed_records_for_its_window() {
        let window = Retention::Window { window: Duration::from_secs(3600), max_bytes: u64::MAX };
        assert_eq!(kept_after(window, 3).await, vec![0, 1, 2], "all consumed, all kept for a rebuild");
        assert_eq!(kept_after(Retention::UntilConsumed, 2).await, vec![2], "a spool forgets what was consumed");
    }

    #[tokio::test]
    async fn expired_records_go_and_size_trims_only_what_every_group_consumed() {
        // Past the window: every segment but the newest goes, consumed or not.
        let expired = Retention::Window { window: Duration::ZERO, max_bytes: u64::MAX };
        assert_eq!(kept_after(expired, 1).await, vec![2]);
        // Over the size bound: the oldest consumed segments go, never an
        // unconsumed one.
        let small = Retention::Window { window: Duration::from_secs(3600), max_bytes: 1 };
        assert_eq!(kept_after(small, 1).await, vec![1, 2], "the consumed first one goes");
        assert_eq!(kept_after(small, 2).await, vec![2], "then the second");
    }
}
