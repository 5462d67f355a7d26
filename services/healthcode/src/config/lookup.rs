//! Lookup flags -> [`LookupConfig`].

use std::time::Duration;

use clap::Args;
use healthcode_lookup::LookupConfig;
use healthcode_rpc::LaneConfig;
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Lookup")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct LookupArgs {
    /// Server-side time budget of one lookup [default: 50ms]
    #[arg(long, env = "HEALTHCODE_LOOKUP_BUDGET", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lookup_budget: Option<Duration>,
    /// Server-side time budget of one BatchGetStatus (up to 500 residents) [default: 500ms]
    #[arg(long, env = "HEALTHCODE_LOOKUP_BATCH_BUDGET", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lookup_batch_budget: Option<Duration>,
    /// How long a store read answers later lookups of the resident without
    /// asking the store again [default: 250ms]
    #[arg(long, env = "HEALTHCODE_LOOKUP_CACHE_FRESH_FOR", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lookup_cache_fresh_for: Option<Duration>,
    /// How long last known facts may answer, flagged stale, while the store fails [default: 24h]
    #[arg(long, env = "HEALTHCODE_LOOKUP_CACHE_STALE_FOR", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lookup_cache_stale_for: Option<Duration>,
    /// Residents the lookup cache holds [default: 500000]
    #[arg(long, env = "HEALTHCODE_LOOKUP_CACHE_CAPACITY")]
    pub lookup_cache_capacity: Option<u64>,
    /// Bytes of facts the lookup cache holds; a resident weighs what its
    /// facts take, at least this divided by the capacity [default: 268435456]
    #[arg(long, env = "HEALTHCODE_LOOKUP_CACHE_BYTES")]
    pub lookup_cache_bytes: Option<u64>,
    /// Lookups served at once [default: 256]
    #[arg(long, env = "HEALTHCODE_LOOKUP_CONCURRENCY")]
    pub lookup_concurrency: Option<usize>,
    /// Lookups that may wait for a slot; more are shed (RESOURCE_EXHAUSTED) [default: 1024]
    #[arg(long, env = "HEALTHCODE_LOOKUP_QUEUE")]
    pub lookup_queue: Option<usize>,
    /// Longest wait of a lookup for a slot [default: 20ms]
    #[arg(long, env = "HEALTHCODE_LOOKUP_QUEUE_WAIT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub lookup_queue_wait: Option<Duration>,
    /// Reuse a signed status token for the same answer to the same resident
    /// this long (its issued_at is at most this old); 0s signs every answer [default: 60s]
    #[arg(long, env = "HEALTHCODE_STATUS_TOKEN_REUSE_FOR", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub status_token_reuse_for: Option<Duration>,
}

impl LookupArgs {
    pub fn into_config(self) -> LookupConfig {
        let d = LookupConfig::default();
        LookupConfig {
            budget: self.lookup_budget.unwrap_or(d.budget),
            batch_budget: self.lookup_batch_budget.unwrap_or(d.batch_budget),
            cache_fresh_for: self.lookup_cache_fresh_for.unwrap_or(d.cache_fresh_for),
            cache_stale_for: self.lookup_cache_stale_for.unwrap_or(d.cache_stale_for),
            cache_capacity: self.lookup_cache_capacity.unwrap_or(d.cache_capacity),
            cache_max_bytes: self.lookup_cache_bytes.unwrap_or(d.cache_max_bytes),
            lane: LaneConfig {
                concurrency: self.lookup_concurrency.unwrap_or(d.lane.concurrency),
                queue: self.lookup_queue.unwrap_or(d.lane.queue),
                max_wait: self.lookup_queue_wait.unwrap_or(d.lane.max_wait),
                ..d.lane.clone()
            },
            token_reuse_for: self.status_token_reuse_for.unwrap_or(d.token_reuse_for),
            ..d
        }
    }
}
