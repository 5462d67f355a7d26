//! What the Kafka clients are set to, and the settings that choose it.

use std::time::Duration;

use rdkafka::config::ClientConfig;

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
            retention: healthcode_core::validation::DEFAULT_RETENTION,
            options: Vec::new(),
        }
    }

    pub(crate) fn client(&self, role: &str) -> ClientConfig {
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

    pub(crate) fn producer_config(&self) -> ClientConfig {
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

    pub(crate) fn consumer_config(&self, group: &str) -> ClientConfig {
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
