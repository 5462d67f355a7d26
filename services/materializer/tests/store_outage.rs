//! A store that fails for a while: the materializer retries the batch in
//! hand, pauses its consumer meanwhile, resumes and applies everything when
//! the store is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use healthcode_core::{UnixMicros, Validator};
use healthcode_log::{Delivered, EmbeddedLog, EventLog, LogConsumer, LogError, Position, Record};
use healthcode_materializer::{Materializer, MaterializerConfig};
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use healthcode_store::{EmbeddedStore, FaultyStore, StatusStore};
use tokio_util::sync::CancellationToken;

/// Counts pause and resume calls of the consumer it wraps.
struct Watched {
    inner: Box<dyn LogConsumer>,
    pauses: Arc<AtomicUsize>,
    resumes: Arc<AtomicUsize>,
}

#[async_trait]
impl LogConsumer for Watched {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, LogError> {
        self.inner.poll(max, wait).await
    }
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        self.inner.commit(positions).await
    }
    fn lag(&self) -> Option<u64> {
        self.inner.lag()
    }
    async fn dead_letter(&mut self, record: &Delivered, reason: &str) -> Result<(), LogError> {
        self.inner.dead_letter(record, reason).await
    }
    async fn pause(&mut self) -> Result<(), LogError> {
        self.pauses.fetch_add(1, Ordering::SeqCst);
        self.inner.pause().await
    }
    async fn resume(&mut self) -> Result<(), LogError> {
        self.resumes.fetch_add(1, Ordering::SeqCst);
        self.inner.resume().await
    }
    async fn end_offsets(&self) -> Result<Vec<Position>, LogError> {
        self.inner.end_offsets().await
    }
    async fn leave_group(&mut self) -> Result<(), LogError> {
        self.inner.leave_group().await
    }
}

fn negative(n: usize) -> Record {
    let t = UnixMicros::now().saturating_sub(Duration::from_secs(3600)).to_timestamp();
    let event = pb::Event {
        kind: Some(pb::event::Kind::TestResult(pb::TestResultEvent {
            event_id: format!("e{n}"),
            resident_id: format!("r{n}"),
            sample_id: format!("s{n}"),
            lab_id: "lab-1".into(),
            kind: pb::TestKind::Pcr as i32,
            outcome: pb::TestOutcome::Negative as i32,
            sampled_at: Some(t),
            resulted_at: Some(t),
        })),
        provenance: None,
    };
    Record { key: format!("r{n}").into_bytes(), payload: event.encode_to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_pauses_the_consumer_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log")).unwrap());
    let embedded =
        EmbeddedStore::open(&dir.path().join("store"), healthcode_core::Limits::default().retention).unwrap();
    let (store, faults) = FaultyStore::new(Arc::new(embedded));
    let store = Arc::new(store);
    faults.set_down(true);
    let (pauses, resumes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let consumer =
        Watched { inner: log.consumer("m").await.unwrap(), pauses: pauses.clone(), resumes: resumes.clone() };
    let shutdown = CancellationToken::new();
    let config = MaterializerConfig { max_retry_delay: Duration::from_millis(200), ..MaterializerConfig::default() };
    let running = tokio::spawn(
        Materializer::new(Box::new(consumer), store.clone(), Validator::default(), config).run(shutdown.clone()),
    );

    log.append((0..50).map(negative).collect()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pauses.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the consumer was never paused during the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.append((50..100).map(negative).collect()).await.unwrap();
    while faults.refusals() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the batch was not retried during the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(resumes.load(Ordering::SeqCst), 0);

    faults.set_down(false);
    let residents: Vec<String> = (0..100).map(|n| format!("r{n}")).collect();
    loop {
        let facts = store.get_many(&residents).await.unwrap();
        if facts.iter().all(Option::is_some) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not every event was applied after the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(resumes.load(Ordering::SeqCst), pauses.load(Ordering::SeqCst), "every pause is resumed");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
