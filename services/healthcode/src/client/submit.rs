//! Submitting events as a station, lab or authority would.
use std::time::Duration;

use clap::{Args, ValueEnum};
use healthcode_auth::Role;
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient};

use super::{Target, channel, dev_principal, generated_id, instant, print_reply, request, ts};

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
    /// The station scanning: the caller's own id [default: dev-station]
    #[arg(long)]
    pub station: Option<String>,
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
    /// The lab reporting: the caller's own id [default: dev-lab]
    #[arg(long)]
    pub lab: Option<String>,
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
    /// The authority deciding: the caller's own id [default: dev-authority]
    #[arg(long)]
    pub authority: Option<String>,
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

pub async fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let event = pb::ScanEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("scan")),
        resident_id: args.resident,
        station_id: args.station.unwrap_or_else(|| dev_principal(Role::Station)),
        site_id: args.site,
        kind: match args.kind {
            ScanKindArg::VenueEntry => pb::ScanKind::VenueEntry,
            ScanKindArg::Checkpoint => pb::ScanKind::Checkpoint,
            ScanKindArg::TestSiteArrival => pb::ScanKind::TestSiteArrival,
        } as i32,
        scanned_at: ts(args.at),
    };
    let mut client = IngestClient::new(channel(&args.target).await?);
    let message = pb::SubmitScanRequest { event: Some(event) };
    let reply = client.submit_scan(request(&args.target, Role::Station, message)?).await?.into_inner();
    Ok(print_reply(reply, "scan", args.target.json)?)
}

pub async fn test(args: TestArgs) -> anyhow::Result<()> {
    let sampled_at = instant(args.sampled_at);
    // A result is never before its sample, even when only the sample time is given.
    let resulted_at = args.resulted_at.map(|t| instant(Some(t))).unwrap_or_else(|| instant(None).max(sampled_at));
    let event = pb::TestResultEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("test")),
        resident_id: args.resident,
        sample_id: args.sample.unwrap_or_else(|| generated_id("sample")),
        lab_id: args.lab.unwrap_or_else(|| dev_principal(Role::Lab)),
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
    let message = pb::SubmitTestResultRequest { event: Some(event) };
    let reply = client.submit_test_result(request(&args.target, Role::Lab, message)?).await?.into_inner();
    Ok(print_reply(reply, "test result", args.target.json)?)
}

pub async fn override_event(args: OverrideArgs) -> anyhow::Result<()> {
    let issued = UnixMicros::now();
    let event = pb::OverrideEvent {
        event_id: args.event_id.unwrap_or_else(|| generated_id("override")),
        resident_id: args.resident,
        authority_id: args.authority.unwrap_or_else(|| dev_principal(Role::Authority)),
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
    let message = pb::SubmitOverrideRequest { event: Some(event) };
    let reply = client.submit_override(request(&args.target, Role::Authority, message)?).await?.into_inner();
    Ok(print_reply(reply, "override", args.target.json)?)
}
