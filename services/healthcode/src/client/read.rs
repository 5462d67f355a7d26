//! Reading residents' codes, overrides on record, and checking tokens offline.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use healthcode_auth::Role;
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, lookup_client::LookupClient};
use healthcode_status_token::Keyring;
use serde_json::json;

use super::{Target, channel, out, request, rfc3339};

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

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = LookupClient::new(channel(&args.target).await?);
    let message = pb::BatchGetStatusRequest { resident_id: args.residents, ..Default::default() };
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
                    "exposed_at": rfc3339(&s.exposed_at),
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
            if let Some(at) = rfc3339(&s.exposed_at) {
                out!("  exposed: scanned in at an exposure site at {at}")?;
            }
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

/// Every override on record for the resident, newest first, read from the
/// audit record page by page.
pub async fn overrides(args: OverridesArgs) -> anyhow::Result<()> {
    let mut client = LookupClient::new(channel(&args.target).await?);
    let (mut page_token, mut listed) = (String::new(), 0usize);
    loop {
        let message = pb::ListOverridesRequest { resident_id: args.resident.clone(), page_size: 0, page_token };
        let reply = client.list_overrides(request(&args.target, Role::Authority, message)?).await?.into_inner();
        listed += reply.overrides.len();
        for o in reply.overrides {
            print_override(o, args.target.json)?;
        }
        if reply.next_page_token.is_empty() {
            break;
        }
        page_token = reply.next_page_token;
    }
    if listed == 0 && !args.target.json {
        out!("{}: no overrides on record", args.resident)?;
    }
    Ok(())
}

fn print_override(o: pb::OverrideRecord, json: bool) -> anyhow::Result<()> {
    let color = pb::Color::try_from(o.color).unwrap_or_default().as_str_name();
    let (issued, expires) = (rfc3339(&o.issued_at), rfc3339(&o.expires_at));
    let credential = match pb::Credential::try_from(o.credential).unwrap_or_default() {
        pb::Credential::BearerToken => "token",
        pb::Credential::ClientCertificate => "certificate",
        pb::Credential::Unspecified => "unrecorded",
    };
    if json {
        out!(
            "{}",
            json!({
                "event_id": o.event_id, "authority_id": o.authority_id, "color": color,
                "note": o.note, "issued_at": issued, "expires_at": expires,
                "principal": o.principal, "credential": credential, "accepted_at": rfc3339(&o.accepted_at),
            })
        )?;
    } else {
        let dash = || "-".to_string();
        let principal = if o.principal.is_empty() { dash() } else { o.principal };
        out!(
            "{} {color} by {} ({principal}, {credential}) from {} until {}: {}",
            o.event_id,
            o.authority_id,
            issued.unwrap_or_else(dash),
            expires.unwrap_or_else(dash),
            o.note
        )?;
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
