//! The Lookup service: facts from the store, color from the policy and `now`.
//! An unknown resident is an answer (YELLOW, NO_RECORD), not an error.
//! Residents are looked up by the same keyed pseudonym the edge stored them
//! under; the reply carries back the id the caller asked with.
//!
//! Every lookup is bounded: the store gets at most the budget (50 ms) or the
//! caller's own `grpc-timeout`, whichever is shorter. When it fails or is
//! late, the last known facts answer with `stale = true`; only a resident
//! never cached gets UNAVAILABLE with `retry-after-ms`.

pub mod cache;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use healthcode_auth::{Admitted, Guard, Pseudonymizer, Rpc};
use healthcode_core::validation::{MAX_LOOKUP_BATCH, check_id};
use healthcode_core::{
    AuditCursor, Color, Decision, Facts, Policy, SITE_RISKS_KEY, SiteRisks, Status, UnixMicros, ValidationError,
};
use healthcode_proto::v1::{self as pb, lookup_server::Lookup};
use healthcode_rpc::{Lane, LaneConfig, LookupsFirst, ServiceError};
use healthcode_status_token::Signer;
use healthcode_store::StatusStore;

use crate::cache::{FactsCache, Read, ReadError};
use crate::tokens::TokenReuse;

use tonic::{Request, Response};

/// Overrides per `ListOverrides` reply when the caller names no page size, and at most.
const DEFAULT_OVERRIDES_PAGE: i32 = 100;
const MAX_OVERRIDES_PAGE: i32 = 1_000;

#[derive(Clone, Debug)]
pub struct LookupConfig {
    /// Server-side time budget for one lookup's store read.
    pub budget: Duration,
    /// The same for a BatchGetStatus (up to 500 residents in one read).
    pub batch_budget: Duration,
    /// What a caller is told to wait before retrying when the store is down.
    pub retry_after: Duration,
    /// How long a store read answers later lookups without asking again.
    pub cache_fresh_for: Duration,
    /// How long the last known facts may answer, flagged stale, while the store fails.
    pub cache_stale_for: Duration,
    /// Residents kept in the cache.
    pub cache_capacity: u64,
    /// Bytes of facts kept in the cache: a resident with many long override
    /// notes weighs what it holds, so the count alone does not bound memory.
    pub cache_max_bytes: u64,
    /// Concurrent lookups and their queue; the wait counts against no budget,
    /// so it is kept short.
    pub lane: LaneConfig,
    /// How long a signed status token is reused for the same answer to the
    /// same resident (see [`tokens`]); zero signs every answer.
    pub token_reuse_for: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            budget: Duration::from_millis(50),
            batch_budget: Duration::from_millis(500),
            retry_after: Duration::from_millis(200),
            cache_fresh_for: Duration::from_millis(250),
            cache_stale_for: Duration::from_secs(24 * 3600),
            cache_capacity: 500_000,
            cache_max_bytes: 256 * 1024 * 1024,
            lane: LaneConfig {
                concurrency: 256,
                queue: 1024,
                max_wait: Duration::from_millis(20),
                retry_after: Duration::from_millis(100),
            },
            token_reuse_for: Duration::from_secs(60),
        }
    }
}

/// The lookup's metrics, registered once (a labelled lookup by name on every
/// call costs more than the counting).
struct Meters {
    read_seconds: metrics::Histogram,
    /// By source: store, cache, stale; then unavailable.
    reads: [metrics::Counter; 4],
    /// By color: green, yellow, red.
    answers: [metrics::Counter; 3],
}

impl Meters {
    fn new() -> Meters {
        let read = |source: &'static str| metrics::counter!("healthcode_lookup_reads_total", "source" => source);
        let answer = |color: &'static str| metrics::counter!("healthcode_lookup_answers_total", "color" => color);
        Meters {
            read_seconds: metrics::histogram!("healthcode_lookup_read_seconds"),
            reads: [read("store"), read("cache"), read("stale"), read("unavailable")],
            answers: [answer("green"), answer("yellow"), answer("red")],
        }
    }

    fn read(&self, read: &Read) {
        let i = match read {
            Read::Store(_) => 0,
            Read::Cached(_) => 1,
            Read::Stale(_) => 2,
        };
        self.reads[i].increment(1);
    }

