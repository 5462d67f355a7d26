//! Fault-injection drills. A round is replayed against separate edge,
//! materializer and lookup processes on a Kafka broker while one kind of
//! fault is injected, then every resident is verified:
//!
//! - `kills`: SIGKILL and restart of the edge, the materializer and the
//!   lookup, each twice;
//! - `broker`: the broker frozen (SIGSTOP) for a while, then thawed;
//! - `store`: the store made to fail (the processes' `--fault-injection`
//!   admin switch); lookups of residents the lookup has cached must answer,
//!   flagged stale, throughout.
//!
//! A drill passes with every acknowledged event reflected (zero mismatches)
//! and, for `store`, no failed lookup of a cached resident. The same code
//! runs as `healthcode-loadtest chaos` and as the fault-injection test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use healthcode_auth::Bearer;
use healthcode_log_kafka::testing::TansuBroker;
use healthcode_proto::v1::{self as pb, lookup_client::LookupClient};
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::admin::http;
use crate::credentials::{Credentials, gate};
use crate::replay::{self, ReplayOptions};
use crate::round::resident_id;
use crate::schedule::read_manifest;
use crate::verify;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Kills,
    Broker,
    Store,
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `healthcode` binary to run the roles with.
    pub healthcode: PathBuf,
    /// The tansu broker binary.
    pub tansu: PathBuf,
    /// A round written by `generate`.
    pub round: PathBuf,
    /// Scratch space: one directory per drill with data and process logs.
    pub work: PathBuf,
    pub compression: f64,
    pub broker_pause: Duration,
    pub store_outage: Duration,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DrillReport {
    pub scenario: String,
    pub faults: Vec<String>,
    pub events_acknowledged: u64,
    pub requests_not_acknowledged: u64,
    pub residents_checked: u64,
    pub mismatches: u64,
    pub first_mismatches: Vec<String>,
    /// Store drill: lookups of cached residents during the outage.
    pub cached_lookups_stale: u64,
    pub cached_lookups_failed: u64,
    /// Seconds from the end of the replay until every status matched.
    pub converged_after_s: f64,
    pub passed: bool,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// One role as a child process, restartable with the same arguments.
struct Role {
    name: &'static str,
    args: Vec<String>,
    admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Role {
    fn new(name: &'static str, binary: &Path, args: Vec<String>, dir: &Path) -> Role {
        let admin = free_addr();
        let mut full = vec![binary.display().to_string(), name.to_owned()];
        full.extend(args);
        full.extend(["--admin-addr".to_owned(), admin.to_string()]);
        Role { name, args: full, admin, log: dir.join(format!("{name}.log")), child: None }
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.args[0])
            .args(&self.args[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.args[0]))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http(self.admin, "GET", "/ready", None).await, Ok((200, _))) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not become ready; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill_9();
    }
}

struct Deployment {
    broker: TansuBroker,
    edge: Role,
    materializer: Role,
    lookup: Role,
    edge_url: String,
    lookup_url: String,
    ops_token: String,
}

impl Deployment {
    async fn start(options: &ChaosOptions, dir: &Path) -> anyhow::Result<Deployment> {
        let data = dir.join("data");
        crate::credentials::provision(&options.round, &data.join("credentials/tokens.toml"))?;
        let broker = TansuBroker::start_binary(options.tansu.clone());
        let common = |grpc: Option<SocketAddr>, faults: bool| {
            let mut args: Vec<String> = ["--log", "kafka", "--kafka-partitions", "4"].map(String::from).to_vec();
            args.extend(["--kafka-brokers".into(), broker.brokers(), "--data-dir".into(), data.display().to_string()]);
            if let Some(grpc) = grpc {
                args.extend(["--grpc-addr".into(), grpc.to_string()]);
            }
            if faults {
                args.extend(["--fault-injection".into(), "true".into()]);
            }
            args
        };
        let (edge_addr, lookup_addr) = (free_addr(), free_addr());
        let mut edge = Role::new("edge", &options.healthcode, common(Some(edge_addr), false), dir);
        let mut materializer = Role::new("materializer", &options.healthcode, common(None, true), dir);
        let mut lookup = Role::new("lookup", &options.healthcode, common(Some(lookup_addr), true), dir);
        // The edge first: it creates the development credentials the others read.
        edge.start().await?;
        materializer.start().await?;
        lookup.start().await?;
        let ops_token = std::fs::read_to_string(data.join("credentials/ops.token"))?.trim().to_owned();
        Ok(Deployment {
            broker,
            edge,
            materializer,
            lookup,
            edge_url: format!("http://{edge_addr}"),
            lookup_url: format!("http://{lookup_addr}"),
            ops_token,
        })
    }

    async fn store(&self, state: &str) -> anyhow::Result<()> {
        for role in [&self.materializer, &self.lookup] {
            let (code, body) =
                http(role.admin, "POST", &format!("/faults/store/{state}"), Some(&self.ops_token)).await?;
            anyhow::ensure!(code == 200, "{}: /faults/store/{state} answered {code}: {body}", role.name);
        }
        Ok(())
    }

    fn stop(&mut self) {
        for role in [&mut self.edge, &mut self.materializer, &mut self.lookup] {
            role.terminate();
        }
        self.broker.stop();
    }
}

