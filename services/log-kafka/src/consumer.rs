//! The materializers' side: a consumer in the group, its lag, the commit on
//! revoke, pausing, and dead-lettering what can never be applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use healthcode_log::{Delivered, LogConsumer, LogError, Position, Record};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::{DEAD_LETTER_REASON_HEADER, KafkaConfig, RenewableProducer, unavailable};

/// Consumer statistics (lag per partition) and the commit on revoke.
#[derive(Default)]
pub(crate) struct ConsumerStats {
    lag: Mutex<HashMap<i32, i64>>,
    total_lag: AtomicU64,
}

impl ClientContext for ConsumerStats {
    fn stats(&self, stats: Statistics) {
        let mut lag = self.lag.lock().expect("lag lock");
        let before = std::mem::take(&mut *lag);
        for topic in stats.topics.values() {
            for (id, partition) in &topic.partitions {
                // Only the partitions assigned to this member (`desired`):
                // librdkafka keeps reporting the lag a partition had when a
                // rebalance moved it to another member, and that member
                // drains it. The internal UA partition (-1) reports -1.
                if *id >= 0 && partition.desired && partition.consumer_lag >= 0 {
                    lag.insert(*id, partition.consumer_lag);
                    metrics::gauge!("healthcode_kafka_consumer_lag_records", "partition" => id.to_string())
                        .set(partition.consumer_lag as f64);
                }
            }
        }
        // A partition that moved away is no longer this member's lag.
        for id in before.keys().filter(|id| !lag.contains_key(id)) {
            metrics::gauge!("healthcode_kafka_consumer_lag_records", "partition" => id.to_string()).set(0.0);
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
    /// A member of `group` on the events topic; `producer` writes its dead letters.
    pub(crate) fn subscribe(
        config: &KafkaConfig,
        group: &str,
        producer: Arc<RenewableProducer>,
    ) -> Result<KafkaConsumer, LogError> {
        let consumer: StreamConsumer<ConsumerStats> =
            config.consumer_config(group).create_with_context(ConsumerStats::default()).map_err(unavailable)?;
        consumer.subscribe(&[&config.topic]).map_err(unavailable)?;
        Ok(KafkaConsumer {
            consumer,
            topic: config.topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            producer,
            paused: false,
            held: Default::default(),
        })
    }

    /// An error the consumer reported while polling. librdkafka reconnects,
    /// refetches metadata and follows new partition leaders by itself, so a
    /// broker that went away (killed, restarted, a leader moving) is
    /// reported and ridden through; only a fatal client error ends the
    /// consumer. Found by killing a broker of a three-node cluster: the
    /// materializer used to exit on the first `BrokerTransportFailure`.
    fn ride_through(&self, e: KafkaError) -> Result<(), LogError> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            return Err(LogError::unavailable(format!("fatal consumer error {code:?}: {reason}")));
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

/// How long a rebuild waits for the partitions' end offsets.
const WATERMARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) struct KafkaConsumer {
    consumer: StreamConsumer<ConsumerStats>,
    topic: String,
    dead_letter_topic: String,
    /// The log's producer: a dead one is renewed here as on an append.
    producer: Arc<RenewableProducer>,
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

    async fn end_offsets(&self) -> Result<Vec<Position>, LogError> {
        // librdkafka's metadata and watermark calls block; a rebuild makes
        // them once, before it reads.
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), WATERMARK_TIMEOUT).map_err(unavailable)?;
        let partitions: Vec<i32> =
            metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        partitions
            .into_iter()
            .filter_map(|p| match self.consumer.fetch_watermarks(&self.topic, p, WATERMARK_TIMEOUT) {
                // A partition with nothing left to read has no end to reach.
                Ok((low, high)) if high <= low => None,
                Ok((_, high)) => Some(Ok(Position { partition: p as u32, offset: high as u64 })),
                Err(e) => Some(Err(unavailable(e))),
            })
            .collect()
    }

    /// The broker expires the offsets of a group nobody resumes.
    async fn leave_group(&mut self) -> Result<(), LogError> {
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
        let producer = self.producer.get();
        if let Err((e, _)) = producer.send(message, Duration::from_secs(1)).await {
            self.producer.renew_if_dead(&producer, std::slice::from_ref(&e));
            return Err(unavailable(e));
        }
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

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Partition, Topic};

    use super::*;

    fn stats(partitions: &[(i32, bool, i64)]) -> Statistics {
        let partitions = partitions
            .iter()
            .map(|&(partition, desired, consumer_lag)| {
                (partition, Partition { partition, desired, consumer_lag, ..Partition::default() })
            })
            .collect();
        let topic = Topic { topic: "events".into(), partitions, ..Topic::default() };
        Statistics { topics: [("events".to_string(), topic)].into(), ..Statistics::default() }
    }

    #[test]
    fn lag_counts_only_the_partitions_this_member_is_assigned() {
        let member = ConsumerStats::default();
        member.stats(stats(&[(0, true, 7), (1, true, 5), (-1, false, -1)]));
        assert_eq!(member.total_lag.load(Ordering::Relaxed), 12);
        // A rebalance moved partition 1 away with 5 records left; librdkafka
        // still reports them, but the member that took it drains them.
        member.stats(stats(&[(0, true, 0), (1, false, 5), (-1, false, -1)]));
        assert_eq!(member.total_lag.load(Ordering::Relaxed), 0);
        assert_eq!(member.lag.lock().unwrap().keys().copied().collect::<Vec<_>>(), vec![0]);
    }
}
