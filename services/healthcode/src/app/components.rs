//! What a process opens once at start (log, store, guard, pseudonyms,
//! lookup) and the steps that start its parts from them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use healthcode_auth::{Authenticate, Guard, Pseudonymizer, Rpc, TokenRegistry};
use healthcode_core::{UnixMicros, Validator};
use healthcode_edge::{CallerActivity, EdgeService};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::console::{Console, ConsoleParts};
use healthcode_edge::spool::Spool;
use healthcode_log::{EmbeddedLog, EventLog, Retention};
use healthcode_log_kafka::KafkaLog;
use healthcode_lookup::LookupService;
use healthcode_materializer::{CaughtUp, Materializer};
use healthcode_proto::v1::ingest_server::IngestServer;
use healthcode_proto::v1::lookup_server::LookupServer;
use healthcode_rpc::LookupsFirst;
use healthcode_rpc::codes::DecodeErrorsLayer;
use healthcode_status_token::Signer;
use healthcode_store::{EmbeddedStore, FaultyStore, LsmStore, StatusStore, StoreFaults};
use healthcode_store_scylla::ScyllaStore;

use crate::config::VersionedPolicy;
use crate::policy_diff::ShadowRules;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use super::Role;
use crate::config::{LogBackend, Security, Settings, StoreBackend};
use crate::credentials;

/// Concurrent calls one HTTP/2 connection may carry (tonic sets no limit).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest header block of a call: a token, a deadline and a few more.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// How long cached facts answer without a reread when this process's
/// materializer is the store's only writer (`up` on the embedded store): as
/// long as the purge of facts past retention takes to come round.
const COHERENT_CACHE_FRESH_FOR: Duration = Duration::from_secs(3600);

/// What a process opens once at start and its steps share. A role has only
/// the parts it needs: the materializer no pseudonyms, the lookup no log.
pub(super) struct Components {
    pub(super) role: Role,
    pub(super) settings: Settings,
    pub(super) shutdown: CancellationToken,
    pub(super) log: Option<Arc<dyn EventLog>>,
    pub(super) store: Option<Arc<dyn StatusStore>>,
    pub(super) store_faults: Option<Arc<StoreFaults>>,
    pub(super) validator: Validator,
    pub(super) guard: Arc<Guard>,
    pub(super) pseudonyms: Option<Pseudonymizer>,
    pub(super) lookup: Option<Arc<LookupService>>,
    /// In a process serving lookups and submits: submits yield to lookups.
    pub(super) priority: Option<Arc<LookupsFirst>>,
    /// Where the edge counts its busiest callers, for the console.
    pub(super) activity: Option<Arc<CallerActivity>>,
}

