//! Reading the dead-letter topic back, for operators and tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use healthcode_log::{LogError, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{DEAD_LETTER_REASON_HEADER, unavailable};

/// Every record of `topic`, read from the beginning up to the high watermarks.
pub(crate) fn read_all(consumer: &BaseConsumer, topic: &str) -> Result<Vec<(Record, String)>, LogError> {
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
