//! `healthcode-loadtest`: stage a city-wide testing round against any
//! deployment (generate, replay, verify) and measure the machine's ceiling
//! (bench).

pub mod admin;
pub mod bench;
pub mod chaos;
pub mod credentials;
pub mod flood;
pub mod midround;
pub mod oracle;
pub mod replay;
pub mod report;
pub mod round;
pub mod schedule;
pub mod stats;
pub mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::round::RoundConfig;

#[derive(Parser, Debug)]
#[command(name = "healthcode-loadtest", version, about = "Stage a city-wide testing round against healthcode.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Writes a deterministic round (schedule, expected statuses) into a directory.
    Generate(GenerateArgs),
    /// Issues a token for every principal of a round and admits them in a server's tokens file.
    Credentials(CredentialsArgs),
    /// Replays a round against a target, open-loop, and writes a report.
    Replay(ReplayArgs),
    /// Reads every resident's status back and compares it with the expected one.
    Verify(VerifyArgs),
    /// Fault-injection drills: replays a round against separate role processes
    /// on a tansu broker while killing processes, freezing the broker or
    /// failing the store, then verifies every resident.
    Chaos(ChaosArgs),
    /// Drives a bare tonic server and the target side by side.
    Bench(BenchArgs),
    /// Sends unauthenticated ~2 MiB SubmitBatch calls on many connections at
    /// once, as an attacker without credentials would; prints the answers.
    Flood(FloodArgs),
}

#[derive(Args, Debug)]
pub struct FloodArgs {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// Size of each request.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub bytes: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write schedule.bin, expected.csv and round.json into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 13_000_000)]
    pub residents: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of samples that are positive.
    #[arg(long, default_value_t = 0.002)]
    pub positivity: f64,
    /// Status lookups over the round, per resident.
    #[arg(long, default_value_t = 1.0)]
    pub lookups_per_resident: f64,
    /// Lookup rate at the morning surge, as a multiple of the baseline.
    #[arg(long, default_value_t = 10.0)]
    pub surge_factor: f64,
    /// Share of residents who also enter a venue after their test.
    #[arg(long, default_value_t = 0.3)]
    pub venue_fraction: f64,
    /// Share of venues declared exposure sites (during or after their
    /// window; some moved, some withdrawn); 0 for none.
    #[arg(long, default_value_t = 0.05)]
    pub exposure_fraction: f64,
    /// Share of venue scan uploads that come hours late (offline stations).
    #[arg(long, default_value_t = 0.1)]
    pub late_venue_fraction: f64,
    /// Days the round spans (every resident tested --tests-per-day times a day).
    #[arg(long, default_value_t = 3)]
    pub days: u64,
    /// Tests per resident a day: 1, or 2 (a morning and an evening window).
    #[arg(long, default_value_t = 2)]
    pub tests_per_day: u64,
    /// Share of residents who stop testing after the first day.
    #[arg(long, default_value_t = 0.02)]
    pub skip_fraction: f64,
    /// Window over which every resident is sampled once per test.
    #[arg(long, default_value = "10h", value_parser = humantime::parse_duration)]
    pub sampling_window: Duration,
    /// How long after sampling labs report a batch.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    pub result_delay: Duration,
}

