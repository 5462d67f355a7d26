//! Client verbs for people at a terminal: readable output, `--json` for scripts.

use std::time::{Duration, SystemTime};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use healthcode_auth::{DEV_PRINCIPALS, DevCredentials, Issuer, Role, TokenRegistry, new_token, with_token};
use healthcode_core::UnixMicros;
use healthcode_proto::Timestamp;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use healthcode_status_token::Keyring;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// One line to stdout. A closed pipe (`healthcode status a b | head -1`)
/// is an error here, which `cli` ends on quietly, as Unix tools do.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

#[derive(Args, Debug)]
pub struct Target {
    /// Address of the healthcode gRPC service (https:// for TLS).
    #[arg(long, env = "HEALTHCODE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token [default: the development token of the verb's role in --credentials-dir]
    #[arg(long, env = "HEALTHCODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `healthcode up` put its development credentials.
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// CA that signed the server's certificate, for https:// [default: ca.pem in --credentials-dir]
    #[arg(long, env = "HEALTHCODE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to authenticate with instead of a token (mutual TLS).
    #[arg(long, env = "HEALTHCODE_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key of --cert-file.
    #[arg(long, env = "HEALTHCODE_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
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

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(required = true)]
    pub residents: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct OverridesArgs {
    pub resident: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct VerifyTokenArgs {
    /// The token (the `status_token` of an answer), or `-` to read it from stdin.
    pub token: String,
    /// Public keys of the signing service, by key id.
    #[arg(long, env = "HEALTHCODE_STATUS_KEYS", default_value = "./data/credentials/status-keys.toml")]
    pub keys: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Creates a deployment's credentials where missing: CA, server
    /// certificate, a token and client certificate per role, pseudonym key
    /// and status signing key (then kept in a secret store, e.g. a Kubernetes Secret).
    Init(InitArgs),
    /// Issues a bearer token: appends its hash to the tokens file (running
    /// servers pick it up within a second) and prints the token once.
    Token(IssueArgs),
    /// Issues a client certificate signed by the credentials dir's CA.
    Cert(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The station, lab or authority id the credential submits under.
    #[arg(long)]
    pub principal: String,
    #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
    pub role: Role,
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// Where `cert` writes <principal>.pem and <principal>.key [default: the credentials dir]
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(long, env = "HEALTHCODE_CREDENTIALS_DIR", default_value = "./data/credentials")]
    pub credentials_dir: PathBuf,
    /// DNS name or IP address the server certificate is for (repeatable)
    /// [default: localhost and 127.0.0.1]
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
}

/// The development principal of a role: the id a verb submits under by default.
fn dev_principal(role: Role) -> String {
    DEV_PRINCIPALS.iter().find(|(_, r)| *r == role).map(|(name, _)| name.to_string()).expect("every role")
}

async fn channel(target: &Target) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(target.addr.clone())
        .with_context(|| format!("bad address {}", target.addr))?
        .connect_timeout(target.timeout)
        .timeout(target.timeout);
    if target.addr.starts_with("https://") {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let ca = target.ca_file.clone().unwrap_or_else(|| DevCredentials::at(&target.credentials_dir).ca_cert());
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)?));
        if let (Some(cert), Some(key)) = (&target.cert_file, &target.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
    }
    endpoint.connect().await.with_context(|| format!("cannot reach {}", target.addr))
}

/// `message` with the caller's credential: the token given, else (without a
/// client certificate) the development token of `role`.
fn request<T>(target: &Target, role: Role, message: T) -> anyhow::Result<tonic::Request<T>> {
    let token = match (&target.token, &target.cert_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(DevCredentials::at(&target.credentials_dir).token(role).with_context(|| {
            format!(
                "no token: pass --token, or run `healthcode up` to create development credentials in {}",
                target.credentials_dir.display()
            )
        })?),
    };
    Ok(match token {
        Some(token) => with_token(message, &token),
        None => tonic::Request::new(message),
    })
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

fn print_reply(reply: pb::SubmitReply, what: &str, json: bool) -> std::io::Result<()> {
    let outcome = pb::Outcome::try_from(reply.outcome).unwrap_or_default().as_str_name();
    if json {
        out!("{}", json!({ "event_id": reply.event_id, "outcome": outcome }))
    } else {
        out!("{what} {}: {}", reply.event_id, outcome.to_lowercase())
    }
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

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = LookupClient::new(channel(&args.target).await?);
    let message = pb::BatchGetStatusRequest { resident_id: args.residents };
    let reply = client.batch_get_status(request(&args.target, Role::Station, message)?).await?.into_inner();
    for s in reply.statuses {
        let color = pb::Color::try_from(s.color).unwrap_or_default().as_str_name();
        let reason = pb::Reason::try_from(s.reason).unwrap_or_default().as_str_name();
        if args.target.json {
            out!(
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
                    "status_token": s.status_token,
                })
            )?;
        } else {
            let dash = || "-".to_string();
            let until = rfc3339(&s.valid_until).map(|t| format!(" until {t}")).unwrap_or_default();
            let stale = if s.stale { " (STALE: store unreachable, last known)" } else { "" };
            out!("{}: {color} ({}){until}{stale}", s.resident_id, reason.to_lowercase().replace('_', " "))?;
            out!(
                "  last negative sample {}, last positive sample {}, updated {}",
                rfc3339(&s.last_negative_sampled_at).unwrap_or_else(dash),
                rfc3339(&s.last_positive_sampled_at).unwrap_or_else(dash),
                rfc3339(&s.updated_at).unwrap_or_else(dash),
            )?;
            // An override in force shows even when the color is as severe
            // without it (a YELLOW override over a YELLOW "no record").
            if let Some(until) = rfc3339(&s.override_expires_at)
                && s.reason != pb::Reason::Override as i32
            {
                out!("  an override is in force until {until}; it does not change the color now")?;
            }
        }
    }
    Ok(())
}

