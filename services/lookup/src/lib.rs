//! The Lookup service: facts from the store, color from the policy and `now`.
//! An unknown resident is an answer (YELLOW, NO_RECORD), not an error.
//! Residents are looked up by the same keyed pseudonym the edge stored them
//! under; the reply carries back the id the caller asked with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use healthcode_auth::{Guard, Pseudonymizer, Rpc};
use healthcode_core::validation::{MAX_LOOKUP_BATCH, check_id};
use healthcode_core::wire::{color_to_wire, reason_to_wire};
use healthcode_core::{Color, Facts, Policy, Status, UnixMicros, ValidationError};
use healthcode_proto::v1::{self as pb, lookup_server::Lookup};
use healthcode_rpc::ServiceError;
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
    guard: Arc<Guard>,
    pseudonyms: Pseudonymizer,
}

impl LookupService {
    pub fn new(
        store: Arc<dyn StatusStore>,
        policy: Policy,
        config: LookupConfig,
        guard: Arc<Guard>,
        pseudonyms: Pseudonymizer,
    ) -> Self {
        LookupService { store, policy, config, guard, pseudonyms }
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
        let facts = self.read(self.store.get(&self.pseudonyms.pseudonym(&request.resident_id))).await?;
        Ok(self.status(request.resident_id, facts, UnixMicros::now()))
    }

    async fn list_overrides(&self, request: pb::ListOverridesRequest) -> Result<pb::ListOverridesReply, ServiceError> {
        check_id(&request.resident_id, "resident_id")?;
        let facts = self.read(self.store.get(&self.pseudonyms.pseudonym(&request.resident_id))).await?;
        let ts = |t: UnixMicros| Some(t.to_timestamp());
        let overrides = facts
            .map(|f| f.overrides)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|o| pb::OverrideRecord {
                event_id: o.event_id,
                authority_id: o.authority_id,
                color: color_to_wire(o.color) as i32,
                note: o.note,
                issued_at: ts(o.issued_at),
                expires_at: ts(o.expires_at),
            })
            .collect();
        Ok(pb::ListOverridesReply { overrides })
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
        let keys: Vec<String> = ids.iter().map(|id| self.pseudonyms.pseudonym(id)).collect();
        let facts = self.read(self.store.get_many(&keys)).await?;
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
        self.guard.serve(Rpc::GetStatus, request, |_, r| self.get_status(r)).await
    }

    async fn batch_get_status(
        &self,
        request: Request<pb::BatchGetStatusRequest>,
    ) -> Result<Response<pb::BatchGetStatusReply>, tonic::Status> {
        self.guard.serve(Rpc::BatchGetStatus, request, |_, r| self.batch_get_status(r)).await
    }

    async fn list_overrides(
        &self,
        request: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesReply>, tonic::Status> {
        self.guard.serve(Rpc::ListOverrides, request, |_, r| self.list_overrides(r)).await
    }
}
