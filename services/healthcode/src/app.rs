//! Assembles roles into a running process: opens the log and store, starts
//! the gRPC server (health and reflection included), the materializer and
//! the admin server, and stops them in order on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use healthcode_auth::{DevCredentials, Guard, GuardConfig, Pseudonymizer, TokenRegistry};
use healthcode_core::Validator;
use healthcode_edge::EdgeService;
use healthcode_edge::spool::Spool;
use healthcode_log::{EmbeddedLog, EventLog};
use healthcode_log_kafka::KafkaLog;
use healthcode_lookup::LookupService;
use healthcode_materializer::{Materializer, MaterializerConfig};
use healthcode_proto::v1::ingest_server::IngestServer;
use healthcode_proto::v1::lookup_server::LookupServer;
use healthcode_status_token::Signer;
use healthcode_store::{EmbeddedStore, FaultyStore, StatusStore};
use healthcode_store_scylla::ScyllaStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::admin::{self, Readiness};
use crate::config::{LogBackend, Security, Settings, StoreBackend};
use crate::telemetry;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Edge, materializer and lookup in one process.
    Up,
    Edge,
    Materializer,
    Lookup,
}

impl Role {
    fn edge(self) -> bool {
        matches!(self, Role::Up | Role::Edge)
    }
    fn materializer(self) -> bool {
        matches!(self, Role::Up | Role::Materializer)
    }
    fn lookup(self) -> bool {
        matches!(self, Role::Up | Role::Lookup)
    }
}

/// A running process; dropping it does not stop it, [`App::stop`] does.
pub struct App {
    /// Where gRPC listens; `None` for the materializer role.
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    supervisor: JoinHandle<anyhow::Result<()>>,
}

async fn open_log(settings: &Settings) -> anyhow::Result<Arc<dyn EventLog>> {
    match settings.log {
        LogBackend::Embedded => {
            let dir = settings.data_dir.join("log");
            Ok(Arc::new(
                EmbeddedLog::open(&dir).with_context(|| format!("opening the event log in {}", dir.display()))?,
            ))
        }
        LogBackend::Kafka => Ok(Arc::new(
            KafkaLog::connect(settings.kafka.clone())
                .await
                .with_context(|| format!("connecting to Kafka at {}", settings.kafka.brokers))?,
        )),
    }
}

/// `shared`: other processes of this machine (separate materializer and
/// lookup roles) may open the embedded store too.
async fn open_store(settings: &Settings, shared: bool) -> anyhow::Result<Arc<dyn StatusStore>> {
    match settings.store {
        StoreBackend::Embedded => {
            let dir = settings.data_dir.join("store");
            let retention = settings.limits.retention;
            let store =
                if shared { EmbeddedStore::open_shared(&dir, retention) } else { EmbeddedStore::open(&dir, retention) };
            Ok(Arc::new(store.with_context(|| format!("opening the store in {}", dir.display()))?))
        }
        StoreBackend::Scylla => Ok(Arc::new(
            ScyllaStore::connect(settings.scylla.clone())
                .await
                .with_context(|| format!("opening the ScyllaDB store at {}", settings.scylla.nodes.join(",")))?,
        )),
    }
}

/// Creates the credentials missing in `dir`: certificates (the server's
/// for `server_names`), tokens, pseudonym key, status signing key and its
/// keyring. Returns the names of what it created.
pub fn create_credentials(dir: &std::path::Path, server_names: &[&str]) -> anyhow::Result<Vec<&'static str>> {
    let mut created = DevCredentials::at(dir).ensure_for(server_names).context("creating credentials")?;
    if create_signing_key(&dir.join("status-signing.toml"), &dir.join("status-keys.toml"))? {
        created.push("status signing key");
    }
    Ok(created)
}

/// A status signing key and the keyring stations verify with, unless the key is there.
fn create_signing_key(key: &std::path::Path, keyring: &std::path::Path) -> anyhow::Result<bool> {
    if key.exists() {
        return Ok(false);
    }
    Signer::generate(key, keyring, "dev-1").context("creating the status signing key")?;
    Ok(true)
}

