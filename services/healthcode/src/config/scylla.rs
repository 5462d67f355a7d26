//! ScyllaDB flags -> [`ScyllaConfig`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use healthcode_store_scylla::{Consistency, ScyllaConfig};
use merge::Merge;
use serde::Deserialize;

#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[command(next_help_heading = "Facts store on ScyllaDB")]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct ScyllaArgs {
    /// ScyllaDB contact points, host[:port],... (required with --store scylla)
    #[arg(long, env = "HEALTHCODE_SCYLLA_NODES")]
    pub scylla_nodes: Option<String>,
    /// Keyspace of the facts [default: healthcode]
    #[arg(long, env = "HEALTHCODE_SCYLLA_KEYSPACE")]
    pub scylla_keyspace: Option<String>,
    /// Replication of the keyspace when this process creates it:
    /// NetworkTopologyStrategy factors as dc=rf,... [default: datacenter1=3]
    #[arg(long, env = "HEALTHCODE_SCYLLA_REPLICATION")]
    pub scylla_replication: Option<String>,
    /// The datacenter this process runs in: requests stay there (LOCAL_* levels)
    #[arg(long, env = "HEALTHCODE_SCYLLA_LOCAL_DATACENTER")]
    pub scylla_local_datacenter: Option<String>,
    /// Consistency of fact reads: one, local-one, quorum, local-quorum,
    /// each-quorum, all [default: local-quorum]
    #[arg(long, env = "HEALTHCODE_SCYLLA_READ_CONSISTENCY")]
    pub scylla_read_consistency: Option<String>,
    /// Consistency of fact writes [default: local-quorum]
    #[arg(long, env = "HEALTHCODE_SCYLLA_WRITE_CONSISTENCY")]
    pub scylla_write_consistency: Option<String>,
    /// Limit of one fact read, below --lookup-budget [default: 40ms]
    #[arg(long, env = "HEALTHCODE_SCYLLA_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub scylla_read_timeout: Option<Duration>,
    /// Limit of one resident's write [default: 2s]
    #[arg(long, env = "HEALTHCODE_SCYLLA_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub scylla_write_timeout: Option<Duration>,
    /// Ask another replica when a read is slower than this; 0s turns it off [default: 8ms]
    #[arg(long, env = "HEALTHCODE_SCYLLA_SPECULATIVE_AFTER", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub scylla_speculative_after: Option<Duration>,
    /// User name for ScyllaDB's PasswordAuthenticator (needs --scylla-password-file)
    #[arg(long, env = "HEALTHCODE_SCYLLA_USERNAME")]
    pub scylla_username: Option<String>,
    /// File holding the ScyllaDB password (a mounted secret)
    #[arg(long, env = "HEALTHCODE_SCYLLA_PASSWORD_FILE")]
    pub scylla_password_file: Option<PathBuf>,
}

impl ScyllaArgs {
    /// `used`: the store is ScyllaDB, so the nodes are required and the
    /// password file is read now.
    pub fn into_config(self, used: bool, retention: Duration, lookup_budget: Duration) -> anyhow::Result<ScyllaConfig> {
        let nodes = match (&self.scylla_nodes, used) {
            (Some(list), _) => healthcode_store_scylla::config::parse_nodes(list)?,
            (None, true) => anyhow::bail!(
                "scylla_nodes is required with --store scylla (flag --scylla-nodes, env HEALTHCODE_SCYLLA_NODES)"
            ),
            (None, false) => Vec::new(),
        };
        let mut c = ScyllaConfig::new(nodes);
        c.retention = retention;
        if let Some(keyspace) = self.scylla_keyspace {
            healthcode_store_scylla::cql::check_keyspace(&keyspace)?;
            c.keyspace = keyspace;
        }
        if let Some(replication) = self.scylla_replication {
            c.replication = replication.parse()?;
        }
        c.local_datacenter = self.scylla_local_datacenter;
        let consistency = |value: Option<String>, field: &str, default: Consistency| -> anyhow::Result<Consistency> {
            match value {
                Some(v) => v.parse().with_context(|| format!("{field} is invalid")),
                None => Ok(default),
            }
        };
        c.read_consistency = consistency(self.scylla_read_consistency, "scylla_read_consistency", c.read_consistency)?;
        c.write_consistency =
            consistency(self.scylla_write_consistency, "scylla_write_consistency", c.write_consistency)?;
        c.read_timeout = self.scylla_read_timeout.unwrap_or(c.read_timeout);
        c.write_timeout = self.scylla_write_timeout.unwrap_or(c.write_timeout);
        anyhow::ensure!(
            c.read_timeout < lookup_budget,
            "scylla_read_timeout ({:?}) must be below lookup_budget ({lookup_budget:?}): a late read must leave time to answer stale",
            c.read_timeout
        );
        anyhow::ensure!(!c.write_timeout.is_zero(), "scylla_write_timeout must be above 0");
        if let Some(after) = self.scylla_speculative_after {
            c.speculative_after = Some(after).filter(|d| !d.is_zero());
        }
        c.credentials = match (self.scylla_username, self.scylla_password_file) {
            (Some(user), Some(path)) if used => {
                let password = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading scylla_password_file {}", path.display()))?;
                Some((user, password.trim_end().to_owned()))
            }
            (Some(_), Some(_)) | (None, None) => None,
            _ => anyhow::bail!("scylla_username and scylla_password_file must be given together"),
        };
        Ok(c)
    }
}
