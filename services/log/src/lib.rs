//! The event log between the edge and the materializer.
//!
//! The edge appends and answers ACCEPTED only once [`EventLog::append`]
//! returned: the records are then durable. The materializer reads through a
//! [`LogConsumer`] and commits positions only after their facts are in the
//! store, so delivery is at-least-once; the facts merge makes that enough.

use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;

pub use embedded::{EmbeddedLog, Retention};

/// A record to append: `key` keeps one resident's records together
/// (one partition on Kafka), `payload` is an encoded `healthcode.v1.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Where a record sits in the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub position: Position,
    pub record: Record,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log cannot take or give records now; retrying later may work.
    #[error("event log unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The log's storage failed.
    #[error("event log storage error: {context}")]
    Storage {
        context: String,
        #[source]
        source: Option<Cause>,
    },
    /// The log was closed by this process.
    #[error("event log is closed")]
    Closed,
}

/// The error an adapter met underneath, kept for the chain (`{:#}` in
/// anyhow, `error.sources` in the logs) rather than flattened into text.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl LogError {
    /// The log cannot take or give records now; retrying later may work.
    pub fn unavailable(context: impl Into<String>) -> Self {
        LogError::Unavailable { context: context.into(), source: None }
    }

    /// As [`LogError::unavailable`], keeping the error underneath.
    pub fn unavailable_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        LogError::Unavailable { context: context.into(), source: Some(source.into()) }
    }

    /// The log's storage failed.
    pub fn storage(context: impl Into<String>) -> Self {
        LogError::Storage { context: context.into(), source: None }
    }

    /// As [`LogError::storage`], keeping the error underneath.
    pub fn storage_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        LogError::Storage { context: context.into(), source: Some(source.into()) }
    }
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends the records; when this returns `Ok` every one of them is durable.
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError>;

    /// Opens a consumer in `group`; it resumes after the group's last commit.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError>;

    /// Finishes pending appends and releases the log; later appends fail with `Closed`.
    async fn close(&self) -> Result<(), LogError>;

    /// Every dead-lettered record with its reason, oldest first (for operators and tests).
    async fn dead_letters(&self) -> Result<Vec<(Record, String)>, LogError>;
}

#[async_trait]
pub trait LogConsumer: Send + Sync {
    /// Up to `max` records after the last one returned; waits up to `wait`
    /// for the first one and returns an empty batch when none came.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, LogError>;

    /// Records that everything up to and including `positions` is processed.
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError>;

    /// Records in the log that this group has not committed yet, if known.
    fn lag(&self) -> Option<u64>;

    /// Sets aside a record that can never be applied, with the reason, so
    /// that it cannot stall its partition. Commit it afterwards as usual.
    async fn dead_letter(&mut self, record: &Delivered, reason: &str) -> Result<(), LogError>;

    /// Backpressure: stops fetching while the records in hand cannot be
    /// written. The consumer keeps its group membership; `poll` keeps it alive
    /// and returns no records until [`LogConsumer::resume`].
    async fn pause(&mut self) -> Result<(), LogError>;

    /// Fetches again after [`LogConsumer::pause`]; nothing is skipped.
    async fn resume(&mut self) -> Result<(), LogError>;

    /// Where the log ends now: the next offset of every partition that holds
    /// records. A rebuild reads up to these.
    async fn end_offsets(&self) -> Result<Vec<Position>, LogError>;

    /// This group will not be resumed (a rebuild's own): the log may forget
    /// its position and need not keep records for it.
    async fn leave_group(&mut self) -> Result<(), LogError>;
}