/// Development credentials where asked for, then the tokens every server checks.
fn open_guard(security: &Security) -> anyhow::Result<Arc<Guard>> {
    if security.dev_credentials {
        let created =
            DevCredentials::at(&security.credentials_dir).ensure().context("creating development credentials")?;
        if !created.is_empty() {
            tracing::info!(
                dir = %security.credentials_dir.display(),
                created = created.join(", "),
                "created development credentials: <role>.token holds a bearer token of dev-<role>, \
                 <role>.pem/.key its client certificate; the client verbs find them there"
            );
        }
    }
    let keyring = security.credentials_dir.join("status-keys.toml");
    if security.dev_credentials && create_signing_key(&security.status_signing_key_file, &keyring)? {
        tracing::info!(keyring = %keyring.display(), "created a status signing key; stations verify tokens with the keyring");
    }
    let tokens = TokenRegistry::open(&security.tokens_file).context("reading the tokens file")?;
    tracing::info!(path = %security.tokens_file.display(), tokens = tokens.len(), "tokens loaded");
    let config = GuardConfig { rate_per_principal: security.rate_limit_per_principal };
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
                    Err(e) => tracing::warn!(error = %e, "purging expired facts failed"),
                },
                _ = shutdown.cancelled() => break,
            }
        }
    });
}