pub async fn overrides(args: OverridesArgs) -> anyhow::Result<()> {
    let mut client = LookupClient::new(channel(&args.target).await?);
    let message = pb::ListOverridesRequest { resident_id: args.resident.clone() };
    let reply = client.list_overrides(request(&args.target, Role::Authority, message)?).await?.into_inner();
    if reply.overrides.is_empty() && !args.target.json {
        out!("{}: no overrides on record", args.resident)?;
    }
    for o in reply.overrides {
        let color = pb::Color::try_from(o.color).unwrap_or_default().as_str_name();
        let (issued, expires) = (rfc3339(&o.issued_at), rfc3339(&o.expires_at));
        if args.target.json {
            out!(
                "{}",
                json!({
                    "event_id": o.event_id, "authority_id": o.authority_id, "color": color,
                    "note": o.note, "issued_at": issued, "expires_at": expires,
                })
            )?;
        } else {
            let dash = || "-".to_string();
            out!(
                "{} {color} by {} from {} until {}: {}",
                o.event_id,
                o.authority_id,
                issued.unwrap_or_else(dash),
                expires.unwrap_or_else(dash),
                o.note
            )?;
        }
    }
    Ok(())
}

/// Verifies a token offline; an invalid token is an error (exit 1) saying why.
pub fn verify_token(args: VerifyTokenArgs) -> anyhow::Result<()> {
    let keyring = Keyring::from_file(&args.keys)?;
    let token = if args.token == "-" { std::io::read_to_string(std::io::stdin())? } else { args.token };
    let claims = keyring.verify(&token, UnixMicros::now()).context("token refused")?;
    let time = |t: UnixMicros| humantime::format_rfc3339_seconds(t.to_system_time()).to_string();
    let (color, reason) = (claims.color.as_str_name(), claims.reason.as_str_name());
    if args.json {
        out!(
            "{}",
            json!({
                "resident_id": claims.resident_id, "color": color, "reason": reason,
                "valid_until": time(claims.valid_until), "issued_at": time(claims.issued_at),
                "key_id": claims.key_id, "stale": claims.stale,
            })
        )?;
    } else {
        let stale = if claims.stale { ", from the service's cache while its store was unreachable" } else { "" };
        out!(
            "valid: {} is {color} ({}) until {}; issued {} with key {}{stale}",
            claims.resident_id,
            reason.to_lowercase().replace('_', " "),
            time(claims.valid_until),
            time(claims.issued_at),
            claims.key_id
        )?;
    }
    Ok(())
}

pub fn credentials(command: CredentialsCommand) -> anyhow::Result<()> {
    match command {
        CredentialsCommand::Init(args) => {
            let names: Vec<&str> = args.server_names.iter().map(String::as_str).collect();
            let created = crate::credentials::create_credentials(&args.credentials_dir, &names)?;
            let created = if created.is_empty() { "nothing, all was there".to_owned() } else { created.join(", ") };
            eprintln!("credentials in {}: created {created}", args.credentials_dir.display());
        }
        CredentialsCommand::Token(args) => {
            let dir = DevCredentials::at(&args.credentials_dir);
            let (token, entry) = new_token(&args.principal, args.role);
            TokenRegistry::append(&dir.tokens_file(), &[entry])?;
            eprintln!("token of {} ({}) added to {}", args.principal, args.role, dir.tokens_file().display());
            out!("{token}")?;
        }
        CredentialsCommand::Cert(args) => {
            let dir = DevCredentials::at(&args.credentials_dir);
            let cert = Issuer::open(&dir)?.client_cert(&args.principal, args.role)?;
            let out = args.out.unwrap_or_else(|| args.credentials_dir.clone());
            std::fs::create_dir_all(&out)?;
            let (pem, key) = (out.join(format!("{}.pem", args.principal)), out.join(format!("{}.key", args.principal)));
            std::fs::write(&pem, cert.cert_pem)?;
            healthcode_secrets::write_private(&key, cert.key_pem.as_bytes())?;
            out!("{}\n{}", pem.display(), key.display())?;
        }
    }
    Ok(())
}
