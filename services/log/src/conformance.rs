//! The EventLog conformance suite: one set of checks every adapter must pass.
//! An adapter's test file provides a [`LogFactory`] and invokes
//! [`event_log_conformance!`](crate::event_log_conformance).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Delivered, EventLog, LogConsumer, LogError, Record};

/// Opens the log under test. A call after the previous handle was closed and
/// dropped must open the same log again (same files, same topic).
#[async_trait]
pub trait LogFactory: Send + Sync {
    async fn open(&self) -> Arc<dyn EventLog>;

    /// The consumer group the checks use: one of its own per factory where
    /// the broker is shared between tests (a shared group would rebalance
    /// across them).
    fn group(&self) -> String {
        "conformance".into()
    }

    /// Why this backend cannot run `case` faithfully, if it cannot (a test
    /// stand-in's known gap): the case then says that it skipped.
    fn cannot_run(&self, _case: &str) -> Option<&'static str> {
        None
    }
}

/// Runs every conformance check as its own test, against a fresh factory each.
/// `$factory` evaluates to `Option<impl LogFactory>`; `None` means the backing
/// broker is not available, and each test says that it skipped.
#[macro_export]
macro_rules! event_log_conformance {
    ($factory:expr) => {
        $crate::event_log_conformance!(@cases $factory;
            delivers_every_record_in_key_order,
            resumes_after_the_last_commit,
            empty_poll_returns_after_the_wait,
            append_wakes_a_waiting_consumer,
            concurrent_appends_are_all_delivered,
            records_and_commits_survive_reopen,
            closed_log_refuses_appends,
            dead_letters_keep_the_record_and_reason,
            pause_holds_records_until_resume,
            end_offsets_mark_where_the_log_ends,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                match $factory {
                    Some(factory) => match $crate::conformance::LogFactory::cannot_run(&factory, stringify!($case)) {
                        Some(why) => $crate::conformance::skipped(stringify!($case), why),
                        None => $crate::conformance::$case(&factory).await,
                    },
                    None => $crate::conformance::skipped(stringify!($case), "log backend not available"),
                }
            }
        )*
    };
}

pub use healthcode_testkit::skipped;
const PATIENCE: Duration = Duration::from_secs(60);

fn record(key: &str, n: usize) -> Record {
    Record { key: key.as_bytes().to_vec(), payload: format!("{key}/{n}").into_bytes() }
}

/// Polls until `count` records arrived or the patience ran out.
async fn drain(consumer: &mut dyn LogConsumer, count: usize) -> Vec<Delivered> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < count && tokio::time::Instant::now() < deadline {
        got.extend(consumer.poll(count - got.len(), Duration::from_millis(500)).await.expect("poll"));
    }
    got
}

fn payloads(records: &[Delivered]) -> Vec<String> {
    records.iter().map(|d| String::from_utf8(d.record.payload.clone()).unwrap()).collect()
}

pub async fn delivers_every_record_in_key_order(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    for batch in 0..3 {
        let records = ["alice", "bob", "carol"].iter().flat_map(|k| (0..5).map(move |i| record(k, batch * 5 + i)));
        log.append(records.collect()).await.unwrap();
    }
    let got = drain(consumer.as_mut(), 45).await;
    assert_eq!(got.len(), 45, "every appended record is delivered");
    let mut per_key: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for d in &got {
        per_key.entry(d.record.key.clone()).or_default().push(String::from_utf8(d.record.payload.clone()).unwrap());
    }
    for key in ["alice", "bob", "carol"] {
        let expected: Vec<String> = (0..15).map(|i| format!("{key}/{i}")).collect();
        assert_eq!(per_key[key.as_bytes()], expected, "records of one key arrive in append order");
    }
    log.close().await.unwrap();
}

pub async fn resumes_after_the_last_commit(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut first = log.consumer(&factory.group()).await.unwrap();
    log.append((0..10).map(|i| record("one-key", i)).collect()).await.unwrap();
    let got = drain(first.as_mut(), 10).await;
    assert_eq!(got.len(), 10);
    let committed: Vec<_> = got[..4].iter().map(|d| d.position).collect();
    first.commit(&committed).await.unwrap();
    drop(first);

    let mut second = log.consumer(&factory.group()).await.unwrap();
    let again = payloads(&drain(second.as_mut(), 6).await);
    let expected: Vec<String> = (4..10).map(|i| format!("one-key/{i}")).collect();
    assert_eq!(again, expected, "a new consumer of the group resumes right after the commit");
    log.close().await.unwrap();
}

pub async fn empty_poll_returns_after_the_wait(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    let polled = tokio::time::timeout(Duration::from_secs(30), consumer.poll(10, Duration::from_millis(200)))
        .await
        .expect("poll returns after its wait, it does not hang");
    assert!(polled.unwrap().is_empty());
    log.close().await.unwrap();
}

