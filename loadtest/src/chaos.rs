//! Fault-injection drills. A round is replayed against separate edge,
//! materializer and lookup processes while one kind of fault is injected,
//! then every resident is verified. On the real engines (the Apache Kafka
//! and Cassandra clusters of `scripts/engines.sh`, see [`Engines`]) the
//! roles use a Kafka log and the CQL store; without them, a tansu broker and
//! the embedded store.
//!
//! - `kills`: SIGKILL and restart of the edge, the materializer and the
//!   lookup, each twice;
//! - `broker`: the log frozen (SIGSTOP of the broker, of every broker on a
//!   cluster) for a while, then thawed;
//! - `store`: the store made to fail (the processes' `--fault-injection`
//!   admin switch); lookups of residents the lookup has cached must answer,
//!   flagged stale, throughout;
//!
//! and on the engines only (clusters of three, replication factor 3):
//!
//! - `kafka-node`: the broker leading most of the round's partitions killed
//!   (SIGKILL) mid-round, restarted later;
//! - `cql-node`: one Cassandra node killed mid-round, restarted later (the
//!   writes it missed come back by hinted handoff);
//! - `kafka-and-cql-nodes`: both at once;
//! - `cql-quorum-lost`: two of three Cassandra nodes killed: lookups answer
//!   stale from the cache or UNAVAILABLE, ingest keeps acknowledging (the
//!   log holds the events), and the materializer catches up once they are
//!   back.
//!
//! A drill passes with every acknowledged event reflected (zero mismatches)
//! and, for `store`, no failed lookup of a cached resident. Each report
//! carries the lookups measured while the fault lasted. The same code runs
//! as `healthcode-loadtest chaos` and as the fault-injection tests.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use healthcode_auth::Bearer;
use healthcode_proto::v1::{self as pb, lookup_client::LookupClient};
use healthcode_testkit::broker::TansuBroker;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::admin::http;
use crate::credentials::{Credentials, gate};
use crate::replay::{self, ReplayOptions};
use crate::round::resident_id;
use crate::schedule::read_manifest;
use crate::stats::{Percentiles, histogram, micros};
use crate::verify;
use healthcode_testkit::engines::{Engine, Engines};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Scenario {
    Kills,
    Broker,
    Store,
    KafkaNode,
    CqlNode,
    KafkaAndCqlNodes,
    CqlQuorumLost,
}

impl Scenario {
    /// The drills that kill nodes of the real clusters.
    pub const ON_ENGINES: [Scenario; 4] =
        [Scenario::KafkaNode, Scenario::CqlNode, Scenario::KafkaAndCqlNodes, Scenario::CqlQuorumLost];

    fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// Where the drills' log and store run.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A tansu broker of the drill's own and the embedded store.
    Tansu(PathBuf),
    /// The Apache Kafka and Cassandra clusters of `scripts/engines.sh`.
    Engines(Engines),
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `healthcode` binary to run the roles with.
    pub healthcode: PathBuf,
    pub backend: Backend,
    /// A round written by `generate`.
    pub round: PathBuf,
    /// Scratch space: one directory per drill with data and process logs.
    pub work: PathBuf,
    pub compression: f64,
    pub broker_pause: Duration,
    pub store_outage: Duration,
    /// How long a killed engine node stays down.
    pub node_outage: Duration,
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
    /// Lookups of a sample of residents while the fault lasted.
    pub lookups_during_fault: FaultLookups,
    /// Seconds from the end of the replay until every status matched.
    pub converged_after_s: f64,
    pub passed: bool,
}

/// GetStatus calls made while a fault lasted: how they were answered and how fast.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultLookups {
    pub fresh: u64,
    pub stale: u64,
    pub unavailable: u64,
    pub other_errors: u64,
    pub latency: Percentiles,
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

/// The log the roles share.
enum Log {
    Tansu(TansuBroker),
    Cluster(Engines),
}

struct Deployment {
    log: Log,
    topic: String,
    edge: Role,
    materializer: Role,
    lookup: Role,
    edge_url: String,
    lookup_url: String,
    ops_token: String,
}

