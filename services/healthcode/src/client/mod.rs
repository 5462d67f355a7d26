//! Client verbs for people at a terminal: readable output, `--json` for
//! scripts. Submitting (scan, test, override), reading (status, overrides,
//! verify-token) and issuing credentials each have their file; here is what
//! they share: where the service is and how to reach it.

mod credentials;
mod policy;
mod read;
mod site;
mod submit;

use std::time::{Duration, SystemTime};

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use healthcode_auth::{DEV_PRINCIPALS, DevCredentials, Role, with_token};
use healthcode_core::UnixMicros;
use healthcode_proto::Timestamp;
use healthcode_proto::v1::{self as pb};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use credentials::{CredentialsCommand, InitArgs, IssueArgs, credentials};
pub use policy::{DiffArgs, PolicyCommand, policy};
pub use read::{OverridesArgs, StatusArgs, VerifyTokenArgs, overrides, status, verify_token};
pub use site::{SiteRiskArgs, SiteRisksArgs, site_risk, site_risks};
pub use submit::{
    ColorArg, OutcomeArg, OverrideArgs, ScanArgs, ScanKindArg, TestArgs, TestKindArg, override_event, scan, test,
};

/// One line to stdout. A closed pipe (`healthcode status a b | head -1`)
/// is an error here, which `cli` ends on quietly, as Unix tools do.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub(crate) use out;

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
