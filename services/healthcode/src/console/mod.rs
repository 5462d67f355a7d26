//! The operations console on the admin port: `/console`.
//!
//! Sign in with an ops bearer token; the server keeps the session (and the
//! token, to re-check it on every call and to read peers with it) and the
//! browser only a random session id in an HttpOnly, SameSite=Strict cookie
//! (Secure when the request came over TLS through a proxy). Without a
//! session every page is the sign-in page and every data call is 401.
//!
//! The data is one JSON document, `/console/api/state`: the Prometheus
//! samples of this process and of the peers the setting lists (raw counters:
//! the page turns them into rates between polls), the busiest callers, the
//! site risks with the residents each exposed, and the last policy diff.
//! Peers are read at their admin endpoints rather than through Prometheus
//! so that the console still works when the monitoring stack is down, which
//! is when it is needed most. Assets are compiled into the binary: no build
//! step, nothing fetched from the internet.

pub mod docs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use healthcode_auth::{Guard, Rpc};
use healthcode_core::{SITE_RISKS_KEY, UnixMicros};
use healthcode_edge::CallerActivity;
use healthcode_store::StatusStore;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::policy_diff::{DiffReport, ShadowRules};

const INDEX: &str = include_str!("assets/index.html");
const SIGN_IN: &str = include_str!("assets/sign-in.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

const COOKIE: &str = "healthcode_console";
/// How long a session lasts without signing in again.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most: signing in again past it drops the oldest.
const MAX_SESSIONS: usize = 1000;
/// Site risks and their counts are re-read at most this often: counting a
/// risk's visitors reads the by-site index.
const RISKS_FRESH_FOR: Duration = Duration::from_secs(10);
/// A peer that does not answer within this is shown unreachable.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);

/// What the console reads beside this process's metrics.
pub struct ConsoleParts {
    pub metrics: PrometheusHandle,
    pub guard: Arc<Guard>,
    pub store: Option<Arc<dyn StatusStore>>,
    pub shadow: Option<Arc<ShadowRules>>,
    pub activity: Option<Arc<CallerActivity>>,
    /// Other processes' admin addresses (`host:port`), read with the
    /// session's token.
    pub peers: Vec<String>,
    /// The role this process runs, for the page's title.
    pub role: String,
    /// The lookup budget the p99 is compared with.
    pub budget: Duration,
}

struct Session {
    token: String,
    principal: String,
    expires: Instant,
}

pub struct Console {
    parts: ConsoleParts,
    sessions: Mutex<HashMap<String, Session>>,
    risks: tokio::sync::Mutex<Option<(Instant, RisksRead)>>,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<axum::body::Bytes>,
    >,
}

/// The site risks as last read, or why they could not be.
type RisksRead = Result<Vec<RiskView>, String>;

#[derive(Clone, Serialize)]
struct RiskView {
    risk_id: String,
    site_id: String,
    risky_from: String,
    risky_until: String,
    issued_at: String,
    retracted: bool,
    exposed_residents: u64,
}

#[derive(Serialize)]
struct NodeView {
    name: String,
    up: bool,
    error: Option<String>,
    samples: Option<HashMap<String, f64>>,
}

#[derive(Serialize)]
struct StateView {
    as_of: String,
    role: String,
    source: &'static str,
    signed_in_as: String,
    budget_ms: f64,
    nodes: Vec<NodeView>,
    stations: Vec<healthcode_edge::CallerCount>,
    site_risks: Option<Vec<RiskView>>,
    site_risks_error: Option<String>,
    policy_diff: Option<DiffReport>,
}

fn time(t: UnixMicros) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

/// The `healthcode_*` samples of a Prometheus text exposition, by series.
pub fn parse_samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("healthcode_"))
        .filter_map(|l| {
            // The value follows the last space (label values may hold spaces).
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode =
            |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        (decode(key) == name).then(|| decode(value))
    })
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == COOKIE).then(|| value.to_owned())
    })
}

/// Behind a TLS-terminating proxy the cookie is only ever sent over TLS.
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie text is ASCII")
}

/// `value` as a JSON response, never cached.
pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Only our own script and style: no inline code, nothing from elsewhere.
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
        ],
        body,
    )
        .into_response()
}

impl Console {
    pub fn new(parts: ConsoleParts) -> Arc<Console> {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Arc::new(Console { parts, sessions: Mutex::new(HashMap::new()), risks: tokio::sync::Mutex::new(None), http })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/console", get(page))
            .route("/console/", get(page))
            .route("/console/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }))
            .route("/console/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }))
            .route("/console/sign-in", post(sign_in))
            .route("/console/sign-out", post(sign_out))
            .route("/console/api/state", get(state))
            .route("/console/docs/operations", get(docs::operations))
            .with_state(self.clone())
    }

    /// The session's token, re-checked now (a revoked token ends its session).
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let id = session_id(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get(&id)?;
        if session.expires < Instant::now() {
            sessions.remove(&id);
            return None;
        }
        let (token, principal) = (session.token.clone(), session.principal.clone());
        drop(sessions);
        match self.parts.guard.admit_http(Some(&format!("Bearer {token}")), Rpc::Metrics) {
            Ok(_) => Some((token, principal)),
            Err(_) => {
                self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                None
            }
        }
    }

    fn open_session(&self, token: String, principal: String) -> String {
        let id = healthcode_secrets::to_hex(&healthcode_auth::random_bytes::<32>());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Session { token, principal, expires: now + SESSION_TTL });
        id
    }

    async fn peer_get(&self, peer: &str, path: &str, token: &str) -> Result<String, String> {
        let uri: axum::http::Uri = format!("http://{peer}{path}").parse().map_err(|e| format!("bad address: {e}"))?;
        let request = axum::http::Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(PEER_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| format!("no answer within {} ms", PEER_TIMEOUT.as_millis()))?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }

    async fn site_risks(&self) -> Option<RisksRead> {
        let store = self.parts.store.as_ref()?;
        let mut held = self.risks.lock().await;
        if let Some((at, risks)) = held.as_ref()
            && at.elapsed() < RISKS_FRESH_FOR
        {
            return Some(risks.clone());
        }
        let read = async {
            let registry = store.get(SITE_RISKS_KEY).await.map_err(|e| e.to_string())?;
            let risks = registry.map(|f| f.site_risks).unwrap_or_default();
            let risks = healthcode_store::with_exposed(&**store, risks).await.map_err(|e| e.to_string())?;
            Ok(risks
                .into_iter()
                .map(|(r, exposed_residents)| RiskView {
                    risk_id: r.risk_id,
                    site_id: r.site_id,
                    risky_from: time(r.risky_from),
                    risky_until: time(r.risky_until),
                    issued_at: time(r.issued_at),
                    retracted: r.retracted,
                    exposed_residents,
                })
                .collect())
        };
        let risks = read.await;
        *held = Some((Instant::now(), risks.clone()));
        Some(risks)
    }
}

async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.session(&headers) {
        Some(_) => html(INDEX.to_owned()),
        None => html(SIGN_IN.replace("<!--ERROR-->", "")),
    }
}

