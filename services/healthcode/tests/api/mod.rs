//! A running `up` process (in-process, embedded log and store) and wire
//! events to send it, for the gRPC API tests.
#![allow(dead_code)] // each test binary uses its part

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

pub struct TestApp {
    pub app: App,
    pub channel: Channel,
    pub dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start(Role::Up, Settings::ephemeral(dir.path())).await.unwrap();
        let channel =
            Channel::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
        TestApp { app, channel, dir }
    }
    /// The development credential of `role` that `up` created.
    pub fn bearer(&self, role: Caller) -> Bearer {
        Bearer::new(&DevCredentials::at(&self.dir.path().join("credentials")).token(role).unwrap()).unwrap()
    }
    pub fn ingest(&self, role: Caller) -> Ingest {
        IngestClient::with_interceptor(self.channel.clone(), self.bearer(role))
    }
    pub fn lookup(&self) -> LookupClient<InterceptedService<Channel, Bearer>> {
        LookupClient::with_interceptor(self.channel.clone(), self.bearer(Caller::Station))
    }
}

pub fn ago(d: Duration) -> Option<healthcode_proto::Timestamp> {
    Some(UnixMicros::now().saturating_sub(d).to_timestamp())
}

pub fn ahead(d: Duration) -> Option<healthcode_proto::Timestamp> {
    Some(UnixMicros::now().saturating_add(d).to_timestamp())
}

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn test_result(id: &str, resident: &str, outcome: pb::TestOutcome) -> pb::TestResultEvent {
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

pub fn scan(id: &str, resident: &str) -> pb::ScanEvent {
    pb::ScanEvent {
        event_id: id.into(),
        resident_id: resident.into(),
        station_id: "dev-station".into(),
        site_id: "venue-1".into(),
        kind: pb::ScanKind::VenueEntry as i32,
        scanned_at: ago(Duration::from_secs(10)),
    }
}

pub fn override_event(id: &str, resident: &str, color: pb::Color) -> pb::OverrideEvent {
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

pub fn assert_invalid(result: Result<tonic::Response<pb::SubmitReply>, tonic::Status>, field: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.metadata().get(INVALID_FIELD).map(|v| v.to_str().unwrap()), Some(field), "{status:?}");
    assert!(status.message().starts_with(field), "message names the field: {}", status.message());
}

/// Polls until each resident has the expected (color, reason).
pub async fn wait_for_statuses(
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
            .batch_get_status(pb::BatchGetStatusRequest { resident_id: ids.clone(), ..Default::default() })
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