impl Deployment {
    async fn start(options: &ChaosOptions, dir: &Path, name: &str) -> anyhow::Result<Deployment> {
        let data = dir.join("data");
        crate::credentials::provision(&options.round, &data.join("credentials/tokens.toml"))?;
        // Names of this drill's own: the clusters outlive drills and runs.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let run = format!("drill_{}_{}_{}", name.replace('-', "_"), std::process::id(), now.as_millis() % 1_000_000);
        let topic = format!("{run}.events");
        let (log, mut shared) = match &options.backend {
            Backend::Tansu(binary) => {
                let broker = TansuBroker::start_binary(binary.clone());
                let args = vec!["--kafka-brokers".into(), broker.brokers()];
                (Log::Tansu(broker), args)
            }
            Backend::Engines(engines) => {
                let kafka_rf = engines.replication(Engine::Kafka).to_string();
                let mut args: Vec<String> = [
                    ["--kafka-brokers", &engines.kafka_brokers],
                    ["--kafka-replication-factor", &kafka_rf],
                    ["--kafka-dead-letter-topic", &format!("{run}.dead-letter")],
                    ["--kafka-group", &run],
                ]
                .into_iter()
                .flatten()
                .map(String::from)
                .collect();
                args.extend(engines.cql_store_args(&run));
                (Log::Cluster(engines.clone()), args)
            }
        };
        shared.extend(["--log", "kafka", "--kafka-partitions", "4", "--kafka-topic", &topic].map(String::from));
        shared.extend(["--data-dir".into(), data.display().to_string()]);
        let common = |grpc: Option<SocketAddr>, faults: bool| {
            let mut args = shared.clone();
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
            log,
            topic,
            edge,
            materializer,
            lookup,
            edge_url: format!("http://{edge_addr}"),
            lookup_url: format!("http://{lookup_addr}"),
            ops_token,
        })
    }

    fn engines(&self) -> anyhow::Result<&Engines> {
        match &self.log {
            Log::Cluster(engines) => Ok(engines),
            Log::Tansu(_) => anyhow::bail!("this drill needs the engines of scripts/engines.sh"),
        }
    }

    async fn store(&self, state: &str) -> anyhow::Result<()> {
        for role in [&self.materializer, &self.lookup] {
            let (code, body) =
                http(role.admin, "POST", &format!("/faults/store/{state}"), Some(&self.ops_token)).await?;
            anyhow::ensure!(code == 200, "{}: /faults/store/{state} answered {code}: {body}", role.name);
        }
        Ok(())
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the whole log.
    async fn freeze_log(&self, signal: &str) -> anyhow::Result<()> {
        match &self.log {
            Log::Tansu(broker) if signal == "STOP" => broker.pause(),
            Log::Tansu(broker) => broker.resume(),
            Log::Cluster(engines) => {
                for i in 1..=engines.nodes(Engine::Kafka) {
                    engines.signal(Engine::Kafka, i, signal).await?;
                }
            }
        }
        Ok(())
    }

    /// The Kafka node (1-based, as `engines.sh` numbers them and as their
    /// `node.id`) that leads most of the round's partitions.
    async fn busiest_kafka_leader(&self) -> anyhow::Result<usize> {
        let leaders = self.engines()?.kafka_leaders(&self.topic).await?;
        let mut counts = std::collections::BTreeMap::new();
        for leader in leaders {
            *counts.entry(leader).or_insert(0) += 1;
        }
        let (leader, _) = counts.into_iter().max_by_key(|(_, n)| *n).context("the topic has no partition leaders")?;
        Ok(leader)
    }

    fn stop(&mut self) {
        for role in [&mut self.edge, &mut self.materializer, &mut self.lookup] {
            role.terminate();
        }
        if let Log::Tansu(broker) = &mut self.log {
            broker.stop();
        }
    }
}

