//! The door every call passes: who is calling, may that role make this
//! call, and is it within its rate.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use healthcode_rpc::{CallMetrics, Lane, ServiceError, grpc_timeout};
use tonic::metadata::MetadataMap;

use crate::{Principal, Rpc, TokenRegistry, principal_from_cert};

#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// Calls per second one principal may make (also the burst).
    pub rate_per_principal: NonZeroU32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { rate_per_principal: NonZeroU32::new(5_000).expect("non-zero") }
    }
}

pub struct Guard {
    tokens: Arc<TokenRegistry>,
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    /// By `Rpc as usize`.
    calls: Vec<CallMetrics>,
}

/// The token of an `authorization: Bearer <token>` header, if any.
pub fn bearer(value: Option<&str>) -> Option<&str> {
    let value = value?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An admitted call: who makes it and how long the caller will wait.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub caller: Principal,
    pub client_timeout: Option<std::time::Duration>,
}

/// Server side: authenticates a call from its headers, before its body is
/// read, so an unknown caller costs the server no more than its headers
/// (a 2 MiB batch is refused unread). The principal rides in the request's
/// extensions to [`Guard::admit`], which authorizes it for the RPC.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Guard>);

/// Who [`Authenticate`] found: server-side only, never from the wire.
#[derive(Clone)]
struct Authenticated(Principal);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match self.0.authenticate(&request) {
            Ok(principal) => {
                request.extensions_mut().insert(Authenticated(principal));
                Ok(request)
            }
            Err(e) => {
                metrics::counter!("healthcode_auth_refused_total", "rpc" => "before_body", "reason" => "unauthenticated")
                    .increment(1);
                Err(e.into())
            }
        }
    }
}

