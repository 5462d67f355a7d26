//! The EventLog on Kafka. The edge produces with an idempotent producer
//! (acks=all) and answers ACCEPTED only after the broker acknowledged every
//! record of the call; sends are all in flight at once. Materializers share a
//! consumer group; offsets are stored only after the store write and
//! committed by librdkafka's auto-commit, synchronously on partition revoke
//! and on close. Records that cannot be applied go to a dead-letter topic
//! with the reason in a header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use healthcode_log::{EventLog, LogConsumer, LogError, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

mod config;
mod consumer;
mod dead_letters;

pub use config::KafkaConfig;

/// Header naming the record format, so a later format can live beside this one.
pub const SCHEMA_HEADER: &str = "healthcode-schema";
pub const SCHEMA_V1: &str = "healthcode.v1.Event";
/// Header carrying why a record was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "healthcode-dead-letter-reason";

pub(crate) fn unavailable(e: KafkaError) -> LogError {
    LogError::unavailable_from("Kafka", e)
}

/// Producer statistics, exported as metrics.
pub(crate) struct ProducerContext;

impl ClientContext for ProducerContext {
    fn stats(&self, stats: Statistics) {
        metrics::gauge!("healthcode_kafka_producer_queue_messages").set(stats.msg_cnt as f64);
        metrics::gauge!("healthcode_kafka_producer_queue_bytes").set(stats.msg_size as f64);
    }
}

pub struct KafkaLog {
    config: KafkaConfig,
    /// Shared with the consumers, which write dead letters with it.
    producer: Arc<RenewableProducer>,
    closed: AtomicBool,
}

/// The one producer of a log, replaced when librdkafka declares it dead (a
/// fatal error, such as an idempotent producer fenced after its messages
/// timed out while the broker hung): a fatal producer never sends again.
/// Appends and dead letters both renew it.
pub(crate) struct RenewableProducer {
    config: KafkaConfig,
    current: RwLock<FutureProducer<ProducerContext>>,
}

impl RenewableProducer {
    fn new(config: &KafkaConfig) -> Result<RenewableProducer, LogError> {
        Ok(RenewableProducer { config: config.clone(), current: RwLock::new(Self::create(config)?) })
    }

    fn create(config: &KafkaConfig) -> Result<FutureProducer<ProducerContext>, LogError> {
        config.producer_config().create_with_context(ProducerContext).map_err(unavailable)
    }

    pub(crate) fn get(&self) -> FutureProducer<ProducerContext> {
        self.current.read().expect("producer lock").clone()
    }

    /// Replaces `failed` when it can never send again: librdkafka declared
    /// it dead, or the broker fenced its producer id (as tansu does after
    /// the producer's messages timed out). The next send then gets a fresh
    /// producer id and succeeds once the broker is back.
    pub(crate) fn renew_if_dead(&self, failed: &FutureProducer<ProducerContext>, errors: &[KafkaError]) {
        let fenced = errors.iter().any(|e| {
            matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
            )
        });
        let fatal = failed.client().fatal_error();
        if !fenced && fatal.is_none() {
            return;
        }
        let mut current = self.current.write().expect("producer lock");
        // Another send may have renewed it already.
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match Self::create(&self.config) {
            Ok(fresh) => {
                let reason = fatal.map(|(_, r)| r).unwrap_or_else(|| "producer fenced by the broker".into());
                tracing::warn!(reason, "the Kafka producer can no longer send; replaced it");
                metrics::counter!("healthcode_kafka_producer_renewals_total").increment(1);
                *current = fresh;
            }
            Err(e) => tracing::error!(error = %e, "replacing the failed Kafka producer failed"),
        }
    }
}

