//! The real `healthcode up` binary as a process: events submitted over gRPC,
//! the process killed with SIGKILL while submissions are in flight, restarted
//! on the same data directory; every acknowledged event must be reflected.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use tonic::transport::Channel;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Process {
    child: Child,
    grpc: SocketAddr,
}

impl Process {
    async fn start(data_dir: &Path, grpc: SocketAddr) -> Process {
        let log = std::fs::File::options().create(true).append(true).open(data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_healthcode"))
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--grpc-addr", &grpc.to_string(), "--admin-addr", &free_addr().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start healthcode up");
        let p = Process { child, grpc };
        p.wait_serving().await;
        p
    }

    async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                if health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("healthcode up did not start serving on {}", self.grpc);
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await.unwrap()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

/// One negative test per resident, with a distinct sample time, so an
/// acknowledged event is visible as that resident's last negative sample.
fn event(n: usize, base: UnixMicros) -> (String, pb::TestResultEvent) {
    let resident = format!("crash-r{n}");
    let sampled = UnixMicros(base.0 - (n as i64) * 1_000_000);
    let event = pb::TestResultEvent {
        event_id: format!("crash-e{n}"),
        resident_id: resident.clone(),
        sample_id: format!("crash-s{n}"),
        lab_id: "lab-1".into(),
        kind: pb::TestKind::Pcr as i32,
        outcome: pb::TestOutcome::Negative as i32,
        sampled_at: Some(sampled.to_timestamp()),
        resulted_at: Some(base.to_timestamp()),
    };
    (resident, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let grpc = free_addr();
    let first = Process::start(&data_dir, grpc).await;
    let channel = first.channel().await;
    let base = UnixMicros::now();

    // Ten stations submit as fast as they can until the process dies.
    let acked: Arc<Mutex<HashMap<String, UnixMicros>>> = Arc::default();
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let (channel, acked) = (channel.clone(), acked.clone());
            tokio::spawn(async move {
                let mut client = IngestClient::new(channel);
                for n in (w..100_000).step_by(10) {
                    let (resident, e) = event(n, base);
                    let sampled = UnixMicros::from_timestamp(e.sampled_at.as_ref().unwrap()).unwrap();
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

    let second = Process::start(&data_dir, grpc).await;
    let mut lookup = LookupClient::new(second.channel().await);
    let residents: Vec<String> = acked.keys().cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = Vec::new();
        for chunk in residents.chunks(500) {
            let statuses = lookup
                .batch_get_status(pb::BatchGetStatusRequest { resident_id: chunk.to_vec() })
                .await
                .unwrap()
                .into_inner()
                .statuses;
            for s in statuses {
                let got = s.last_negative_sampled_at.as_ref().and_then(UnixMicros::from_timestamp);
                if got != Some(acked[&s.resident_id]) || s.color != pb::Color::Green as i32 {
                    missing.push(s.resident_id);
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged events not reflected after restart, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = second.terminate();
    assert!(status.success(), "graceful shutdown on SIGTERM exits 0, got {status:?}");
}
