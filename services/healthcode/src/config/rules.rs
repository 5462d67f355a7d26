//! The color rules and the edge's limits on event times -> [`Policy`], [`Limits`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use clap::Args;
use healthcode_core::{Limits, Policy};
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Rules")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct RulesArgs {
    /// The color rules as a versioned TOML file (version,
    /// negative_valid_for, negatives_to_clear_positive, optional
    /// exposure_period); without it, the built-in rules and the two flags below
    #[arg(long, env = "HEALTHCODE_POLICY")]
    pub policy: Option<PathBuf>,
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

/// The rules in force and the name they go by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedPolicy {
    /// The policy file's `version`; `built-in` without a file.
    pub version: String,
    pub policy: Policy,
}

/// A policy file: no unknown key allowed, durations as "48h" or "7d";
/// every key required but `exposure_period` (files written before exposure
/// sites existed keep meaning what they meant, with the 7-day default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: String,
    #[serde(with = "humantime_serde")]
    negative_valid_for: Duration,
    negatives_to_clear_positive: usize,
    #[serde(default, with = "humantime_serde")]
    exposure_period: Option<Duration>,
}

/// Reads a policy file's text; errors name the key and the rule.
pub fn parse_policy(text: &str) -> anyhow::Result<VersionedPolicy> {
    let file: PolicyFile = toml::from_str(text).context("policy file")?;
    anyhow::ensure!(!file.version.trim().is_empty(), "policy file: version must not be empty");
    let policy = Policy::new(file.negative_valid_for, file.negatives_to_clear_positive)
        .map_err(|e| anyhow::anyhow!("policy file: negatives_to_clear_positive: {e}"))?;
    let exposure_period = file.exposure_period.unwrap_or(healthcode_core::policy::DEFAULT_EXPOSURE_PERIOD);
    anyhow::ensure!(!exposure_period.is_zero(), "policy file: exposure_period must be longer than zero");
    Ok(VersionedPolicy { version: file.version, policy: policy.with_exposure_period(exposure_period) })
}

impl RulesArgs {
    pub fn into_config(self) -> anyhow::Result<(VersionedPolicy, Limits)> {
        let (p, l) = (Policy::default(), Limits::default());
        let policy = match &self.policy {
            Some(path) => {
                anyhow::ensure!(
                    self.negative_validity.is_none() && self.negatives_to_clear.is_none(),
                    "negative_validity and negatives_to_clear cannot be set beside a policy file: put them in {}",
                    path.display()
                );
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the policy file {}", path.display()))?;
                parse_policy(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => VersionedPolicy {
                version: "built-in".into(),
                policy: Policy::new(
                    self.negative_validity.unwrap_or(p.negative_validity),
                    self.negatives_to_clear.unwrap_or(p.negatives_to_clear),
                )?,
            },
        };
        let limits = Limits {
            max_future_skew: self.max_future_skew.unwrap_or(l.max_future_skew),
            retention: self.retention.unwrap_or(l.retention),
        };
        Ok((policy, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version = \"v2\"\nnegative_valid_for = \"7d\"\nnegatives_to_clear_positive = 1\n";

    fn refused(text: &str) -> String {
        format!("{:#}", parse_policy(text).unwrap_err())
    }

    #[test]
    fn a_policy_file_names_its_version_and_rules() {
        let p = parse_policy(GOOD).unwrap();
        assert_eq!(p.version, "v2");
        assert_eq!(p.policy, Policy::new(Duration::from_secs(7 * 24 * 3600), 1).unwrap());
        assert_eq!(p.policy.exposure_period, Duration::from_secs(7 * 24 * 3600), "the default");
        let shorter = parse_policy(&format!("{GOOD}exposure_period = \"3d\"\n")).unwrap();
        assert_eq!(shorter.policy.exposure_period, Duration::from_secs(3 * 24 * 3600));
    }

    #[test]
    fn a_bad_policy_file_names_the_key_and_the_rule() {
        assert!(refused(&GOOD.replace("7d", "soon")).contains("negative_valid_for"));
        assert!(refused(&GOOD.replace("= 1", "= 3")).contains("negatives_to_clear_positive"));
        assert!(refused(&format!("{GOOD}exposure_perod = \"7d\"\n")).contains("unknown field `exposure_perod`"));
        assert!(refused(&format!("{GOOD}exposure_period = \"0s\"\n")).contains("exposure_period"));
        assert!(refused("negative_valid_for = \"48h\"\nnegatives_to_clear_positive = 2\n").contains("version"));
        assert!(refused(&GOOD.replace("\"v2\"", "\" \"")).contains("version must not be empty"));
    }

    #[test]
    fn the_rule_flags_cannot_be_set_beside_a_policy_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, GOOD).unwrap();
        let args = RulesArgs { policy: Some(file), negatives_to_clear: Some(2), ..RulesArgs::default() };
        let err = format!("{:#}", args.into_config().unwrap_err());
        assert!(err.contains("cannot be set beside a policy file"), "{err}");
    }
}
