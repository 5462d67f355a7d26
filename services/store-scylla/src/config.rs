//! Settings of the ScyllaDB store.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::cql::Replication;

/// The consistency levels that make sense for facts (no SERIAL: no LWT here).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Consistency {
    One,
    LocalOne,
    Quorum,
    LocalQuorum,
    EachQuorum,
    All,
}

impl Consistency {
    const NAMES: [(&'static str, Consistency); 6] = [
        ("one", Consistency::One),
        ("local-one", Consistency::LocalOne),
        ("quorum", Consistency::Quorum),
        ("local-quorum", Consistency::LocalQuorum),
        ("each-quorum", Consistency::EachQuorum),
        ("all", Consistency::All),
    ];
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("consistency {0:?} is not one of one, local-one, quorum, local-quorum, each-quorum, all")]
pub struct UnknownConsistency(pub String);

impl FromStr for Consistency {
    type Err = UnknownConsistency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, c)| *c)
            .ok_or_else(|| UnknownConsistency(s.to_owned()))
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES.iter().find(|(_, c)| c == self).map(|(n, _)| *n).unwrap_or("?");
        f.write_str(name)
    }
}

impl From<Consistency> for scylla::statement::Consistency {
    fn from(c: Consistency) -> Self {
        use scylla::statement::Consistency as C;
        match c {
            Consistency::One => C::One,
            Consistency::LocalOne => C::LocalOne,
            Consistency::Quorum => C::Quorum,
            Consistency::LocalQuorum => C::LocalQuorum,
            Consistency::EachQuorum => C::EachQuorum,
            Consistency::All => C::All,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScyllaConfig {
    /// Contact points, host:port.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Used only when the keyspace is created.
    pub replication: Replication,
    /// The datacenter this process runs in; LOCAL_* levels count replicas there.
    pub local_datacenter: Option<String>,
    pub read_consistency: Consistency,
    pub write_consistency: Consistency,
    /// Client-side limit of one read, speculative attempts included. Below
    /// the lookup's budget, so a slow store leaves time to answer stale.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Ask another replica when a read has not answered after this long (up
    /// to two more); `None` turns speculative execution off.
    pub speculative_after: Option<Duration>,
    pub connect_timeout: Duration,
    /// User name and password (PasswordAuthenticator), when the cluster wants them.
    pub credentials: Option<(String, String)>,
    /// Each fact's cells live this long after the fact's own time.
    pub retention: Duration,
    /// Each audit entry lives this long after its issued_at.
    pub audit_retention: Duration,
    /// Residents written at once by one merge.
    pub write_concurrency: usize,
    /// Residents read at once by one batch lookup.
    pub read_concurrency: usize,
}

impl ScyllaConfig {
    pub fn new(nodes: Vec<String>) -> ScyllaConfig {
        ScyllaConfig {
            nodes,
            keyspace: "healthcode".into(),
            replication: "datacenter1=3".parse().expect("valid replication"),
            local_datacenter: None,
            read_consistency: Consistency::LocalQuorum,
            write_consistency: Consistency::LocalQuorum,
            read_timeout: Duration::from_millis(40),
            write_timeout: Duration::from_secs(2),
            speculative_after: Some(Duration::from_millis(8)),
            connect_timeout: crate::DEFAULT_CONNECT_TIMEOUT,
            credentials: None,
            retention: healthcode_core::validation::DEFAULT_RETENTION,
            audit_retention: healthcode_store::DEFAULT_AUDIT_RETENTION,
            write_concurrency: 256,
            read_concurrency: 64,
        }
    }
}

/// Contact points from `host:port,host:port`; a host without a port gets 9042.
pub fn parse_nodes(list: &str) -> Result<Vec<String>, crate::cql::SettingError> {
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                n.to_owned()
            } else {
                format!("{n}:9042")
            }
        })
        .collect();
    if nodes.is_empty() {
        return Err(crate::cql::SettingError::NoNodes);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_round_trip_and_unknown_ones_are_named() {
        for (name, c) in Consistency::NAMES {
            assert_eq!(name.parse::<Consistency>().unwrap(), c);
            assert_eq!(c.to_string(), name);
        }
        assert_eq!("LOCAL_QUORUM".parse::<Consistency>().unwrap(), Consistency::LocalQuorum);
        let err = "serial".parse::<Consistency>().unwrap_err().to_string();
        assert!(err.contains("\"serial\""), "{err}");
    }

    #[test]
    fn defaults_are_local_quorum_with_a_read_timeout_below_the_lookup_budget() {
        let c = ScyllaConfig::new(vec!["n1:9042".into()]);
        assert_eq!((c.read_consistency, c.write_consistency), (Consistency::LocalQuorum, Consistency::LocalQuorum));
        assert!(c.read_timeout < Duration::from_millis(50));
        assert!(c.speculative_after.unwrap() < c.read_timeout);
    }

    #[test]
    fn nodes_get_the_cql_port_when_none_is_given() {
        assert_eq!(parse_nodes("a, b:19042,,10.0.0.1").unwrap(), vec!["a:9042", "b:19042", "10.0.0.1:9042"]);
        assert!(parse_nodes(" , ").is_err());
    }
}
