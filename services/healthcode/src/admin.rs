//! Admin HTTP: `/metrics` (Prometheus, ops role), `/live` (the process runs),
//! `/ready` (it can serve: stores open, listeners bound, not shutting down),
//! `POST /policy/diff` (ops role; a candidate policy file as the body),
//! `/activity/callers` (ops role; the busiest callers, for peers' consoles)
//! and the operations console under `/console` (its own sign-in).
//! Probes stay open, like the gRPC health service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use healthcode_auth::{Guard, Rpc};
use healthcode_rpc::ServiceError;
use healthcode_store::StoreFaults;

use crate::console::Console;
use crate::policy_diff::ShadowRules;
use healthcode_edge::CallerActivity;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    guard: Arc<Guard>,
    store_faults: Option<Arc<StoreFaults>>,
    readiness: Readiness,
    shadow: Option<Arc<ShadowRules>>,
    activity: Option<Arc<CallerActivity>>,
}

/// The ops role's check for an admin endpoint; the refusal as a response.
fn ops_only(s: &AdminState, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    s.guard.admit_http(authorization, Rpc::Metrics).map(drop).map_err(|e| {
        let status = match &e {
            ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServiceError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        (status, format!("{e}\n"))
    })
}

async fn render_metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    match ops_only(&s, &headers) {
        Ok(()) => s.metrics.render().into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `POST /faults/store/down` or `/up`, with --fault-injection only.
async fn store_fault(State(s): State<AdminState>, Path(state): Path<String>, headers: HeaderMap) -> Response {
    if let Err(refused) = ops_only(&s, &headers) {
        return refused.into_response();
    }
    let Some(faults) = &s.store_faults else {
        return (StatusCode::NOT_FOUND, "this process has no store or runs without --fault-injection\n")
            .into_response();
    };
    match state.as_str() {
        "down" | "up" => {
            faults.set_down(state == "down");
            tracing::warn!(store = %state, "fault injected");
            (StatusCode::OK, format!("store {state}\n")).into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "state must be down or up\n").into_response(),
    }
}

/// `POST /policy/diff`: the candidate policy file in the body; the diff as
/// JSON. A bad file is a 400 that names the key.
async fn policy_diff(State(s): State<AdminState>, headers: HeaderMap, body: String) -> Response {
    if let Err(refused) = ops_only(&s, &headers) {
        return refused.into_response();
    }
    let Some(shadow) = &s.shadow else {
        return (StatusCode::NOT_FOUND, "this process has no store and no rules (run it on up or lookup)\n")
            .into_response();
    };
    let candidate = match crate::config::parse_policy(&body) {
        Ok(candidate) => candidate,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
    };
    match shadow.diff(&candidate).await {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("the store failed during the diff: {e}\n")).into_response(),
    }
}

/// `GET /activity/callers`: this edge's busiest callers as JSON.
async fn callers(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refused) = ops_only(&s, &headers) {
        return refused.into_response();
    }
    let busiest = s.activity.as_ref().map(|a| a.busiest(10)).unwrap_or_default();
    crate::console::json(&busiest)
}

/// What the admin port serves besides metrics and probes.
pub struct AdminParts {
    pub guard: Arc<Guard>,
    pub store_faults: Option<Arc<StoreFaults>>,
    pub shadow: Option<Arc<ShadowRules>>,
    pub activity: Option<Arc<CallerActivity>>,
    pub console: Arc<Console>,
}

pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    parts: AdminParts,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let AdminParts { guard, store_faults, shadow, activity, console } = parts;
    // Histograms are drained into buckets by upkeep; run it between scrapes too.
    let upkeep = metrics.clone();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_stop.cancelled() => break,
            }
        }
    });
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/faults/store/{state}", post(store_fault))
        .route("/policy/diff", post(policy_diff))
        .route("/activity/callers", get(callers))
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/ready",
            get(|State(s): State<AdminState>| async move {
                if s.readiness.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(AdminState { metrics, guard, store_faults, readiness, shadow, activity })
        .merge(console.router());
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
