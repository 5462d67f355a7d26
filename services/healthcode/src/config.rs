//! The serving commands' settings from flags, environment and config file.
//! Precedence: flag, then environment variable, then config file, then default.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use healthcode_core::{Limits, Policy};
use healthcode_edge::EdgeConfig;
use healthcode_log_kafka::KafkaConfig;
use healthcode_lookup::LookupConfig;
use healthcode_rpc::LaneConfig;
use healthcode_store_scylla::{Consistency, ScyllaConfig};
use serde::Deserialize;

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

/// Settings of the serving commands. Every field is optional here so that the
/// layers (flag, env, file) can be merged; [`Settings`] holds the result.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, with underscores).
    #[arg(long, env = "HEALTHCODE_CONFIG")]
    #[serde(skip)]
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
    /// Facts store backend [default: embedded]
    #[arg(long, env = "HEALTHCODE_STORE", value_enum)]
    pub store: Option<StoreBackend>,
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
    /// Serve POST /faults/store/down and /faults/store/up on the admin port
    /// (ops role) to make this process's store fail on purpose: for
    /// fault-injection drills, never in production [default: false]
    #[arg(long, env = "HEALTHCODE_FAULT_INJECTION")]
    pub fault_injection: Option<bool>,
    /// Recent event ids the edge remembers for DUPLICATE answers [default: 500000]
    #[arg(long, env = "HEALTHCODE_DEDUP_CAPACITY")]
    pub dedup_capacity: Option<u64>,
    /// Most log records folded into one store write [default: 2000]
    #[arg(long, env = "HEALTHCODE_MATERIALIZER_BATCH")]
    pub materializer_batch: Option<usize>,
    /// Kafka bootstrap servers, host:port,... (required with --log kafka)
    #[arg(long, env = "HEALTHCODE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of the events [default: healthcode.events]
    #[arg(long, env = "HEALTHCODE_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Topic of records the materializer cannot apply [default: healthcode.events.dead-letter]
    #[arg(long, env = "HEALTHCODE_KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Consumer group of the materializers [default: healthcode-materializer]
    #[arg(long, env = "HEALTHCODE_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Partitions of topics created on start [default: 12]
    #[arg(long, env = "HEALTHCODE_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<i32>,
    /// Replication factor of topics created on start [default: 1]
    #[arg(long, env = "HEALTHCODE_KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i32>,
    /// Create the topics on start when missing [default: true]
    #[arg(long, env = "HEALTHCODE_KAFKA_CREATE_TOPICS")]
    pub kafka_create_topics: Option<bool>,
    /// Where credentials live: tokens file, pseudonym key, certificates
    /// [default: <data_dir>/credentials]
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Create development credentials (CA, certificates, tokens, pseudonym
    /// key) in the credentials dir where missing; off in deployments [default: true]
    #[arg(long, env = "HEALTHCODE_DEV_CREDENTIALS")]
    pub dev_credentials: Option<bool>,
    /// Hashed bearer tokens, one [[token]] per principal [default: <credentials_dir>/tokens.toml]
    #[arg(long, env = "HEALTHCODE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Secret key of the resident pseudonyms, hex; the same on every edge and
    /// lookup of a deployment [default: <credentials_dir>/pseudonym.key]
    #[arg(long, env = "HEALTHCODE_PSEUDONYM_KEY_FILE")]
    pub pseudonym_key_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key-file
    #[arg(long, env = "HEALTHCODE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM)
    #[arg(long, env = "HEALTHCODE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Accept client certificates signed by this CA (PEM) as credentials: CN
    /// names the principal, OU its role (mutual TLS; tokens keep working)
    #[arg(long, env = "HEALTHCODE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Ed25519 key that signs the status token of every lookup answer
    /// [default: <credentials_dir>/status-signing.toml]
    #[arg(long, env = "HEALTHCODE_STATUS_SIGNING_KEY_FILE")]
    pub status_signing_key_file: Option<PathBuf>,
    /// Longest life of a status token [default: 4h]
    #[arg(long, env = "HEALTHCODE_STATUS_TOKEN_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub status_token_ttl: Option<Duration>,
    /// Calls per second one principal may make before RESOURCE_EXHAUSTED [default: 5000]
    #[arg(long, env = "HEALTHCODE_RATE_LIMIT_PER_PRINCIPAL")]
    pub rate_limit_per_principal: Option<u32>,
    /// Largest gRPC request accepted, in bytes [default: 2097152]
    #[arg(long, env = "HEALTHCODE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
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
    /// librdkafka setting key=value for both clients; prefix the key with
    /// `producer.` or `consumer.` for one (repeatable; comma-separated in the env)
    #[arg(long = "kafka-option", env = "HEALTHCODE_KAFKA_OPTIONS", value_delimiter = ',')]
    #[serde(rename = "kafka_option")]
    pub kafka_options: Vec<String>,
}

