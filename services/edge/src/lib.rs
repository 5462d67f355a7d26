//! The Ingest service. An event is ACCEPTED only once the event log has it
//! durably; a retry the edge still remembers is answered DUPLICATE.
//! Forgetting is safe: the facts merge makes a re-append harmless.
//!
//! An event's identity is its kind, its submitter and its `event_id`
//! ([`EventKey`]): ids are the caller's idempotency keys, so two labs (or a
//! station and a lab) that number their events alike never shadow each other.
//!
//! Every call is admitted by the [`Guard`] first, and every event must name
//! its caller. Resident ids are replaced by their pseudonyms here, before the
//! event reaches the log.

pub mod activity;
pub mod spool;

pub use activity::{CallerActivity, CallerCount};

use std::sync::Arc;
use std::time::{Duration, Instant};

use healthcode_auth::{Guard, Principal, Proof, Pseudonymizer, Rpc, check_owner};
use healthcode_core::wire::event_id;
use healthcode_core::{
    Credential, Event, EventBody, EventPath, Provenance, UnixMicros, ValidationError, Validator,
    validation::MAX_BATCH_EVENTS,
};
use healthcode_log::{EventLog, LogError, Record};
use healthcode_proto::v1::{self as pb, event::Kind, ingest_server::Ingest};
use healthcode_rpc::{Lane, LaneConfig, LookupsFirst, PriorityConfig, ServiceError};

use crate::spool::Spool;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// How many recent event ids the edge remembers to answer DUPLICATE.
    pub dedup_capacity: u64,
    /// How long an event id is remembered.
    pub dedup_ttl: Duration,
    /// What a station is told to wait before retrying when the log is down.
    pub retry_after: Duration,
    /// Concurrent submit calls and their queue.
    pub lane: LaneConfig,
    /// How long an append may take before the events go to the spool instead.
    pub spool_after: Duration,
    /// Events the local spool may hold while the log is unreachable or slow;
    /// `None` turns the spool off (submits then fail while the log does).
    pub spool_capacity: Option<u64>,
    /// Where this process also serves lookups: how submits yield to them.
    /// `None` never slows submits.
    pub yield_to_lookups: Option<PriorityConfig>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            dedup_capacity: 500_000,
            dedup_ttl: Duration::from_secs(24 * 3600),
            retry_after: Duration::from_millis(500),
            lane: LaneConfig {
                concurrency: 512,
                queue: 4096,
                max_wait: Duration::from_secs(1),
                retry_after: Duration::from_millis(500),
            },
            spool_after: Duration::from_secs(2),
            spool_capacity: Some(5_000_000),
            yield_to_lookups: Some(PriorityConfig::default()),
        }
    }
}

/// The ingest counters, registered once: a labelled metric looked up by
/// name for every event costs a hash of its labels and a registry read.
struct Meters {
    /// `healthcode_ingest_events_total` by kind ([`Event::kind_index`]), accepted.
    accepted: [metrics::Counter; 4],
    /// The same, duplicate.
    duplicate: [metrics::Counter; 4],
    /// Refused by validation; their kind is not known for sure.
    rejected: metrics::Counter,
}

impl Meters {
    fn new() -> Meters {
        let events = |outcome: &'static str| {
            Event::KIND_LABELS
                .map(|kind| metrics::counter!("healthcode_ingest_events_total", "kind" => kind, "outcome" => outcome))
        };
        Meters {
            accepted: events("accepted"),
            duplicate: events("duplicate"),
            rejected: metrics::counter!("healthcode_ingest_events_total", "kind" => "unknown", "outcome" => "rejected"),
        }
    }

    fn duplicate(&self, event: &Event) {
        self.duplicate[event.kind_index()].increment(1);
    }
}

pub struct EdgeService {
    meters: Meters,
    log: Arc<dyn EventLog>,
    validator: Validator,
    recent: RecentIds,
    retry_after: Duration,
    guard: Arc<Guard>,
    pseudonyms: Pseudonymizer,
    lane: Lane,
    spool: Option<Arc<Spool>>,
    spool_after: Duration,
    priority: Option<Arc<LookupsFirst>>,
    activity: Option<Arc<CallerActivity>>,
}