    fn answer(&self, color: Color) {
        let i = match color {
            Color::Green => 0,
            Color::Yellow => 1,
            Color::Red => 2,
        };
        self.answers[i].increment(1);
    }
}

pub struct LookupService {
    meters: Meters,
    store: Arc<dyn StatusStore>,
    policy: Policy,
    config: LookupConfig,
    guard: Arc<Guard>,
    pseudonyms: Pseudonymizer,
    cache: Arc<FactsCache>,
    lane: Lane,
    tokens: Option<TokenReuse>,
    priority: Option<Arc<LookupsFirst>>,
}

/// The site risks an answer was judged against, and whether they are known
/// only from a stale (or no) read.
struct RisksRead {
    risks: Arc<SiteRisks>,
    stale: bool,
}

impl LookupService {
    pub fn new(
        store: Arc<dyn StatusStore>,
        policy: Policy,
        config: LookupConfig,
        guard: Arc<Guard>,
        pseudonyms: Pseudonymizer,
    ) -> Self {
        let cache = FactsCache::new(
            config.cache_capacity,
            config.cache_max_bytes,
            config.cache_fresh_for,
            config.cache_stale_for,
        );
        let lane = Lane::new("lookup", config.lane.clone());
        LookupService {
            meters: Meters::new(),
            store,
            policy,
            config,
            guard,
            pseudonyms,
            cache: Arc::new(cache),
            lane,
            tokens: None,
            priority: None,
        }
    }

    /// Reports every lookup to `priority`, which slows ingest in this
    /// process while lookups need the CPU.
    pub fn with_priority(mut self, priority: Arc<LookupsFirst>) -> Self {
        self.priority = Some(priority);
        self
    }

    fn started(&self) {
        if let Some(priority) = &self.priority {
            priority.lookup_started();
        }
    }

    /// Every answer carries a status token signed by `signer`.
    pub fn with_signer(mut self, signer: Arc<Signer>) -> Self {
        self.tokens = Some(TokenReuse::new(signer, self.config.token_reuse_for));
        self
    }

    /// The cache, for the materializer of the same process to fold its writes into.
    pub fn cache(&self) -> Arc<FactsCache> {
        self.cache.clone()
    }

    /// The store's time for this call: the budget, or less when the caller waits less.
    fn deadline(&self, call: &Admitted, budget: Duration) -> Duration {
        call.client_timeout.map_or(budget, |t| t.min(budget))
    }

    fn unavailable(&self, e: ReadError) -> ServiceError {
        tracing::warn!(error = &e as &dyn std::error::Error, "status store read failed and nothing is cached");
        let detail = e.to_string();
        self.meters.reads[3].increment(1);
        ServiceError::Unavailable { what: "status store", detail, retry_after: self.config.retry_after }
    }

    async fn read(&self, resident_id: &str, call: &Admitted) -> Result<Read, ServiceError> {
        let started = std::time::Instant::now();
        let read = self
            .cache
            .read(&self.pseudonyms.pseudonym(resident_id), &*self.store, self.deadline(call, self.config.budget))
            .await;
        self.meters.read_seconds.record(started.elapsed());
        let read = read.map_err(|e| self.unavailable(e))?;
        self.meters.read(&read);
        Ok(read)
    }

