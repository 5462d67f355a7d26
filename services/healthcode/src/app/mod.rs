//! Assembles roles into a running process: binds the addresses, opens what
//! the role needs ([`components`]), starts the materializer, the edge spool,
//! the gRPC server (health and reflection included) and the admin server,
//! and stops them in order on shutdown.

mod components;
mod incoming;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use healthcode_edge::spool::Spool;
use healthcode_log::EventLog;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::config::Settings;
use crate::telemetry;
use components::Components;
pub use healthcode_materializer::CaughtUp;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Edge, materializer and lookup in one process.
    Up,
    Edge,
    Materializer,
    Lookup,
    /// The materializer alone on its data directory, re-materialising the
    /// store from the log.
    Rebuild,
}

impl Role {
    fn edge(self) -> bool {
        matches!(self, Role::Up | Role::Edge)
    }
    fn materializer(self) -> bool {
        matches!(self, Role::Up | Role::Materializer | Role::Rebuild)
    }
    fn lookup(self) -> bool {
        matches!(self, Role::Up | Role::Lookup)
    }
    /// No other process opens this data directory meanwhile.
    fn alone(self) -> bool {
        matches!(self, Role::Up | Role::Rebuild)
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
/// The tasks a running process waits for when it stops, in stop order.
struct Running {
    grpc: Option<JoinHandle<anyhow::Result<()>>>,
    drainer: Option<JoinHandle<()>>,
    materializer: Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
    log: Option<Arc<dyn EventLog>>,
    spool: Option<Arc<Spool>>,
    admin: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Starts `role`: binds the addresses, opens what the role needs, then
    /// starts the materializer, the edge spool, the gRPC server and the
    /// admin server, and a supervisor that stops them in order.
    pub async fn start(role: Role, settings: Settings) -> anyhow::Result<App> {
        let metrics = telemetry::metrics();
        let (admin_listener, grpc_listener) = bind(role, &settings).await?;
        let admin_addr = admin_listener.local_addr()?;
        let grpc_addr = grpc_listener.as_ref().map(TcpListener::local_addr).transpose()?;

        let c = Components::open(role, settings).await?;
        let materializer = c.start_materializer().await?;
        let (spool, drainer) = c.start_spool().await?;
        let grpc = match grpc_listener {
            Some(listener) => Some(c.start_grpc(listener, spool.clone()).await?),
            None => None,
        };
        let readiness = Readiness::default();
        let shadow = c.shadow_rules();
        let parts = admin::AdminParts {
            guard: c.guard.clone(),
            store_faults: c.store_faults.clone(),
            shadow: shadow.clone(),
            activity: c.activity.clone(),
            console: c.console(metrics.clone(), shadow),
        };
        let admin = tokio::spawn(admin::serve(admin_listener, metrics, parts, readiness.clone(), c.shutdown.clone()));
        readiness.set(true);

        let running = Running { grpc, drainer, materializer, log: c.log.clone(), spool, admin };
        let shutdown = c.shutdown.clone();
        let supervisor = tokio::spawn(supervise(running, readiness, shutdown.clone()));
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

/// Re-materialises every resident from the event log into the store, after
/// the store was lost; `stop` interrupts it. On the embedded log and store
/// no server may run on the same data directory meanwhile.
pub async fn rebuild(settings: Settings, stop: CancellationToken) -> anyhow::Result<CaughtUp> {
    let c = Components::open(Role::Rebuild, settings).await?;
    let forward = c.shutdown.clone();
    let _stop = tokio::spawn(async move {
        stop.cancelled().await;
        forward.cancel();
    });
    let caught = c.rebuild().await;
    if let Some(log) = &c.log {
        log.close().await.context("closing the event log")?;
    }
    caught
}

/// The admin address always; the gRPC address for the edge and the lookup.
async fn bind(role: Role, settings: &Settings) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let admin = TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", settings.admin_addr))?;
    let grpc = if role.edge() || role.lookup() {
        settings.security.check_transport(settings.grpc_addr)?;
        Some(
            TcpListener::bind(settings.grpc_addr)
                .await
                .with_context(|| format!("binding the gRPC address {}", settings.grpc_addr))?,
        )
    } else {
        None
    };
    Ok((admin, grpc))
}
/// Waits for the stop, then stops in order: not ready, gRPC drained, the
/// spool drainer, the materializer's batch in hand, the log flushed, the
/// spool closed, the admin server.
async fn supervise(r: Running, readiness: Readiness, shutdown: CancellationToken) -> anyhow::Result<()> {
    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!("shutting down: draining calls, finishing the batch in hand, flushing the log");
    let mut result = Ok(());
    if let Some(grpc) = r.grpc {
        result = result.and(grpc.await?);
    }
    if let Some(drainer) = r.drainer {
        drainer.await?;
    }
    if let Some(materializer) = r.materializer {
        result = result.and(materializer.await.unwrap_or_else(|_| Err(anyhow::anyhow!("materializer thread died"))));
    }
    if let Some(log) = r.log {
        log.close().await.context("closing the event log")?;
    }
    if let Some(spool) = r.spool {
        spool.close().await.context("closing the edge spool")?;
    }
    r.admin.await?.context("admin server failed")?;
    tracing::info!("shutdown complete");
    result
}
