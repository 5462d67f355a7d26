//! Ingest and materializer flags -> [`EdgeConfig`], [`MaterializerConfig`].

use std::time::Duration;

use clap::Args;
use healthcode_edge::EdgeConfig;
use healthcode_materializer::MaterializerConfig;
use healthcode_rpc::{LaneConfig, PriorityConfig};
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Ingest")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct IngestArgs {
    /// Submit calls served at once [default: 512]
    #[arg(long, env = "HEALTHCODE_INGEST_CONCURRENCY")]
    pub ingest_concurrency: Option<usize>,
    /// Submit calls that may wait for a slot; more are shed [default: 4096]
    #[arg(long, env = "HEALTHCODE_INGEST_QUEUE")]
    pub ingest_queue: Option<usize>,
    /// Longest wait of a submit call for a slot [default: 1s]
    #[arg(long, env = "HEALTHCODE_INGEST_QUEUE_WAIT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub ingest_queue_wait: Option<Duration>,
    /// Spool accepted events on local disk when the log is unreachable or
    /// slow, and forward them later [default: true]
    #[arg(long, env = "HEALTHCODE_EDGE_SPOOL")]
    pub edge_spool: Option<bool>,
    /// An append slower than this goes to the spool [default: 2s]
    #[arg(long, env = "HEALTHCODE_EDGE_SPOOL_AFTER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub edge_spool_after: Option<Duration>,
    /// Events the spool may hold; beyond, submits get RESOURCE_EXHAUSTED [default: 5000000]
    #[arg(long, env = "HEALTHCODE_EDGE_SPOOL_CAPACITY")]
    pub edge_spool_capacity: Option<u64>,
    /// Recent event ids the edge remembers for DUPLICATE answers [default: 500000]
    #[arg(long, env = "HEALTHCODE_DEDUP_CAPACITY")]
    pub dedup_capacity: Option<u64>,
    /// In a process that also serves lookups (`up`), slow submits while
    /// lookups are served and the server runs late [default: true]
    #[arg(long, env = "HEALTHCODE_INGEST_YIELDS")]
    pub ingest_yields: Option<bool>,
    /// How late the server may run while lookups are served before submits
    /// are slowed [default: 1ms]
    #[arg(long, env = "HEALTHCODE_INGEST_YIELD_LAG", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub ingest_yield_lag: Option<Duration>,
    /// Events per second submits keep however busy lookups are [default: 2000]
    #[arg(long, env = "HEALTHCODE_INGEST_YIELD_MIN_RATE")]
    pub ingest_yield_min_rate: Option<u64>,
}

impl IngestArgs {
    pub fn into_config(self) -> EdgeConfig {
        let d = EdgeConfig::default();
        let spool_capacity = self.edge_spool_capacity.or(d.spool_capacity);
        EdgeConfig {
            dedup_capacity: self.dedup_capacity.unwrap_or(d.dedup_capacity),
            lane: LaneConfig {
                concurrency: self.ingest_concurrency.unwrap_or(d.lane.concurrency),
                queue: self.ingest_queue.unwrap_or(d.lane.queue),
                max_wait: self.ingest_queue_wait.unwrap_or(d.lane.max_wait),
                ..d.lane.clone()
            },
            spool_after: self.edge_spool_after.unwrap_or(d.spool_after),
            spool_capacity: spool_capacity.filter(|_| self.edge_spool.unwrap_or(true)),
            yield_to_lookups: d.yield_to_lookups.clone().filter(|_| self.ingest_yields.unwrap_or(true)).map(|p| {
                PriorityConfig {
                    lag_target: self.ingest_yield_lag.unwrap_or(p.lag_target),
                    min_rate: self.ingest_yield_min_rate.unwrap_or(p.min_rate),
                    ..p
                }
            }),
            ..d
        }
    }
}

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Materializer")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct MaterializerArgs {
    /// Most log records folded into one store write [default: 20000]
    #[arg(long, env = "HEALTHCODE_MATERIALIZER_BATCH")]
    pub materializer_batch: Option<usize>,
    /// Consumer group of the materializers [default: healthcode-materializer]
    #[arg(long, env = "HEALTHCODE_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
}

impl MaterializerArgs {
    pub fn into_config(self) -> anyhow::Result<MaterializerConfig> {
        let d = MaterializerConfig::default();
        let batch_size = self.materializer_batch.unwrap_or(d.batch_size);
        anyhow::ensure!(batch_size > 0, "materializer_batch must be at least 1");
        Ok(MaterializerConfig { group: self.kafka_group.unwrap_or(d.group), batch_size, ..d })
    }
}
