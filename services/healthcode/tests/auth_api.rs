//! Who may call what, over gRPC with TLS: every RPC refuses a missing
//! credential, a wrong role and an event that names someone else, and
//! accepts the right caller, once with bearer tokens and once with client
//! certificates (mutual TLS). The admin `/metrics` is for ops only.

use std::time::Duration;

use healthcode::app::{App, Role};
use healthcode::config::{Settings, Tls};
use healthcode_auth::{DevCredentials, Role as Caller, with_token};
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Copy, Clone, Debug)]
enum Call {
    SubmitScan,
    SubmitTestResult,
    SubmitOverride,
    BatchOfScans,
    BatchOfResults,
    BatchOfOverrides,
    GetStatus,
    BatchGetStatus,
    ListOverrides,
}

const CALLS: [Call; 9] = [
    Call::SubmitScan,
    Call::SubmitTestResult,
    Call::SubmitOverride,
    Call::BatchOfScans,
    Call::BatchOfResults,
    Call::BatchOfOverrides,
    Call::GetStatus,
    Call::BatchGetStatus,
    Call::ListOverrides,
];

impl Call {
    fn role(self) -> Caller {
        match self {
            Call::SubmitScan | Call::BatchOfScans | Call::GetStatus | Call::BatchGetStatus => Caller::Station,
            Call::SubmitTestResult | Call::BatchOfResults => Caller::Lab,
            Call::SubmitOverride | Call::BatchOfOverrides | Call::ListOverrides => Caller::Authority,
        }
    }

    /// Whether the message names a submitter that must be the caller.
    fn names_its_caller(self) -> bool {
        !matches!(self, Call::GetStatus | Call::BatchGetStatus | Call::ListOverrides)
    }
}

fn dev_name(role: Caller) -> String {
    format!("dev-{role}")
}

fn event(call: Call, actor: &str, n: usize) -> pb::Event {
    use pb::event::Kind;
    let now = UnixMicros::now();
    let ts = |back: u64| Some(now.saturating_sub(Duration::from_secs(back)).to_timestamp());
    let id = format!("{call:?}-{actor}-{n}");
    let kind = match call.role() {
        Caller::Station => Kind::Scan(pb::ScanEvent {
            event_id: id,
            resident_id: "R-auth".into(),
            station_id: actor.into(),
            site_id: "site-1".into(),
            kind: pb::ScanKind::VenueEntry as i32,
            scanned_at: ts(1),
        }),
        Caller::Lab => Kind::TestResult(pb::TestResultEvent {
            event_id: id.clone(),
            resident_id: "R-auth".into(),
            sample_id: id,
            lab_id: actor.into(),
            kind: pb::TestKind::Pcr as i32,
            outcome: pb::TestOutcome::Negative as i32,
            sampled_at: ts(60),
            resulted_at: ts(1),
        }),
        _ => Kind::OverrideEvent(pb::OverrideEvent {
            event_id: id,
            resident_id: "R-auth".into(),
            authority_id: actor.into(),
            color: pb::Color::Yellow as i32,
            note: "close contact".into(),
            issued_at: ts(1),
            expires_at: Some(now.saturating_add(Duration::from_secs(3600)).to_timestamp()),
        }),
    };
    pb::Event { kind: Some(kind), provenance: None }
}

/// Makes `call` on `channel` with an optional bearer token; the code it got.
async fn invoke(channel: &Channel, call: Call, token: Option<&str>, actor: &str, n: usize) -> Code {
    fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(t) => with_token(message, t),
            None => tonic::Request::new(message),
        }
    }
    use pb::event::Kind;
    let mut ingest = IngestClient::new(channel.clone());
    let mut lookup = LookupClient::new(channel.clone());
    let e = event(call, actor, n);
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code()).unwrap_or(Code::Ok);
    match (call, e.kind.clone().unwrap()) {
        (Call::SubmitScan, Kind::Scan(s)) => {
            code(ingest.submit_scan(req(pb::SubmitScanRequest { event: Some(s) }, token)).await.map(drop))
        }
        (Call::SubmitTestResult, Kind::TestResult(t)) => {
            code(ingest.submit_test_result(req(pb::SubmitTestResultRequest { event: Some(t) }, token)).await.map(drop))
        }
        (Call::SubmitOverride, Kind::OverrideEvent(o)) => {
            code(ingest.submit_override(req(pb::SubmitOverrideRequest { event: Some(o) }, token)).await.map(drop))
        }
        (Call::BatchOfScans | Call::BatchOfResults | Call::BatchOfOverrides, _) => {
            let batch = pb::SubmitBatchRequest { events: vec![e] };
            match ingest.submit_batch(req(batch, token)).await {
                // A refused event inside an accepted call would be a leak too.
                Ok(reply) => {
                    assert!(reply.get_ref().results.iter().all(|r| r.outcome != pb::Outcome::Rejected as i32));
                    Code::Ok
                }
                Err(status) => status.code(),
            }
        }
        (Call::GetStatus, _) => {
            code(lookup.get_status(req(pb::GetStatusRequest { resident_id: "R-auth".into() }, token)).await.map(drop))
        }
        (Call::BatchGetStatus, _) => {
            let request = pb::BatchGetStatusRequest { resident_id: vec!["R-auth".into()], ..Default::default() };
            code(lookup.batch_get_status(req(request, token)).await.map(drop))
        }
        (Call::ListOverrides, _) => {
            let request = pb::ListOverridesRequest { resident_id: "R-auth".into(), ..Default::default() };
            code(lookup.list_overrides(req(request, token)).await.map(drop))
        }
        (call, kind) => unreachable!("{call:?} with {kind:?}"),
    }
}

