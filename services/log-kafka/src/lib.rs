//! The EventLog on Kafka. The edge produces with an idempotent producer
//! (acks=all) and answers ACCEPTED only after the broker acknowledged every
//! record of the call; sends are all in flight at once. Materializers share a
//! consumer group; offsets are stored only after the store write and
//! committed by librdkafka's auto-commit, synchronously on partition revoke
//! and on close. Records that cannot be applied go to a dead-letter topic
//! with the reason in a header.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::join_all;
use healthcode_log::{Delivered, EventLog, LogConsumer, LogError, Position, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

#[cfg(feature = "testing")]
pub mod testing;

/// Header naming the record format, so a later format can live beside this one.
pub const SCHEMA_HEADER: &str = "healthcode-schema";
pub const SCHEMA_V1: &str = "healthcode.v1.Event";
/// Header carrying why a record was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "healthcode-dead-letter-reason";

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port,host:port`
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// Partitions of topics created on start.
    pub partitions: i32,
    /// Replication factor of topics created on start.
    pub replication_factor: i32,
    /// Create the topics on start when missing (off where topics are managed elsewhere).
    pub create_topics: bool,
    /// `retention.ms` of topics created on start: records hold resident
    /// pseudonyms and results, and must not outlive the facts they feed.
    pub retention: Duration,
    /// Overrides for both clients; a `producer.` or `consumer.` prefix targets one.
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: "healthcode.events".into(),
            dead_letter_topic: "healthcode.events.dead-letter".into(),
            partitions: 12,
            replication_factor: 1,
            create_topics: true,
            retention: Duration::from_secs(30 * 24 * 3600),
            options: Vec::new(),
        }
    }

    fn client(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("statistics.interval.ms", "5000");
        for (key, value) in &self.options {
            match key.split_once('.') {
                Some((prefix, rest)) if prefix == role => config.set(rest, value),
                Some(("producer" | "consumer", _)) => &mut config,
                _ => config.set(key, value),
            };
        }
        config
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Small events: a short linger fills batches on a busy edge
            // without adding noticeable latency on a quiet one.
            .set("linger.ms", "5")
            .set("batch.size", "262144")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.messages", "500000");
        merge(config, self.client("producer"))
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        merge(config, self.client("consumer"))
    }
}

/// `base` with every setting of `overrides` on top.
fn merge(mut base: ClientConfig, overrides: ClientConfig) -> ClientConfig {
    for (key, value) in overrides.config_map() {
        base.set(key, value);
    }
    base
}

fn unavailable(e: KafkaError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Producer statistics, exported as metrics.
struct ProducerContext;

impl ClientContext for ProducerContext {
    fn stats(&self, stats: Statistics) {
        metrics::gauge!("healthcode_kafka_producer_queue_messages").set(stats.msg_cnt as f64);
        metrics::gauge!("healthcode_kafka_producer_queue_bytes").set(stats.msg_size as f64);
    }
}

pub struct KafkaLog {
    config: KafkaConfig,
    /// Replaced when librdkafka declares it dead (a fatal error, such as an
    /// idempotent producer fenced after its messages timed out while the
    /// broker hung): a fatal producer never sends again.
    producer: RwLock<FutureProducer<ProducerContext>>,
    closed: AtomicBool,
}

impl KafkaLog {
    /// Connects and creates the events and dead-letter topics when missing.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let producer = RwLock::new(Self::new_producer(&config)?);
        let log = KafkaLog { config, producer, closed: AtomicBool::new(false) };
        if log.config.create_topics {
            log.create_topics().await?;
        }
        Ok(log)
    }

    fn new_producer(config: &KafkaConfig) -> Result<FutureProducer<ProducerContext>, LogError> {
        config.producer_config().create_with_context(ProducerContext).map_err(unavailable)
    }

    fn producer(&self) -> FutureProducer<ProducerContext> {
        self.producer.read().expect("producer lock").clone()
    }

    /// Replaces `failed` when it can never send again: librdkafka declared
    /// it dead, or the broker fenced its producer id (as tansu does after
    /// the producer's messages timed out). The next append then gets a fresh
    /// producer id and succeeds once the broker is back.
    fn renew_if_dead(&self, failed: &FutureProducer<ProducerContext>, errors: &[KafkaError]) {
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
        let mut current = self.producer.write().expect("producer lock");
        // Another append may have renewed it already.
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match Self::new_producer(&self.config) {
            Ok(fresh) => {
                let reason = fatal.map(|(_, r)| r).unwrap_or_else(|| "producer fenced by the broker".into());
                tracing::warn!(reason, "the Kafka producer can no longer send; replaced it");
                metrics::counter!("healthcode_kafka_producer_renewals_total").increment(1);
                *current = fresh;
            }
            Err(e) => tracing::error!(error = %e, "replacing the failed Kafka producer failed"),
        }
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
                    return Err(LogError::Unavailable(format!("creating topic {topic}: {code}")));
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
        let producer = self.producer();
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
            self.renew_if_dead(&producer, &failed);
            return Err(LogError::Unavailable(format!(
                "{} of {count} records not acknowledged: {first}",
                failed.len()
            )));
        }
        metrics::counter!("healthcode_log_appended_records_total", "log" => "kafka").increment(count as u64);
        Ok(())
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let context = ConsumerStats::default();
        let consumer: StreamConsumer<ConsumerStats> =
            self.config.consumer_config(group).create_with_context(context).map_err(unavailable)?;
        consumer.subscribe(&[&self.config.topic]).map_err(unavailable)?;
        Ok(Box::new(KafkaConsumer {
            consumer,
            topic: self.config.topic.clone(),
            dead_letter_topic: self.config.dead_letter_topic.clone(),
            producer: self.producer(),
            paused: false,
            held: Default::default(),
        }))
    }

    async fn close(&self) -> Result<(), LogError> {
        self.closed.store(true, Ordering::SeqCst);
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| LogError::Storage(e.to_string()))?
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
        tokio::task::spawn_blocking(move || read_all(&consumer, &topic))
            .await
            .map_err(|e| LogError::Storage(e.to_string()))?
    }
}

/// Every record of `topic`, read from the beginning up to the high watermarks.
fn read_all(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(Record, String)>, LogError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(unavailable)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout).map_err(unavailable)?;
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).map_err(unavailable)?;
            remaining.insert(partition.id(), high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment).map_err(unavailable)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(unavailable)?;
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == DEAD_LETTER_REASON_HEADER).and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        out.push((
            Record {
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
            },
            reason,
        ));
        if remaining.get(&message.partition()).is_some_and(|high| message.offset() + 1 >= *high) {
            remaining.remove(&message.partition());
        }
    }
    Ok(out)
}

/// Consumer statistics (lag per partition) and the commit on revoke.
#[derive(Default)]
struct ConsumerStats {
    lag: Mutex<HashMap<i32, i64>>,
    total_lag: AtomicU64,
}

impl ClientContext for ConsumerStats {
    fn stats(&self, stats: Statistics) {
        let mut lag = self.lag.lock().expect("lag lock");
        lag.clear();
        for topic in stats.topics.values() {
            for (id, partition) in &topic.partitions {
                // The internal UA partition (-1) and unassigned ones report -1.
                if *id >= 0 && partition.consumer_lag >= 0 {
                    lag.insert(*id, partition.consumer_lag);
                    metrics::gauge!("healthcode_kafka_consumer_lag_records", "partition" => id.to_string())
                        .set(partition.consumer_lag as f64);
                }
            }
        }
        self.total_lag.store(lag.values().map(|l| *l as u64).sum(), Ordering::Relaxed);
    }
}

impl ConsumerContext for ConsumerStats {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Commit what was processed before the partitions move, so the
            // next owner replays as little as possible.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, partitions = partitions.count(), "commit on revoke");
            }
            metrics::counter!("healthcode_kafka_rebalances_total", "kind" => "revoke").increment(1);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            metrics::counter!("healthcode_kafka_rebalances_total", "kind" => "assign").increment(1);
        }
    }
}

impl KafkaConsumer {
    /// An error the consumer reported while polling. librdkafka reconnects,
    /// refetches metadata and follows new partition leaders by itself, so a
    /// broker that went away (killed, restarted, a leader moving) is
    /// reported and ridden through; only a fatal client error ends the
    /// consumer. Found by killing a broker of a three-node cluster: the
    /// materializer used to exit on the first `BrokerTransportFailure`.
    fn ride_through(&self, e: KafkaError) -> Result<(), LogError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            return Err(LogError::Unavailable(format!("fatal consumer error {code:?}: {reason}")));
        }
        let kind = match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => "broker_unreachable",
            Some(_) => "broker_error",
            None => "client_error",
        };
        metrics::counter!("healthcode_kafka_consumer_errors_total", "kind" => kind).increment(1);
        tracing::warn!(error = %e, kind, "the Kafka consumer reported an error; it reconnects by itself");
        Ok(())
    }
}

struct KafkaConsumer {
    consumer: StreamConsumer<ConsumerStats>,
    topic: String,
    dead_letter_topic: String,
    producer: FutureProducer<ProducerContext>,
    paused: bool,
    /// Records that arrived while paused (fetched before the pause took
    /// effect), handed out first after resume.
    held: std::collections::VecDeque<Delivered>,
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>, LogError> {
        if self.paused {
            // Serve the group protocol (heartbeats, rebalances, the poll
            // interval) without handing out records.
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(message)) => self.held.push_back(delivered(&message)),
                Ok(Err(e)) => self.ride_through(e)?,
                Err(_) => {}
            }
            return Ok(Vec::new());
        }
        if !self.held.is_empty() {
            let take = self.held.len().min(max.max(1));
            return Ok(self.held.drain(..take).collect());
        }
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                self.ride_through(e)?;
                return Ok(out);
            }
        };
        out.push(delivered(&first));
        drop(first);
        // Take what is already fetched without waiting for more.
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => out.push(delivered(&message)),
                // The records already taken are handed out: the consumer's
                // position is past them, and dropping them would skip them
                // until the next rebalance.
                Some(Err(e)) => {
                    self.ride_through(e)?;
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        for p in positions {
            // librdkafka stores offset + 1: the next record to read.
            match self.consumer.store_offset(&self.topic, p.partition as i32, p.offset as i64) {
                Ok(()) => {}
                // The partition moved to another member during the batch: it
                // replays from its last commit, which the merge absorbs.
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition)) => {
                    tracing::info!(partition = p.partition, "partition revoked before its offset was stored");
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        Some(self.consumer.context().total_lag.load(Ordering::Relaxed))
    }

    async fn pause(&mut self) -> Result<(), LogError> {
        let assignment = self.consumer.assignment().map_err(unavailable)?;
        self.consumer.pause(&assignment).map_err(unavailable)?;
        self.paused = true;
        metrics::gauge!("healthcode_kafka_consumer_paused").set(1.0);
        Ok(())
    }

    async fn resume(&mut self) -> Result<(), LogError> {
        let assignment = self.consumer.assignment().map_err(unavailable)?;
        self.consumer.resume(&assignment).map_err(unavailable)?;
        self.paused = false;
        metrics::gauge!("healthcode_kafka_consumer_paused").set(0.0);
        Ok(())
    }

    async fn dead_letter(&mut self, record: &Delivered, reason: &str) -> Result<(), LogError> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: DEAD_LETTER_REASON_HEADER, value: Some(reason) })
            .insert(Header { key: "healthcode-source-partition", value: Some(&record.position.partition.to_string()) })
            .insert(Header { key: "healthcode-source-offset", value: Some(&record.position.offset.to_string()) });
        let message = FutureRecord::to(&self.dead_letter_topic)
            .key(&record.record.key)
            .payload(&record.record.payload)
            .headers(headers);
        self.producer.send(message, Duration::from_secs(1)).await.map_err(|(e, _)| unavailable(e))?;
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Hand over what was processed before leaving the group.
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
    }
}

fn delivered(message: &rdkafka::message::BorrowedMessage<'_>) -> Delivered {
    Delivered {
        position: Position { partition: message.partition() as u32, offset: message.offset() as u64 },
        record: Record {
            key: message.key().unwrap_or_default().to_vec(),
            payload: message.payload().unwrap_or_default().to_vec(),
        },
    }
}
