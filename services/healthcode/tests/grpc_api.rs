//! The gRPC API of a running `up` process: lookups, idempotency, callers
//! sharing event ids, health and reflection. (Validation: grpc_validation.rs.)

mod api;

use std::time::Duration;

use api::*;
use healthcode_auth::Bearer;
use healthcode_auth::Role as Caller;
use healthcode_core::UnixMicros;
use healthcode_proto::v1 as pb;
use healthcode_proto::v1::ingest_client::IngestClient;
use tonic::Code;

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
    // A bulk reader may ask for the statuses without tokens; others get them.
    let ids = vec!["red".to_owned(), "green".to_owned()];
    let bare = t
        .lookup()
        .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids.clone(), omit_status_tokens: true })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert!(bare.iter().all(|s| s.status_token.is_empty()) && bare[0].color == pb::Color::Red as i32);
    let signed = t
        .lookup()
        .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert!(signed.iter().all(|s| !s.status_token.is_empty()));
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
        events: vec![pb::Event { kind: Some(pb::event::Kind::TestResult(positive.clone())), provenance: None }],
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

    // The services as a reflection client of either version lists them
    // (v1, and v1alpha for grpc_cli and Python's grpcio-reflection).
    macro_rules! listed_services {
        ($version:ident) => {{
            use tokio_stream::StreamExt;
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            };
            let mut reflection = ServerReflectionClient::new(t.channel.clone());
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies =
                reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
            let reply = replies.next().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
                panic!("unexpected {reply:?}")
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
        }};
    }
    for (version, names) in [("v1", listed_services!(v1)), ("v1alpha", listed_services!(v1alpha))] {
        for expected in ["healthcode.v1.Ingest", "healthcode.v1.Lookup", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == expected), "{version}: {expected} missing from {names:?}");
        }
    }
    t.app.stop().await.unwrap();
}
