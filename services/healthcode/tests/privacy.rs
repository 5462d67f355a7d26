//! No raw resident id leaves the edge: after a small replayed round against
//! the real binary (debug logs, JSON), no raw id appears in any file of the
//! data directory (the log's records and the store's keys and values, freed
//! pages included), in the process's logs, or in `/metrics`; the pseudonyms do.

mod support;

use std::path::Path;

use healthcode_auth::{DevCredentials, Pseudonymizer, Role as Caller};
use healthcode_loadtest::replay::ReplayOptions;
use healthcode_loadtest::round::{RoundConfig, resident_id};
use healthcode_loadtest::{credentials, replay, schedule, verify};
use support::{Process, free_addr};

const RESIDENTS: u64 = 600;

/// Every raw resident id (`r` and nine digits) found in `bytes`.
fn raw_ids(bytes: &[u8]) -> Vec<String> {
    bytes
        .windows(10)
        .filter(|w| w[0] == b'r' && w[1..].iter().all(u8::is_ascii_digit))
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .filter(|id| id[1..].parse::<u64>().is_ok_and(|i| i < RESIDENTS))
        .collect()
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files(&path, out) } else { out.push(path) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_resident_id_reaches_the_log_the_store_the_logs_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (round_dir, data, log_file) = (dir.path().join("round"), dir.path().join("data"), dir.path().join("up.log"));
    let round = RoundConfig { residents: RESIDENTS, ..RoundConfig::default() };
    schedule::generate(&round, &round_dir, |_| {}).unwrap();
    credentials::provision(&round_dir, &data.join("credentials/tokens.toml")).unwrap();

    // Debug logs in JSON: the most a deployment could log.
    let grpc = free_addr();
    let admin = free_addr();
    let args: Vec<String> = ["up", "--log-format", "json", "--data-dir", data.to_str().unwrap(), "--admin-addr"]
        .iter()
        .map(|s| s.to_string())
        .chain([admin.to_string()])
        .collect();
    let up = Process::start_with_env(&args, Some(grpc), &log_file, &[("RUST_LOG", "debug")]).await;

    let target = format!("http://{grpc}");
    let options = ReplayOptions {
        target: target.clone(),
        lookup_target: None,
        compression: 8000.0,
        connections: 2,
        max_in_flight: 256,
        freshness_every: 5,
        attempts: 5,
        progress: false,
        shuffle: None,
        checks: 0,
        ca_file: None,
    };
    let report = replay::replay(&round_dir, &options, &dir.path().join("report")).await.unwrap();
    assert_eq!(report.ingest.codes.keys().collect::<Vec<_>>(), vec!["OK"], "{:?}", report.ingest.codes);
    let verified = verify::verify(&round_dir, &target, None, 5, 4).await.unwrap();
    assert_eq!((verified.checked, verified.mismatches), (RESIDENTS, 0), "{:?}", verified.first);

    let ops = DevCredentials::at(&data.join("credentials")).token(Caller::Ops).unwrap();
    let metrics = support::get_metrics(admin, &ops).await;
    assert!(metrics.contains("healthcode_ingest_events_total"), "scraped the real metrics");
    assert!(up.terminate().success());

    let mut leaks = Vec::new();
    let mut paths = Vec::new();
    files(&data, &mut paths);
    let mut data_bytes = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).unwrap();
        leaks.extend(raw_ids(&bytes).into_iter().map(|id| format!("{id} in {}", path.display())));
        data_bytes.extend(bytes);
    }
    let logs = std::fs::read(&log_file).unwrap();
    assert!(logs.len() > 1000 && logs.windows(5).any(|w| w == b"DEBUG"), "debug logs were written");
    leaks.extend(raw_ids(&logs).into_iter().map(|id| format!("{id} in the process log")));
    leaks.extend(raw_ids(metrics.as_bytes()).into_iter().map(|id| format!("{id} in /metrics")));
    assert!(leaks.is_empty(), "{} raw ids leaked, e.g. {:?}", leaks.len(), &leaks[..leaks.len().min(5)]);

    // The data is there, under pseudonyms: the scan above looked at the right bytes.
    let pseudonyms = Pseudonymizer::from_file(&data.join("credentials/pseudonym.key")).unwrap();
    let found = (0..RESIDENTS)
        .filter(|i| {
            let p = pseudonyms.pseudonym(&resident_id(*i));
            data_bytes.windows(p.len()).any(|w| w == p.as_bytes())
        })
        .count();
    assert_eq!(found as u64, RESIDENTS, "every resident is stored under its pseudonym");
}
