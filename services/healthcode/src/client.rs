//! Client verbs for people at a terminal: readable output, `--json` for scripts.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};
use healthcode_core::UnixMicros;
use healthcode_proto::Timestamp;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

#[derive(Args, Debug)]
pub struct Target {
    /// Address of the healthcode gRPC service.
    #[arg(long, env = "HEALTHCODE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ScanKindArg {
    VenueEntry,
    Checkpoint,
    TestSiteArrival,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum OutcomeArg {
    Negative,
    Positive,
    Inconclusive,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum TestKindArg {
    Pcr,
    PcrPooled,
    Antigen,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ColorArg {
    Green,
    Yellow,
    Red,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    pub resident: String,
    #[arg(long)]
    pub station: String,
    #[arg(long)]
    pub site: String,
    #[arg(long, value_enum, default_value = "venue-entry")]
    pub kind: ScanKindArg,
    /// When the scan happened (RFC 3339) [default: now]
    #[arg(long)]
    pub at: Option<humantime::Timestamp>,
    /// Idempotency key [default: generated]
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    pub resident: String,
    #[arg(long, value_enum)]
    pub outcome: OutcomeArg,
    #[arg(long)]
    pub lab: String,
    /// Sample id [default: generated]
    #[arg(long)]
    pub sample: Option<String>,
    #[arg(long, value_enum, default_value = "pcr")]
    pub kind: TestKindArg,
    /// When the sample was taken (RFC 3339) [default: now]
    #[arg(long)]
    pub sampled_at: Option<humantime::Timestamp>,
    /// When the result was produced (RFC 3339) [default: now]
    #[arg(long)]
    pub resulted_at: Option<humantime::Timestamp>,
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct OverrideArgs {
    pub resident: String,
    #[arg(long, value_enum)]
    pub color: ColorArg,
    #[arg(long)]
    pub authority: String,
    /// How long the override lasts.
    #[arg(long = "for", default_value = "14days", value_parser = humantime::parse_duration)]
    pub lasts: Duration,
    #[arg(long, default_value = "")]
    pub note: String,
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(required = true)]
    pub residents: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

async fn channel(target: &Target) -> anyhow::Result<Channel> {
    Endpoint::from_shared(target.addr.clone())
        .with_context(|| format!("bad address {}", target.addr))?
        .connect_timeout(target.timeout)
        .timeout(target.timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {}", target.addr))
}

fn generated_id(prefix: &str) -> String {
    format!("{prefix}-{}-{}", UnixMicros::now().0, std::process::id())
}

/// The given instant, or now.
fn instant(t: Option<humantime::Timestamp>) -> UnixMicros {
    UnixMicros::from_system_time(t.map(Into::into).unwrap_or_else(SystemTime::now))
}

fn ts(t: Option<humantime::Timestamp>) -> Option<Timestamp> {
    Some(instant(t).to_timestamp())
}

fn rfc3339(t: &Option<Timestamp>) -> Option<String> {
    let t = UnixMicros::from_timestamp(t.as_ref()?)?;
    Some(humantime::format_rfc3339_seconds(t.to_system_time()).to_string())
}

fn print_reply(reply: pb::SubmitReply, what: &str, json: bool) {
    let outcome = pb::Outcome::try_from(reply.outcome).unwrap_or_default().as_str_name();
    if json {
        println!("{}", json!({ "event_id": reply.event_id, "outcome": outcome }));
    } else {
        println!("{what} {}: {}", reply.event_id, outcome.to_lowercase());
    }
}

pub async fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let event = pb::ScanEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("scan")),
        resident_id: args.resident,
        station_id: args.station,
        site_id: args.site,
        kind: match args.kind {
            ScanKindArg::VenueEntry => pb::ScanKind::VenueEntry,
            ScanKindArg::Checkpoint => pb::ScanKind::Checkpoint,
            ScanKindArg::TestSiteArrival => pb::ScanKind::TestSiteArrival,
        } as i32,
        scanned_at: ts(args.at),
    };
    let mut client = IngestClient::new(channel(&args.target).await?);
    let reply = client.submit_scan(pb::SubmitScanRequest { event: Some(event) }).await?.into_inner();
    print_reply(reply, "scan", args.target.json);
    Ok(())
}

pub async fn test(args: TestArgs) -> anyhow::Result<()> {
    let sampled_at = instant(args.sampled_at);
    // A result is never before its sample, even when only the sample time is given.
    let resulted_at = args.resulted_at.map(|t| instant(Some(t))).unwrap_or_else(|| instant(None).max(sampled_at));
    let event = pb::TestResultEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("test")),
        resident_id: args.resident,
        sample_id: args.sample.unwrap_or_else(|| generated_id("sample")),
        lab_id: args.lab,
        kind: match args.kind {
            TestKindArg::Pcr => pb::TestKind::Pcr,
            TestKindArg::PcrPooled => pb::TestKind::PcrPooled,
            TestKindArg::Antigen => pb::TestKind::Antigen,
        } as i32,
        outcome: match args.outcome {
            OutcomeArg::Negative => pb::TestOutcome::Negative,
            OutcomeArg::Positive => pb::TestOutcome::Positive,
            OutcomeArg::Inconclusive => pb::TestOutcome::Inconclusive,
        } as i32,
        sampled_at: Some(sampled_at.to_timestamp()),
        resulted_at: Some(resulted_at.to_timestamp()),
    };
    let mut client = IngestClient::new(channel(&args.target).await?);
    let reply = client.submit_test_result(pb::SubmitTestResultRequest { event: Some(event) }).await?.into_inner();
    print_reply(reply, "test result", args.target.json);
    Ok(())
}

