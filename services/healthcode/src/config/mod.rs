//! The serving commands' settings from flags, environment and config file.
//!
//! Each component has its flag group (one file here) that resolves into the
//! component's own config type. Layering, one way for every setting: clap
//! puts a flag over its environment variable, [`Merge`] puts both over the
//! config file, and what is still unset takes the component's `Default`.
//! The file's keys are the flags' long names with underscores.

mod ingest;
mod kafka;
mod lookup;
mod rules;
mod scylla;
mod security;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use healthcode_core::{Limits, Policy};
use healthcode_edge::EdgeConfig;
use healthcode_log_kafka::KafkaConfig;
use healthcode_lookup::LookupConfig;
use healthcode_materializer::MaterializerConfig;
use healthcode_store_scylla::ScyllaConfig;
use merge::Merge;
use serde::Deserialize;

pub use ingest::{IngestArgs, MaterializerArgs};
pub use kafka::KafkaArgs;
pub use lookup::LookupArgs;
pub use rules::{RulesArgs, VersionedPolicy, parse_policy};
pub use scylla::ScyllaArgs;
pub use security::{Security, SecurityArgs, Tls};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// redb file under the data directory (one process).
    Embedded,
    /// A Kafka cluster (`--kafka-brokers`).
    Kafka,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// redb file under the data directory (one process).
    Embedded,
    /// A ScyllaDB cluster (`--scylla-nodes`).
    Scylla,
}

/// Settings of the serving commands as given. Every field is optional so
/// that the layers can be merged; [`Settings`] holds the result.
#[derive(Args, Clone, Debug, Default, Deserialize, Merge)]
#[serde(default)]
#[merge(strategy = merge::option::overwrite_none)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long, env = "HEALTHCODE_CONFIG")]
    #[serde(skip)]
    #[merge(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address (Ingest and Lookup share it) [default: 127.0.0.1:50051]
    #[arg(long, env = "HEALTHCODE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Admin HTTP address: /metrics, /live, /ready [default: 127.0.0.1:9090]
    #[arg(long, env = "HEALTHCODE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Where the embedded log and store keep their files [default: ./data]
    #[arg(long, env = "HEALTHCODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Event log backend [default: embedded]
    #[arg(long, env = "HEALTHCODE_LOG", value_enum)]
    pub log: Option<LogBackend>,
    /// Most bytes of records the embedded log keeps; past it, the oldest
    /// records every consumer has read go before their retention window
    /// ends (a rebuild then cannot restore what they held) [default: 68719476736]
    #[arg(long, env = "HEALTHCODE_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Bytes of the embedded log's pages kept in memory [default: 268435456]
    #[arg(long, env = "HEALTHCODE_LOG_CACHE_BYTES")]
    pub log_cache_bytes: Option<usize>,
    /// Bytes of the embedded store's pages kept in memory [default: 536870912]
    #[arg(long, env = "HEALTHCODE_STORE_CACHE_BYTES")]
    pub store_cache_bytes: Option<usize>,
    /// How long the audit record keeps each override and site-risk decision,
    /// after its issued_at; at least the retention window [default: 365days]
    #[arg(long, env = "HEALTHCODE_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub audit_retention: Option<Duration>,
    /// Facts store backend [default: embedded]
    #[arg(long, env = "HEALTHCODE_STORE", value_enum)]
    pub store: Option<StoreBackend>,
    /// Serve POST /faults/store/down and /faults/store/up on the admin port
    /// (ops role) to make this process's store fail on purpose: for
    /// fault-injection drills, never in production [default: false]
    #[arg(long, env = "HEALTHCODE_FAULT_INJECTION")]
    pub fault_injection: Option<bool>,
    /// Admin addresses (host:port, comma-separated) of the other processes
    /// of a split deployment: the console on this admin port shows the
    /// whole cluster, read with the signed-in operator's token; none unless set
    #[arg(long, env = "HEALTHCODE_CONSOLE_PEERS")]
    pub console_peers: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub rules: RulesArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub lookup: LookupArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub materializer: MaterializerArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub scylla: ScyllaArgs,
    #[command(flatten)]
    #[serde(flatten)]
    #[merge(strategy = Merge::merge)]
    pub security: SecurityArgs,
}

