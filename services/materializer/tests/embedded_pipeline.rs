//! The materializer over the embedded log and store: events in, facts out,
//! poison records skipped, offsets committed only after the store write.

use std::sync::Arc;
use std::time::Duration;

use healthcode_core::{Color, Policy, UnixMicros, Validator};
use healthcode_log::{EmbeddedLog, EventLog, Record};
use healthcode_materializer::{Materializer, MaterializerConfig};
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use healthcode_store::{EmbeddedStore, StatusStore};
use tokio_util::sync::CancellationToken;

fn test_result(event_id: &str, resident: &str, outcome: pb::TestOutcome, hours_ago: u64) -> Record {
    let sampled = UnixMicros::now().saturating_sub(Duration::from_secs(hours_ago * 3600));
    let event = pb::Event {
        kind: Some(pb::event::Kind::TestResult(pb::TestResultEvent {
            event_id: event_id.into(),
            resident_id: resident.into(),
            sample_id: event_id.into(),
            lab_id: "lab-1".into(),
            kind: pb::TestKind::Pcr as i32,
            outcome: outcome as i32,
            sampled_at: Some(sampled.to_timestamp()),
            resulted_at: Some(sampled.to_timestamp()),
        })),
        provenance: None,
    };
    Record { key: resident.as_bytes().to_vec(), payload: event.encode_to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_facts_and_a_poison_record_does_not_stall() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log")).unwrap());
    let store =
        Arc::new(EmbeddedStore::open(&dir.path().join("store"), healthcode_core::Limits::default().retention).unwrap());
    log.append(vec![
        test_result("e1", "alice", pb::TestOutcome::Positive, 30),
        Record { key: b"garbage".to_vec(), payload: vec![0xff, 0xff, 0xff] },
        test_result("e2", "bob", pb::TestOutcome::Negative, 2),
        test_result("e3", "alice", pb::TestOutcome::Negative, 20),
    ])
    .await
    .unwrap();

    let consumer = log.consumer("materializer").await.unwrap();
    let shutdown = CancellationToken::new();
    let materializer = Materializer::new(consumer, store.clone(), Validator::default(), MaterializerConfig::default());
    let running = tokio::spawn(materializer.run(shutdown.clone()));

    let policy = Policy::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let facts = store.get_many(&["alice".into(), "bob".into()]).await.unwrap();
        if facts.iter().all(Option::is_some) && facts[0].as_ref().unwrap().latest_negative().is_some() {
            let now = UnixMicros::now();
            assert_eq!(
                policy.evaluate(facts[0].as_ref().unwrap(), &healthcode_core::SiteRisks::none(), now).color,
                Color::Red,
                "one negative after a positive"
            );
            assert_eq!(
                policy.evaluate(facts[1].as_ref().unwrap(), &healthcode_core::SiteRisks::none(), now).color,
                Color::Green
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "facts never arrived: {facts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The facts are visible when the merge commits; the dead letter and the
    // group's commit come after. A shutdown before them leaves the batch to
    // be replayed (by design), so wait until the group's position is at the
    // log's end: a consumer of the group reads it when it is created.
    while log.consumer("materializer").await.unwrap().lag() != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "the batch was never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // Everything was committed: a new consumer of the group sees nothing.
    let mut again = log.consumer("materializer").await.unwrap();
    assert!(again.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());
    assert_eq!(again.lag(), Some(0));
    let letters = log.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "the poison record was dead-lettered");
    assert_eq!(letters[0].0.key, b"garbage");
    assert!(letters[0].1.starts_with("record: not a healthcode.v1.Event"), "{}", letters[0].1);
}
