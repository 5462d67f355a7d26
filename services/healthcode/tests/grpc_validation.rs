//! Every validation rule of the gRPC API over the wire, and what a batch
//! does with its bad events.

mod api;

use std::time::Duration;

use api::*;
use healthcode_auth::Role as Caller;
use healthcode_proto::v1 as pb;
use healthcode_rpc::INVALID_FIELD;
use tonic::Code;

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
    let events = (0..1001)
        .map(|i| pb::Event { kind: Some(pb::event::Kind::Scan(scan(&format!("b{i}"), "r1"))), provenance: None })
        .collect();
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
    let status = lookup
        .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.metadata().get(INVALID_FIELD).unwrap(), "resident_id[1]");
    let ids = (0..501).map(|i| format!("r{i}")).collect();
    let status = lookup
        .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() })
        .await
        .unwrap_err();
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
        pb::Event { kind: Some(pb::event::Kind::TestResult(good.clone())), provenance: None },
        pb::Event { kind: Some(pb::event::Kind::TestResult(bad)), provenance: None },
        pb::Event { kind: None, provenance: None },
        pb::Event { kind: Some(pb::event::Kind::TestResult(inconclusive.clone())), provenance: None },
        pb::Event { kind: Some(pb::event::Kind::TestResult(good)), provenance: None },
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
    assert_eq!(results[2].reason, "events[2].kind: must be set to one of scan, test_result, override_event, site_risk");
    assert!(results[0].reason.is_empty());

    // The retried batch is answered DUPLICATE for what was accepted.
    let retry = vec![pb::Event { kind: Some(pb::event::Kind::TestResult(inconclusive)), provenance: None }];
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