/// 64 GiB: about ten days of a 13-million city's events (about 130 bytes
/// each, some 52 million a day); docs/operations.md sizes it.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 64 << 30;

/// Resolved settings of a serving process.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: LogBackend,
    /// The embedded log's size bound (its time bound is the retention window).
    pub log_max_bytes: u64,
    /// Page caches of the embedded log and store.
    pub log_cache_bytes: usize,
    pub store_cache_bytes: usize,
    /// How long the audit record keeps a decision.
    pub audit_retention: Duration,
    pub store: StoreBackend,
    pub policy: Policy,
    /// The name of the rules in force: the policy file's `version`, or `built-in`.
    pub policy_version: String,
    pub limits: Limits,
    pub lookup: LookupConfig,
    pub edge: EdgeConfig,
    pub fault_injection: bool,
    /// Other processes' admin addresses the console reads.
    pub console_peers: Vec<String>,
    pub materializer: MaterializerConfig,
    /// Kafka settings; used when `log` is `Kafka`.
    pub kafka: KafkaConfig,
    /// ScyllaDB settings; used when `store` is `Scylla`.
    pub scylla: ScyllaConfig,
    pub security: Security,
}

impl Settings {
    /// Defaults for a process on `data_dir` with OS-chosen ports (tests).
    pub fn ephemeral(data_dir: &Path) -> Settings {
        let args = ServeArgs {
            grpc_addr: Some(([127, 0, 0, 1], 0).into()),
            admin_addr: Some(([127, 0, 0, 1], 0).into()),
            data_dir: Some(data_dir.to_owned()),
            ..ServeArgs::default()
        };
        args.into_settings().expect("defaults are valid")
    }
}

impl ServeArgs {
    /// Flags and environment (self) over the config file over defaults.
    pub fn resolve(mut self) -> anyhow::Result<Settings> {
        if let Some(path) = &self.config {
            self.merge(read_file(path)?);
        }
        self.into_settings()
    }

    /// The keys a config file may hold: the serving flags' long names.
    fn file_keys() -> BTreeSet<String> {
        ServeArgs::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config")
            .map(|l| l.replace('-', "_"))
            .collect()
    }

    fn into_settings(self) -> anyhow::Result<Settings> {
        let (versioned, limits) = self.rules.into_config()?;
        let (policy, policy_version) = (versioned.policy, versioned.version);
        let lookup = self.lookup.into_config();
        let log = self.log.unwrap_or(LogBackend::Embedded);
        let store = self.store.unwrap_or(StoreBackend::Embedded);
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let audit_retention = self.audit_retention.unwrap_or(healthcode_store::DEFAULT_AUDIT_RETENTION);
        anyhow::ensure!(
            audit_retention >= limits.retention,
            "audit_retention must be at least the retention window ({}): a decision may not leave the audit record \
             while its facts are kept",
            humantime::format_duration(limits.retention)
        );
        let mut scylla = self.scylla.into_config(store == StoreBackend::Scylla, limits.retention, lookup.budget)?;
        scylla.audit_retention = audit_retention;
        Ok(Settings {
            grpc_addr: self.grpc_addr.unwrap_or(([127, 0, 0, 1], 50051).into()),
            admin_addr: self.admin_addr.unwrap_or(([127, 0, 0, 1], 9090).into()),
            log,
            log_max_bytes: self.log_max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES),
            log_cache_bytes: self.log_cache_bytes.unwrap_or(healthcode_log::embedded::DEFAULT_CACHE_BYTES),
            store_cache_bytes: self.store_cache_bytes.unwrap_or(healthcode_store::embedded::DEFAULT_CACHE_BYTES),
            store,
            edge: self.ingest.into_config(),
            fault_injection: self.fault_injection.unwrap_or(false),
            console_peers: self
                .console_peers
                .iter()
                .flat_map(|list| list.split(','))
                .map(|peer| peer.trim().to_owned())
                .filter(|peer| !peer.is_empty())
                .collect(),
            materializer: self.materializer.into_config()?,
            kafka: self.kafka.into_config(log == LogBackend::Kafka, limits.retention)?,
            scylla,
            audit_retention,
            security: self.security.into_config(&data_dir)?,
            data_dir,
            policy,
            policy_version,
            limits,
            lookup,
        })
    }
}

