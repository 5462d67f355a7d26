//! Kafka flags -> [`KafkaConfig`].

use std::time::Duration;

use clap::Args;
use healthcode_log_kafka::KafkaConfig;
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Event log on Kafka")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port,... (required with --log kafka)
    #[arg(long, env = "HEALTHCODE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of the events [default: healthcode.events]
    #[arg(long, env = "HEALTHCODE_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Topic of records the materializer cannot apply [default: healthcode.events.dead-letter]
    #[arg(long, env = "HEALTHCODE_KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Partitions of topics created on start [default: 12]
    #[arg(long, env = "HEALTHCODE_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<i32>,
    /// Replication factor of topics created on start [default: 1]
    #[arg(long, env = "HEALTHCODE_KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i32>,
    /// Create the topics on start when missing [default: true]
    #[arg(long, env = "HEALTHCODE_KAFKA_CREATE_TOPICS")]
    pub kafka_create_topics: Option<bool>,
    /// librdkafka setting key=value for both clients; prefix the key with
    /// `producer.` or `consumer.` for one (repeatable; comma-separated in the env)
    #[arg(long = "kafka-option", env = "HEALTHCODE_KAFKA_OPTIONS", value_delimiter = ',')]
    #[serde(rename = "kafka_option")]
    #[merge(strategy = merge::vec::overwrite_empty)]
    pub kafka_options: Vec<String>,
}

impl KafkaArgs {
    /// `used`: the log is Kafka, so the brokers are required.
    pub fn into_config(self, used: bool, retention: Duration) -> anyhow::Result<KafkaConfig> {
        anyhow::ensure!(
            !used || self.kafka_brokers.is_some(),
            "kafka_brokers is required with --log kafka (flag --kafka-brokers, env HEALTHCODE_KAFKA_BROKERS)"
        );
        let d = KafkaConfig::new(self.kafka_brokers.unwrap_or_default());
        let c = KafkaConfig {
            topic: self.kafka_topic.unwrap_or(d.topic.clone()),
            dead_letter_topic: self.kafka_dead_letter_topic.unwrap_or(d.dead_letter_topic.clone()),
            partitions: self.kafka_partitions.unwrap_or(d.partitions),
            replication_factor: self.kafka_replication_factor.unwrap_or(d.replication_factor),
            create_topics: self.kafka_create_topics.unwrap_or(d.create_topics),
            retention,
            options: self
                .kafka_options
                .iter()
                .map(|o| match o.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
                    _ => Err(anyhow::anyhow!("kafka_option {o:?} must look like key=value")),
                })
                .collect::<anyhow::Result<_>>()?,
            ..d
        };
        anyhow::ensure!(c.partitions > 0, "kafka_partitions must be at least 1");
        anyhow::ensure!(c.replication_factor > 0, "kafka_replication_factor must be at least 1");
        Ok(c)
    }
}
