//! The fault-injection suite at small scale: each drill replays a round
//! against separate edge, materializer and lookup processes while injecting
//! its fault, then verifies every resident (see `healthcode_loadtest::chaos`,
//! also `healthcode-loadtest chaos`). On the Apache Kafka and Cassandra
//! clusters of `scripts/engines.sh` when the environment names them (as
//! `scripts/test.sh` does), with the node-killing drills besides; else on a
//! tansu broker and the embedded store, and the node drills say they skipped.
//! The drills run one at a time: they share, and break, the same clusters.
//! `CHAOS_BROKER_PAUSE` sets how long the log stays frozen (default 60s).

use std::path::PathBuf;
use std::time::Duration;

use healthcode_loadtest::chaos::{Backend, ChaosOptions, Scenario, drill};
use healthcode_loadtest::round::RoundConfig;
use healthcode_loadtest::schedule;
use healthcode_testkit::broker::TansuBroker;
use healthcode_testkit::engines::Engines;

/// One drill at a time in this binary.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use healthcode_testkit::skipped;

fn backend(test: &str, needs_engines: bool) -> Option<Backend> {
    if let Some(engines) = Engines::from_env(&Engines::workspace_script()) {
        return Some(Backend::Engines(engines));
    }
    if needs_engines {
        assert!(std::env::var_os("CI").is_none(), "{test}: no engines; scripts/test.sh starts them");
        skipped(test, "no Kafka and CQL clusters; eval \"$(scripts/engines.sh up --kafka 3 --cql 3)\" first");
        return None;
    }
    let Some(tansu) = TansuBroker::binary() else {
        assert!(std::env::var_os("CI").is_none(), "{test}: no tansu broker; scripts/setup.sh installs it");
        skipped(test, "no tansu broker; run scripts/setup.sh or set HEALTHCODE_TANSU_BIN");
        return None;
    };
    Some(Backend::Tansu(tansu))
}

fn options(backend: Backend, dir: &std::path::Path) -> ChaosOptions {
    let round = dir.join("round");
    schedule::generate(&RoundConfig { residents: 1_000, ..RoundConfig::default() }, &round, |_| {}).unwrap();
    let pause = std::env::var("CHAOS_BROKER_PAUSE").ok().map(|p| humantime::parse_duration(&p).expect("a duration"));
    ChaosOptions {
        healthcode: PathBuf::from(env!("CARGO_BIN_EXE_healthcode")),
        backend,
        round,
        work: dir.join("work"),
        // A three-day round (66 hours) in about 40 s.
        compression: 6_000.0,
        broker_pause: pause.unwrap_or(Duration::from_secs(60)),
        store_outage: Duration::from_secs(5),
        node_outage: Duration::from_secs(15),
    }
}

async fn run(test: &str, scenario: Scenario) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(backend) = backend(test, Scenario::ON_ENGINES.contains(&scenario)) else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = drill(&options(backend, dir.path()), scenario).await.unwrap();
    // On the process's stderr, past libtest's capture: the drills' numbers
    // belong in the suite's output.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{test}: {}", serde_json::to_string(&report).unwrap());
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
async fn a_frozen_log_loses_nothing() {
    run("a_frozen_log_loses_nothing", Scenario::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_answers_cached_residents_stale_and_loses_nothing() {
    run("a_failing_store_answers_cached_residents_stale_and_loses_nothing", Scenario::Store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_leader_killed_mid_round_loses_nothing() {
    run("the_kafka_leader_killed_mid_round_loses_nothing", Scenario::KafkaNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_node_killed_mid_round_loses_nothing() {
    run("a_cql_node_killed_mid_round_loses_nothing", Scenario::CqlNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_and_a_cql_node_killed_at_once_lose_nothing() {
    run("a_kafka_and_a_cql_node_killed_at_once_lose_nothing", Scenario::KafkaAndCqlNodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_cql_nodes_down_answer_stale_or_unavailable_and_lose_nothing() {
    run("two_of_three_cql_nodes_down_answer_stale_or_unavailable_and_lose_nothing", Scenario::CqlQuorumLost).await;
}
