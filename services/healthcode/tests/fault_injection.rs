//! The fault-injection suite at small scale: each drill replays a round
//! against separate edge, materializer and lookup processes on a tansu
//! broker while injecting its fault, then verifies every resident (see
//! `healthcode_loadtest::chaos`, also `healthcode-loadtest chaos`).
//! `CHAOS_BROKER_PAUSE` sets how long the broker stays frozen (default 60s).

use std::path::PathBuf;
use std::time::Duration;

use healthcode_loadtest::chaos::{ChaosOptions, Scenario, drill};
use healthcode_loadtest::round::RoundConfig;
use healthcode_loadtest::schedule;
use healthcode_log_kafka::testing::TansuBroker;

fn options(test: &str, dir: &std::path::Path) -> Option<ChaosOptions> {
    let Some(tansu) = TansuBroker::binary() else {
        assert!(std::env::var_os("CI").is_none(), "{test}: no tansu broker; scripts/setup.sh installs it");
        eprintln!("SKIPPED {test}: no tansu broker; run scripts/setup.sh or set HEALTHCODE_TANSU_BIN");
        return None;
    };
    let round = dir.join("round");
    schedule::generate(&RoundConfig { residents: 1_000, ..RoundConfig::default() }, &round, |_| {}).unwrap();
    let pause = std::env::var("CHAOS_BROKER_PAUSE").ok().map(|p| humantime::parse_duration(&p).expect("a duration"));
    Some(ChaosOptions {
        healthcode: PathBuf::from(env!("CARGO_BIN_EXE_healthcode")),
        tansu,
        round,
        work: dir.join("work"),
        compression: 2_000.0,
        broker_pause: pause.unwrap_or(Duration::from_secs(60)),
        store_outage: Duration::from_secs(5),
    })
}

async fn run(test: &str, scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let Some(options) = options(test, dir.path()) else { return };
    let report = drill(&options, scenario).await.unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    if !report.passed {
        // Keep the process logs of a failed drill.
        let kept = dir.keep();
        panic!("{test} failed: {report:#?}; process logs under {}", kept.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_killed_and_restarted_lose_nothing() {
    run("processes_killed_and_restarted_lose_nothing", Scenario::Kills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_loses_nothing() {
    run("a_frozen_broker_loses_nothing", Scenario::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_cached_residents_stale_and_loses_nothing() {
    run("a_failing_store_answers_cached_residents_stale_and_loses_nothing", Scenario::Store).await;
}
