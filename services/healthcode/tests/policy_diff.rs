//! `healthcode policy diff --candidate FILE --json` against a live server:
//! the counts per color transition agree with what the documented rules
//! give for each resident, worked out here by hand, not by the policy code.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use healthcode::app::{App, Role};
use healthcode::config::Settings;
use healthcode_auth::Role as Caller;
use healthcode_core::UnixMicros;
use healthcode_proto::v1 as pb;
use support::bearer;
use tonic::transport::Endpoint;

/// The candidate: negatives valid for 24 h instead of 48 h, and one
/// negative instead of two clears a positive.
const CANDIDATE: &str = r#"
version = "2026-12-shorter-validity"
negative_valid_for = "24h"
negatives_to_clear_positive = 1
"#;

/// A group of residents: its name, how many, their tests (outcome, hours
/// ago) and the colors (now, candidate) the documented rules give them.
type Group = (&'static str, usize, Vec<(pb::TestOutcome, i64)>, (&'static str, &'static str));

fn test_event(resident: &str, n: usize, outcome: pb::TestOutcome, sampled: UnixMicros) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::TestResult(pb::TestResultEvent {
            event_id: format!("{resident}-t{n}"),
            resident_id: resident.into(),
            sample_id: format!("{resident}-s{n}"),
            lab_id: "dev-lab".into(),
            kind: pb::TestKind::Pcr as i32,
            outcome: outcome as i32,
            sampled_at: Some(sampled.to_timestamp()),
            resulted_at: Some(sampled.to_timestamp()),
        })),
        provenance: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_policy_is_counted_per_transition_on_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let app = App::start(Role::Up, Settings::ephemeral(&data_dir)).await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
    let now = UnixMicros::now();
    let ago = |h: i64| UnixMicros(now.0 - h * 3_600_000_000);
    use pb::TestOutcome::{Negative, Positive};

    // Groups of residents, each with the colors the documented rules give
    // now under the rules in force (48 h, two negatives clear a positive)
    // and under the candidate (24 h, one negative).
    let groups: [Group; 5] = [
        // A negative 30 h old: valid for 48 h, not for 24 h.
        ("fresh-enough", 10, vec![(Negative, 30)], ("GREEN", "YELLOW")),
        // A negative 10 h old: valid under both.
        ("recent", 10, vec![(Negative, 10)], ("GREEN", "GREEN")),
        // Positive 60 h ago, one negative 40 h ago: two are needed now; one
        // clears it under the candidate, but 40 h is past 24 h.
        ("cleared-old", 5, vec![(Positive, 60), (Negative, 40)], ("RED", "YELLOW")),
        // Positive 60 h ago, one negative 12 h ago: cleared and valid.
        ("cleared-recent", 5, vec![(Positive, 60), (Negative, 12)], ("RED", "GREEN")),
        // A positive 5 h ago: red under both.
        ("positive", 3, vec![(Positive, 5)], ("RED", "RED")),
    ];
    let mut ingest = pb::ingest_client::IngestClient::with_interceptor(channel.clone(), bearer(&data_dir, Caller::Lab));
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut residents = Vec::new();
    for (name, count, tests, (from, to)) in &groups {
        for i in 0..*count {
            let resident = format!("diff-{name}-{i}");
            let events = tests.iter().enumerate().map(|(n, (o, h))| test_event(&resident, n, *o, ago(*h))).collect();
            ingest.submit_batch(pb::SubmitBatchRequest { events }).await.unwrap();
            residents.push(resident);
        }
        *expected.entry((from.to_string(), to.to_string())).or_default() += *count as u64;
    }
    // Wait until every resident is materialised.
    let mut lookup =
        pb::lookup_client::LookupClient::with_interceptor(channel.clone(), bearer(&data_dir, Caller::Station));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = lookup
            .batch_get_status(pb::BatchGetStatusRequest { resident_id: residents.clone(), ..Default::default() })
            .await;
        if reply.unwrap().into_inner().statuses.iter().all(|s| s.updated_at.is_some()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "events not materialised");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, CANDIDATE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_healthcode"))
        .args(["policy", "diff", "--json", "--candidate"])
        .arg(&candidate)
        .args(["--admin-addr", &app.admin_addr.to_string(), "--credentials-dir"])
        .arg(data_dir.join("credentials"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["residents"], residents.len() as u64);
    assert_eq!(
        (report["current"].as_str(), report["candidate"].as_str()),
        (Some("built-in"), Some("2026-12-shorter-validity"))
    );
    let got: BTreeMap<(String, String), u64> = report["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| ((t["from"].as_str().unwrap().into(), t["to"].as_str().unwrap().into()), t["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, expected, "every transition, unchanged ones included");
    assert_eq!(report["changed"], 20);
    for t in report["transitions"].as_array().unwrap() {
        let samples = t["samples"].as_array().unwrap();
        assert!(samples.len() <= 10 && !samples.is_empty());
        assert!(samples.iter().all(|s| !s.as_str().unwrap().contains("diff-")), "samples are pseudonymised");
    }

    // A bad candidate is refused with the key named, before any scan.
    std::fs::write(&candidate, "version = \"x\"\nnegative_valid_for = \"soon\"\nnegatives_to_clear_positive = 1\n")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_healthcode"))
        .args(["policy", "diff", "--candidate"])
        .arg(&candidate)
        .args(["--admin-addr", &app.admin_addr.to_string(), "--credentials-dir"])
        .arg(data_dir.join("credentials"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("negative_valid_for"), "{stderr}");
    app.stop().await.unwrap();
}