/// Resolved settings of a serving process.
#[derive(Clone, Debug)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: LogBackend,
    pub store: StoreBackend,
    pub policy: Policy,
    pub limits: Limits,
    pub lookup: LookupConfig,
    pub edge: EdgeConfig,
    /// Spool capacity in events; `None` turns the spool off.
    pub edge_spool: Option<u64>,
    pub fault_injection: bool,
    pub materializer_batch: usize,
    /// Kafka settings; used when `log` is `Kafka`.
    pub kafka: KafkaConfig,
    pub materializer_group: String,
    /// ScyllaDB settings; used when `store` is `Scylla`.
    pub scylla: ScyllaConfig,
    pub security: Security,
}

/// Credentials, TLS and limits of the gRPC and admin servers.
#[derive(Clone, Debug)]
pub struct Security {
    pub credentials_dir: PathBuf,
    pub dev_credentials: bool,
    pub tokens_file: PathBuf,
    pub pseudonym_key_file: PathBuf,
    pub tls: Option<Tls>,
    pub status_signing_key_file: PathBuf,
    pub status_token_ttl: Duration,
    pub rate_limit_per_principal: NonZeroU32,
    pub max_message_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl Settings {
    /// Defaults for a process on `data_dir` with OS-chosen ports (tests).
    pub fn ephemeral(data_dir: &Path) -> Settings {
        let mut s = ServeArgs::default().resolve_with(ServeArgs::default()).expect("defaults are valid");
        s.grpc_addr = "127.0.0.1:0".parse().expect("address");
        s.admin_addr = "127.0.0.1:0".parse().expect("address");
        s.data_dir = data_dir.to_owned();
        s.security.credentials_dir = data_dir.join("credentials");
        s.security.tokens_file = s.security.credentials_dir.join("tokens.toml");
        s.security.pseudonym_key_file = s.security.credentials_dir.join("pseudonym.key");
        s.security.status_signing_key_file = s.security.credentials_dir.join("status-signing.toml");
        s
    }
}

impl ServeArgs {
    /// Merges flags and environment (self) over the config file over defaults.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        self.resolve_with(file)
    }

