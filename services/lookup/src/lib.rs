//! The Lookup service: facts from the store, color from the policy and `now`.
//! An unknown resident is an answer (YELLOW, NO_RECORD), not an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use healthcode_core::validation::{MAX_LOOKUP_BATCH, check_id};
use healthcode_core::wire::{color_to_wire, reason_to_wire};
use healthcode_core::{Color, Facts, Policy, Status, UnixMicros, ValidationError};
use healthcode_proto::v1::{self as pb, lookup_server::Lookup};
use healthcode_rpc::{ServiceError, observe};
use healthcode_store::{StatusStore, StoreError};
use tonic::{Request, Response};

#[derive(Clone, Debug)]
pub struct LookupConfig {
    /// Server-side time budget for one lookup's store read.
    pub budget: Duration,
    /// What a caller is told to wait before retrying when the store is down.
    pub retry_after: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig { budget: Duration::from_millis(50), retry_after: Duration::from_millis(200) }
    }
}

pub struct LookupService {
    store: Arc<dyn StatusStore>,
    policy: Policy,
    config: LookupConfig,
}

impl LookupService {
    pub fn new(store: Arc<dyn StatusStore>, policy: Policy, config: LookupConfig) -> Self {
        LookupService { store, policy, config }
    }

    async fn read<T>(&self, read: impl Future<Output = Result<T, StoreError>>) -> Result<T, ServiceError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.budget, read).await;
        metrics::histogram!("healthcode_lookup_store_read_seconds").record(started.elapsed());
        let detail = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within the {} ms budget", self.config.budget.as_millis()),
        };
        tracing::warn!(detail, "status store read failed");
        Err(ServiceError::Unavailable { what: "status store", detail, retry_after: self.config.retry_after })
    }

    fn status(&self, resident_id: String, facts: Option<Facts>, now: UnixMicros) -> pb::ResidentStatus {
        let status = self.policy.evaluate(&facts.unwrap_or_default(), now);
        metrics::counter!("healthcode_lookup_answers_total", "color" => color_label(status.color)).increment(1);
        to_wire(resident_id, &status, false)
    }

    async fn get_status(&self, request: pb::GetStatusRequest) -> Result<pb::ResidentStatus, ServiceError> {
        check_id(&request.resident_id, "resident_id")?;
        let facts = self.read(self.store.get(&request.resident_id)).await?;
        Ok(self.status(request.resident_id, facts, UnixMicros::now()))
    }

    async fn batch_get_status(
        &self,
        request: pb::BatchGetStatusRequest,
    ) -> Result<pb::BatchGetStatusReply, ServiceError> {
        let ids = request.resident_id;
        if ids.len() > MAX_LOOKUP_BATCH {
            return Err(ValidationError::new("resident_id", format!("must hold at most {MAX_LOOKUP_BATCH} ids")).into());
        }
        for (i, id) in ids.iter().enumerate() {
            check_id(id, &format!("resident_id[{i}]"))?;
        }
        let facts = self.read(self.store.get_many(&ids)).await?;
        let now = UnixMicros::now();
        let statuses = ids.into_iter().zip(facts).map(|(id, f)| self.status(id, f, now)).collect();
        Ok(pb::BatchGetStatusReply { statuses })
    }
}

fn color_label(color: Color) -> &'static str {
    match color {
        Color::Green => "green",
        Color::Yellow => "yellow",
        Color::Red => "red",
    }
}

pub fn to_wire(resident_id: String, status: &Status, stale: bool) -> pb::ResidentStatus {
    let ts = |t: Option<UnixMicros>| t.map(UnixMicros::to_timestamp);
    pb::ResidentStatus {
        resident_id,
        color: color_to_wire(status.color) as i32,
        reason: reason_to_wire(status.reason) as i32,
        valid_until: ts(status.valid_until),
        last_negative_sampled_at: ts(status.last_negative_sampled_at),
        last_positive_sampled_at: ts(status.last_positive_sampled_at),
        updated_at: ts(status.updated_at),
        as_of: Some(status.as_of.to_timestamp()),
        stale,
        override_expires_at: ts(status.override_expires_at),
    }
}

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ResidentStatus>, tonic::Status> {
        let started = Instant::now();
        let result = self.get_status(request.into_inner()).await;
        observe("GetStatus", started, &result);
        result.map(Response::new).map_err(Into::into)
    }

    async fn batch_get_status(
        &self,
        request: Request<pb::BatchGetStatusRequest>,
    ) -> Result<Response<pb::BatchGetStatusReply>, tonic::Status> {
        let started = Instant::now();
        let result = self.batch_get_status(request.into_inner()).await;
        observe("BatchGetStatus", started, &result);
        result.map(Response::new).map_err(Into::into)
    }
}
