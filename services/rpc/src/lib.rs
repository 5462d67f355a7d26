//! The single place where service errors become gRPC status codes, RPC
//! metrics, and admission lanes.

pub mod admission;
pub mod codes;
pub mod priority;

pub use admission::{Lane, LaneConfig};
pub use priority::{LookupsFirst, PriorityConfig};

/// Largest gRPC request a server accepts unless a deployment says otherwise:
/// a batch of 500 events fits with room to spare.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

use std::time::{Duration, Instant};

use healthcode_core::ValidationError;
use tonic::{Code, Status};

/// Metadata key telling a client how long to wait before retrying.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// Metadata key naming the rejected field of an INVALID_ARGUMENT.
pub const INVALID_FIELD: &str = "invalid-field";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    /// A dependency (log, store) cannot serve now; the client should retry.
    #[error("{what} unavailable: {detail}")]
    Unavailable { what: &'static str, detail: String, retry_after: Duration },
    /// No credential, or one the server does not know.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A known caller asking for what its role or identity does not allow.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A limit (rate, queue, spool) is full; the client should retry later.
    #[error("{what} exhausted: {detail}")]
    ResourceExhausted { what: &'static str, detail: String, retry_after: Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::Unavailable { .. } => Code::Unavailable,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ServiceError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        let metadata = status.metadata_mut();
        match &err {
            ServiceError::InvalidArgument(v) => {
                if let Ok(value) = v.field.parse() {
                    metadata.insert(INVALID_FIELD, value);
                }
            }
            ServiceError::Unavailable { retry_after, .. } | ServiceError::ResourceExhausted { retry_after, .. } => {
                // At least 1 ms: "retry after 0" would invite a tight loop.
                let ms = retry_after.as_millis().max(1);
                metadata.insert(RETRY_AFTER_MS, ms.to_string().parse().expect("digits"));
            }
            ServiceError::Unauthenticated(_) | ServiceError::PermissionDenied(_) | ServiceError::Internal(_) => {}
        }
        status
    }
}

/// How long a refused caller was asked to wait (`retry-after-ms`), if the
/// server said.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let ms = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The caller's deadline from the `grpc-timeout` header (digits and a unit:
/// H, M, S, m, u, n), if it sent one.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Records one finished RPC: `healthcode_grpc_requests_total{rpc, code}` and
/// `healthcode_grpc_request_seconds{rpc}`. `rpc` must be a static method name.
/// The codes calls are counted by; any other counts as `OTHER`.
const CODES: [(Code, &str); 7] = [
    (Code::Ok, "OK"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::Internal, "INTERNAL"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
];

/// The request metrics of one RPC, registered once: looking a labelled
/// metric up by name on every call cost more than the counting.
pub struct CallMetrics {
    by_code: [metrics::Counter; CODES.len() + 1],
    seconds: metrics::Histogram,
}

impl CallMetrics {
    pub fn new(rpc: &'static str) -> CallMetrics {
        let counter =
            |code: &'static str| metrics::counter!("healthcode_grpc_requests_total", "rpc" => rpc, "code" => code);
        CallMetrics {
            by_code: std::array::from_fn(|i| counter(CODES.get(i).map_or("OTHER", |(_, label)| label))),
            seconds: metrics::histogram!("healthcode_grpc_request_seconds", "rpc" => rpc),
        }
    }

    /// Counts a call that started at `started` by the code it ended with.
    pub fn record<T>(&self, started: Instant, result: &Result<T, ServiceError>) {
        let code = match result {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        };
        let index = CODES.iter().position(|(c, _)| *c == code).unwrap_or(CODES.len());
        self.by_code[index].increment(1);
        self.seconds.record(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(ServiceError::from(ValidationError::new("event.sampled_at", "must be set")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "event.sampled_at: must be set");
        assert_eq!(status.metadata().get(INVALID_FIELD).unwrap(), "event.sampled_at");
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let err = ServiceError::Unavailable {
            what: "event log",
            detail: "down".into(),
            retry_after: Duration::from_millis(250),
        };
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        for (value, expected) in [
            ("20m", Duration::from_millis(20)),
            ("3S", Duration::from_secs(3)),
            ("1500u", Duration::from_micros(1500)),
            ("2M", Duration::from_secs(120)),
            ("7n", Duration::from_nanos(7)),
            ("1H", Duration::from_secs(3600)),
        ] {
            metadata.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&metadata), Some(expected), "{value}");
        }
        metadata.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }

    #[test]
    fn auth_errors_map_to_their_codes_and_shedding_says_when_to_retry() {
        assert_eq!(Status::from(ServiceError::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(Status::from(ServiceError::PermissionDenied("x".into())).code(), Code::PermissionDenied);
        let shed = Status::from(ServiceError::ResourceExhausted {
            what: "rate limit",
            detail: "too fast".into(),
            retry_after: Duration::from_micros(10),
        });
        assert_eq!(shed.code(), Code::ResourceExhausted);
        assert_eq!(shed.metadata().get(RETRY_AFTER_MS).unwrap(), "1");
    }
}