pub async fn append_wakes_a_waiting_consumer(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    // Let the consumer settle (Kafka joins its group) before the append.
    let _ = consumer.poll(1, Duration::from_millis(200)).await.unwrap();
    let (polling, about_to_poll) = tokio::sync::oneshot::channel();
    let waiting = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let _ = polling.send(());
        loop {
            let got = consumer.poll(1, Duration::from_secs(5)).await.unwrap();
            if !got.is_empty() || tokio::time::Instant::now() > deadline {
                return got;
            }
        }
    });
    // The append goes once the consumer is in its poll, not after a guess.
    about_to_poll.await.unwrap();
    log.append(vec![record("wake", 0)]).await.unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(payloads(&got), vec!["wake/0".to_string()]);
    log.close().await.unwrap();
}

pub async fn concurrent_appends_are_all_delivered(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    log.append(vec![record(&format!("k{t}"), i)]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let got: BTreeSet<String> = payloads(&drain(consumer.as_mut(), 1000).await).into_iter().collect();
    assert_eq!(got.len(), 1000, "no acknowledged append is lost");
    log.close().await.unwrap();
}

pub async fn records_and_commits_survive_reopen(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    log.append((0..6).map(|i| record("durable", i)).collect()).await.unwrap();
    let got = drain(consumer.as_mut(), 6).await;
    consumer.commit(&[got[1].position]).await.unwrap();
    drop(consumer);
    log.close().await.unwrap();
    drop(log);

    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    let expected: Vec<String> = (2..6).map(|i| format!("durable/{i}")).collect();
    assert_eq!(payloads(&drain(consumer.as_mut(), 4).await), expected);
    log.close().await.unwrap();
}

pub async fn closed_log_refuses_appends(factory: &impl LogFactory) {
    let log = factory.open().await;
    log.append(vec![record("before", 0)]).await.unwrap();
    log.close().await.unwrap();
    let after = log.append(vec![record("after", 0)]).await;
    assert!(matches!(after, Err(LogError::Closed)), "got {after:?}");
}

pub async fn dead_letters_keep_the_record_and_reason(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    log.append(vec![record("poison", 0), record("fine", 1)]).await.unwrap();
    let got = drain(consumer.as_mut(), 2).await;
    let poison = got.iter().find(|d| d.record.key == b"poison").expect("poison delivered");
    consumer.dead_letter(poison, "record: not a healthcode.v1.Event").await.unwrap();
    consumer.commit(&got.iter().map(|d| d.position).collect::<Vec<_>>()).await.unwrap();
    let letters = log.dead_letters().await.unwrap();
    assert_eq!(letters, vec![(record("poison", 0), "record: not a healthcode.v1.Event".to_string())]);
    log.close().await.unwrap();
}

pub async fn pause_holds_records_until_resume(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    log.append((0..5).map(|i| record("paused", i)).collect()).await.unwrap();
    assert_eq!(drain(consumer.as_mut(), 5).await.len(), 5);
    consumer.pause().await.unwrap();
    log.append((5..10).map(|i| record("paused", i)).collect()).await.unwrap();
    for _ in 0..3 {
        let polled = consumer.poll(10, Duration::from_millis(300)).await.unwrap();
        assert!(polled.is_empty(), "a paused consumer returns nothing: {:?}", payloads(&polled));
    }
    consumer.resume().await.unwrap();
    let expected: Vec<String> = (5..10).map(|i| format!("paused/{i}")).collect();
    assert_eq!(payloads(&drain(consumer.as_mut(), 5).await), expected, "nothing skipped across the pause");
    log.close().await.unwrap();
}

/// A factory for the embedded log in a temporary directory.
pub struct EmbeddedLogFactory {
    pub dir: tempfile::TempDir,
}

impl EmbeddedLogFactory {
    pub fn new() -> Self {
        EmbeddedLogFactory { dir: tempfile::tempdir().expect("temp dir") }
    }
}

impl Default for EmbeddedLogFactory {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl LogFactory for EmbeddedLogFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        Arc::new(crate::EmbeddedLog::open(self.dir.path()).expect("open embedded log"))
    }
}

pub async fn end_offsets_mark_where_the_log_ends(factory: &impl LogFactory) {
    let log = factory.open().await;
    let mut consumer = log.consumer(&factory.group()).await.unwrap();
    assert!(consumer.end_offsets().await.unwrap().is_empty(), "an empty log has no end to reach");
    log.append((0..6).map(|n| record(["a", "b", "c"][n % 3], n)).collect()).await.unwrap();
    let got = drain(consumer.as_mut(), 6).await;
    assert_eq!(got.len(), 6);
    let ends = consumer.end_offsets().await.unwrap();
    let mut next: HashMap<u32, u64> = HashMap::new();
    for d in &got {
        let n = next.entry(d.position.partition).or_default();
        *n = (*n).max(d.position.offset + 1);
    }
    let ends: HashMap<u32, u64> = ends.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(ends, next, "each partition ends just past its last record");
    log.close().await.unwrap();
}
