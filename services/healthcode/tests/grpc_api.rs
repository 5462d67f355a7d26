//! The gRPC API of a running `up` process (in-process, embedded log and
//! store): every validation rule over the wire, batch semantics, idempotency,
//! lookups, health and reflection.

use std::time::Duration;

use healthcode::app::{App, Role};
use healthcode::config::Settings;
use healthcode_auth::{Bearer, DevCredentials, Role as Caller};
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use healthcode_rpc::INVALID_FIELD;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ingest = IngestClient<InterceptedService<Channel, Bearer>>;

struct TestApp {
    app: App,
    channel: Channel,
    dir: tempfile::TempDir,
}

impl TestApp {
    async fn start() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start(Role::Up, Settings::ephemeral(dir.path())).await.unwrap();
        let channel =
            Channel::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
        TestApp { app, channel, dir }
    }
    /// The development credential of `role` that `up` created.
    fn bearer(&self, role: Caller) -> Bearer {
        Bearer::new(&DevCredentials::at(&self.dir.path().join("credentials")).token(role).unwrap()).unwrap()
    }
    fn ingest(&self, role: Caller) -> Ingest {
        IngestClient::with_interceptor(self.channel.clone(), self.bearer(role))
    }
    fn lookup(&self) -> LookupClient<InterceptedService<Channel, Bearer>> {
        LookupClient::with_interceptor(self.channel.clone(), self.bearer(Caller::Station))
    }
}

fn ago(d: Duration) -> Option<healthcode_proto::Timestamp> {
    Some(UnixMicros::now().saturating_sub(d).to_timestamp())
}

fn ahead(d: Duration) -> Option<healthcode_proto::Timestamp> {
    Some(UnixMicros::now().saturating_add(d).to_timestamp())
}

const HOUR: Duration = Duration::from_secs(3600);

fn test_result(id: &str, resident: &str, outcome: pb::TestOutcome) -> pb::TestResultEvent {
    pb::TestResultEvent {
        event_id: id.into(),
        resident_id: resident.into(),
        sample_id: format!("sample-{id}"),
        lab_id: "dev-lab".into(),
        kind: pb::TestKind::Pcr as i32,
        outcome: outcome as i32,
        sampled_at: ago(2 * HOUR),
        resulted_at: ago(HOUR),
    }
}

fn scan(id: &str, resident: &str) -> pb::ScanEvent {
    pb::ScanEvent {
        event_id: id.into(),
        resident_id: resident.into(),
        station_id: "dev-station".into(),
        site_id: "venue-1".into(),
        kind: pb::ScanKind::VenueEntry as i32,
        scanned_at: ago(Duration::from_secs(10)),
    }
}

fn override_event(id: &str, resident: &str, color: pb::Color) -> pb::OverrideEvent {
    pb::OverrideEvent {
        event_id: id.into(),
        resident_id: resident.into(),
        authority_id: "dev-authority".into(),
        color: color as i32,
        note: "close contact".into(),
        issued_at: ago(Duration::from_secs(60)),
        expires_at: ahead(24 * HOUR),
    }
}

