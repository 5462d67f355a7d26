//! The EventLog conformance suite against Kafka: the Apache Kafka cluster of
//! `scripts/engines.sh` when `HEALTHCODE_KAFKA_BROKERS` names one (the
//! reference), else a tansu broker per test; a fresh topic per factory.

use std::sync::Arc;

use async_trait::async_trait;
use healthcode_log::EventLog;
use healthcode_log::conformance::LogFactory;
use healthcode_log_kafka::{KafkaConfig, KafkaLog};
use healthcode_testkit::broker::{TestBroker, unique_name};

struct KafkaLogFactory {
    broker: TestBroker,
    topic: String,
    group: String,
}

impl KafkaLogFactory {
    fn start() -> Option<KafkaLogFactory> {
        let broker = TestBroker::start("kafka conformance")?;
        Some(KafkaLogFactory { topic: unique_name("conformance"), group: unique_name("conformance"), broker })
    }
}

#[async_trait]
impl LogFactory for KafkaLogFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        let mut config = KafkaConfig::new(self.broker.brokers());
        config.topic = self.topic.clone();
        config.dead_letter_topic = format!("{}.dead-letter", self.topic);
        config.partitions = 3;
        config.replication_factor = self.broker.replication_factor();
        Arc::new(
            KafkaLog::connect(config).await.unwrap_or_else(|e| panic!("connect to {}: {e}", self.broker.describe())),
        )
    }

    fn group(&self) -> String {
        self.group.clone()
    }

    fn cannot_run(&self, case: &str) -> Option<&'static str> {
        // Measured: after 4 records in one produce batch, tansu answered a
        // high watermark of 1 (the batch's base offset + 1), Apache Kafka 4.
        let tansu = matches!(self.broker, TestBroker::Tansu(_));
        (tansu && case == "end_offsets_mark_where_the_log_ends").then_some(
            "tansu reports a partition's end as its last batch's base offset + 1; Apache Kafka runs this case",
        )
    }
}

healthcode_log::event_log_conformance!(KafkaLogFactory::start());
