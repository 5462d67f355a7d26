//! The command line and its dispatch to the serving roles and client verbs.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{App, Role};
use crate::client;
use crate::config::ServeArgs;
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "healthcode", version, about = "Health codes that stay up on the worst day.")]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "HEALTHCODE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs edge, materializer and lookup in one process (embedded log and store by default).
    Up(ServeArgs),
    /// Runs the Ingest service only.
    Edge(ServeArgs),
    /// Runs the materializer only (log -> facts in the store).
    Materializer(ServeArgs),
    /// Runs the Lookup service only.
    Lookup(ServeArgs),
    /// Rebuilds every resident's facts from the event log into the store,
    /// after the store was lost (stop `up` first on the embedded default).
    Rebuild(ServeArgs),
    /// Submits a scan (as a scanning station would).
    Scan(client::ScanArgs),
    /// Submits a test result (as a lab would).
    Test(client::TestArgs),
    /// Submits an authority override.
    Override(client::OverrideArgs),
    /// Shows residents' current health codes.
    Status(client::StatusArgs),
    /// Checks a status token offline, with the public keys only.
    VerifyToken(client::VerifyTokenArgs),
    /// Lists the overrides on record for a resident (authority role).
    Overrides(client::OverridesArgs),
    /// Declares an exposure site (its visitors in the window turn at least
    /// yellow), moves one (same --risk-id), or withdraws one (--retract).
    SiteRisk(client::SiteRiskArgs),
    /// Lists the exposure sites on record, with how many residents each exposed.
    SiteRisks(client::SiteRisksArgs),
    /// Rule changes: evaluate a candidate policy beside the one in force.
    #[command(subcommand)]
    Policy(client::PolicyCommand),
    /// Issues bearer tokens and client certificates.
    #[command(subcommand)]
    Credentials(client::CredentialsCommand),
}

pub async fn run(cli: Cli) -> ExitCode {
    telemetry::init_tracing(cli.log_format);
    let outcome = match cli.command {
        Command::Up(args) => return serve(Role::Up, args).await,
        Command::Edge(args) => return serve(Role::Edge, args).await,
        Command::Materializer(args) => return serve(Role::Materializer, args).await,
        Command::Lookup(args) => return serve(Role::Lookup, args).await,
        Command::Rebuild(args) => rebuild(args).await,
        Command::Scan(args) => client::scan(args).await,
        Command::Test(args) => client::test(args).await,
        Command::Override(args) => client::override_event(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Overrides(args) => client::overrides(args).await,
        Command::SiteRisk(args) => client::site_risk(args).await,
        Command::SiteRisks(args) => client::site_risks(args).await,
        Command::VerifyToken(args) => client::verify_token(args),
        Command::Credentials(command) => client::credentials(command),
        Command::Policy(command) => client::policy(command).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head -1`): nothing to say to anyone.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn rebuild(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.resolve().context("invalid configuration")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let caught = crate::app::rebuild(settings, stop).await?;
    let rate = caught.records as f64 / caught.seconds.max(1e-9);
    client::out!("rebuilt from {} log records in {:.1} s ({rate:.0} records/s)", caught.records, caught.seconds)?;
    Ok(())
}

async fn serve(role: Role, args: ServeArgs) -> ExitCode {
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("healthcode: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let data_dir = settings.data_dir.display().to_string();
    let app = match App::start(role, settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("healthcode: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        role = ?role,
        grpc_addr = app.grpc_addr.map(|a| a.to_string()),
        admin_addr = %app.admin_addr,
        data_dir,
        "healthcode is serving"
    );
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = app.stopped() => {}
    }
    match app.stop().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcode: stopped with an error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