struct Secured {
    app: App,
    creds: DevCredentials,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::ephemeral(dir.path());
        let creds = DevCredentials::at(&settings.security.credentials_dir);
        // The development credentials exist before the app reads them.
        creds.ensure().unwrap();
        settings.security.tls = Some(Tls {
            cert_file: creds.server_cert(),
            key_file: creds.server_key(),
            client_ca_file: Some(creds.ca_cert()),
        });
        let app = App::start(Role::Up, settings).await.unwrap();
        Secured { app, creds, _dir: dir }
    }

    /// A TLS channel, with the client certificate of `role` when given.
    async fn channel(&self, cert_of: Option<Caller>) -> Channel {
        let ca = std::fs::read(self.creds.ca_cert()).unwrap();
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some(role) = cert_of {
            let cert = std::fs::read(self.creds.client_cert(role)).unwrap();
            let key = std::fs::read(self.creds.client_key(role)).unwrap();
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let port = self.app.grpc_addr.unwrap().port();
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn token(&self, role: Caller) -> String {
        self.creds.token(role).unwrap()
    }
}

fn other_role(role: Caller) -> Caller {
    match role {
        Caller::Station => Caller::Lab,
        _ => Caller::Station,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_admit_the_right_caller_only() {
    let s = Secured::start().await;
    let channel = s.channel(None).await;
    for (n, call) in CALLS.into_iter().enumerate() {
        let role = call.role();
        let me = dev_name(role);
        assert_eq!(invoke(&channel, call, None, &me, n).await, Code::Unauthenticated, "{call:?} without a credential");
        let forged = "0".repeat(64);
        assert_eq!(
            invoke(&channel, call, Some(&forged), &me, n).await,
            Code::Unauthenticated,
            "{call:?} unknown token"
        );
        let wrong = s.token(other_role(role));
        assert_eq!(invoke(&channel, call, Some(&wrong), &me, n).await, Code::PermissionDenied, "{call:?} wrong role");
        let ops = s.token(Caller::Ops);
        assert_eq!(invoke(&channel, call, Some(&ops), &me, n).await, Code::PermissionDenied, "{call:?} as ops");
        let right = s.token(role);
        if call.names_its_caller() {
            let code = invoke(&channel, call, Some(&right), "someone-else", n).await;
            assert_eq!(code, Code::PermissionDenied, "{call:?} naming another {role}");
        }
        assert_eq!(invoke(&channel, call, Some(&right), &me, n).await, Code::Ok, "{call:?} as {me}");
    }
    s.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_admit_the_right_caller_only() {
    let s = Secured::start().await;
    for (n, call) in CALLS.into_iter().enumerate() {
        let role = call.role();
        let me = dev_name(role);
        let wrong = s.channel(Some(other_role(role))).await;
        assert_eq!(invoke(&wrong, call, None, &me, n).await, Code::PermissionDenied, "{call:?} wrong role");
        let right = s.channel(Some(role)).await;
        if call.names_its_caller() {
            let code = invoke(&right, call, None, "someone-else", n).await;
            assert_eq!(code, Code::PermissionDenied, "{call:?} naming another {role}");
        }
        assert_eq!(invoke(&right, call, None, &me, n).await, Code::Ok, "{call:?} as {me} by certificate");
    }
    s.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_open_and_metrics_are_for_ops() {
    let s = Secured::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel(None).await);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    let get = |token: Option<String>| async move {
        healthcode_loadtest::admin::http(s.app.admin_addr, "GET", "/metrics", token.as_deref()).await.unwrap()
    };
    assert_eq!(get(None).await.0, 401);
    assert_eq!(get(Some(s.token(Caller::Station))).await.0, 403);
    let (code, body) = get(Some(s.token(Caller::Ops))).await;
    assert!(code == 200 && body.contains("healthcode_auth_refused_total"), "{code} {body}");
    s.app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_shed_a_fast_caller_and_refuse_oversized_and_undecodable_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::ephemeral(dir.path());
    settings.security.guard.rate_per_principal = std::num::NonZeroU32::new(3).unwrap();
    settings.security.max_message_bytes = 64 * 1024;
    let app = App::start(Role::Up, settings).await.unwrap();
    let token = DevCredentials::at(&dir.path().join("credentials")).token(Caller::Station).unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
    let mut lookup = LookupClient::new(channel.clone());
    let get = || with_token(pb::GetStatusRequest { resident_id: "R-1".into() }, &token);
    let mut shed = None;
    for _ in 0..10 {
        if let Err(status) = lookup.get_status(get()).await {
            shed = Some(status);
            break;
        }
    }
    let shed = shed.expect("a caller over its rate is shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    let retry_after: u64 =
        shed.metadata().get(healthcode_rpc::RETRY_AFTER_MS).unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&retry_after), "retry after {retry_after} ms");

    // Admitted again once its rate refills, however long that takes here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = lookup.get_status(get()).await {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(tokio::time::Instant::now() < deadline, "the caller's rate never refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = (0..500).map(|i| format!("{i:0>200}")).collect();
    let status = lookup
        .batch_get_status(with_token(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() }, &token))
        .await;
    let too_large = status.unwrap_err();
    assert_eq!(too_large.code(), Code::ResourceExhausted, "a 100 KB request over a 64 KiB limit");
    assert!(too_large.message().contains("too large"), "refused for its size, not its rate: {too_large:?}");

    // Bytes that are not the message (a Timestamp's varint where a string
    // belongs): the caller's error, not the server's.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let not_a_request = with_token(healthcode_proto::Timestamp { seconds: 5, nanos: 0 }, &token);
    let codec = tonic_prost::ProstCodec::<healthcode_proto::Timestamp, pb::ResidentStatus>::default();
    let path = axum::http::uri::PathAndQuery::from_static("/healthcode.v1.Lookup/GetStatus");
    let refused = raw.unary(not_a_request, path, codec).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // Both are counted with the calls the handlers answered.
    let ops = DevCredentials::at(&dir.path().join("credentials")).token(Caller::Ops).unwrap();
    let (_, metrics) = healthcode_loadtest::admin::http(app.admin_addr, "GET", "/metrics", Some(&ops)).await.unwrap();
    for counted in [
        r#"healthcode_grpc_requests_total{rpc="BatchGetStatus",code="RESOURCE_EXHAUSTED"}"#,
        r#"healthcode_grpc_requests_total{rpc="GetStatus",code="INVALID_ARGUMENT"}"#,
    ] {
        assert!(metrics.contains(counted), "{counted} missing from /metrics");
    }

    // Without a credential the same request is refused on its headers: its
    // body is never read (else it would be refused for its size first).
    let ids: Vec<String> = (0..500).map(|i| format!("{i:0>200}")).collect();
    for request in [
        tonic::Request::new(pb::BatchGetStatusRequest { resident_id: ids.clone(), ..Default::default() }),
        with_token(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() }, "not-a-token"),
    ] {
        let refused = lookup.batch_get_status(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    app.stop().await.unwrap();
}

/// The audit record keeps every override, past the facts' latest 64, with
/// the principal and the credential it was accepted on, and pages through
/// them newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_record_lists_every_override_with_who_and_by_which_credential() {
    let s = Secured::start().await;
    let token = s.token(Caller::Authority);
    let (by_token, by_cert) = (s.channel(None).await, s.channel(Some(Caller::Authority)).await);
    let now = UnixMicros::now();
    // 70 overrides, a second apart, alternately sent with a token and a certificate.
    for i in 0..70i64 {
        let event = pb::OverrideEvent {
            event_id: format!("ov-{i:02}"),
            resident_id: "R-audited".into(),
            authority_id: "dev-authority".into(),
            color: if i % 3 == 0 { pb::Color::Red } else { pb::Color::Yellow } as i32,
            note: format!("decision {i}"),
            issued_at: Some(UnixMicros(now.0 - (100 - i) * 1_000_000).to_timestamp()),
            expires_at: Some(UnixMicros(now.0 + 3_600_000_000).to_timestamp()),
        };
        let message = pb::SubmitOverrideRequest { event: Some(event) };
        let reply = if i % 2 == 0 {
            IngestClient::new(by_token.clone()).submit_override(with_token(message, &token)).await
        } else {
            IngestClient::new(by_cert.clone()).submit_override(tonic::Request::new(message)).await
        };
        assert_eq!(reply.unwrap().into_inner().outcome, pb::Outcome::Accepted as i32, "override {i}");
    }

    let mut lookup = LookupClient::new(by_token.clone());
    let list = |page_size: i32, page_token: String| {
        with_token(pb::ListOverridesRequest { resident_id: "R-audited".into(), page_size, page_token }, &token)
    };
    // Folded in asynchronously: wait until the newest is on record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let first = lookup.list_overrides(list(1, String::new())).await.unwrap().into_inner();
        if first.overrides.first().is_some_and(|o| o.event_id == "ov-69") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the newest override never reached the audit record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut pages, mut page_token) = (Vec::new(), String::new());
    loop {
        let reply = lookup.list_overrides(list(32, page_token)).await.unwrap().into_inner();
        pages.push(reply.overrides);
        if reply.next_page_token.is_empty() {
            break;
        }
        page_token = reply.next_page_token;
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [32, 32, 6]);
    let listed: Vec<pb::OverrideRecord> = pages.concat();
    let ids: Vec<String> = listed.iter().map(|o| o.event_id.clone()).collect();
    let newest_first: Vec<String> = (0..70).rev().map(|i| format!("ov-{i:02}")).collect();
    assert_eq!(ids, newest_first, "all 70, newest first, none twice");
    for o in &listed {
        let i: usize = o.event_id[3..].parse().unwrap();
        let credential =
            if i.is_multiple_of(2) { pb::Credential::BearerToken } else { pb::Credential::ClientCertificate };
        assert_eq!((o.principal.as_str(), o.credential), ("dev-authority", credential as i32), "{}", o.event_id);
        assert_eq!(o.note, format!("decision {i}"));
        assert!(o.accepted_at.is_some());
    }
    // The default page is 100: everything at once.
    let all = lookup.list_overrides(list(0, String::new())).await.unwrap().into_inner();
    assert_eq!((all.overrides.len(), all.next_page_token.as_str()), (70, ""));

    for (page_size, page_token, field) in
        [(1001, String::new(), "page_size"), (-1, String::new(), "page_size"), (10, "nonsense".into(), "page_token")]
    {
        let refused = lookup.list_overrides(list(page_size, page_token)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    s.app.stop().await.unwrap();
}

/// What deploy/README.md does against a deployment that serves TLS: the
/// load test replays a round over `https://` checked against the
/// deployment's CA, and verifies every resident the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_test_replays_and_verifies_a_round_over_tls() {
    use healthcode_loadtest::round::RoundConfig;
    use healthcode_loadtest::{credentials, replay, schedule, verify};
    let s = Secured::start().await;
    let dir = tempfile::tempdir().unwrap();
    let round = RoundConfig { residents: 300, days: 1, tests_per_day: 1, ..RoundConfig::default() };
    schedule::generate(&round, dir.path(), |_| {}).unwrap();
    credentials::provision(dir.path(), &s.creds.tokens_file()).unwrap();
    let target = format!("https://localhost:{}", s.app.grpc_addr.unwrap().port());
    let ca = s.creds.ca_cert();
    // Without the deployment's CA the server's certificate is not trusted.
    assert!(verify::verify(dir.path(), &target, None, 5, 2).await.is_err());
    let options = replay::ReplayOptions {
        target: target.clone(),
        lookup_target: None,
        compression: 8000.0,
        connections: 2,
        max_in_flight: 256,
        freshness_every: 5,
        attempts: 20,
        progress: false,
        shuffle: Some(7),
        checks: 0,
        ca_file: Some(ca.clone()),
    };
    // The tokens file is reread within a second: wait until a round's caller is admitted.
    let gate = credentials::Credentials::load(dir.path()).unwrap().token(&credentials::gate(0)).unwrap().to_owned();
    let mut lookup = LookupClient::new(s.channel(None).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(refused) =
        lookup.get_status(with_token(pb::GetStatusRequest { resident_id: "r1".into() }, &gate)).await
    {
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(tokio::time::Instant::now() < deadline, "the round's tokens were never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = replay::replay(dir.path(), &options, &dir.path().join("report")).await.unwrap();
    assert!(report.ingest.codes.keys().all(|c| c == "OK"), "{:?}", report.ingest.codes);
    let verified = verify::verify(dir.path(), &target, Some(&ca), 5, 2).await.unwrap();
    assert_eq!((verified.checked, verified.mismatches), (300, 0), "{:?}", verified.first);
    s.app.stop().await.unwrap();
}