/// Runs one drill; the report says whether it passed.
pub async fn drill(options: &ChaosOptions, scenario: Scenario) -> anyhow::Result<DrillReport> {
    let name = format!("{scenario:?}").to_lowercase();
    let dir = options.work.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut d = Deployment::start(options, &dir).await?;
    let manifest = read_manifest(&options.round)?;
    let replay_for = Duration::from_secs_f64(manifest.end_ms as f64 / options.compression / 1000.0);
    let replay_options = ReplayOptions {
        target: d.edge_url.clone(),
        lookup_target: Some(d.lookup_url.clone()),
        compression: options.compression,
        connections: 2,
        max_in_flight: 1024,
        freshness_every: 20,
        // Enough retries (up to 2 s apart) to ride through a restart.
        attempts: 60,
        progress: false,
    };
    let (round, out) = (options.round.clone(), dir.join("report"));
    let replaying = tokio::spawn(async move { replay::replay(&round, &replay_options, &out).await });

    let mut report = DrillReport { scenario: name.clone(), ..DrillReport::default() };
    let started = Instant::now();
    let mut note = |what: String| report.faults.push(format!("{:>6.1} s {what}", started.elapsed().as_secs_f64()));
    match scenario {
        Scenario::Kills => {
            let pause = replay_for / 8;
            for _ in 0..2 {
                for role in [&mut d.edge, &mut d.materializer, &mut d.lookup] {
                    tokio::time::sleep(pause).await;
                    role.kill_9();
                    note(format!("SIGKILL {}", role.name));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    role.start().await?;
                    note(format!("{} restarted and ready", role.name));
                }
            }
        }
        Scenario::Broker => {
            tokio::time::sleep(replay_for / 6).await;
            d.broker.pause();
            note("broker frozen (SIGSTOP)".into());
            tokio::time::sleep(options.broker_pause).await;
            d.broker.resume();
            note("broker thawed (SIGCONT)".into());
        }
        Scenario::Store => {
            tokio::time::sleep(replay_for / 4).await;
            let (stale, failed) = store_outage(&d, options, &mut note).await?;
            report.cached_lookups_stale = stale;
            report.cached_lookups_failed = failed;
        }
    }
    let replayed = replaying.await??;
    let replay_done = Instant::now();
    report.events_acknowledged =
        ["ACCEPTED", "DUPLICATE"].iter().map(|k| replayed.events.get(*k).copied().unwrap_or(0)).sum();
    report.requests_not_acknowledged = replayed.events.get("REJECTED").copied().unwrap_or(0)
        + replayed.ingest.codes.iter().filter(|(c, _)| c.as_str() != "OK").map(|(_, n)| *n).sum::<u64>();

    // Spools drain and the materializer catches up: poll until every status
    // matches or the time is up.
    let deadline = replay_done + Duration::from_secs(180);
    let verified = loop {
        let verified = verify::verify(&options.round, &d.lookup_url, 10, 4).await?;
        if verified.mismatches == 0 || Instant::now() > deadline {
            break verified;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    report.converged_after_s = replay_done.elapsed().as_secs_f64();
    report.residents_checked = verified.checked;
    report.mismatches = verified.mismatches;
    report.first_mismatches = verified.first;
    report.passed = report.mismatches == 0
        && report.residents_checked > 0
        && report.events_acknowledged > 0
        && report.cached_lookups_failed == 0
        && (scenario != Scenario::Store || report.cached_lookups_stale > 0);
    d.stop();
    std::fs::write(dir.join("drill.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

/// Caches a sample of residents in the lookup, fails the store for
/// `store_outage`, and looks the sample up throughout: (stale, failed).
async fn store_outage(
    d: &Deployment,
    options: &ChaosOptions,
    note: &mut impl FnMut(String),
) -> anyhow::Result<(u64, u64)> {
    let credentials = Credentials::load(&options.round)?;
    let bearer = Bearer::new(credentials.token(&gate(0))?)?;
    let channel = Endpoint::from_shared(d.lookup_url.clone())?.connect().await?;
    let mut lookup = LookupClient::with_interceptor(channel, bearer);
    let sample: Vec<String> = (0..100).map(resident_id).collect();
    lookup.batch_get_status(pb::BatchGetStatusRequest { resident_id: sample.clone() }).await?;
    note(format!("{} residents looked up (now cached)", sample.len()));
    d.store("down").await?;
    note("store down (materializer and lookup)".into());
    let (mut stale, mut failed) = (0, 0);
    let until = Instant::now() + options.store_outage;
    while Instant::now() < until {
        for id in &sample {
            match lookup.get_status(pb::GetStatusRequest { resident_id: id.clone() }).await {
                Ok(reply) if reply.get_ref().stale => stale += 1,
                // Answered fresh within the cache window: fine, not a failure.
                Ok(_) => {}
                Err(status) => {
                    failed += 1;
                    tracing::warn!(code = ?status.code(), "a cached resident's lookup failed during the store outage");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.store("up").await?;
    note(format!("store up; cached lookups during the outage: {stale} stale, {failed} failed"));
    Ok((stale, failed))
}
