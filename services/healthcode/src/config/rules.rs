//! The color rules and the edge's limits on event times -> [`Policy`], [`Limits`].

use std::time::Duration;

use clap::Args;
use healthcode_core::{Limits, Policy};
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Rules")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct RulesArgs {
    /// How long a negative sample keeps a resident green [default: 48h]
    #[arg(long, env = "HEALTHCODE_NEGATIVE_VALIDITY", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub negative_validity: Option<Duration>,
    /// Negative samples after the latest positive needed to clear red, 1 or 2 [default: 2]
    #[arg(long, env = "HEALTHCODE_NEGATIVES_TO_CLEAR")]
    pub negatives_to_clear: Option<usize>,
    /// How far in the future an event time may lie (clock skew) [default: 5m]
    #[arg(long, env = "HEALTHCODE_MAX_FUTURE_SKEW", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Option<Duration>,
    /// Retention window: older events are refused [default: 30days]
    #[arg(long, env = "HEALTHCODE_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl RulesArgs {
    pub fn into_config(self) -> anyhow::Result<(Policy, Limits)> {
        let (p, l) = (Policy::default(), Limits::default());
        let policy = Policy::new(
            self.negative_validity.unwrap_or(p.negative_validity),
            self.negatives_to_clear.unwrap_or(p.negatives_to_clear),
        )?;
        let limits = Limits {
            max_future_skew: self.max_future_skew.unwrap_or(l.max_future_skew),
            retention: self.retention.unwrap_or(l.retention),
        };
        Ok((policy, limits))
    }
}