/// A config file: every key must be a setting, every value of its type.
fn read_file(path: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    parse_file(&text).with_context(|| format!("in config file {}", path.display()))
}

fn parse_file(text: &str) -> anyhow::Result<ServeArgs> {
    let table: toml::Table = text.parse()?;
    let known = ServeArgs::file_keys();
    if let Some(unknown) = table.keys().find(|k| !known.contains(*k)) {
        anyhow::bail!("unknown setting `{unknown}` (settings are the flags' long names with underscores)");
    }
    ServeArgs::deserialize(table.clone()).or_else(|whole| {
        // Flattened groups lose the key in serde's error: find it key by key.
        for (key, value) in table {
            let one = toml::Table::from_iter([(key.clone(), value)]);
            ServeArgs::deserialize(one).with_context(|| format!("setting `{key}`"))?;
        }
        Err(whole.into())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use healthcode_store_scylla::Consistency;

    use super::*;

    /// `flags` over the config file `file` over defaults.
    fn resolve(mut flags: ServeArgs, file: &str) -> anyhow::Result<Settings> {
        flags.merge(parse_file(file)?);
        flags.into_settings()
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file = "grpc_addr = \"127.0.0.1:7000\"\nnegative_validity = \"24h\"\ndata_dir = \"/var/lib/healthcode\"\n\
                    lookup_budget = \"90ms\"";
        let flags = ServeArgs {
            grpc_addr: Some("127.0.0.1:8000".parse().unwrap()),
            lookup: LookupArgs { lookup_budget: Some(Duration::from_millis(60)), ..LookupArgs::default() },
            ..ServeArgs::default()
        };
        let s = resolve(flags, file).unwrap();
        assert_eq!(s.grpc_addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(s.lookup.budget, Duration::from_millis(60));
        assert_eq!(s.policy.negative_validity, Duration::from_secs(24 * 3600));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/healthcode"));
        assert_eq!(s.admin_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.lookup.batch_budget, LookupConfig::default().batch_budget);
    }

    #[test]
    fn kafka_settings_need_brokers_and_parse_options() {
        let no_brokers = ServeArgs { log: Some(LogBackend::Kafka), ..ServeArgs::default() };
        let err = resolve(no_brokers, "").unwrap_err().to_string();
        assert!(err.contains("kafka_brokers"), "{err}");
        let file = "log = \"kafka\"\nkafka_brokers = \"k1:9092\"\nkafka_option = [\"producer.linger.ms=20\"]";
        let s = resolve(ServeArgs::default(), file).unwrap();
        assert_eq!(s.log, LogBackend::Kafka);
        assert_eq!(s.kafka.brokers, "k1:9092");
        assert_eq!(s.kafka.options, vec![("producer.linger.ms".to_string(), "20".to_string())]);
        assert_eq!(s.kafka.retention, s.limits.retention);
        let bad = ServeArgs {
            kafka: KafkaArgs { kafka_options: vec!["linger.ms".into()], ..KafkaArgs::default() },
            ..ServeArgs::default()
        };
        assert!(resolve(bad, "").is_err());
    }

    #[test]
    fn the_audit_retention_defaults_to_a_year_and_never_ends_before_the_facts() {
        let s = resolve(ServeArgs::default(), "").unwrap();
        assert_eq!(s.audit_retention, Duration::from_secs(365 * 24 * 3600));
        assert_eq!(s.scylla.audit_retention, s.audit_retention);
        let s = resolve(ServeArgs::default(), "audit_retention = \"2years\"").unwrap();
        assert_eq!(s.audit_retention, humantime::parse_duration("2years").unwrap());
        let err = resolve(ServeArgs::default(), "audit_retention = \"7days\"").unwrap_err().to_string();
        assert!(err.contains("audit_retention") && err.contains("30days"), "{err}");
    }

    #[test]
    fn credentials_follow_the_data_dir_and_tls_needs_both_files() {
        let s = resolve(ServeArgs { data_dir: Some("/srv/hc".into()), ..ServeArgs::default() }, "").unwrap();
        assert_eq!(s.security.tokens_file, PathBuf::from("/srv/hc/credentials/tokens.toml"));
        assert!(s.security.tls.is_none());
        let err = resolve(ServeArgs::default(), "tls_cert_file = \"c.pem\"").unwrap_err().to_string();
        assert!(err.contains("tls_key_file"), "{err}");
        assert!(resolve(ServeArgs::default(), "rate_limit_per_principal = 0").is_err());
    }

    #[test]
    fn scylla_settings_need_nodes_and_a_read_timeout_below_the_lookup_budget() {
        let no_nodes = ServeArgs { store: Some(StoreBackend::Scylla), ..ServeArgs::default() };
        let err = resolve(no_nodes, "").unwrap_err().to_string();
        assert!(err.contains("scylla_nodes"), "{err}");
        let file = "store = \"scylla\"\nscylla_nodes = \"s1,s2:19042\"\nscylla_replication = \"dc1=3\"\n\
                    scylla_read_consistency = \"local-one\"\nscylla_speculative_after = \"0s\"";
        let s = resolve(ServeArgs::default(), file).unwrap();
        assert_eq!(s.store, StoreBackend::Scylla);
        assert_eq!(s.scylla.nodes, vec!["s1:9042", "s2:19042"]);
        assert_eq!(s.scylla.replication.to_string(), "dc1=3");
        assert_eq!(s.scylla.read_consistency, Consistency::LocalOne);
        assert_eq!(s.scylla.write_consistency, Consistency::LocalQuorum);
        assert_eq!(s.scylla.speculative_after, None);
        assert_eq!(s.scylla.retention, s.limits.retention);
        let slow = "store = \"scylla\"\nscylla_nodes = \"s1\"\nscylla_read_timeout = \"80ms\"";
        let err = resolve(ServeArgs::default(), slow).unwrap_err().to_string();
        assert!(err.contains("scylla_read_timeout") && err.contains("lookup_budget"), "{err}");
        let err = format!("{:#}", resolve(ServeArgs::default(), "scylla_write_consistency = \"serial\"").unwrap_err());
        assert!(err.contains("scylla_write_consistency"), "{err}");
        let err = resolve(ServeArgs::default(), "scylla_username = \"hc\"").unwrap_err().to_string();
        assert!(err.contains("scylla_password_file"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        let err = format!("{:#}", parse_file("grpc_adr = \"x\"").unwrap_err());
        assert!(err.contains("unknown setting `grpc_adr`"), "{err}");
        let err = format!("{:#}", parse_file("lookup_budget = 5").unwrap_err());
        assert!(err.contains("setting `lookup_budget`"), "{err}");
        let err = format!("{:#}", parse_file("config = \"other.toml\"").unwrap_err());
        assert!(err.contains("unknown setting `config`"), "{err}");
        assert!(resolve(ServeArgs::default(), "negatives_to_clear = 3").is_err());
    }

    #[test]
    fn a_disabled_spool_has_no_capacity_and_the_materializer_group_has_its_default() {
        let s = resolve(ServeArgs::default(), "edge_spool = false\nedge_spool_capacity = 10").unwrap();
        assert_eq!(s.edge.spool_capacity, None);
        let s = resolve(ServeArgs::default(), "edge_spool_capacity = 10").unwrap();
        assert_eq!(s.edge.spool_capacity, Some(10));
        assert_eq!(s.materializer.group, MaterializerConfig::default().group);
    }

    #[test]
    fn plaintext_grpc_is_refused_off_loopback_unless_allowed() {
        let s = resolve(ServeArgs::default(), "").unwrap();
        assert!(s.security.check_transport("127.0.0.1:50051".parse().unwrap()).is_ok());
        assert!(s.security.check_transport("[::1]:50051".parse().unwrap()).is_ok());
        let err = format!("{:#}", s.security.check_transport("0.0.0.0:50051".parse().unwrap()).unwrap_err());
        assert!(err.contains("--tls-cert-file") && err.contains("--allow-plaintext"), "{err}");
        let allowed = resolve(ServeArgs::default(), "allow_plaintext = true").unwrap();
        assert!(allowed.security.check_transport("0.0.0.0:50051".parse().unwrap()).is_ok());
        let tls = resolve(ServeArgs::default(), "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"").unwrap();
        assert!(tls.security.check_transport("10.0.0.5:50051".parse().unwrap()).is_ok());
    }
}
