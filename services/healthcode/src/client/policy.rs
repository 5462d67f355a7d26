//! `healthcode policy diff`: how many residents a candidate policy would
//! move from one color to another, asked of a running server's admin port
//! (ops role), changing nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use healthcode_auth::{DevCredentials, Role};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::out;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Evaluates a candidate policy file beside the rules in force, over
    /// every resident, and prints the transitions.
    Diff(DiffArgs),
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The candidate policy file (TOML: version, negative_valid_for, negatives_to_clear_positive).
    #[arg(long)]
    pub candidate: PathBuf,
    /// The server's admin address.
    #[arg(long, env = "HEALTHCODE_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Ops bearer token [default: ops.token in --credentials-dir]
    #[arg(long, env = "HEALTHCODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// Print the server's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long (a city's diff is paced: minutes).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Diff(args) => diff(args).await,
    }
}

async fn diff(args: DiffArgs) -> anyhow::Result<()> {
    let candidate = std::fs::read_to_string(&args.candidate)
        .with_context(|| format!("reading the candidate {}", args.candidate.display()))?;
    // Refused here with the key named, before the server scans anything.
    crate::config::parse_policy(&candidate).with_context(|| format!("in {}", args.candidate.display()))?;
    let token = match args.token {
        Some(token) => token,
        None => DevCredentials::at(&args.credentials_dir).token(Role::Ops)?,
    };
    let request = hyper_util::client::legacy::connect::HttpConnector::new();
    let client: Client<_, Full<axum::body::Bytes>> = Client::builder(TokioExecutor::new()).build(request);
    let request = axum::http::Request::post(format!("http://{}/policy/diff", args.admin_addr))
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::from(candidate))?;
    let response = tokio::time::timeout(args.timeout, client.request(request))
        .await
        .context("no answer within --timeout")?
        .with_context(|| format!("asking the admin port at {}", args.admin_addr))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    anyhow::ensure!(status.is_success(), "the server refused the diff ({status}): {}", body.trim());
    if args.json {
        out!("{}", body.trim())?;
        return Ok(());
    }
    let report: serde_json::Value = serde_json::from_str(&body).context("the server's answer is not JSON")?;
    out!(
        "{} residents as of {}: rules {} -> candidate {}; {} would change color",
        report["residents"],
        report["as_of"].as_str().unwrap_or_default(),
        report["current"].as_str().unwrap_or_default(),
        report["candidate"].as_str().unwrap_or_default(),
        report["changed"]
    )?;
    for t in report["transitions"].as_array().into_iter().flatten() {
        let samples: Vec<&str> = t["samples"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
        out!(
            "  {:>6} -> {:<6} {:>10}   e.g. {}",
            t["from"].as_str().unwrap_or_default(),
            t["to"].as_str().unwrap_or_default(),
            t["count"],
            samples.join(" ")
        )?;
    }
    Ok(())
}