impl Components {
    /// Opens the log, the store (behind the fault switch when asked), the
    /// guard, the pseudonym key and the lookup service, as the role needs.
    pub(super) async fn open(role: Role, settings: Settings) -> anyhow::Result<Components> {
        let log = if role.edge() || role.materializer() { Some(open_log(&settings).await?) } else { None };
        let mut store =
            if role.materializer() || role.lookup() { Some(open_store(&settings, role.alone()).await?) } else { None };
        let mut store_faults = None;
        if settings.fault_injection
            && let Some(inner) = store.take()
        {
            tracing::warn!("fault injection is on: POST /faults/store/down makes the store fail");
            let (faulty, faults) = FaultyStore::new(inner);
            store = Some(Arc::new(faulty));
            store_faults = Some(faults);
        }
        let guard = open_guard(&settings.security)?;
        let pseudonyms = if role.edge() || role.lookup() {
            Some(Pseudonymizer::from_file(&settings.security.pseudonym_key_file).context("reading the pseudonym key")?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let priority = match &settings.edge.yield_to_lookups {
            Some(config) if role.lookup() && role.edge() => {
                let priority = LookupsFirst::new(config.clone());
                priority.spawn_controller(shutdown.clone());
                Some(priority)
            }
            _ => None,
        };
        let lookup = match (&store, &pseudonyms) {
            (Some(store), Some(pseudonyms)) if role.lookup() => {
                let mut config = settings.lookup.clone();
                if role.materializer() && settings.store == StoreBackend::Embedded {
                    // The only writer of this store is this process's
                    // materializer, which tells the cache of every write: the
                    // cache stays current, and rereads only pick up facts
                    // the hourly purge removed past retention.
                    config.cache_fresh_for = config.cache_fresh_for.max(COHERENT_CACHE_FRESH_FOR);
                }
                let lookup = LookupService::new(
                    store.clone(),
                    settings.policy.clone(),
                    config,
                    guard.clone(),
                    pseudonyms.clone(),
                );
                let lookup = match &priority {
                    Some(priority) => lookup.with_priority(priority.clone()),
                    None => lookup,
                };
                Some(Arc::new(match open_signer(&settings.security)? {
                    Some(signer) => lookup.with_signer(Arc::new(signer)),
                    None => lookup,
                }))
            }
            _ => None,
        };
        Ok(Components {
            role,
            validator: Validator::new(settings.limits.clone()),
            settings,
            shutdown,
            log,
            store,
            store_faults,
            guard,
            pseudonyms,
            lookup,
            priority,
            activity: role.edge().then(|| Arc::new(CallerActivity::default())),
        })
    }

    /// The operations console of this process.
    pub(super) fn console(&self, metrics: PrometheusHandle, shadow: Option<Arc<ShadowRules>>) -> Arc<Console> {
        Console::new(ConsoleParts {
            metrics,
            guard: self.guard.clone(),
            store: self.store.clone(),
            shadow,
            activity: self.activity.clone(),
            peers: self.settings.console_peers.clone(),
            role: format!("{:?}", self.role).to_lowercase(),
            budget: self.settings.lookup.budget,
        })
    }

    /// The materializer on a thread and runtime of its own (on the shared
    /// runtime its every await would queue behind thousands of ingest calls,
    /// and under a flood it would starve while the log grows), and the
    /// hourly purge of facts past retention. Resolves with its result.
    pub(super) async fn start_materializer(
        &self,
    ) -> anyhow::Result<Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>> {
        let (Some(log), Some(store)) = (&self.log, &self.store) else { return Ok(None) };
        if !self.role.materializer() {
            return Ok(None);
        }
        let consumer = log.consumer(&self.settings.materializer.group).await?;
        let config = self.settings.materializer.clone();
        let mut materializer = Materializer::new(consumer, store.clone(), self.validator.clone(), config);
        if let Some(lookup) = &self.lookup {
            // One process: the lookup's cache sees every write as it lands.
            materializer = materializer.with_observer(Arc::new(CacheObserver(lookup.cache())));
        }
        let run = materializer.run(self.shutdown.clone());
        let (done, finished) = tokio::sync::oneshot::channel();
        let stop = self.shutdown.clone();
        std::thread::Builder::new().name("materializer".into()).spawn(move || {
            // It merges one batch at a time: a few blocking threads do.
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(8)
                .build()
                .context("starting the materializer runtime")
                .and_then(|runtime| runtime.block_on(run).context("materializer failed"));
            stop.cancel();
            let _ = done.send(result);
        })?;
        purge_expired(store.clone(), self.shutdown.clone());
        Ok(Some(finished))
    }

    /// Re-materialises every resident from the log: a consumer group of
    /// its own reads from the oldest record kept to where the log ends now.
    pub(super) async fn rebuild(&self) -> anyhow::Result<CaughtUp> {
        let (Some(log), Some(store)) = (&self.log, &self.store) else {
            anyhow::bail!("a rebuild needs the event log and the store");
        };
        let group = format!("{}-rebuild-{}", self.settings.materializer.group, UnixMicros::now().0);
        let consumer = log.consumer(&group).await?;
        let config = self.settings.materializer.clone();
        let materializer = Materializer::new(consumer, store.clone(), self.validator.clone(), config);
        Ok(materializer.catch_up(self.shutdown.clone()).await?)
    }

    /// What a policy diff needs, where this process answers lookups.
    pub(super) fn shadow_rules(&self) -> Option<Arc<ShadowRules>> {
        let store = self.store.clone().filter(|_| self.role.lookup())?;
        let current =
            VersionedPolicy { version: self.settings.policy_version.clone(), policy: self.settings.policy.clone() };
        Some(Arc::new(ShadowRules { store, current, last: Default::default() }))
    }

    /// The edge's spool and its drainer into the log.
    pub(super) async fn start_spool(&self) -> anyhow::Result<(Option<Arc<Spool>>, Option<JoinHandle<()>>)> {
        let (Some(log), Some(capacity)) = (&self.log, self.settings.edge.spool_capacity) else {
            return Ok((None, None));
        };
        if !self.role.edge() {
            return Ok((None, None));
        }
        let dir = self.settings.data_dir.join("spool");
        let (spool, drainer) = Spool::open(&dir, capacity, self.settings.edge.retry_after)
            .await
            .with_context(|| format!("opening the edge spool in {}", dir.display()))?;
        if spool.depth() > 0 {
            tracing::info!(records = spool.depth(), "the edge spool holds events from before; draining");
        }
        let run = drainer.run(log.clone(), std::time::Duration::from_secs(10), self.shutdown.clone());
        Ok((Some(Arc::new(spool)), Some(tokio::spawn(run))))
    }

    /// Ingest and Lookup as the role serves them, with health and reflection,
    /// over TLS when configured. Stopping turns health to NOT_SERVING first.
    pub(super) async fn start_grpc(
        &self,
        listener: TcpListener,
        spool: Option<Arc<Spool>>,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let max_message = self.settings.security.max_message_bytes;
        let (reporter, health) = tonic_health::server::health_reporter();
        let ingest = match (&self.log, &self.pseudonyms) {
            (Some(log), Some(pseudonyms)) if self.role.edge() => {
                reporter.set_serving::<IngestServer<EdgeService>>().await;
                let mut edge = EdgeService::new(
                    log.clone(),
                    self.validator.clone(),
                    &self.settings.edge,
                    self.guard.clone(),
                    pseudonyms.clone(),
                );
                if let Some(spool) = spool {
                    edge = edge.with_spool(spool);
                }
                if let Some(priority) = &self.priority {
                    edge = edge.with_priority(priority.clone());
                }
                if let Some(activity) = &self.activity {
                    edge = edge.with_activity(activity.clone());
                }
                let server = IngestServer::new(edge).max_decoding_message_size(max_message);
                Some(InterceptedService::new(server, Authenticate(self.guard.clone())))
            }
            _ => None,
        };
        let lookup = match &self.lookup {
            Some(lookup) => {
                reporter.set_serving::<LookupServer<LookupService>>().await;
                let server = LookupServer::from_arc(lookup.clone()).max_decoding_message_size(max_message);
                Some(InterceptedService::new(server, Authenticate(self.guard.clone())))
            }
            None => None,
        };
        // Reflection in both versions: grpc_cli, Python's grpcio-reflection
        // and some GUI clients still speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(healthcode_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
        // Bounds on what a connection may hold: streams at once, header
        // size, silent peers. (A per-call timeout cost lookups about 5% of
        // their rate, measured; calls without a credential never get to send
        // a body, and lookups and submits have budgets of their own.)
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = tls_config(&self.settings.security)? {
            builder = builder.tls_config(tls).context("configuring TLS")?;
        }
        // Requests tonic could not decode get RESOURCE_EXHAUSTED or
        // INVALID_ARGUMENT, counted, instead of OUT_OF_RANGE or INTERNAL.
        let grpc_method = |method: &str| Rpc::ALL.iter().map(|r| r.name()).find(|name| *name == method);
        let server = builder
            .layer(DecodeErrorsLayer::new(grpc_method))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_optional_service(ingest)
            .add_optional_service(lookup);
        let stop = self.shutdown.clone();
        let signal = async move {
            stop.cancelled().await;
            // Tell load balancers first, then drain in-flight calls.
            reporter.set_service_status("", ServingStatus::NotServing).await;
        };
        let stop = self.shutdown.clone();
        Ok(tokio::spawn(async move {
            let result = server.serve_with_incoming_shutdown(super::incoming::connections(listener), signal).await;
            stop.cancel();
            result.context("gRPC server failed")
        }))
    }
}

async fn open_log(settings: &Settings) -> anyhow::Result<Arc<dyn EventLog>> {
    match settings.log {
        LogBackend::Embedded => {
            let dir = settings.data_dir.join("log");
            // Kept for the retention window, so a lost store can be rebuilt.
            let retention = Retention::Window { window: settings.limits.retention, max_bytes: settings.log_max_bytes };
            Ok(Arc::new(
                EmbeddedLog::open_with(&dir, retention, settings.log_cache_bytes)
                    .with_context(|| format!("opening the event log in {}", dir.display()))?,
            ))
        }
        LogBackend::Kafka => Ok(Arc::new(
            KafkaLog::connect(settings.kafka.clone())
                .await
                .with_context(|| format!("connecting to Kafka at {}", settings.kafka.brokers))?,
        )),
    }
}

/// `alone`: no other process opens this data directory (`up`, `rebuild`).
async fn open_store(settings: &Settings, alone: bool) -> anyhow::Result<Arc<dyn StatusStore>> {
    match settings.store {
        StoreBackend::Embedded => {
            let dir = settings.data_dir.join("store");
            let (retention, cache) = (settings.limits.retention, settings.store_cache_bytes);
            let opened = || format!("opening the store in {}", dir.display());
            Ok(match embedded_kind(&dir, alone)? {
                EmbeddedKind::Lsm => Arc::new(
                    LsmStore::open(&dir, retention, cache)
                        .with_context(opened)?
                        .with_audit_retention(settings.audit_retention),
                ),
                EmbeddedKind::BTree => Arc::new(
                    EmbeddedStore::open_sized(&dir, retention, !alone, cache)
                        .with_context(opened)?
                        .with_audit_retention(settings.audit_retention),
                ),
            })
        }
        StoreBackend::Scylla => Ok(Arc::new(
            ScyllaStore::connect(settings.scylla.clone())
                .await
                .with_context(|| format!("opening the ScyllaDB store at {}", settings.scylla.nodes.join(",")))?,
        )),
    }
}

/// Which embedded store a data directory holds.
#[derive(Debug, PartialEq, Eq)]
enum EmbeddedKind {
    /// fjall: one process, merges without rewriting B-tree pages.
    Lsm,
    /// redb: several processes of one machine may open it.
    BTree,
}

/// The store a directory already holds; a new one is the LSM tree for a
/// process alone on it and the shareable B-tree for separate roles.
fn embedded_kind(dir: &Path, alone: bool) -> anyhow::Result<EmbeddedKind> {
    let (lsm, btree) = (dir.join(healthcode_store::lsm::LSM_DIR).exists(), dir.join("store.redb").exists());
    match (lsm, btree, alone) {
        (true, _, false) => anyhow::bail!(
            "{} holds the one-process store that `healthcode up` writes, which separate roles cannot share: \
             give the roles a data directory of their own, or use --store scylla",
            dir.display()
        ),
        (true, _, true) | (false, false, true) => Ok(EmbeddedKind::Lsm),
        (false, true, true) => {
            tracing::info!(
                path = %dir.display(),
                "the store is the B-tree that separate roles share; `rm -rf` it and `healthcode rebuild` for the faster one-process store"
            );
            Ok(EmbeddedKind::BTree)
        }
        (false, _, false) => Ok(EmbeddedKind::BTree),
    }
}

/// Development credentials where asked for, then the tokens every server checks.
fn open_guard(security: &Security) -> anyhow::Result<Arc<Guard>> {
    if security.dev_credentials {
        credentials::ensure_development(security)?;
    }
    let tokens = TokenRegistry::open(&security.tokens_file).context("reading the tokens file")?;
    tracing::info!(path = %security.tokens_file.display(), tokens = tokens.len(), "tokens loaded");
    let config = security.guard.clone();
    Ok(Arc::new(Guard::new(Arc::new(tokens), &config)))
}

/// The status token signer, when a signing key is there.
fn open_signer(security: &Security) -> anyhow::Result<Option<Signer>> {
    let path = &security.status_signing_key_file;
    if !path.exists() {
        tracing::warn!(path = %path.display(), "no status signing key: answers carry no status token");
        return Ok(None);
    }
    Ok(Some(Signer::from_file(path, security.status_token_ttl).context("reading the status signing key")?))
}

fn tls_config(security: &Security) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some(tls) = &security.tls else { return Ok(None) };
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert_file)?, read(&tls.key_file)?));
    if let Some(ca) = &tls.client_ca_file {
        // Optional: callers with a bearer token need no certificate.
        config = config.client_ca_root(Certificate::from_pem(read(ca)?)).client_auth_optional(true);
    }
    Ok(Some(config))
}