async fn sign_in(State(c): State<Arc<Console>>, headers: HeaderMap, body: String) -> Response {
    let token = form_field(&body, "token").map(|v| v.trim().to_owned());
    let admitted = token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| c.parts.guard.admit_http(Some(&format!("Bearer {t}")), Rpc::Metrics));
    match (token, admitted) {
        (Some(token), Some(Ok(principal))) => {
            tracing::info!(target: "audit", principal = %principal.name, "console sign-in");
            let id = c.open_session(token, principal.name);
            let mut response = Redirect::to("/console").into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie(&id, SESSION_TTL.as_secs(), over_tls(&headers)));
            response
        }
        (_, refused) => {
            let why = match refused {
                Some(Err(e)) => e.to_string(),
                _ => "a token is needed".to_owned(),
            };
            let escaped = why.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let page = SIGN_IN
                .replace("<!--ERROR-->", &format!("<p class=\"error\" id=\"error\">Not signed in: {escaped}</p>"));
            (StatusCode::UNAUTHORIZED, html(page)).into_response()
        }
    }
}

async fn sign_out(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        c.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
    let mut response = Redirect::to("/console").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie("", 0, over_tls(&headers)));
    response
}

async fn state(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((token, principal)) = c.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in at /console\n").into_response();
    };
    let mut nodes = vec![NodeView {
        name: "this process".into(),
        up: true,
        error: None,
        samples: Some(parse_samples(&c.parts.metrics.render())),
    }];
    let mut stations = c.parts.activity.as_ref().map(|a| a.busiest(10)).unwrap_or_default();
    let peers = futures_util::future::join_all(c.parts.peers.iter().map(|peer| {
        let (c, token) = (&c, &token);
        async move {
            let metrics = c.peer_get(peer, "/metrics", token).await;
            let callers = c.peer_get(peer, "/activity/callers", token).await.ok();
            (peer, metrics, callers)
        }
    }))
    .await;
    for (peer, metrics, callers) in peers {
        match metrics {
            Ok(text) => {
                nodes.push(NodeView { name: peer.clone(), up: true, error: None, samples: Some(parse_samples(&text)) })
            }
            Err(e) => nodes.push(NodeView { name: peer.clone(), up: false, error: Some(e), samples: None }),
        }
        if let Some(list) = callers.and_then(|t| serde_json::from_str::<Vec<healthcode_edge::CallerCount>>(&t).ok()) {
            stations.extend(list);
        }
    }
    let stations = healthcode_edge::CallerCount::top(stations, 10);
    let (site_risks, site_risks_error) = match c.site_risks().await {
        Some(Ok(risks)) => (Some(risks), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, Some("this process has no store (run the console on up or lookup)".to_owned())),
    };
    let view = StateView {
        as_of: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        role: c.parts.role.clone(),
        source: "admin endpoints",
        signed_in_as: principal,
        budget_ms: c.parts.budget.as_secs_f64() * 1000.0,
        nodes,
        stations,
        site_risks,
        site_risks_error,
        policy_diff: c.parts.shadow.as_ref().and_then(|s| s.last()),
    };
    json(&view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_by_series_and_other_lines_are_left_out() {
        let text = "# TYPE healthcode_x counter\nhealthcode_x{kind=\"a b\"} 3\nhealthcode_y 2.5\nprocess_cpu 1\nhealthcode_z NaN\n";
        let samples = parse_samples(text);
        assert_eq!(samples.get("healthcode_x{kind=\"a b\"}"), Some(&3.0));
        assert_eq!(samples.get("healthcode_y"), Some(&2.5));
        assert!(!samples.contains_key("process_cpu"));
        assert!(samples.get("healthcode_z").is_some_and(|v| v.is_nan()));
    }

    #[test]
    fn the_session_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain = cookie("abc", 60, false);
        let text = plain.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict") && !text.contains("Secure;"));
        assert!(!text.ends_with("Secure"));
        assert!(cookie("abc", 60, true).to_str().unwrap().ends_with("; Secure"));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; healthcode_console=xyz; b=2"));
        assert_eq!(session_id(&headers).as_deref(), Some("xyz"));
        assert_eq!(form_field("a=1&token=ab%3Ac+d", "token").as_deref(), Some("ab:c d"));
        assert_eq!(form_field("a=1", "token"), None);
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_tls(&headers));
    }
}
