//! Exposure sites through a running `up`: declared after the visits, visits
//! uploaded after the declaration, a moved window, a retraction, who may do
//! what, and the count of residents each risk exposed.

mod api;

use std::time::Duration;

use api::*;
use healthcode_auth::Role as Caller;
use healthcode_proto::v1 as pb;
use healthcode_proto::v1::lookup_client::LookupClient;
use tonic::Code;

fn visit(id: &str, resident: &str, site: &str, ago_by: Duration) -> pb::ScanEvent {
    pb::ScanEvent { site_id: site.into(), scanned_at: ago(ago_by), ..scan(id, resident) }
}

fn risk(event_id: &str, risk_id: &str, site: &str, window: (Duration, Duration), retracted: bool) -> pb::SiteRiskEvent {
    pb::SiteRiskEvent {
        event_id: event_id.into(),
        risk_id: risk_id.into(),
        site_id: site.into(),
        authority_id: "dev-authority".into(),
        risky_from: ago(window.0),
        risky_until: ago(window.1),
        issued_at: ago(Duration::ZERO),
        retracted,
        note: "cases among staff".into(),
    }
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_in_the_window_turn_yellow_whatever_the_order_and_a_retraction_clears_them() {
    let t = TestApp::start().await;
    let station = t.ingest(Caller::Station);
    let mut authority = t.ingest(Caller::Authority);
    let mut lab = t.ingest(Caller::Lab);
    let submit_scan = |e: pb::ScanEvent| {
        let mut s = station.clone();
        async move { s.submit_scan(pb::SubmitScanRequest { event: Some(e) }).await.unwrap().into_inner() }
    };
    // A resident GREEN from a negative, and visits before the declaration.
    lab.submit_test_result(pb::SubmitTestResultRequest {
        event: Some(test_result("n-green", "green-visitor", pb::TestOutcome::Negative)),
    })
    .await
    .unwrap();
    submit_scan(visit("s1", "early", "mall-1", 50 * MIN)).await;
    submit_scan(visit("s2", "green-visitor", "mall-1", 40 * MIN)).await;
    submit_scan(visit("s3", "before-window", "mall-1", 150 * MIN)).await;
    submit_scan(visit("s4", "elsewhere", "gym-1", 50 * MIN)).await;
    let declared = authority
        .submit_site_risk(pb::SubmitSiteRiskRequest {
            event: Some(risk("k1", "risk-1", "mall-1", (120 * MIN, MIN), false)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declared.outcome, pb::Outcome::Accepted as i32);
    // An offline station uploads a visit in the window after the declaration.
    submit_scan(visit("s5", "late-upload", "mall-1", 30 * MIN)).await;

    let residents = ["early", "green-visitor", "before-window", "elsewhere", "late-upload"];
    let exposed = (pb::Color::Yellow, pb::Reason::Exposure);
    let statuses = wait_for_statuses(
        &t,
        &residents,
        &[
            exposed,
            exposed,
            (pb::Color::Yellow, pb::Reason::NoRecord),
            (pb::Color::Yellow, pb::Reason::NoRecord),
            exposed,
        ],
    )
    .await;
    assert!(statuses[0].exposed_at.is_some() && statuses[0].valid_until.is_some());
    assert!(statuses[2].exposed_at.is_none());

    // Authorities and ops list it, with the residents its window exposed.
    let mut ops = LookupClient::with_interceptor(t.channel.clone(), t.bearer(Caller::Ops));
    let listed = ops.list_site_risks(pb::ListSiteRisksRequest::default()).await.unwrap().into_inner().risks;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].risk_id.as_str(), listed[0].exposed_residents, listed[0].retracted), ("risk-1", 3, false));
    let status = t.lookup().list_site_risks(pb::ListSiteRisksRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "a station may not list site risks");

    // A later version moves the window back: the earlier visitor is exposed
    // now, the others no longer.
    authority
        .submit_site_risk(pb::SubmitSiteRiskRequest {
            event: Some(risk("k2", "risk-1", "mall-1", (180 * MIN, 100 * MIN), false)),
        })
        .await
        .unwrap();
    let no_record = (pb::Color::Yellow, pb::Reason::NoRecord);
    wait_for_statuses(
        &t,
        &residents,
        &[no_record, (pb::Color::Green, pb::Reason::NegativeTestValid), exposed, no_record, no_record],
    )
    .await;
    // Withdrawn: nobody is exposed, and the list says so.
    authority
        .submit_site_risk(pb::SubmitSiteRiskRequest {
            event: Some(risk("k3", "risk-1", "mall-1", (180 * MIN, 100 * MIN), true)),
        })
        .await
        .unwrap();
    wait_for_statuses(
        &t,
        &residents,
        &[no_record, (pb::Color::Green, pb::Reason::NegativeTestValid), no_record, no_record, no_record],
    )
    .await;
    let listed = ops.list_site_risks(pb::ListSiteRisksRequest::default()).await.unwrap().into_inner().risks;
    assert_eq!((listed.len(), listed[0].retracted, listed[0].exposed_residents), (1, true, 0));
    assert_eq!(listed[0].event_id, "k3", "the latest version is the one on record");
    t.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_authority_declares_a_site_risk_and_a_bad_window_names_its_field() {
    let t = TestApp::start().await;
    let refused = t
        .ingest(Caller::Station)
        .submit_site_risk(pb::SubmitSiteRiskRequest { event: Some(risk("k1", "r1", "mall-1", (HOUR, MIN), false)) })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut authority = t.ingest(Caller::Authority);
    let backwards = risk("k2", "r1", "mall-1", (MIN, HOUR), false);
    assert_invalid(
        authority.submit_site_risk(pb::SubmitSiteRiskRequest { event: Some(backwards) }).await,
        "event.risky_until",
    );
    let someone_else =
        pb::SiteRiskEvent { authority_id: "other-authority".into(), ..risk("k3", "r1", "m", (HOUR, MIN), false) };
    let status = authority.submit_site_risk(pb::SubmitSiteRiskRequest { event: Some(someone_else) }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // In a batch too, named by its index and kind.
    let batch = pb::SubmitBatchRequest {
        events: vec![pb::Event {
            kind: Some(pb::event::Kind::SiteRisk(pb::SiteRiskEvent {
                site_id: String::new(),
                ..risk("k4", "r1", "m", (HOUR, MIN), false)
            })),
            provenance: None,
        }],
    };
    let results = authority.submit_batch(batch).await.unwrap().into_inner().results;
    assert_eq!(results[0].outcome, pb::Outcome::Rejected as i32);
    assert!(results[0].reason.starts_with("events[0].site_risk.site_id"), "{}", results[0].reason);
    t.app.stop().await.unwrap();
}