/// Runs one drill; the report says whether it passed.
pub async fn drill(options: &ChaosOptions, scenario: Scenario) -> anyhow::Result<DrillReport> {
    let name = scenario.name();
    let dir = options.work.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut d = Deployment::start(options, &dir, &name).await?;
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
        shuffle: None,
        checks: 0,
        ca_file: None,
    };
    let (round, out) = (options.round.clone(), dir.join("report"));
    let replaying = tokio::spawn(async move { replay::replay(&round, &replay_options, &out).await });

    let mut report = DrillReport { scenario: name.clone(), ..DrillReport::default() };
    let started = Instant::now();
    let mut note = |what: String| report.faults.push(format!("{:>6.1} s {what}", started.elapsed().as_secs_f64()));
    let outcome = inject(&mut d, options, scenario, replay_for, &mut note).await;
    if let Backend::Engines(engines) = &options.backend {
        // Whatever happened, the next drill finds whole clusters.
        engines.heal().await?;
    }
    report.lookups_during_fault = outcome?;
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
        let verified = verify::verify(&options.round, &d.lookup_url, None, 10, 4).await?;
        if verified.mismatches == 0 || Instant::now() > deadline {
            break verified;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    report.converged_after_s = replay_done.elapsed().as_secs_f64();
    report.residents_checked = verified.checked;
    report.mismatches = verified.mismatches;
    report.first_mismatches = verified.first;
    report.cached_lookups_stale = report.lookups_during_fault.stale;
    report.cached_lookups_failed = report.lookups_during_fault.unavailable + report.lookups_during_fault.other_errors;
    report.passed = report.mismatches == 0
        && report.residents_checked > 0
        && report.events_acknowledged > 0
        && (scenario != Scenario::Store || (report.cached_lookups_failed == 0 && report.cached_lookups_stale > 0));
    d.stop();
    std::fs::write(dir.join("drill.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

/// Injects `scenario`'s fault while the round replays; returns the lookups
/// measured while it lasted.
async fn inject(
    d: &mut Deployment,
    options: &ChaosOptions,
    scenario: Scenario,
    replay_for: Duration,
    note: &mut impl FnMut(String),
) -> anyhow::Result<FaultLookups> {
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
            Ok(FaultLookups::default())
        }
        Scenario::Broker => {
            tokio::time::sleep(replay_for / 6).await;
            let probe = Probe::start(d, options).await?;
            d.freeze_log("STOP").await?;
            note("log frozen (SIGSTOP of every broker)".into());
            tokio::time::sleep(options.broker_pause).await;
            d.freeze_log("CONT").await?;
            note("log thawed (SIGCONT)".into());
            probe.finish().await
        }
        Scenario::Store => {
            tokio::time::sleep(replay_for / 4).await;
            let probe = Probe::start(d, options).await?;
            d.store("down").await?;
            note("store down (materializer and lookup)".into());
            tokio::time::sleep(options.store_outage).await;
            d.store("up").await?;
            let lookups = probe.finish().await?;
            note(format!(
                "store up; cached lookups during the outage: {} stale, {} fresh, {} failed",
                lookups.stale,
                lookups.fresh,
                lookups.unavailable + lookups.other_errors
            ));
            Ok(lookups)
        }
        Scenario::KafkaNode | Scenario::CqlNode | Scenario::KafkaAndCqlNodes | Scenario::CqlQuorumLost => {
            let engines = d.engines()?.clone();
            tokio::time::sleep(replay_for / 4).await;
            let mut down = Vec::new();
            if matches!(scenario, Scenario::KafkaNode | Scenario::KafkaAndCqlNodes) {
                down.push((Engine::Kafka, d.busiest_kafka_leader().await?));
            }
            match scenario {
                Scenario::CqlNode | Scenario::KafkaAndCqlNodes => down.push((Engine::Cql, engines.nodes(Engine::Cql))),
                Scenario::CqlQuorumLost => {
                    let n = engines.nodes(Engine::Cql);
                    anyhow::ensure!(n >= 3, "losing the quorum needs three CQL nodes, the cluster has {n}");
                    down.extend([(Engine::Cql, n - 1), (Engine::Cql, n)]);
                }
                _ => {}
            }
            let probe = Probe::start(d, options).await?;
            for (engine, i) in &down {
                engines.kill(*engine, *i).await?;
                note(format!("SIGKILL {engine:?} node {i}"));
            }
            tokio::time::sleep(options.node_outage).await;
            let lookups = probe.finish().await?;
            for (engine, i) in &down {
                engines.restart(*engine, *i).await?;
                note(format!("{engine:?} node {i} restarted and serving"));
            }
            note(format!(
                "lookups while down: {} fresh, {} stale, {} UNAVAILABLE, {} other errors; p99 {:.1} ms",
                lookups.fresh, lookups.stale, lookups.unavailable, lookups.other_errors, lookups.latency.p99_ms
            ));
            Ok(lookups)
        }
    }
}

/// Looks a sample of residents up, one after another, until finished: what
/// a gate sees while a fault lasts.
struct Probe {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<FaultLookups>>,
}

impl Probe {
    /// Looks the sample up once (so the lookup has it cached), then keeps
    /// looking in the background.
    async fn start(d: &Deployment, options: &ChaosOptions) -> anyhow::Result<Probe> {
        let credentials = Credentials::load(&options.round)?;
        let bearer = Bearer::new(credentials.token(&gate(0))?)?;
        let channel = Endpoint::from_shared(d.lookup_url.clone())?.connect().await?;
        let mut lookup = LookupClient::with_interceptor(channel, bearer);
        let sample: Vec<String> = (0..100).map(resident_id).collect();
        // Retried as a station would: under the replay's load, a first read
        // of 100 uncached residents may miss its budget (UNAVAILABLE) before
        // any fault is injected.
        crate::verify::read_statuses(&lookup, sample.clone(), crate::verify::VERIFY_ATTEMPTS, 0).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut seen = FaultLookups::default();
            let mut latency = histogram(3);
            while !*stopped.borrow() {
                for id in &sample {
                    let sent = Instant::now();
                    let answer = lookup.get_status(pb::GetStatusRequest { resident_id: id.clone() }).await;
                    latency.record(micros(sent.elapsed()))?;
                    match answer {
                        Ok(reply) if reply.get_ref().stale => seen.stale += 1,
                        Ok(_) => seen.fresh += 1,
                        Err(status) if status.code() == tonic::Code::Unavailable => seen.unavailable += 1,
                        Err(status) => {
                            seen.other_errors += 1;
                            tracing::warn!(code = ?status.code(), "a lookup failed during the fault");
                        }
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
            }
            seen.latency = Percentiles::of(&latency);
            Ok(seen)
        });
        Ok(Probe { stop, task })
    }

    async fn finish(self) -> anyhow::Result<FaultLookups> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