#[derive(Args, Debug)]
pub struct CredentialsArgs {
    /// A directory written by `generate`; the tokens go to DIR/credentials.json.
    #[arg(long)]
    pub dir: PathBuf,
    /// The server's tokens file (`<data_dir>/credentials/tokens.toml` for `healthcode up`).
    #[arg(long)]
    pub tokens_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A directory written by `generate`.
    #[arg(long)]
    pub dir: PathBuf,
    /// The Ingest service; several replicas comma-separated, the connections spread over them.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The Lookup service, when it is not at --target (separate role processes); comma-separated replicas too.
    #[arg(long)]
    pub lookup_target: Option<String>,
    /// Round time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 60.0)]
    pub compression: f64,
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Time ACCEPTED-to-visible for every n-th acknowledged batch of test results.
    #[arg(long, default_value_t = 5)]
    pub freshness_every: u64,
    /// Attempts per request on UNAVAILABLE or RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 5)]
    pub attempts: usize,
    /// Where report.json and report.html go [default: DIR/report]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sends the submissions in an order shuffled with this seed, all at
    /// once and with the round already in the past (no lookups): verify must
    /// still find every status as expected.
    #[arg(long)]
    pub shuffle: Option<u64>,
    /// Checks of 1,000 residents spread over the round while it runs, each
    /// judged by the oracle on what had been answered by then (0: none).
    #[arg(long, default_value_t = 3)]
    pub checks: usize,
    /// The CA certificate (PEM) that signed an https:// target's certificate
    /// (`ca.pem` of `healthcode credentials init`).
    #[arg(long, env = "HEALTHCODE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// How many mismatches to print.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// BatchGetStatus calls in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The CA certificate (PEM) that signed an https:// target's certificate.
    #[arg(long, env = "HEALTHCODE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The endpoint of `target`: an `https://` target is checked against
/// `ca_file` (a deployment's own CA), or else the system's roots.
pub fn endpoint(target: &str, ca_file: Option<&Path>) -> anyhow::Result<tonic::transport::Endpoint> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(target.to_owned()).with_context(|| format!("bad address {target}"))?;
    if !target.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    endpoint.tls_config(tls).context("configuring TLS")
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// A directory written by `generate` (a few thousand residents is plenty).
    #[arg(long)]
    pub dir: PathBuf,
    /// The healthcode binary to run the roles with.
    #[arg(long, default_value = "target/release/healthcode")]
    pub healthcode: PathBuf,
    /// The tansu broker, used when no engines are named [default: HEALTHCODE_TANSU_BIN or the one scripts/setup.sh installed]
    #[arg(long)]
    pub tansu: Option<PathBuf>,
    /// Run on the Apache Kafka and Cassandra clusters of this script (named by
    /// the environment `scripts/engines.sh up` prints), with a Kafka log and
    /// the CQL store, instead of tansu and the embedded store
    #[arg(long, default_value = "scripts/engines.sh")]
    pub engines: PathBuf,
    /// How long killed engine nodes stay down.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub node_outage: Duration,
    /// Scratch space for the drills' data and process logs [default: DIR/chaos]
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long, default_value_t = 2000.0)]
    pub compression: f64,
    /// How long the broker stays frozen.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub broker_pause: Duration,
    /// How long the store fails.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub store_outage: Duration,
    /// Which drills, in order [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<chaos::Scenario>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The server that answers lookups (and takes ingest, unless --ingest-target).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Where the target's ingest goes instead, for a split deployment: the
    /// edge, with --target naming a lookup process.
    #[arg(long)]
    pub ingest_target: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Lookups sent to each server before its lookup run is measured, for
    /// this long: the target's cache and status tokens then hold what a
    /// server that has been answering for a while holds (0s: none).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Residents to pick lookup ids from (r000000000 ..).
    #[arg(long, default_value_t = 20_000)]
    pub residents: u64,
    /// Events per SubmitBatch in the batch workload.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Times each workload is run on the bare server and then the target,
    /// in turn: the bare server's own rate moves by a fifth between runs on
    /// one machine, so a ratio is decided by the median of several pairs.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// The workloads to run, comma-separated [default: all four]
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(bench::WORKLOADS))]
    pub workloads: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The station the target admits [default: dev-station, the development station]
    #[arg(long, default_value = "dev-station")]
    pub station: String,
    /// Its bearer token [default: station.token in --credentials-dir]
    #[arg(long, env = "HEALTHCODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Credentials(args) => credentials::provision(&args.dir, &args.tokens_file).map(|n| {
            println!("{n} principals admitted in {}", args.tokens_file.display());
            ExitCode::SUCCESS
        }),
        Command::Replay(args) => replay(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Chaos(args) => run_chaos(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Flood(args) => {
            flood::flood(&args.target, args.connections, args.per_connection, args.bytes, args.duration).await.map(
                |f| {
                    println!(
                        "{} calls in {:.1} s on {} connections x {} in flight, {} bytes each: {:?}",
                        f.calls,
                        f.elapsed.as_secs_f64(),
                        args.connections,
                        args.per_connection,
                        args.bytes,
                        f.codes
                    );
                    ExitCode::SUCCESS
                },
            )
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("healthcode-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.days >= 1, "days must be at least 1");
    anyhow::ensure!((1..=2).contains(&args.tests_per_day), "tests-per-day must be 1 or 2");
    anyhow::ensure!(
        args.sampling_window.as_millis() < 12 * 3_600_000,
        "sampling-window must be shorter than 12h (two tests a day)"
    );
    let round = RoundConfig {
        residents: args.residents,
        seed: args.seed,
        positivity: args.positivity,
        lookups_per_resident: args.lookups_per_resident,
        surge_factor: args.surge_factor,
        venue_fraction: args.venue_fraction,
        exposure_fraction: args.exposure_fraction,
        late_venue_fraction: args.late_venue_fraction,
        sampling_window_ms: args.sampling_window.as_millis() as u64,
        days: args.days,
        tests_per_day: args.tests_per_day,
        skip_fraction: args.skip_fraction,
        result_delay_ms: args.result_delay.as_millis() as u64,
        ..RoundConfig::default()
    };
    let started = Instant::now();
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(round.residents)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let manifest = schedule::generate(&round, &args.out, |n| bar.inc(n))?;
    bar.finish_and_clear();
    let c = &manifest.counts;
    println!(
        "generated {} residents in {:.1} s: {} requests ({} ingest batches with {} events: {} test results, {} duplicate resubmissions, {} overrides, {} scans, {} site-risk versions; {} lookups) in {}",
        round.residents,
        started.elapsed().as_secs_f64(),
        c.entries,
        c.batches,
        c.events,
        c.test_results,
        c.duplicate_submissions,
        c.overrides,
        c.scans,
        c.site_risks,
        c.lookups,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.compression > 0.0, "compression must be positive");
    let options = replay::ReplayOptions {
        target: args.target,
        lookup_target: args.lookup_target,
        compression: args.compression,
        connections: args.connections,
        max_in_flight: args.max_in_flight,
        freshness_every: args.freshness_every,
        attempts: args.attempts,
        progress: std::io::stderr().is_terminal(),
        shuffle: args.shuffle,
        checks: args.checks,
        ca_file: args.ca_file,
    };
    let out = args.out.unwrap_or_else(|| replay::default_out(&args.dir));
    let r = replay::replay(&args.dir, &options, &out).await?;
    println!(
        "replayed {} residents against {} in {:.1} s (compression {}x)",
        r.residents, r.target, r.wall_seconds, r.compression
    );
    println!(
        "{:<12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}  codes",
        "rpc", "requests", "per s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, k) in [("SubmitBatch", &r.ingest), ("GetStatus", &r.lookup)] {
        let l = &k.latency;
        println!(
            "{name:<12} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {:?}",
            k.requests, k.throughput_per_s, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, k.codes
        );
    }
    let f = &r.freshness;
    println!(
        "freshness (ACCEPTED to visible), {} samples: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {} timed out",
        f.count, f.p50_ms, f.p99_ms, f.p999_ms, f.max_ms, r.freshness_timeouts
    );
    println!("events: {:?}", r.events);
    for c in &r.mid_round {
        println!(
            "mid-round check at round hour {:.1}: {} residents checked, {} not certain (skipped), {} mismatches",
            c.at_ms as f64 / 3_600_000.0,
            c.checked,
            c.skipped,
            c.mismatches
        );
        for diff in &c.first {
            println!("  {diff}");
        }
    }
    println!("report: {}", out.join("report.html").display());
    if r.mid_round.iter().any(|c| c.mismatches > 0) {
        eprintln!("a mid-round check found statuses other than the oracle's");
        return Ok(ExitCode::FAILURE);
    }
    let unacknowledged = r.events.get("REJECTED").copied().unwrap_or(0)
        + r.ingest.codes.iter().filter(|(c, _)| c.as_str() != "OK").map(|(_, n)| *n).sum::<u64>();
    if unacknowledged > 0 {
        eprintln!(
            "{unacknowledged} events or requests were not acknowledged; see {}",
            args.dir.join(replay::UNACKNOWLEDGED_FILE).display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let o = verify::verify(&args.dir, &args.target, args.ca_file.as_deref(), args.show, args.concurrency).await?;
    println!("checked {} residents: {} mismatches", o.checked, o.mismatches);
    for line in &o.first {
        println!("  {line}");
    }
    if o.unacknowledged > 0 {
        println!("{} residents left out: one of their events was never acknowledged", o.unacknowledged);
    }
    if o.changed_by_the_clock > 0 {
        println!(
            "{} residents' status had changed by itself since the round's end (an override or a negative ran out) and matched the oracle at the read's time",
            o.changed_by_the_clock
        );
    }
    Ok(if o.mismatches == 0 && o.checked > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn run_chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let backend = match healthcode_testkit::engines::Engines::from_env(&args.engines) {
        Some(engines) => chaos::Backend::Engines(engines),
        None => match args.tansu.or_else(healthcode_testkit::broker::TansuBroker::binary) {
            Some(tansu) => chaos::Backend::Tansu(tansu),
            None => anyhow::bail!(
                "no engines and no tansu broker: eval \"$(scripts/engines.sh up --kafka 3 --cql 3)\", or pass --tansu"
            ),
        },
    };
    let on_engines = matches!(backend, chaos::Backend::Engines(_));
    let options = chaos::ChaosOptions {
        healthcode: args.healthcode,
        backend,
        node_outage: args.node_outage,
        work: args.work.unwrap_or_else(|| args.dir.join("chaos")),
        round: args.dir,
        compression: args.compression,
        broker_pause: args.broker_pause,
        store_outage: args.store_outage,
    };
    let scenarios = if args.scenario.is_empty() {
        let mut all = vec![chaos::Scenario::Kills, chaos::Scenario::Broker, chaos::Scenario::Store];
        if on_engines {
            all.extend(chaos::Scenario::ON_ENGINES);
        }
        all
    } else {
        args.scenario
    };
    let mut failed = 0;
    for scenario in scenarios {
        let r = chaos::drill(&options, scenario).await?;
        println!(
            "{:<19} {}: {} events acknowledged, {} requests not; {} residents checked, {} mismatches; converged {:.1} s after the replay; lookups during the fault: p99 {:.1} ms ({} fresh, {} stale, {} UNAVAILABLE, {} other errors)",
            r.scenario,
            if r.passed { "PASSED" } else { "FAILED" },
            r.events_acknowledged,
            r.requests_not_acknowledged,
            r.residents_checked,
            r.mismatches,
            r.converged_after_s,
            r.lookups_during_fault.latency.p99_ms,
            r.lookups_during_fault.fresh,
            r.lookups_during_fault.stale,
            r.lookups_during_fault.unavailable,
            r.lookups_during_fault.other_errors,
        );
        for fault in &r.faults {
            println!("          {fault}");
        }
        for line in &r.first_mismatches {
            println!("          {line}");
        }
        failed += usize::from(!r.passed);
    }
    println!("reports: {}/<drill>/drill.json", options.work.display());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let options = bench::BenchOptions {
        target: args.target,
        ingest_target: args.ingest_target,
        concurrency: args.concurrency,
        duration: args.duration,
        warmup: args.warmup,
        residents: args.residents,
        batch: args.batch,
        rounds: args.rounds,
        workloads: if args.workloads.is_empty() {
            bench::WORKLOADS.iter().map(|w| w.to_string()).collect()
        } else {
            args.workloads
        },
        token: match args.token {
            Some(token) => token,
            None => healthcode_auth::DevCredentials::at(&args.credentials_dir).token(healthcode_auth::Role::Station)?,
        },
        station: args.station,
    };
    let results = bench::bench(&options).await?;
    println!(
        "concurrency {}, {} s per run (lookups after {} s of warm-up), batch {} events, {} round(s)",
        options.concurrency,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        options.batch,
        options.rounds
    );
    println!(
        "{:<19} {:>5} {:<7} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "workload", "round", "server", "per s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "vs bare"
    );
    for pair in results.chunks(2) {
        let bare = pair[0].per_second;
        for m in pair {
            println!(
                "{:<19} {:>5} {:<7} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>8.0}%",
                m.workload,
                m.round,
                m.server,
                m.per_second,
                m.latency.p50_ms,
                m.latency.p99_ms,
                m.latency.p999_ms,
                m.errors,
                100.0 * m.per_second / bare.max(1e-9)
            );
        }
    }
    for summary in bench::summarize(&results) {
        println!("{summary}");
    }
    if let Some(out) = args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