    fn resolve_with(self, file: ServeArgs) -> anyhow::Result<Settings> {
        let default_policy = Policy::default();
        let default_limits = Limits::default();
        let default_lookup = LookupConfig::default();
        let default_edge = EdgeConfig::default();
        let policy = Policy::new(
            self.negative_validity.or(file.negative_validity).unwrap_or(default_policy.negative_validity),
            self.negatives_to_clear.or(file.negatives_to_clear).unwrap_or(default_policy.negatives_to_clear),
        )?;
        let materializer_batch = self.materializer_batch.or(file.materializer_batch).unwrap_or(2_000);
        anyhow::ensure!(materializer_batch > 0, "materializer_batch must be at least 1");
        let log = self.log.or(file.log).unwrap_or(LogBackend::Embedded);
        let brokers = self.kafka_brokers.or(file.kafka_brokers);
        anyhow::ensure!(
            log != LogBackend::Kafka || brokers.is_some(),
            "kafka_brokers is required with --log kafka (flag --kafka-brokers, env HEALTHCODE_KAFKA_BROKERS)"
        );
        let mut kafka = KafkaConfig::new(brokers.unwrap_or_default());
        if let Some(topic) = self.kafka_topic.or(file.kafka_topic) {
            kafka.topic = topic;
        }
        if let Some(topic) = self.kafka_dead_letter_topic.or(file.kafka_dead_letter_topic) {
            kafka.dead_letter_topic = topic;
        }
        kafka.partitions = self.kafka_partitions.or(file.kafka_partitions).unwrap_or(kafka.partitions);
        kafka.replication_factor =
            self.kafka_replication_factor.or(file.kafka_replication_factor).unwrap_or(kafka.replication_factor);
        kafka.create_topics = self.kafka_create_topics.or(file.kafka_create_topics).unwrap_or(true);
        anyhow::ensure!(kafka.partitions > 0, "kafka_partitions must be at least 1");
        anyhow::ensure!(kafka.replication_factor > 0, "kafka_replication_factor must be at least 1");
        let options = if self.kafka_options.is_empty() { file.kafka_options } else { self.kafka_options };
        kafka.options = options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
                _ => Err(anyhow::anyhow!("kafka_option {o:?} must look like key=value")),
            })
            .collect::<anyhow::Result<_>>()?;
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
        let credentials_dir =
            self.credentials_dir.or(file.credentials_dir).unwrap_or_else(|| data_dir.join("credentials"));
        let tls = match (
            self.tls_cert_file.or(file.tls_cert_file),
            self.tls_key_file.or(file.tls_key_file),
            self.tls_client_ca_file.or(file.tls_client_ca_file),
        ) {
            (Some(cert_file), Some(key_file), client_ca_file) => Some(Tls { cert_file, key_file, client_ca_file }),
            (None, None, None) => None,
            (None, None, Some(_)) => anyhow::bail!("tls_client_ca_file needs tls_cert_file and tls_key_file"),
            _ => anyhow::bail!("tls_cert_file and tls_key_file must be given together"),
        };
        let rate = self.rate_limit_per_principal.or(file.rate_limit_per_principal).unwrap_or(5_000);
        let security = Security {
            dev_credentials: self.dev_credentials.or(file.dev_credentials).unwrap_or(true),
            tokens_file: self.tokens_file.or(file.tokens_file).unwrap_or_else(|| credentials_dir.join("tokens.toml")),
            pseudonym_key_file: self
                .pseudonym_key_file
                .or(file.pseudonym_key_file)
                .unwrap_or_else(|| credentials_dir.join("pseudonym.key")),
            status_signing_key_file: self
                .status_signing_key_file
                .or(file.status_signing_key_file)
                .unwrap_or_else(|| credentials_dir.join("status-signing.toml")),
            status_token_ttl: self.status_token_ttl.or(file.status_token_ttl).unwrap_or(Duration::from_secs(4 * 3600)),
            credentials_dir,
            tls,
            rate_limit_per_principal: NonZeroU32::new(rate)
                .ok_or_else(|| anyhow::anyhow!("rate_limit_per_principal must be at least 1"))?,
            max_message_bytes: self.max_message_bytes.or(file.max_message_bytes).unwrap_or(2 * 1024 * 1024),
        };
        anyhow::ensure!(security.max_message_bytes >= 4096, "max_message_bytes must be at least 4096");
        let retention = self.retention.or(file.retention).unwrap_or(default_limits.retention);
        kafka.retention = retention;
        let lookup_budget = self.lookup_budget.or(file.lookup_budget).unwrap_or(default_lookup.budget);
        let store = self.store.or(file.store).unwrap_or(StoreBackend::Embedded);
        let scylla = scylla_config(
            ScyllaArgs {
                nodes: self.scylla_nodes.or(file.scylla_nodes),
                keyspace: self.scylla_keyspace.or(file.scylla_keyspace),
                replication: self.scylla_replication.or(file.scylla_replication),
                local_datacenter: self.scylla_local_datacenter.or(file.scylla_local_datacenter),
                read_consistency: self.scylla_read_consistency.or(file.scylla_read_consistency),
                write_consistency: self.scylla_write_consistency.or(file.scylla_write_consistency),
                read_timeout: self.scylla_read_timeout.or(file.scylla_read_timeout),
                write_timeout: self.scylla_write_timeout.or(file.scylla_write_timeout),
                speculative_after: self.scylla_speculative_after.or(file.scylla_speculative_after),
                username: self.scylla_username.or(file.scylla_username),
                password_file: self.scylla_password_file.or(file.scylla_password_file),
            },
            store == StoreBackend::Scylla,
            retention,
            lookup_budget,
        )?;
        Ok(Settings {
            grpc_addr: self.grpc_addr.or(file.grpc_addr).unwrap_or(([127, 0, 0, 1], 50051).into()),
            admin_addr: self.admin_addr.or(file.admin_addr).unwrap_or(([127, 0, 0, 1], 9090).into()),
            data_dir,
            log,
            store,
            policy,
            limits: Limits {
                max_future_skew: self
                    .max_future_skew
                    .or(file.max_future_skew)
                    .unwrap_or(default_limits.max_future_skew),
                retention,
            },
            lookup: LookupConfig {
                budget: lookup_budget,
                batch_budget: self
                    .lookup_batch_budget
                    .or(file.lookup_batch_budget)
                    .unwrap_or(default_lookup.batch_budget),
                cache_fresh_for: self
                    .lookup_cache_fresh_for
                    .or(file.lookup_cache_fresh_for)
                    .unwrap_or(default_lookup.cache_fresh_for),
                cache_stale_for: self
                    .lookup_cache_stale_for
                    .or(file.lookup_cache_stale_for)
                    .unwrap_or(default_lookup.cache_stale_for),
                cache_capacity: self
                    .lookup_cache_capacity
                    .or(file.lookup_cache_capacity)
                    .unwrap_or(default_lookup.cache_capacity),
                lane: LaneConfig {
                    concurrency: self
                        .lookup_concurrency
                        .or(file.lookup_concurrency)
                        .unwrap_or(default_lookup.lane.concurrency),
                    queue: self.lookup_queue.or(file.lookup_queue).unwrap_or(default_lookup.lane.queue),
                    max_wait: self.lookup_queue_wait.or(file.lookup_queue_wait).unwrap_or(default_lookup.lane.max_wait),
                    ..default_lookup.lane.clone()
                },
                ..default_lookup
            },
            edge: EdgeConfig {
                dedup_capacity: self.dedup_capacity.or(file.dedup_capacity).unwrap_or(default_edge.dedup_capacity),
                lane: LaneConfig {
                    concurrency: self
                        .ingest_concurrency
                        .or(file.ingest_concurrency)
                        .unwrap_or(default_edge.lane.concurrency),
                    queue: self.ingest_queue.or(file.ingest_queue).unwrap_or(default_edge.lane.queue),
                    max_wait: self.ingest_queue_wait.or(file.ingest_queue_wait).unwrap_or(default_edge.lane.max_wait),
                    ..default_edge.lane.clone()
                },
                spool_after: self.edge_spool_after.or(file.edge_spool_after).unwrap_or(default_edge.spool_after),
                ..default_edge
            },
            fault_injection: self.fault_injection.or(file.fault_injection).unwrap_or(false),
            edge_spool: self
                .edge_spool
                .or(file.edge_spool)
                .unwrap_or(true)
                .then(|| self.edge_spool_capacity.or(file.edge_spool_capacity).unwrap_or(5_000_000)),
            materializer_batch,
            kafka,
            materializer_group: self
                .kafka_group
                .or(file.kafka_group)
                .unwrap_or_else(|| "healthcode-materializer".to_owned()),
            scylla,
            security,
        })
    }
}