    /// The city's active site risks, from the cache like any resident's
    /// facts (one store read per `cache_fresh_for` at most). When the store
    /// cannot say and nothing is cached, no site is risky and the answer is
    /// flagged stale: never blank, never waiting.
    async fn site_risks(&self, deadline: Duration) -> RisksRead {
        let read = match self.cache.read(SITE_RISKS_KEY, &*self.store, deadline).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "site risks unreadable and none cached");
                return RisksRead { risks: Arc::new(SiteRisks::none()), stale: true };
            }
        };
        let stale = read.stale();
        let risks = read.known().site_risks.get_or_init(|| {
            let risks = read.known().facts.as_ref().map(SiteRisks::from_facts).unwrap_or_default();
            metrics::gauge!("healthcode_site_risks_active").set(risks.len() as f64);
            Arc::new(risks)
        });
        RisksRead { risks: risks.clone(), stale }
    }

    /// The answer for one resident; signed unless `sign` is false.
    fn status(
        &self,
        resident_id: String,
        read: &Read,
        risks: &RisksRead,
        now: UnixMicros,
        sign: bool,
    ) -> pb::ResidentStatus {
        let known = read.known();
        let none = Facts::default();
        let status = self.policy.evaluate(known.facts.as_ref().unwrap_or(&none), &risks.risks, now);
        if status.reason == healthcode_core::Reason::Exposure {
            metrics::counter!("healthcode_lookup_exposed_answers_total").increment(1);
        }
        self.meters.answer(status.color);
        let mut wire = to_wire(resident_id, &status, read.stale() || risks.stale);
        if let Some(tokens) = self.tokens.as_ref().filter(|_| sign) {
            wire.status_token = tokens.token(&known.token, &wire, now);
        }
        wire
    }

    async fn get_status(
        &self,
        call: Admitted,
        request: pb::GetStatusRequest,
    ) -> Result<pb::ResidentStatus, ServiceError> {
        self.started();
        check_id(&request.resident_id, "resident_id")?;
        let (read, risks) = tokio::join!(
            self.read(&request.resident_id, &call),
            self.site_risks(self.deadline(&call, self.config.budget))
        );
        Ok(self.status(request.resident_id, &read?, &risks, UnixMicros::now(), true))
    }

    async fn list_site_risks(
        &self,
        call: Admitted,
        request: pb::ListSiteRisksRequest,
    ) -> Result<pb::ListSiteRisksReply, ServiceError> {
        if !request.site_id.is_empty() {
            check_id(&request.site_id, "site_id")?;
        }
        let read = self
            .cache
            .read(SITE_RISKS_KEY, &*self.store, self.deadline(&call, self.config.batch_budget))
            .await
            .map_err(|e| self.unavailable(e))?;
        let risks: Vec<_> = read
            .known()
            .facts
            .as_ref()
            .map(|f| f.site_risks.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| request.site_id.is_empty() || r.site_id == request.site_id)
            .collect();
        let risks =
            healthcode_store::with_exposed(&*self.store, risks).await.map_err(|e| ServiceError::Unavailable {
                what: "status store",
                detail: e.to_string(),
                retry_after: self.config.retry_after,
            })?;
        let ts = |t: UnixMicros| Some(t.to_timestamp());
        let out = risks
            .into_iter()
            .map(|(r, exposed_residents)| pb::SiteRiskRecord {
                risk_id: r.risk_id,
                site_id: r.site_id,
                authority_id: r.authority_id,
                risky_from: ts(r.risky_from),
                risky_until: ts(r.risky_until),
                issued_at: ts(r.issued_at),
                retracted: r.retracted,
                note: r.note,
                event_id: r.event_id,
                exposed_residents,
            })
            .collect();
        Ok(pb::ListSiteRisksReply { risks: out })
    }

    /// A page of the resident's overrides from the audit record: every
    /// override for the audit retention, not only the facts' latest 64.
    async fn list_overrides(
        &self,
        _call: Admitted,
        request: pb::ListOverridesRequest,
    ) -> Result<pb::ListOverridesReply, ServiceError> {
        check_id(&request.resident_id, "resident_id")?;
        let page_size = match request.page_size {
            0 => DEFAULT_OVERRIDES_PAGE,
            n @ 1..=MAX_OVERRIDES_PAGE => n,
            _ => {
                let rule = format!("must be from 1 to {MAX_OVERRIDES_PAGE} (0 for {DEFAULT_OVERRIDES_PAGE})");
                return Err(ValidationError::new("page_size", rule).into());
            }
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(AuditCursor::from_token(token).ok_or_else(|| {
                ValidationError::new("page_token", "must be a next_page_token this service returned")
            })?),
        };
        let subject = self.pseudonyms.pseudonym(&request.resident_id);
        let page =
            self.store.decisions(&subject, after, page_size as usize).await.map_err(|e| ServiceError::Unavailable {
                what: "status store",
                detail: e.to_string(),
                retry_after: self.config.retry_after,
            })?;
        let ts = |t: UnixMicros| Some(t.to_timestamp());
        let overrides = page
            .entries
            .into_iter()
            .filter_map(|entry| {
                let Decision::Override { color, expires_at } = entry.decision else { return None };
                let (principal, credential, accepted_at) = match entry.by {
                    Some(by) => (by.principal, pb::Credential::from(by.credential), ts(by.accepted_at)),
                    None => (String::new(), pb::Credential::Unspecified, None),
                };
                Some(pb::OverrideRecord {
                    event_id: entry.event_id,
                    authority_id: entry.authority_id,
                    color: pb::Color::from(color) as i32,
                    note: entry.note,
                    issued_at: ts(entry.issued_at),
                    expires_at: ts(expires_at),
                    principal,
                    credential: credential as i32,
                    accepted_at,
                })
            })
            .collect();
        let next_page_token = page.next.map(|c| c.to_token()).unwrap_or_default();
        Ok(pb::ListOverridesReply { overrides, next_page_token })
    }

    async fn batch_get_status(
        &self,
        call: Admitted,
        request: pb::BatchGetStatusRequest,
    ) -> Result<pb::BatchGetStatusReply, ServiceError> {
        self.started();
        let (ids, sign) = (request.resident_id, !request.omit_status_tokens);
        if ids.len() > MAX_LOOKUP_BATCH {
            return Err(ValidationError::new("resident_id", format!("must hold at most {MAX_LOOKUP_BATCH} ids")).into());
        }
        for (i, id) in ids.iter().enumerate() {
            check_id(id, &format!("resident_id[{i}]"))?;
        }
        let keys: Vec<String> = ids.iter().map(|id| self.pseudonyms.pseudonym(id)).collect();
        let started = std::time::Instant::now();
        let reads = self.cache.read_many(&keys, &*self.store, self.deadline(&call, self.config.batch_budget)).await;
        self.meters.read_seconds.record(started.elapsed());
        let reads = reads.map_err(|e| self.unavailable(e))?;
        let risks = self.site_risks(self.deadline(&call, self.config.batch_budget)).await;
        let now = UnixMicros::now();
        let statuses = ids
            .into_iter()
            .zip(reads)
            .map(|(id, read)| {
                self.meters.read(&read);
                self.status(id, &read, &risks, now, sign)
            })
            .collect();
        Ok(pb::BatchGetStatusReply { statuses })
    }
}