fn assert_invalid(result: Result<tonic::Response<pb::SubmitReply>, tonic::Status>, field: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.metadata().get(INVALID_FIELD).map(|v| v.to_str().unwrap()), Some(field), "{status:?}");
    assert!(status.message().starts_with(field), "message names the field: {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_enforced_over_grpc() {
    let t = TestApp::start().await;
    let mut ingest = t.ingest(Caller::Lab);
    let shared = t.ingest(Caller::Lab);
    let submit_test = |e: pb::TestResultEvent| {
        let mut c = shared.clone();
        async move { c.submit_test_result(pb::SubmitTestResultRequest { event: Some(e) }).await }
    };
    let ok = test_result("ok", "r1", pb::TestOutcome::Negative);

    // Missing event.
    assert_invalid(ingest.submit_test_result(pb::SubmitTestResultRequest { event: None }).await, "event");
    // Ids: empty, too long, bad characters; one per id field.
    assert_invalid(submit_test(pb::TestResultEvent { event_id: "".into(), ..ok.clone() }).await, "event.event_id");
    assert_invalid(
        submit_test(pb::TestResultEvent { resident_id: "x".repeat(65), ..ok.clone() }).await,
        "event.resident_id",
    );
    assert_invalid(submit_test(pb::TestResultEvent { sample_id: "s/1".into(), ..ok.clone() }).await, "event.sample_id");
    // An id naming someone other than the caller is refused before validation.
    let status = submit_test(pb::TestResultEvent { lab_id: "lab 1".into(), ..ok.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Unspecified and unknown enums.
    assert_invalid(submit_test(pb::TestResultEvent { kind: 0, ..ok.clone() }).await, "event.kind");
    assert_invalid(submit_test(pb::TestResultEvent { outcome: 0, ..ok.clone() }).await, "event.outcome");
    assert_invalid(submit_test(pb::TestResultEvent { outcome: 17, ..ok.clone() }).await, "event.outcome");
    // Missing timestamps.
    assert_invalid(submit_test(pb::TestResultEvent { sampled_at: None, ..ok.clone() }).await, "event.sampled_at");
    assert_invalid(submit_test(pb::TestResultEvent { resulted_at: None, ..ok.clone() }).await, "event.resulted_at");
    // resulted_at before sampled_at.
    assert_invalid(
        submit_test(pb::TestResultEvent { sampled_at: ago(HOUR), resulted_at: ago(2 * HOUR), ..ok.clone() }).await,
        "event.resulted_at",
    );
    // More than 5 minutes in the future; older than 30 days.
    assert_invalid(
        submit_test(pb::TestResultEvent { resulted_at: ahead(Duration::from_secs(600)), ..ok.clone() }).await,
        "event.resulted_at",
    );
    assert_invalid(
        submit_test(pb::TestResultEvent { sampled_at: ago(31 * 24 * HOUR), ..ok.clone() }).await,
        "event.sampled_at",
    );
    // Within the skew is fine.
    let reply =
        submit_test(pb::TestResultEvent { resulted_at: ahead(Duration::from_secs(60)), ..ok.clone() }).await.unwrap();
    assert_eq!(reply.into_inner().outcome, pb::Outcome::Accepted as i32);

    // Scans and overrides name their own fields.
    let mut ingest = t.ingest(Caller::Station);
    let bad_scan = pb::ScanEvent { site_id: "é".into(), ..scan("s1", "r1") };
    assert_invalid(ingest.submit_scan(pb::SubmitScanRequest { event: Some(bad_scan) }).await, "event.site_id");
    let bad_scan = pb::ScanEvent { kind: 0, ..scan("s1", "r1") };
    assert_invalid(ingest.submit_scan(pb::SubmitScanRequest { event: Some(bad_scan) }).await, "event.kind");
    let bad_scan = pb::ScanEvent { scanned_at: None, ..scan("s1", "r1") };
    assert_invalid(ingest.submit_scan(pb::SubmitScanRequest { event: Some(bad_scan) }).await, "event.scanned_at");
    let mut ingest = t.ingest(Caller::Authority);
    let o = override_event("o1", "r1", pb::Color::Yellow);
    let bad = pb::OverrideEvent { color: 0, ..o.clone() };
    assert_invalid(ingest.submit_override(pb::SubmitOverrideRequest { event: Some(bad) }).await, "event.color");
    let bad = pb::OverrideEvent { expires_at: ago(HOUR), ..o.clone() };
    assert_invalid(ingest.submit_override(pb::SubmitOverrideRequest { event: Some(bad) }).await, "event.expires_at");
    let bad = pb::OverrideEvent { issued_at: ahead(HOUR), expires_at: ahead(2 * HOUR), ..o.clone() };
    assert_invalid(ingest.submit_override(pb::SubmitOverrideRequest { event: Some(bad) }).await, "event.issued_at");
    let bad = pb::OverrideEvent { note: "n".repeat(1025), ..o.clone() };
    assert_invalid(ingest.submit_override(pb::SubmitOverrideRequest { event: Some(bad) }).await, "event.note");

    // Batches over 1000 events are refused as a whole.
    let mut ingest = t.ingest(Caller::Station);
    let events =
        (0..1001).map(|i| pb::Event { kind: Some(pb::event::Kind::Scan(scan(&format!("b{i}"), "r1"))) }).collect();
    let status = ingest.submit_batch(pb::SubmitBatchRequest { events }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.metadata().get(INVALID_FIELD).unwrap(), "events");

    // Lookups validate ids and batch size too.
    let mut lookup = t.lookup();
    let status = lookup.get_status(pb::GetStatusRequest { resident_id: "a b".into() }).await.unwrap_err();
    assert_eq!(
        (status.code(), status.metadata().get(INVALID_FIELD).unwrap().to_str().unwrap()),
        (Code::InvalidArgument, "resident_id")
    );
    let ids = vec!["ok".to_string(), "".to_string()];
    let status = lookup.batch_get_status(pb::BatchGetStatusRequest { resident_id: ids }).await.unwrap_err();
    assert_eq!(status.metadata().get(INVALID_FIELD).unwrap(), "resident_id[1]");
    let ids = (0..501).map(|i| format!("r{i}")).collect();
    let status = lookup.batch_get_status(pb::BatchGetStatusRequest { resident_id: ids }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    t.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rejects_bad_events_and_accepts_the_rest_in_order() {
    let t = TestApp::start().await;
    let mut ingest = t.ingest(Caller::Lab);
    let good = test_result("g1", "batch-r1", pb::TestOutcome::Negative);
    let inconclusive = test_result("i1", "batch-r1", pb::TestOutcome::Inconclusive);
    let bad = pb::TestResultEvent { sampled_at: None, ..test_result("b1", "batch-r2", pb::TestOutcome::Negative) };
    let events = vec![
        pb::Event { kind: Some(pb::event::Kind::TestResult(good.clone())) },
        pb::Event { kind: Some(pb::event::Kind::TestResult(bad)) },
        pb::Event { kind: None },
        pb::Event { kind: Some(pb::event::Kind::TestResult(inconclusive.clone())) },
        pb::Event { kind: Some(pb::event::Kind::TestResult(good)) },
    ];
    let results = ingest.submit_batch(pb::SubmitBatchRequest { events }).await.unwrap().into_inner().results;
    let outcomes: Vec<(String, i32)> = results.iter().map(|r| (r.event_id.clone(), r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            ("g1".into(), pb::Outcome::Accepted as i32),
            ("b1".into(), pb::Outcome::Rejected as i32),
            ("".into(), pb::Outcome::Rejected as i32),
            ("i1".into(), pb::Outcome::Accepted as i32),
            ("g1".into(), pb::Outcome::Duplicate as i32),
        ]
    );
    assert_eq!(results[1].reason, "events[1].test_result.sampled_at: must be set");
    assert_eq!(results[2].reason, "events[2].kind: must be set to one of scan, test_result, override_event");
    assert!(results[0].reason.is_empty());

    // The retried batch is answered DUPLICATE for what was accepted.
    let retry = vec![pb::Event { kind: Some(pb::event::Kind::TestResult(inconclusive)) }];
    let results = ingest.submit_batch(pb::SubmitBatchRequest { events: retry }).await.unwrap().into_inner().results;
    assert_eq!(results[0].outcome, pb::Outcome::Duplicate as i32);

    // The accepted negative makes the resident green; the rejected one left no trace.
    wait_for_statuses(
        &t,
        &["batch-r1", "batch-r2"],
        &[(pb::Color::Green, pb::Reason::NegativeTestValid), (pb::Color::Yellow, pb::Reason::NoRecord)],
    )
    .await;
    t.app.stop().await.unwrap();
}

/// Polls until each resident has the expected (color, reason).
async fn wait_for_statuses(
    t: &TestApp,
    residents: &[&str],
    expected: &[(pb::Color, pb::Reason)],
) -> Vec<pb::ResidentStatus> {
    let mut lookup = t.lookup();
    let ids: Vec<String> = residents.iter().map(|r| r.to_string()).collect();
    let want: Vec<(i32, i32)> = expected.iter().map(|(c, r)| (*c as i32, *r as i32)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = lookup
            .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids.clone() })
            .await
            .unwrap()
            .into_inner()
            .statuses;
        let got: Vec<(i32, i32)> = statuses.iter().map(|s| (s.color, s.reason)).collect();
        if got == want {
            return statuses;
        }
        assert!(tokio::time::Instant::now() < deadline, "colors {got:?} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_the_policy_and_retries_are_duplicates() {
    let t = TestApp::start().await;
    let mut ingest = t.ingest(Caller::Authority);
    let shared = t.ingest(Caller::Lab);
    let submit = |e: pb::TestResultEvent| {
        let mut c = shared.clone();
        async move { c.submit_test_result(pb::SubmitTestResultRequest { event: Some(e) }).await.unwrap().into_inner() }
    };
    assert_eq!(
        submit(test_result("n1", "green", pb::TestOutcome::Negative)).await.outcome,
        pb::Outcome::Accepted as i32
    );
    assert_eq!(
        submit(test_result("n1", "green", pb::TestOutcome::Negative)).await.outcome,
        pb::Outcome::Duplicate as i32
    );
    submit(test_result("p1", "red", pb::TestOutcome::Positive)).await;
    submit(test_result("i1", "unsure", pb::TestOutcome::Inconclusive)).await;
    // The embedded log is one partition: once the later override shows, the
    // earlier negative has been applied too.
    submit(test_result("n2", "contact", pb::TestOutcome::Negative)).await;
    ingest
        .submit_override(pb::SubmitOverrideRequest { event: Some(override_event("o1", "contact", pb::Color::Yellow)) })
        .await
        .unwrap();

    // The contact's fresh negative does not lower the authority's yellow.
    let statuses = wait_for_statuses(
        &t,
        &["green", "red", "unsure", "contact", "nobody"],
        &[
            (pb::Color::Green, pb::Reason::NegativeTestValid),
            (pb::Color::Red, pb::Reason::PositiveTest),
            (pb::Color::Yellow, pb::Reason::NoValidTest),
            (pb::Color::Yellow, pb::Reason::Override),
            (pb::Color::Yellow, pb::Reason::NoRecord),
        ],
    )
    .await;
    assert!(statuses[3].last_negative_sampled_at.is_some(), "the contact's negative was folded in");
    assert!(statuses[0].valid_until.is_some() && statuses[0].last_negative_sampled_at.is_some());
    assert!(statuses.iter().all(|s| s.as_of.is_some() && !s.stale));
    let single = t.lookup().get_status(pb::GetStatusRequest { resident_id: "red".into() }).await.unwrap().into_inner();
    assert_eq!((single.resident_id.as_str(), single.color), ("red", pb::Color::Red as i32));
    // The answer carries a token a station can check offline with the public keys.
    let keyring =
        healthcode_status_token::Keyring::from_file(&t.dir.path().join("credentials/status-keys.toml")).unwrap();
    let claims = keyring.verify(&single.status_token, UnixMicros::now()).unwrap();
    assert_eq!((claims.resident_id.as_str(), claims.color, claims.stale), ("red", pb::Color::Red, false));
    t.app.stop().await.unwrap();
}

/// An event's identity is its kind, its submitter and its id: a second lab
/// and a station that happen to use the id a lab used first still get their
/// events applied, while a retry by the same caller stays DUPLICATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_sharing_an_event_id_each_get_theirs_applied() {
    let t = TestApp::start().await;
    let (token, entry) = healthcode_auth::new_token("lab-2", Caller::Lab);
    healthcode_auth::TokenRegistry::append(&t.dir.path().join("credentials/tokens.toml"), &[entry]).unwrap();
    let mut lab2 = IngestClient::with_interceptor(t.channel.clone(), Bearer::new(&token).unwrap());
    let mut lab1 = t.ingest(Caller::Lab);
    let mut station = t.ingest(Caller::Station);

    let outcome = |r: Result<tonic::Response<pb::SubmitReply>, tonic::Status>| r.unwrap().into_inner().outcome;
    // The station and the first lab use the id "shared-1" first.
    let station_scan = scan("shared-1", "dup-a");
    let first = station.submit_scan(pb::SubmitScanRequest { event: Some(station_scan.clone()) }).await;
    assert_eq!(outcome(first), pb::Outcome::Accepted as i32);
    let lab1_result = test_result("shared-1", "dup-a", pb::TestOutcome::Negative);
    let first = lab1.submit_test_result(pb::SubmitTestResultRequest { event: Some(lab1_result.clone()) }).await;
    assert_eq!(outcome(first), pb::Outcome::Accepted as i32, "a lab's id is not the station's id");

    // The second lab's token is read from the tokens file within a second or two.
    let positive =
        pb::TestResultEvent { lab_id: "lab-2".into(), ..test_result("shared-1", "dup-b", pb::TestOutcome::Positive) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match lab2.submit_test_result(pb::SubmitTestResultRequest { event: Some(positive.clone()) }).await {
            Err(s) if s.code() == Code::Unauthenticated && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other,
        }
    };
    assert_eq!(outcome(reply), pb::Outcome::Accepted as i32, "another lab's result with the same id is new");
    // Batches follow the same rule.
    let batch = pb::SubmitBatchRequest {
        events: vec![pb::Event { kind: Some(pb::event::Kind::TestResult(positive.clone())) }],
    };
    let results = lab2.submit_batch(batch).await.unwrap().into_inner().results;
    assert_eq!(results[0].outcome, pb::Outcome::Duplicate as i32, "the second lab's own retry");

    // Retries by the same callers are still DUPLICATE.
    let retry = lab1.submit_test_result(pb::SubmitTestResultRequest { event: Some(lab1_result) }).await;
    assert_eq!(outcome(retry), pb::Outcome::Duplicate as i32);
    let retry = station.submit_scan(pb::SubmitScanRequest { event: Some(station_scan.clone()) }).await;
    assert_eq!(outcome(retry), pb::Outcome::Duplicate as i32);

    // And every one of them was applied.
    let statuses = wait_for_statuses(
        &t,
        &["dup-a", "dup-b"],
        &[(pb::Color::Green, pb::Reason::NegativeTestValid), (pb::Color::Red, pb::Reason::PositiveTest)],
    )
    .await;
    // The scan is the resident's latest event (the embedded log is one
    // partition: once the later negative shows, the scan is in too).
    assert_eq!(statuses[0].updated_at, station_scan.scanned_at, "the station's scan was applied");
    t.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let t = TestApp::start().await;
    let mut health = HealthClient::new(t.channel.clone());
    for service in ["", "healthcode.v1.Ingest", "healthcode.v1.Lookup"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "service {service:?}");
    }

    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(t.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected {reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["healthcode.v1.Ingest", "healthcode.v1.Lookup", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    t.app.stop().await.unwrap();
}
