//! The real `healthcode up` binary as a process: events submitted over gRPC,
//! the process killed with SIGKILL while submissions are in flight, restarted
//! on the same data directory; every acknowledged event must be reflected.
//! Once on the embedded log and store, once on the Apache Kafka and
//! Cassandra clusters of `scripts/engines.sh` (when the environment names them).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use healthcode_core::UnixMicros;
use healthcode_proto::v1 as pb;
use healthcode_testkit::engines::{Engine, Engines};
use support::{Process, free_addr, lab, negative_test, sampled_at, shows_negative, station, wait_until};

async fn start_up(data_dir: &Path, grpc: SocketAddr, backend: &[String]) -> Process {
    let mut args = vec!["up".to_string(), "--data-dir".to_string(), data_dir.display().to_string()];
    args.extend_from_slice(backend);
    Process::start(&args, Some(grpc), &data_dir.with_extension("log")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    survives_sigkill(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill_on_kafka_and_cql() {
    let Some(engines) = Engines::from_env(&Engines::workspace_script()) else {
        assert!(std::env::var_os("CI").is_none(), "no engines; scripts/test.sh starts them");
        healthcode_testkit::skipped("every_acknowledged_event_survives_sigkill_on_kafka_and_cql", "no engines");
        return;
    };
    let run = format!("crash_{}", std::process::id());
    let kafka = [
        ["--log", "kafka"],
        ["--kafka-brokers", &engines.kafka_brokers],
        ["--kafka-replication-factor", &engines.replication(Engine::Kafka).to_string()],
        ["--kafka-topic", &format!("{run}.events")],
        ["--kafka-dead-letter-topic", &format!("{run}.dead-letter")],
        ["--kafka-group", &run],
    ];
    let mut args: Vec<String> = kafka.into_iter().flatten().map(String::from).collect();
    args.extend(engines.cql_store_args(&run));
    survives_sigkill(&args).await;
}

async fn survives_sigkill(backend: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let grpc = free_addr();
    let first = start_up(&data_dir, grpc, backend).await;
    let channel = first.channel().await;
    let base = UnixMicros::now();

    // Ten stations submit as fast as they can until the process dies.
    let acked: Arc<Mutex<HashMap<String, UnixMicros>>> = Arc::default();
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let (mut client, acked) = (lab(channel.clone(), &data_dir), acked.clone());
            tokio::spawn(async move {
                for n in (w..100_000).step_by(10) {
                    let (resident, e) = negative_test("crash", n, base);
                    let sampled = sampled_at(&e);
                    match client.submit_test_result(pb::SubmitTestResultRequest { event: Some(e) }).await {
                        Ok(reply) if reply.get_ref().outcome == pb::Outcome::Accepted as i32 => {
                            acked.lock().unwrap().insert(resident, sampled);
                        }
                        Ok(reply) => panic!("unexpected outcome {:?}", reply.get_ref()),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 500 {
        assert!(tokio::time::Instant::now() < deadline, "submissions too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500);

    let second = start_up(&data_dir, grpc, backend).await;
    let mut lookup = station(second.channel().await, &data_dir);
    let residents: Vec<String> = acked.keys().cloned().collect();
    let missing =
        wait_until(&mut lookup, &residents, Duration::from_secs(120), |s| shows_negative(s, acked[&s.resident_id]))
            .await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events not reflected after restart, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let status = second.terminate();
    assert!(status.success(), "graceful shutdown on SIGTERM exits 0, got {status:?}");
}