pub async fn override_event(args: OverrideArgs) -> anyhow::Result<()> {
    let issued = UnixMicros::now();
    let event = pb::OverrideEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("override")),
        resident_id: args.resident,
        authority_id: args.authority,
        color: match args.color {
            ColorArg::Green => pb::Color::Green,
            ColorArg::Yellow => pb::Color::Yellow,
            ColorArg::Red => pb::Color::Red,
        } as i32,
        note: args.note,
        issued_at: Some(issued.to_timestamp()),
        expires_at: Some(issued.saturating_add(args.lasts).to_timestamp()),
    };
    let mut client = IngestClient::new(channel(&args.target).await?);
    let reply = client.submit_override(pb::SubmitOverrideRequest { event: Some(event) }).await?.into_inner();
    print_reply(reply, "override", args.target.json);
    Ok(())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = LookupClient::new(channel(&args.target).await?);
    let reply = client.batch_get_status(pb::BatchGetStatusRequest { resident_id: args.residents }).await?.into_inner();
    for s in reply.statuses {
        let color = pb::Color::try_from(s.color).unwrap_or_default().as_str_name();
        let reason = pb::Reason::try_from(s.reason).unwrap_or_default().as_str_name();
        if args.target.json {
            println!(
                "{}",
                json!({
                    "resident_id": s.resident_id,
                    "color": color,
                    "reason": reason,
                    "valid_until": rfc3339(&s.valid_until),
                    "last_negative_sampled_at": rfc3339(&s.last_negative_sampled_at),
                    "last_positive_sampled_at": rfc3339(&s.last_positive_sampled_at),
                    "override_expires_at": rfc3339(&s.override_expires_at),
                    "updated_at": rfc3339(&s.updated_at),
                    "as_of": rfc3339(&s.as_of),
                    "stale": s.stale,
                })
            );
        } else {
            let dash = || "-".to_string();
            let until = rfc3339(&s.valid_until).map(|t| format!(" until {t}")).unwrap_or_default();
            let stale = if s.stale { " (STALE: store unreachable, last known)" } else { "" };
            println!("{}: {color} ({}){until}{stale}", s.resident_id, reason.to_lowercase().replace('_', " "));
            println!(
                "  last negative sample {}, last positive sample {}, updated {}",
                rfc3339(&s.last_negative_sampled_at).unwrap_or_else(dash),
                rfc3339(&s.last_positive_sampled_at).unwrap_or_else(dash),
                rfc3339(&s.updated_at).unwrap_or_else(dash),
            );
        }
    }
    Ok(())
}