/// Client side: adds the bearer token to every call of a client
/// (`IngestClient::with_interceptor(channel, Bearer::new(token)?)`).
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer, tonic::metadata::errors::InvalidMetadataValue> {
        Ok(Bearer(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A request carrying `token` as its bearer credential (the client side).
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl Guard {
    pub fn new(tokens: Arc<TokenRegistry>, config: &GuardConfig) -> Guard {
        metrics::gauge!("healthcode_admission_limit", "lane" => "per_principal", "limit" => "calls_per_second")
            .set(f64::from(config.rate_per_principal.get()));
        Guard {
            tokens,
            limiter: RateLimiter::keyed(Quota::per_second(config.rate_per_principal)),
            clock: DefaultClock::default(),
            calls: Rpc::ALL.iter().map(|rpc| CallMetrics::new(rpc.name())).collect(),
        }
    }

    /// Who is calling: the bearer token when one is sent (an unknown token is
    /// refused, never passed over for the certificate), else the verified
    /// client certificate.
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Principal, ServiceError> {
        if let Some(principal) = self.token_principal(request.metadata())? {
            return Ok(principal);
        }
        let certs = request.peer_certs();
        match certs.as_ref().and_then(|c| c.first()) {
            Some(cert) => principal_from_cert(cert.as_ref()).ok_or_else(|| {
                ServiceError::Unauthenticated("the client certificate names no principal (CN) and role (OU)".into())
            }),
            None => Err(ServiceError::Unauthenticated(
                "send `authorization: Bearer <token>` or a client certificate".into(),
            )),
        }
    }

    fn token_principal(&self, metadata: &MetadataMap) -> Result<Option<Principal>, ServiceError> {
        let Some(value) = metadata.get("authorization") else { return Ok(None) };
        let token = bearer(value.to_str().ok())
            .ok_or_else(|| ServiceError::Unauthenticated("authorization must be `Bearer <token>`".into()))?;
        self.tokens.authenticate(token).map(Some).ok_or_else(|| ServiceError::Unauthenticated("unknown token".into()))
    }

    /// Authenticates, checks the role against the call and spends one unit
    /// of the caller's rate.
    pub fn admit<T>(&self, request: &tonic::Request<T>, rpc: Rpc) -> Result<Principal, ServiceError> {
        let caller = match request.extensions().get::<Authenticated>() {
            Some(Authenticated(principal)) => Ok(principal.clone()),
            None => self.authenticate(request),
        };
        let result = caller.and_then(|p| self.authorize(p, rpc));
        if let Err(e) = &result {
            refused(rpc, e);
        }
        result
    }

    /// Runs one gRPC call: admits the caller, then takes a slot in `lane`
    /// (unknown callers never take one), hands the caller and the message to
    /// `handle`, records the call's metrics and maps the error to a status.
    pub async fn serve<T, R, Fut>(
        &self,
        rpc: Rpc,
        lane: &Lane,
        request: tonic::Request<T>,
        handle: impl FnOnce(Admitted, T) -> Fut,
    ) -> Result<tonic::Response<R>, tonic::Status>
    where
        Fut: Future<Output = Result<R, ServiceError>>,
    {
        let started = std::time::Instant::now();
        let result = match self.admit(&request, rpc) {
            Ok(caller) => match lane.enter().await {
                Ok(_slot) => {
                    let admitted = Admitted { caller, client_timeout: grpc_timeout(request.metadata()) };
                    handle(admitted, request.into_inner()).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.calls[rpc as usize].record(started, &result);
        result.map(tonic::Response::new).map_err(tonic::Status::from)
    }

    /// The same for an HTTP endpoint, from its `authorization` header.
    pub fn admit_http(&self, authorization: Option<&str>, rpc: Rpc) -> Result<Principal, ServiceError> {
        let result = match authorization {
            None => Err(ServiceError::Unauthenticated("send `authorization: Bearer <token>`".into())),
            Some(value) => bearer(Some(value))
                .and_then(|t| self.tokens.authenticate(t))
                .ok_or_else(|| ServiceError::Unauthenticated("unknown token".into())),
        }
        .and_then(|p| self.authorize(p, rpc));
        if let Err(e) = &result {
            refused(rpc, e);
        }
        result
    }

    fn authorize(&self, principal: Principal, rpc: Rpc) -> Result<Principal, ServiceError> {
        if !rpc.roles().contains(&principal.role) {
            let allowed: Vec<&str> = rpc.roles().iter().map(|r| r.as_str()).collect();
            return Err(ServiceError::PermissionDenied(format!(
                "{} needs the role {}; the caller is a {}",
                rpc.name(),
                allowed.join(" or "),
                principal.role
            )));
        }
        match self.limiter.check_key(&principal.name) {
            Ok(()) => Ok(principal),
            Err(not_until) => Err(ServiceError::ResourceExhausted {
                what: "per-caller rate limit",
                detail: format!("{} calls too fast", principal.name),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }
}

fn refused(rpc: Rpc, e: &ServiceError) {
    let reason = match e {
        ServiceError::Unauthenticated(_) => "unauthenticated",
        ServiceError::PermissionDenied(_) => "permission_denied",
        _ => "rate_limited",
    };
    metrics::counter!("healthcode_auth_refused_total", "rpc" => rpc.name(), "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, new_token};

    fn guard(rate: u32) -> (Guard, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (token, entry) = new_token("st-1", Role::Station);
        TokenRegistry::append(&path, &[entry]).unwrap();
        let tokens = Arc::new(TokenRegistry::open(&path).unwrap());
        let config = GuardConfig { rate_per_principal: NonZeroU32::new(rate).unwrap() };
        (Guard::new(tokens, &config), token, dir)
    }

    fn request(authorization: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn refusals_say_why() {
        let (guard, token, _dir) = guard(100);
        let code = |r: Result<Principal, ServiceError>| r.map_err(|e| e.code()).map(|p| p.name);
        assert_eq!(code(guard.admit(&request(None), Rpc::GetStatus)), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(guard.admit(&request(Some("Bearer nope")), Rpc::GetStatus)), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(guard.admit(&request(Some(&token)), Rpc::GetStatus)), Err(tonic::Code::Unauthenticated));
        let bearer = format!("Bearer {token}");
        assert_eq!(
            code(guard.admit(&request(Some(&bearer)), Rpc::SubmitTestResult)),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code(guard.admit(&request(Some(&bearer)), Rpc::GetStatus)), Ok("st-1".to_string()));
    }

    #[test]
    fn a_caller_over_its_rate_is_told_when_to_come_back() {
        let (guard, token, _dir) = guard(2);
        let bearer = format!("bearer {token}");
        let results: Vec<_> = (0..3).map(|_| guard.admit(&request(Some(&bearer)), Rpc::GetStatus)).collect();
        assert!(results[0].is_ok() && results[1].is_ok());
        match &results[2] {
            Err(ServiceError::ResourceExhausted { retry_after, .. }) => {
                assert!(*retry_after > std::time::Duration::ZERO)
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
    }
}