pub fn to_wire(resident_id: String, status: &Status, stale: bool) -> pb::ResidentStatus {
    let ts = |t: Option<UnixMicros>| t.map(UnixMicros::to_timestamp);
    pb::ResidentStatus {
        resident_id,
        color: pb::Color::from(status.color) as i32,
        reason: pb::Reason::from(status.reason) as i32,
        valid_until: ts(status.valid_until),
        last_negative_sampled_at: ts(status.last_negative_sampled_at),
        last_positive_sampled_at: ts(status.last_positive_sampled_at),
        updated_at: ts(status.updated_at),
        as_of: Some(status.as_of.to_timestamp()),
        stale,
        override_expires_at: ts(status.override_expires_at),
        status_token: String::new(),
        exposed_at: ts(status.exposed_at),
    }
}

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ResidentStatus>, tonic::Status> {
        self.guard.serve(Rpc::GetStatus, &self.lane, request, |call, r| self.get_status(call, r)).await
    }

    async fn batch_get_status(
        &self,
        request: Request<pb::BatchGetStatusRequest>,
    ) -> Result<Response<pb::BatchGetStatusReply>, tonic::Status> {
        self.guard.serve(Rpc::BatchGetStatus, &self.lane, request, |call, r| self.batch_get_status(call, r)).await
    }

    async fn list_overrides(
        &self,
        request: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesReply>, tonic::Status> {
        self.guard.serve(Rpc::ListOverrides, &self.lane, request, |call, r| self.list_overrides(call, r)).await
    }

    async fn list_site_risks(
        &self,
        request: Request<pb::ListSiteRisksRequest>,
    ) -> Result<Response<pb::ListSiteRisksReply>, tonic::Status> {
        self.guard.serve(Rpc::ListSiteRisks, &self.lane, request, |call, r| self.list_site_risks(call, r)).await
    }
}
