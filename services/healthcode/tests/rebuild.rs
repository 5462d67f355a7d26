//! `healthcode rebuild`: the store is lost, every resident is
//! re-materialised from the event log, and every status is what it was.
//! Once on the embedded store (its files deleted), once on the CQL store of
//! `scripts/engines.sh` (rebuilt into an empty keyspace, as after a drop).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use healthcode::app::{self, App, Role};
use healthcode::cli::{Cli, Command};
use healthcode::config::Settings;
use healthcode_auth::Role as Caller;
use healthcode_core::UnixMicros;
use healthcode_proto::v1 as pb;
use healthcode_testkit::engines::Engines;
use support::bearer;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const RESIDENTS: usize = 60;

fn settings(data_dir: &Path, extra: &[String]) -> Settings {
    let mut args = vec!["healthcode", "up", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(["--data-dir".to_owned(), data_dir.display().to_string()]);
    args.extend_from_slice(extra);
    match Cli::try_parse_from(args).unwrap().command {
        Command::Up(serve) => serve.resolve().unwrap(),
        _ => unreachable!("parsed as up"),
    }
}

fn at(t: UnixMicros) -> Option<healthcode_proto::Timestamp> {
    Some(t.to_timestamp())
}

/// Every kind of event for `RESIDENTS` residents, and each resident's
/// latest event time (what its status's `updated_at` shows once applied).
fn events(now: UnixMicros) -> (Vec<(Caller, pb::Event)>, BTreeMap<String, UnixMicros>) {
    use pb::event::Kind;
    let hours = |h: i64| UnixMicros(now.0 - h * 3_600_000_000);
    let mut out = Vec::new();
    let mut latest = BTreeMap::new();
    for i in 0..RESIDENTS {
        let resident = format!("rebuild-r{i}");
        let mut note = |t: UnixMicros| {
            let e = latest.entry(resident.clone()).or_insert(t);
            *e = (*e).max(t);
        };
        let outcome = if i % 7 == 0 { pb::TestOutcome::Positive } else { pb::TestOutcome::Negative };
        let sampled = hours(30 + (i % 5) as i64);
        out.push((
            Caller::Lab,
            pb::Event {
                kind: Some(Kind::TestResult(pb::TestResultEvent {
                    event_id: format!("t{i}"),
                    resident_id: resident.clone(),
                    sample_id: format!("s{i}"),
                    lab_id: "dev-lab".into(),
                    kind: pb::TestKind::Pcr as i32,
                    outcome: outcome as i32,
                    sampled_at: at(sampled),
                    resulted_at: at(hours(20)),
                })),
                provenance: None,
            },
        ));
        note(hours(20));
        if i % 11 == 0 {
            out.push((
                Caller::Authority,
                pb::Event {
                    kind: Some(Kind::OverrideEvent(pb::OverrideEvent {
                        event_id: format!("o{i}"),
                        resident_id: resident.clone(),
                        authority_id: "dev-authority".into(),
                        color: if i % 2 == 0 { pb::Color::Red } else { pb::Color::Yellow } as i32,
                        note: "rebuild test".into(),
                        issued_at: at(hours(2)),
                        expires_at: at(UnixMicros(now.0 + 86_400_000_000)),
                    })),
                    provenance: None,
                },
            ));
            note(hours(2));
        }
        if i % 3 == 0 {
            out.push((
                Caller::Station,
                pb::Event {
                    kind: Some(Kind::Scan(pb::ScanEvent {
                        event_id: format!("v{i}"),
                        resident_id: resident.clone(),
                        station_id: "dev-station".into(),
                        site_id: format!("site-{}", i % 4),
                        kind: pb::ScanKind::VenueEntry as i32,
                        scanned_at: at(hours(1)),
                    })),
                    provenance: None,
                },
            ));
            note(hours(1));
        }
    }
    (out, latest)
}

async fn channel(app: &App) -> Channel {
    Endpoint::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap()
}

/// Every resident's status as answered, without what changes per answer
/// (`as_of`, the signed token).
async fn statuses(app: &App, data_dir: &Path, residents: &[String]) -> Vec<pb::ResidentStatus> {
    let mut lookup =
        pb::lookup_client::LookupClient::with_interceptor(channel(app).await, bearer(data_dir, Caller::Station));
    let reply = lookup
        .batch_get_status(pb::BatchGetStatusRequest { resident_id: residents.to_vec(), ..Default::default() })
        .await
        .unwrap();
    reply
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| pb::ResidentStatus { as_of: None, status_token: String::new(), ..s })
        .collect()
}

async fn rebuild_reproduces_every_status(before: &[String], after: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let app = App::start(Role::Up, settings(&data_dir, before)).await.unwrap();
    let (events, latest) = events(UnixMicros::now());
    let residents: Vec<String> = latest.keys().cloned().collect();
    for (caller, event) in &events {
        let mut ingest =
            pb::ingest_client::IngestClient::with_interceptor(channel(&app).await, bearer(&data_dir, *caller));
        let reply = ingest.submit_batch(pb::SubmitBatchRequest { events: vec![event.clone()] }).await.unwrap();
        assert_eq!(reply.into_inner().results[0].outcome, pb::Outcome::Accepted as i32, "{event:?}");
    }
    // Every event applied: each status shows its resident's latest event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let recorded = loop {
        let now = statuses(&app, &data_dir, &residents).await;
        let applied = now
            .iter()
            .all(|s| s.updated_at.as_ref().and_then(UnixMicros::from_timestamp) == latest.get(&s.resident_id).copied());
        if applied {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "events not applied: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let colors: std::collections::BTreeSet<i32> = recorded.iter().map(|s| s.color).collect();
    assert!(colors.len() >= 3, "the round covers green, yellow and red: {colors:?}");
    app.stop().await.unwrap();

    // The store is lost.
    std::fs::remove_dir_all(data_dir.join("store")).ok();
    let rebuilt = settings(&data_dir, after);
    let caught = app::rebuild(rebuilt.clone(), CancellationToken::new()).await.unwrap();
    assert_eq!(caught.records, events.len() as u64, "every record of the log read once");

    let app = App::start(Role::Up, rebuilt).await.unwrap();
    assert_eq!(statuses(&app, &data_dir, &residents).await, recorded, "every status as before the loss");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_deleting_the_embedded_store_reproduces_every_status() {
    rebuild_reproduces_every_status(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_into_an_empty_cql_keyspace_reproduces_every_status() {
    let Some(engines) = Engines::from_env(&Engines::workspace_script()) else {
        assert!(std::env::var_os("CI").is_none(), "no engines; scripts/test.sh starts them");
        healthcode_testkit::skipped("rebuild_into_an_empty_cql_keyspace_reproduces_every_status", "no engines");
        return;
    };
    let run = std::process::id();
    // The keyspace the facts were in is gone; the rebuild fills a new one.
    let (lost, new) = (format!("rebuild_{run}_lost"), format!("rebuild_{run}_new"));
    rebuild_reproduces_every_status(&engines.cql_store_args(&lost), &engines.cql_store_args(&new)).await;
}