/// The ScyllaDB settings as given, before defaults.
struct ScyllaArgs {
    nodes: Option<String>,
    keyspace: Option<String>,
    replication: Option<String>,
    local_datacenter: Option<String>,
    read_consistency: Option<String>,
    write_consistency: Option<String>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    speculative_after: Option<Duration>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

/// `used`: the store is ScyllaDB, so the nodes are required and the
/// password file is read now.
fn scylla_config(
    args: ScyllaArgs,
    used: bool,
    retention: Duration,
    lookup_budget: Duration,
) -> anyhow::Result<ScyllaConfig> {
    let nodes = match (&args.nodes, used) {
        (Some(list), _) => healthcode_store_scylla::config::parse_nodes(list).map_err(anyhow::Error::msg)?,
        (None, true) => anyhow::bail!(
            "scylla_nodes is required with --store scylla (flag --scylla-nodes, env HEALTHCODE_SCYLLA_NODES)"
        ),
        (None, false) => Vec::new(),
    };
    let mut c = ScyllaConfig::new(nodes);
    c.retention = retention;
    if let Some(keyspace) = args.keyspace {
        healthcode_store_scylla::cql::check_keyspace(&keyspace).map_err(anyhow::Error::msg)?;
        c.keyspace = keyspace;
    }
    if let Some(replication) = args.replication {
        c.replication = replication.parse()?;
    }
    c.local_datacenter = args.local_datacenter;
    let consistency = |value: Option<String>, field: &str, default: Consistency| -> anyhow::Result<Consistency> {
        match value {
            Some(v) => v.parse().with_context(|| format!("{field} is invalid")),
            None => Ok(default),
        }
    };
    c.read_consistency = consistency(args.read_consistency, "scylla_read_consistency", c.read_consistency)?;
    c.write_consistency = consistency(args.write_consistency, "scylla_write_consistency", c.write_consistency)?;
    c.read_timeout = args.read_timeout.unwrap_or(c.read_timeout);
    c.write_timeout = args.write_timeout.unwrap_or(c.write_timeout);
    anyhow::ensure!(
        c.read_timeout < lookup_budget,
        "scylla_read_timeout ({:?}) must be below lookup_budget ({lookup_budget:?}): a late read must leave time to answer stale",
        c.read_timeout
    );
    anyhow::ensure!(!c.write_timeout.is_zero(), "scylla_write_timeout must be above 0");
    if let Some(after) = args.speculative_after {
        c.speculative_after = Some(after).filter(|d| !d.is_zero());
    }
    c.credentials = match (args.username, args.password_file) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: ServeArgs = toml::from_str(
            "grpc_addr = \"127.0.0.1:7000\"\nnegative_validity = \"24h\"\ndata_dir = \"/var/lib/healthcode\"",
        )
        .unwrap();
        let flags = ServeArgs { grpc_addr: Some("127.0.0.1:8000".parse().unwrap()), ..ServeArgs::default() };
        let s = flags.resolve_with(file).unwrap();
        assert_eq!(s.grpc_addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(s.policy.negative_validity, Duration::from_secs(24 * 3600));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/healthcode"));
        assert_eq!(s.admin_addr, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn kafka_settings_need_brokers_and_parse_options() {
        let no_brokers = ServeArgs { log: Some(LogBackend::Kafka), ..ServeArgs::default() };
        let err = no_brokers.resolve_with(ServeArgs::default()).unwrap_err().to_string();
        assert!(err.contains("kafka_brokers"), "{err}");
        let file: ServeArgs =
            toml::from_str("log = \"kafka\"\nkafka_brokers = \"k1:9092\"\nkafka_option = [\"producer.linger.ms=20\"]")
                .unwrap();
        let s = ServeArgs::default().resolve_with(file).unwrap();
        assert_eq!(s.log, LogBackend::Kafka);
        assert_eq!(s.kafka.brokers, "k1:9092");
        assert_eq!(s.kafka.options, vec![("producer.linger.ms".to_string(), "20".to_string())]);
        let bad = ServeArgs { kafka_options: vec!["linger.ms".into()], ..ServeArgs::default() };
        assert!(bad.resolve_with(ServeArgs::default()).is_err());
    }

    #[test]
    fn credentials_follow_the_data_dir_and_tls_needs_both_files() {
        let s = ServeArgs { data_dir: Some("/srv/hc".into()), ..ServeArgs::default() }
            .resolve_with(ServeArgs::default())
            .unwrap();
        assert_eq!(s.security.tokens_file, PathBuf::from("/srv/hc/credentials/tokens.toml"));
        assert!(s.security.tls.is_none());
        let half = ServeArgs { tls_cert_file: Some("c.pem".into()), ..ServeArgs::default() };
        assert!(half.resolve_with(ServeArgs::default()).unwrap_err().to_string().contains("tls_key_file"));
        let zero = ServeArgs { rate_limit_per_principal: Some(0), ..ServeArgs::default() };
        assert!(zero.resolve_with(ServeArgs::default()).is_err());
    }

    #[test]
    fn scylla_settings_need_nodes_and_a_read_timeout_below_the_lookup_budget() {
        let no_nodes = ServeArgs { store: Some(StoreBackend::Scylla), ..ServeArgs::default() };
        let err = no_nodes.resolve_with(ServeArgs::default()).unwrap_err().to_string();
        assert!(err.contains("scylla_nodes"), "{err}");
        let file: ServeArgs = toml::from_str(
            "store = \"scylla\"\nscylla_nodes = \"s1,s2:19042\"\nscylla_replication = \"dc1=3\"\n\
             scylla_read_consistency = \"local-one\"\nscylla_speculative_after = \"0s\"",
        )
        .unwrap();
        let s = ServeArgs::default().resolve_with(file).unwrap();
        assert_eq!(s.store, StoreBackend::Scylla);
        assert_eq!(s.scylla.nodes, vec!["s1:9042", "s2:19042"]);
        assert_eq!(s.scylla.replication.to_string(), "dc1=3");
        assert_eq!(s.scylla.read_consistency, Consistency::LocalOne);
        assert_eq!(s.scylla.write_consistency, Consistency::LocalQuorum);
        assert_eq!(s.scylla.speculative_after, None);
        assert_eq!(s.scylla.retention, s.limits.retention);
        let slow = ServeArgs {
            store: Some(StoreBackend::Scylla),
            scylla_nodes: Some("s1".into()),
            scylla_read_timeout: Some(Duration::from_millis(80)),
            ..ServeArgs::default()
        };
        let err = slow.resolve_with(ServeArgs::default()).unwrap_err().to_string();
        assert!(err.contains("scylla_read_timeout") && err.contains("lookup_budget"), "{err}");
        let bad = ServeArgs { scylla_write_consistency: Some("serial".into()), ..ServeArgs::default() };
        let err = format!("{:#}", bad.resolve_with(ServeArgs::default()).unwrap_err());
        assert!(err.contains("scylla_write_consistency"), "{err}");
        let half = ServeArgs { scylla_username: Some("hc".into()), ..ServeArgs::default() };
        assert!(half.resolve_with(ServeArgs::default()).unwrap_err().to_string().contains("scylla_password_file"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<ServeArgs>("grpc_adr = \"x\"").is_err());
        let bad = ServeArgs { negatives_to_clear: Some(3), ..ServeArgs::default() };
        assert!(bad.resolve_with(ServeArgs::default()).is_err());
    }
}