impl EdgeService {
    pub fn new(
        log: Arc<dyn EventLog>,
        validator: Validator,
        config: &EdgeConfig,
        guard: Arc<Guard>,
        pseudonyms: Pseudonymizer,
    ) -> Self {
        let recent = RecentIds::new(config.dedup_capacity, config.dedup_ttl);
        let lane = Lane::new("ingest", config.lane.clone());
        EdgeService {
            meters: Meters::new(),
            log,
            validator,
            recent,
            retry_after: config.retry_after,
            guard,
            pseudonyms,
            lane,
            spool: None,
            spool_after: config.spool_after,
            priority: None,
            activity: None,
        }
    }

    /// Counts each caller's accepted events in `activity` (the console's
    /// busiest callers).
    pub fn with_activity(mut self, activity: Arc<CallerActivity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Events the log cannot take (unreachable, or slower than `spool_after`)
    /// go to `spool` and are still acknowledged.
    pub fn with_spool(mut self, spool: Arc<Spool>) -> Self {
        self.spool = Some(spool);
        self
    }

    /// Submits yield to lookups served by the same process: `priority`
    /// paces their events while lookups need the CPU.
    pub fn with_priority(mut self, priority: Arc<LookupsFirst>) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Waits for this call's turn when submits are paced.
    async fn pace(&self, events: usize) -> Result<(), ServiceError> {
        match &self.priority {
            Some(priority) => priority.pace(events).await,
            None => Ok(()),
        }
    }

    /// Validated events of the caller, with the resident id replaced by its
    /// pseudonym. A site risk names no resident: its key stays the registry's.
    fn pseudonymized(&self, mut event: Event) -> Event {
        if !matches!(event.body, EventBody::SiteRisk { .. }) {
            event.resident_id = self.pseudonyms.pseudonym(&event.resident_id);
        }
        event
    }

    /// Appends validated events in one durable append, then remembers their
    /// `keys` (each event's [`EventKey`], taken once by the caller).
    async fn append(&self, events: Vec<Event>, keys: Vec<EventKey>, caller: &Principal) -> Result<(), ServiceError> {
        if events.is_empty() {
            return Ok(());
        }
        let by = provenance(caller);
        let records = events
            .iter()
            .map(|event| Record {
                key: event.resident_id.as_bytes().to_vec(),
                payload: healthcode_core::record::encode(event, &by),
            })
            .collect();
        self.durably(records).await?;
        if let Some(activity) = &self.activity {
            activity.record(&caller.name, caller.role.as_str(), events.len() as u64);
        }
        for key in keys {
            self.recent.insert(key);
        }
        for event in &events {
            self.meters.accepted[event.kind_index()].increment(1);
            audit(event, caller);
        }
        Ok(())
    }

    /// On the log, or else in the spool: either way on disk before ACCEPTED.
    async fn durably(&self, records: Vec<Record>) -> Result<(), ServiceError> {
        let Some(spool) = &self.spool else {
            return self.log.append(records).await.map_err(|e| self.log_error(e));
        };
        let why = match tokio::time::timeout(self.spool_after, self.log.append(records.clone())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no acknowledgement within {} ms", self.spool_after.as_millis()),
        };
        tracing::warn!(reason = %why, records = records.len(), "event log unavailable, spooling locally");
        spool.append(records).await
    }

    fn log_error(&self, e: LogError) -> ServiceError {
        tracing::warn!(error = &e as &dyn std::error::Error, "event log refused an append");
        ServiceError::Unavailable { what: "event log", detail: e.to_string(), retry_after: self.retry_after }
    }

    /// One event on its own: INVALID_ARGUMENT when bad, otherwise ACCEPTED or DUPLICATE.
    async fn submit_unary<T>(
        &self,
        rpc: Rpc,
        request: Request<T>,
        kind: impl FnOnce(T) -> Option<Kind>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.guard
            .serve(rpc, &self.lane, request, |call, r| async move {
                self.submit_one(&call.caller, pb::Event { kind: kind(r), provenance: None }).await
            })
            .await
    }

    async fn submit_one(&self, caller: &Principal, wire: pb::Event) -> Result<pb::SubmitReply, ServiceError> {
        check_owner(caller, &wire, "event")?;
        self.pace(1).await?;
        let event = self
            .validator
            .validate_single(wire, EventPath::single("event"), UnixMicros::now())
            .inspect_err(|_| self.meters.rejected.increment(1))?;
        let event_id = event.event_id.clone();
        let key = EventKey::of(&event);
        if self.recent.contains(&key) {
            self.meters.duplicate(&event);
            return Ok(pb::SubmitReply { event_id, outcome: pb::Outcome::Duplicate as i32 });
        }
        self.append(vec![self.pseudonymized(event)], vec![key], caller).await?;
        Ok(pb::SubmitReply { event_id, outcome: pb::Outcome::Accepted as i32 })
    }

    async fn submit_batch(
        &self,
        caller: &Principal,
        request: pb::SubmitBatchRequest,
    ) -> Result<pb::SubmitBatchReply, ServiceError> {
        if request.events.len() > MAX_BATCH_EVENTS {
            return Err(ValidationError::new("events", format!("must hold at most {MAX_BATCH_EVENTS} events")).into());
        }
        // Someone else's event is not a data error to reject one by one: the
        // whole call is refused.
        for (i, wire) in request.events.iter().enumerate() {
            check_owner(caller, wire, &format!("events[{i}]"))?;
        }
        self.pace(request.events.len()).await?;
        let now = UnixMicros::now();
        let mut results = Vec::with_capacity(request.events.len());
        let mut to_append = Vec::new();
        // foldhash, not SipHash: hashing the keys was 8% of a batch flood's samples.
        let mut in_this_batch: foldhash::HashSet<EventKey> = foldhash::HashSet::default();
        for (i, wire) in request.events.into_iter().enumerate() {
            // Taken before validation consumes the event: a rejection names it too.
            let wire_id = event_id(&wire).to_owned();
            match self.validator.validate(wire, EventPath::indexed("events", i), now) {
                Err(e) => {
                    self.meters.rejected.increment(1);
                    results.push(pb::EventResult {
                        event_id: wire_id,
                        outcome: pb::Outcome::Rejected as i32,
                        reason: e.to_string(),
                    });
                }
                Ok(event) => {
                    let key = EventKey::of(&event);
                    let fresh = !self.recent.contains(&key) && in_this_batch.insert(key);
                    let outcome = if fresh { pb::Outcome::Accepted } else { pb::Outcome::Duplicate };
                    results.push(pb::EventResult { event_id: wire_id, outcome: outcome as i32, reason: String::new() });
                    if fresh {
                        to_append.push(self.pseudonymized(event));
                    } else {
                        self.meters.duplicate(&event);
                    }
                }
            }
        }
        // All or nothing for the valid events: on failure the station retries
        // the batch, and ids already accepted come back DUPLICATE.
        self.append(to_append, in_this_batch.into_iter().collect(), caller).await?;
        Ok(pb::SubmitBatchReply { results })
    }
}

/// The event keys the edge accepted lately: at most `capacity`, each for
/// at most `ttl`. quick_cache (CLOCK-Pro, sharded locks): moka's concurrent
/// hash table rehashed every key as evictions left tombstones, and that
/// rehash was the hottest code of a 13M-resident replay (7% of the server's
/// samples). The age is checked on read, as quick_cache has no TTL.
struct RecentIds {
    keys: quick_cache::sync::Cache<EventKey, Instant, quick_cache::UnitWeighter, foldhash::fast::RandomState>,
    ttl: Duration,
}

impl RecentIds {
    fn new(capacity: u64, ttl: Duration) -> RecentIds {
        let capacity = capacity.max(1);
        // foldhash, randomly seeded per process: SipHash took 8% of the
        // server's CPU at city rates, and ids come from authenticated callers.
        let keys = quick_cache::sync::Cache::with(
            usize::try_from(capacity).unwrap_or(usize::MAX),
            capacity,
            quick_cache::UnitWeighter,
            foldhash::fast::RandomState::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
        RecentIds { keys, ttl }
    }

    fn insert(&self, key: EventKey) {
        self.keys.insert(key, Instant::now());
    }

    fn contains(&self, key: &EventKey) -> bool {
        self.keys.get(key).is_some_and(|at| at.elapsed() < self.ttl)
    }
}

/// What makes two events the same event: the kind, the submitter the event
/// names (the authenticated caller, see [`check_owner`]) and the caller's
/// `event_id`. Pseudonymisation does not touch any of the three, so a key
/// taken before or after it is the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    kind: &'static str,
    submitter: String,
    event_id: String,
}

impl EventKey {
    fn of(event: &Event) -> EventKey {
        let submitter = match &event.body {
            EventBody::Scan { station_id, .. } => station_id,
            EventBody::TestResult { lab_id, .. } => lab_id,
            EventBody::Override { authority_id, .. } | EventBody::SiteRisk { authority_id, .. } => authority_id,
        };
        EventKey { kind: event.kind_label(), submitter: submitter.clone(), event_id: event.event_id.clone() }
    }
}

/// Who had events accepted now, as the log record carries it to the audit record.
fn provenance(caller: &Principal) -> Provenance {
    Provenance {
        principal: caller.name.clone(),
        credential: match caller.proof {
            Proof::BearerToken => Credential::BearerToken,
            Proof::ClientCertificate => Credential::ClientCertificate,
        },
        accepted_at: UnixMicros::now(),
    }
}

/// Every accepted override and site risk goes to the audit log (target
/// `audit`): who, when, what. The resident appears as its pseudonym only, and
/// the note (free text that may name people or places) never goes to a log:
/// only its length.
fn audit(event: &Event, caller: &Principal) {
    if let EventBody::SiteRisk { risk_id, site_id, authority_id, risky_from, risky_until, issued_at, retracted, note } =
        &event.body
    {
        metrics::counter!("healthcode_site_risk_events_total", "action" => if *retracted { "retract" } else { "declare" })
            .increment(1);
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            authority_id,
            event_id = %event.event_id,
            risk_id,
            site_id,
            risky_from = risky_from.0,
            risky_until = risky_until.0,
            issued_at = issued_at.0,
            retracted,
            note_bytes = note.len(),
            "site risk accepted"
        );
    }
    if let EventBody::Override { authority_id, color, note, issued_at, expires_at } = &event.body {
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            authority_id,
            event_id = %event.event_id,
            resident = %event.resident_id,
            color = ?color,
            issued_at = issued_at.0,
            expires_at = expires_at.0,
            note_bytes = note.len(),
            "override accepted"
        );
    }
}

#[tonic::async_trait]
impl Ingest for EdgeService {
    async fn submit_scan(&self, request: Request<pb::SubmitScanRequest>) -> Result<Response<pb::SubmitReply>, Status> {
        self.submit_unary(Rpc::SubmitScan, request, |r| r.event.map(Kind::Scan)).await
    }

    async fn submit_test_result(
        &self,
        request: Request<pb::SubmitTestResultRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.submit_unary(Rpc::SubmitTestResult, request, |r| r.event.map(Kind::TestResult)).await
    }

    async fn submit_override(
        &self,
        request: Request<pb::SubmitOverrideRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.submit_unary(Rpc::SubmitOverride, request, |r| r.event.map(Kind::OverrideEvent)).await
    }

    async fn submit_site_risk(
        &self,
        request: Request<pb::SubmitSiteRiskRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.submit_unary(Rpc::SubmitSiteRisk, request, |r| r.event.map(Kind::SiteRisk)).await
    }

    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchReply>, Status> {
        self.guard
            .serve(
                Rpc::SubmitBatch,
                &self.lane,
                request,
                |call, r| async move { self.submit_batch(&call.caller, r).await },
            )
            .await
    }
}
