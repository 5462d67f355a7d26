//! A consumer whose only broker goes away and comes back (librdkafka's mock
//! cluster): the errors librdkafka reports meanwhile are ridden through, not
//! returned, and records appended after the broker is back are delivered.
//! On a real cluster the same happens when the leader of a partition is
//! killed (the `kafka-node` drill).

use std::time::Duration;

use healthcode_log::{EventLog, Record};
use healthcode_log_kafka::{KafkaConfig, KafkaLog};
use rdkafka::mocking::MockCluster;

fn record(n: usize) -> Record {
    Record { key: format!("k{n}").into_bytes(), payload: format!("p{n}").into_bytes() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_through_a_broker_outage() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("outage", 2, 1).unwrap();
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.topic = "outage".into();
    config.dead_letter_topic = "outage.dead-letter".into();
    config.create_topics = false;
    let log = KafkaLog::connect(config).await.unwrap();
    let mut consumer = log.consumer("outage-group").await.unwrap();

    log.append(vec![record(1)]).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the first record never arrived");
        got = consumer.poll(10, Duration::from_millis(500)).await.unwrap();
    }

    cluster.broker_down(1).unwrap();
    let outage = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < outage {
        let polled = consumer.poll(10, Duration::from_millis(500)).await;
        assert!(polled.is_ok(), "a broker outage is ridden through: {polled:?}");
    }
    cluster.broker_up(1).unwrap();

    // The producer may need a moment to reconnect as well.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while log.append(vec![record(2)]).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the broker never took a record again");
    }
    // Nothing was committed, so the first record may come again after the
    // reconnect (at least once; the facts merge absorbs it): wait for p2.
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the record after the outage never arrived");
        let polled = consumer.poll(10, Duration::from_millis(500)).await.unwrap();
        let payloads: Vec<&[u8]> = polled.iter().map(|d| d.record.payload.as_slice()).collect();
        assert!(payloads.iter().all(|p| *p == b"p1" || *p == b"p2"), "unexpected records {payloads:?}");
        if payloads.contains(&b"p2".as_slice()) {
            break;
        }
    }
}
