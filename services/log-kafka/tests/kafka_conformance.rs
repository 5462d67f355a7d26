//! The EventLog conformance suite against Kafka: a real tansu broker process
//! per test, a fresh topic per factory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use healthcode_log::EventLog;
use healthcode_log::conformance::LogFactory;
use healthcode_log_kafka::testing::TansuBroker;
use healthcode_log_kafka::{KafkaConfig, KafkaLog};

struct KafkaLogFactory {
    broker: TansuBroker,
    topic: String,
}

impl KafkaLogFactory {
    fn start() -> Option<KafkaLogFactory> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let broker = TansuBroker::start("kafka conformance")?;
        let topic = format!("conformance-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        Some(KafkaLogFactory { broker, topic })
    }
}

#[async_trait]
impl LogFactory for KafkaLogFactory {
    async fn open(&self) -> Arc<dyn EventLog> {
        let mut config = KafkaConfig::new(self.broker.brokers());
        config.topic = self.topic.clone();
        config.dead_letter_topic = format!("{}.dead-letter", self.topic);
        config.partitions = 3;
        Arc::new(KafkaLog::connect(config).await.expect("connect to tansu"))
    }
}

healthcode_log::event_log_conformance!(KafkaLogFactory::start());