/// Deletes facts past retention every hour (stores with TTL have nothing to do).
fn purge_expired(store: Arc<dyn StatusStore>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => match store.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(residents = n, "purged facts past retention"),
                    Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "purging expired facts failed"),
                },
                _ = shutdown.cancelled() => break,
            }
        }
    });
}

/// The lookup's cache told of every merge of this process's materializer.
struct CacheObserver(Arc<healthcode_lookup::cache::FactsCache>);

#[async_trait::async_trait]
impl healthcode_materializer::MergeObserver for CacheObserver {
    async fn merged(&self, updates: &[healthcode_store::FactsUpdate]) {
        self.0.merged(updates).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_keeps_the_embedded_store_it_has() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing yet: the process alone gets the LSM tree, roles the B-tree.
        assert_eq!(embedded_kind(dir.path(), true).unwrap(), EmbeddedKind::Lsm);
        assert_eq!(embedded_kind(dir.path(), false).unwrap(), EmbeddedKind::BTree);
        // A B-tree stays one for `up` too, so nothing written is hidden.
        std::fs::write(dir.path().join("store.redb"), b"").unwrap();
        assert_eq!(embedded_kind(dir.path(), true).unwrap(), EmbeddedKind::BTree);
        // An LSM tree is refused to roles, with the way out.
        let lsm = tempfile::tempdir().unwrap();
        std::fs::create_dir(lsm.path().join(healthcode_store::lsm::LSM_DIR)).unwrap();
        assert_eq!(embedded_kind(lsm.path(), true).unwrap(), EmbeddedKind::Lsm);
        let refused = embedded_kind(lsm.path(), false).unwrap_err().to_string();
        assert!(refused.contains("--store scylla"), "{refused}");
    }
}