/// Accepted connections with Nagle off: small replies go out at once instead
/// of waiting on the peer's delayed ACK (a 40 ms stall at the tail).
fn nodelay(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

impl App {
    pub async fn start(role: Role, settings: Settings) -> anyhow::Result<App> {
        let metrics = telemetry::metrics();
        let shutdown = CancellationToken::new();
        let readiness = Readiness::default();

        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", settings.admin_addr))?;
        let admin_addr = admin_listener.local_addr()?;
        let grpc_listener = if role.edge() || role.lookup() {
            Some(
                TcpListener::bind(settings.grpc_addr)
                    .await
                    .with_context(|| format!("binding the gRPC address {}", settings.grpc_addr))?,
            )
        } else {
            None
        };
        let grpc_addr = grpc_listener.as_ref().map(TcpListener::local_addr).transpose()?;

        let log = if role.edge() || role.materializer() { Some(open_log(&settings).await?) } else { None };
        let mut store = if role.materializer() || role.lookup() {
            Some(open_store(&settings, role != Role::Up).await?)
        } else {
            None
        };
        let mut store_faults = None;
        if settings.fault_injection
            && let Some(inner) = store.take()
        {
            tracing::warn!("fault injection is on: POST /faults/store/down makes the store fail");
            let (faulty, faults) = FaultyStore::new(inner);
            store = Some(Arc::new(faulty));
            store_faults = Some(faults);
        }
        let validator = Validator::new(settings.limits.clone());
        let guard = open_guard(&settings.security)?;

        let pseudonyms = if role.edge() || role.lookup() {
            Some(Pseudonymizer::from_file(&settings.security.pseudonym_key_file).context("reading the pseudonym key")?)
        } else {
            None
        };
        let lookup = match (&store, &pseudonyms) {
            (Some(store), Some(pseudonyms)) if role.lookup() => {
                let lookup = LookupService::new(
                    store.clone(),
                    settings.policy.clone(),
                    settings.lookup.clone(),
                    guard.clone(),
                    pseudonyms.clone(),
                );
                Some(Arc::new(match open_signer(&settings.security)? {
                    Some(signer) => lookup.with_signer(Arc::new(signer)),
                    None => lookup,
                }))
            }
            _ => None,
        };

        let materializer = match (&log, &store) {
            (Some(log), Some(store)) if role.materializer() => {
                let consumer = log.consumer(&settings.materializer_group).await?;
                let config =
                    MaterializerConfig { batch_size: settings.materializer_batch, ..MaterializerConfig::default() };
                let mut materializer = Materializer::new(consumer, store.clone(), validator.clone(), config);
                if let Some(lookup) = &lookup {
                    // One process: the lookup's cache sees every write as it lands.
                    materializer = materializer.with_observer(lookup.cache());
                }
                let run = materializer.run(shutdown.clone());
                // Its own thread and runtime: on the shared runtime its every
                // await would queue behind thousands of ingest calls, and under
                // a flood the materializer would starve while the log grows.
                let (done, finished) = tokio::sync::oneshot::channel();
                let stop = shutdown.clone();
                std::thread::Builder::new().name("materializer".into()).spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the materializer runtime")
                        .and_then(|runtime| runtime.block_on(run).context("materializer failed"));
                    stop.cancel();
                    let _ = done.send(result);
                })?;
                purge_expired(store.clone(), shutdown.clone());
                Some(finished)
            }
            _ => None,
        };

        // The edge's spool, and its drainer into the log.
        let (spool, drainer) = match (&log, settings.edge_spool) {
            (Some(log), Some(capacity)) if role.edge() => {
                let dir = settings.data_dir.join("spool");
                let (spool, drainer) = Spool::open(&dir, capacity, settings.edge.retry_after)
                    .await
                    .with_context(|| format!("opening the edge spool in {}", dir.display()))?;
                if spool.depth() > 0 {
                    tracing::info!(records = spool.depth(), "the edge spool holds events from before; draining");
                }
                let run = drainer.run(log.clone(), std::time::Duration::from_secs(10), shutdown.clone());
                (Some(Arc::new(spool)), Some(tokio::spawn(run)))
            }
            _ => (None, None),
        };

        let grpc = match grpc_listener {
            Some(listener) => {
                let max_message = settings.security.max_message_bytes;
                let (reporter, health) = tonic_health::server::health_reporter();
                let ingest = match &log {
                    Some(log) if role.edge() => {
                        reporter.set_serving::<IngestServer<EdgeService>>().await;
                        let pseudonyms = pseudonyms.clone().expect("read for the edge role");
                        let mut edge =
                            EdgeService::new(log.clone(), validator.clone(), &settings.edge, guard.clone(), pseudonyms);
                        if let Some(spool) = &spool {
                            edge = edge.with_spool(spool.clone());
                        }
                        Some(IngestServer::new(edge).max_decoding_message_size(max_message))
                    }
                    _ => None,
                };
                let lookup = match lookup {
                    Some(lookup) => {
                        reporter.set_serving::<LookupServer<LookupService>>().await;
                        Some(LookupServer::from_arc(lookup).max_decoding_message_size(max_message))
                    }
                    None => None,
                };
                let reflection = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(healthcode_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .build_v1()?;
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = tls_config(&settings.security)? {
                    builder = builder.tls_config(tls).context("configuring TLS")?;
                }
                let server = builder
                    .add_service(health)
                    .add_service(reflection)
                    .add_optional_service(ingest)
                    .add_optional_service(lookup);
                let stop = shutdown.clone();
                let signal = async move {
                    stop.cancelled().await;
                    // Tell load balancers first, then drain in-flight calls.
                    reporter.set_service_status("", ServingStatus::NotServing).await;
                };
                let stop = shutdown.clone();
                Some(tokio::spawn(async move {
                    let result = server.serve_with_incoming_shutdown(nodelay(listener), signal).await;
                    stop.cancel();
                    result.context("gRPC server failed")
                }))
            }
            None => None,
        };

        let admin = tokio::spawn(admin::serve(
            admin_listener,
            metrics,
            guard,
            store_faults,
            readiness.clone(),
            shutdown.clone(),
        ));
        readiness.set(true);

        let stop = shutdown.clone();
        let supervisor = tokio::spawn(async move {
            stop.cancelled().await;
            readiness.set(false);
            tracing::info!("shutting down: draining calls, finishing the batch in hand, flushing the log");
            let mut result = Ok(());
            if let Some(grpc) = grpc {
                result = result.and(grpc.await?);
            }
            if let Some(drainer) = drainer {
                drainer.await?;
            }
            if let Some(materializer) = materializer {
                result =
                    result.and(materializer.await.unwrap_or_else(|_| Err(anyhow::anyhow!("materializer thread died"))));
            }
            if let Some(log) = log {
                log.close().await.context("closing the event log")?;
            }
            if let Some(spool) = spool {
                spool.close().await.context("closing the edge spool")?;
            }
            admin.await?.context("admin server failed")?;
            tracing::info!("shutdown complete");
            result
        });
        Ok(App { grpc_addr, admin_addr, shutdown, supervisor })
    }

    /// Resolves when the process stopped by itself (a component failed) or
    /// was asked to stop.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Graceful stop: no new calls, in-flight calls finish, the log is flushed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.supervisor.await?
    }
}
