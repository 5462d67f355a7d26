//! Running the real `healthcode` binary as processes in tests.
#![allow(dead_code)] // each test file uses part of it

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use healthcode_auth::{Bearer, DevCredentials, Role};
use healthcode_core::UnixMicros;
use healthcode_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls carry a development token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The development token of `role` that a process on `data_dir` created.
pub fn bearer(data_dir: &Path, role: Role) -> Bearer {
    Bearer::new(&DevCredentials::at(&data_dir.join("credentials")).token(role).unwrap()).unwrap()
}

/// An Ingest client for the lab `dev-lab` (the lab of [`negative_test`]).
pub fn lab(channel: Channel, data_dir: &Path) -> pb::ingest_client::IngestClient<Authed> {
    pb::ingest_client::IngestClient::with_interceptor(channel, bearer(data_dir, Role::Lab))
}

/// A Lookup client for the station `dev-station`.
pub fn station(channel: Channel, data_dir: &Path) -> pb::lookup_client::LookupClient<Authed> {
    pb::lookup_client::LookupClient::with_interceptor(channel, bearer(data_dir, Role::Station))
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub struct Process {
    child: Child,
    pub grpc: Option<SocketAddr>,
}

impl Process {
    /// Starts `healthcode <args>` with a free admin port, stderr appended to
    /// `log_file`; waits until gRPC health answers when `grpc` is given.
    pub async fn start(args: &[String], grpc: Option<SocketAddr>, log_file: &Path) -> Process {
        let mut args = args.to_vec();
        args.extend(["--admin-addr".to_string(), free_addr().to_string()]);
        Self::start_with_env(&args, grpc, log_file, &[]).await
    }

    /// [`Process::start`] with environment variables and the caller's own
    /// `--admin-addr` among `args`.
    pub async fn start_with_env(
        args: &[String],
        grpc: Option<SocketAddr>,
        log_file: &Path,
        env: &[(&str, &str)],
    ) -> Process {
        let log = std::fs::File::options().create(true).append(true).open(log_file).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_healthcode"));
        command.args(args).envs(env.iter().copied());
        if let Some(grpc) = grpc {
            command.args(["--grpc-addr", &grpc.to_string()]);
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("start healthcode");
        let p = Process { child, grpc };
        if grpc.is_some() {
            p.wait_serving().await;
        }
        p
    }

    async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.grpc.unwrap())).unwrap().connect().await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                if health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("healthcode did not start serving on {:?}", self.grpc);
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc.unwrap())).unwrap().connect().await.unwrap()
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failed test must not leave processes behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` with an ops token; the body.
pub async fn get_metrics(admin: SocketAddr, token: &str) -> String {
    let (code, body) = healthcode_loadtest::admin::http(admin, "GET", "/metrics", Some(token)).await.unwrap();
    assert_eq!(code, 200, "{}", &body[..body.len().min(200)]);
    body
}

/// Reads statuses until `check` accepts all of them or the deadline passes;
/// returns the residents `check` still refuses (empty on success).
pub async fn wait_until(
    lookup: &mut pb::lookup_client::LookupClient<Authed>,
    residents: &[String],
    deadline: Duration,
    check: impl Fn(&pb::ResidentStatus) -> bool,
) -> Vec<String> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let mut refused = Vec::new();
        for chunk in residents.chunks(500) {
            match lookup
                .batch_get_status(pb::BatchGetStatusRequest { resident_id: chunk.to_vec(), ..Default::default() })
                .await
            {
                Ok(reply) => {
                    refused.extend(reply.into_inner().statuses.into_iter().filter(|s| !check(s)).map(|s| s.resident_id))
                }
                // The store could not answer in time and nothing was cached:
                // the answer a station retries (a cold CQL cluster on a busy
                // machine does this); anything else is a failure.
                Err(status) if status.code() == tonic::Code::Unavailable => refused.extend(chunk.iter().cloned()),
                Err(status) => panic!("lookup failed: {status:?}"),
            }
        }
        if refused.is_empty() || tokio::time::Instant::now() > until {
            return refused;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One negative test for resident `{prefix}-r{n}`, sampled `n` seconds before
/// `base`, so an applied event shows as that resident's last negative sample.
pub fn negative_test(prefix: &str, n: usize, base: UnixMicros) -> (String, pb::TestResultEvent) {
    let resident = format!("{prefix}-r{n}");
    let sampled = UnixMicros(base.0 - (n as i64) * 1_000_000);
    let event = pb::TestResultEvent {
        event_id: format!("{prefix}-e{n}"),
        resident_id: resident.clone(),
        sample_id: format!("{prefix}-s{n}"),
        lab_id: "dev-lab".into(),
        kind: pb::TestKind::Pcr as i32,
        outcome: pb::TestOutcome::Negative as i32,
        sampled_at: Some(sampled.to_timestamp()),
        resulted_at: Some(base.to_timestamp()),
    };
    (resident, event)
}

/// The sample time a `negative_test` carries.
pub fn sampled_at(event: &pb::TestResultEvent) -> UnixMicros {
    UnixMicros::from_timestamp(event.sampled_at.as_ref().unwrap()).unwrap()
}

/// Whether a status shows exactly this negative sample as the latest one.
pub fn shows_negative(status: &pb::ResidentStatus, sampled: UnixMicros) -> bool {
    status.last_negative_sampled_at.as_ref().and_then(UnixMicros::from_timestamp) == Some(sampled)
        && status.color == pb::Color::Green as i32
}