impl KafkaLog {
    /// Connects and creates the events and dead-letter topics when missing.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let producer = Arc::new(RenewableProducer::new(&config)?);
        let log = KafkaLog { config, producer, closed: AtomicBool::new(false) };
        if log.config.create_topics {
            log.create_topics().await?;
        }
        Ok(log)
    }

    async fn create_topics(&self) -> Result<(), LogError> {
        let admin: AdminClient<_> = self.config.client("admin").create().map_err(unavailable)?;
        let replication = || TopicReplication::Fixed(self.config.replication_factor);
        let retention = self.config.retention.as_millis().to_string();
        let topics = [
            NewTopic::new(&self.config.topic, self.config.partitions, replication()),
            NewTopic::new(&self.config.dead_letter_topic, self.config.partitions.min(3), replication()),
        ];
        // acks=all waits for the in-sync replicas; with three or more copies
        // an acknowledged record is on two brokers at least, whatever the
        // broker's own default says.
        let min_insync = if self.config.replication_factor >= 3 { "2" } else { "1" };
        let topics = topics.map(|t| t.set("retention.ms", &retention).set("min.insync.replicas", min_insync));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&topics, &options).await.map_err(unavailable)? {
            match result {
                Ok(topic) => tracing::info!(topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(LogError::unavailable_from(format!("creating topic {topic}"), code));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        let started = Instant::now();
        let count = records.len();
        let producer = self.producer.get();
        // All sends are in flight together; the call is acknowledged when all are.
        let sends = records.iter().map(|r| {
            let headers = OwnedHeaders::new().insert(Header { key: SCHEMA_HEADER, value: Some(SCHEMA_V1) });
            let record = FutureRecord::to(&self.config.topic).key(&r.key).payload(&r.payload).headers(headers);
            producer.send(record, Duration::from_secs(1))
        });
        let results = join_all(sends).await;
        metrics::histogram!("healthcode_log_append_seconds", "log" => "kafka").record(started.elapsed());
        let failed: Vec<KafkaError> = results.into_iter().filter_map(|r| r.err().map(|(e, _)| e)).collect();
        if let Some(first) = failed.first() {
            metrics::counter!("healthcode_kafka_produce_failures_total").increment(failed.len() as u64);
            self.producer.renew_if_dead(&producer, &failed);
            return Err(LogError::unavailable_from(
                format!("{} of {count} records not acknowledged", failed.len()),
                first.clone(),
            ));
        }
        metrics::counter!("healthcode_log_appended_records_total", "log" => "kafka").increment(count as u64);
        Ok(())
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        Ok(Box::new(consumer::KafkaConsumer::subscribe(&self.config, group, self.producer.clone())?))
    }

    async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::SeqCst);
        let producer = self.producer.get();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| LogError::storage_from("a blocking task of the Kafka client failed", e))?
            .map_err(unavailable)
    }

    async fn dead_letters(&self) -> Result<Vec<(Record, String)>, LogError> {
        let consumer: BaseConsumer = self
            .config
            .client("consumer")
            .set("group.id", "healthcode-dead-letter-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(unavailable)?;
        let topic = self.config.dead_letter_topic.clone();
        tokio::task::spawn_blocking(move || dead_letters::read_all(&consumer, &topic))
            .await
            .map_err(|e| LogError::storage_from("a blocking task of the Kafka client failed", e))?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use healthcode_log::{Delivered, Position};
    use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
    use rdkafka::mocking::MockCluster;

    use super::*;

    /// librdkafka's own test hook: the producer dies as a fenced one does.
    fn kill(producer: &FutureProducer<ProducerContext>) {
        let reason = std::ffi::CString::new("fenced in a test").unwrap();
        // SAFETY: a live client handle and a NUL-terminated reason.
        unsafe {
            rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
                reason.as_ptr(),
            );
        }
        assert!(producer.client().fatal_error().is_some(), "the hook made it fatal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_producer_is_renewed_by_a_dead_letter_as_by_an_append() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("renew", 1, 1).unwrap();
        cluster.create_topic("renew.dead-letter", 1, 1).unwrap();
        let mut config = KafkaConfig::new(cluster.bootstrap_servers());
        config.topic = "renew".into();
        config.dead_letter_topic = "renew.dead-letter".into();
        config.create_topics = false;
        let log = KafkaLog::connect(config).await.unwrap();
        let mut consumer = log.consumer("renew-group").await.unwrap();
        let poison = Delivered {
            position: Position { partition: 0, offset: 0 },
            record: Record { key: b"k".to_vec(), payload: b"not an event".to_vec() },
        };

        // A dead letter through a dead producer fails once, renews it, and
        // the retry (the materializer retries dead letters) goes through.
        let dead = log.producer.get();
        kill(&dead);
        assert!(consumer.dead_letter(&poison, "undecodable").await.is_err());
        let renewed = log.producer.get();
        assert!(!std::ptr::eq(renewed.client().native_ptr(), dead.client().native_ptr()), "a fresh producer");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while consumer.dead_letter(&poison, "undecodable").await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the renewed producer never wrote the dead letter");
        }
        let letters = log.dead_letters().await.unwrap();
        assert_eq!(letters, vec![(poison.record.clone(), "undecodable".to_owned())]);

        // The append path shares the same producer and renews it the same way.
        kill(&log.producer.get());
        assert!(log.append(vec![poison.record.clone()]).await.is_err());
        while log.append(vec![poison.record.clone()]).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the renewed producer never appended");
        }
    }
}
