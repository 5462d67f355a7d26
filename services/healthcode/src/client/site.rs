//! Exposure sites, as a health authority declares, withdraws and lists them.

use anyhow::Context;
use clap::Args;
use healthcode_auth::Role;
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use serde_json::json;

use super::{Target, channel, dev_principal, generated_id, out, print_reply, request, rfc3339, ts};

#[derive(Args, Debug)]
pub struct SiteRiskArgs {
    /// The site where cases were found (its `site_id` in scans)
    #[arg(required_unless_present = "retract")]
    pub site: Option<String>,
    /// Start of the risky window (RFC 3339): scans from then on count
    #[arg(long, required_unless_present = "retract")]
    pub from: Option<humantime::Timestamp>,
    /// End of the risky window (RFC 3339), excluded
    #[arg(long, required_unless_present = "retract")]
    pub until: Option<humantime::Timestamp>,
    /// Withdraws the risk with this id instead (its site and window are looked up)
    #[arg(long, conflicts_with_all = ["site", "from", "until", "risk_id"])]
    pub retract: Option<String>,
    /// The risk's id; declaring it again moves its window [default: generated]
    #[arg(long)]
    pub risk_id: Option<String>,
    /// For the audit trail; never logged
    #[arg(long, default_value = "")]
    pub note: String,
    /// The authority declaring: the caller's own id [default: dev-authority]
    #[arg(long)]
    pub authority: Option<String>,
    #[arg(long)]
    pub event_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct SiteRisksArgs {
    /// Only this site's risks
    #[arg(long)]
    pub site: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

async fn list(target: &Target, site: Option<String>) -> anyhow::Result<Vec<pb::SiteRiskRecord>> {
    let mut client = LookupClient::new(channel(target).await?);
    let message = pb::ListSiteRisksRequest { site_id: site.unwrap_or_default() };
    Ok(client.list_site_risks(request(target, Role::Authority, message)?).await?.into_inner().risks)
}

pub async fn site_risk(args: SiteRiskArgs) -> anyhow::Result<()> {
    let authority_id = args.authority.unwrap_or_else(|| dev_principal(Role::Authority));
    let event = match &args.retract {
        Some(risk_id) => {
            let risks = list(&args.target, None).await?;
            let risk = risks
                .into_iter()
                .find(|r| &r.risk_id == risk_id)
                .with_context(|| format!("no site risk {risk_id} on record (`healthcode site-risks` lists them)"))?;
            pb::SiteRiskEvent {
                event_id: args.event_id.unwrap_or_else(|| generated_id("site-risk")),
                risk_id: risk.risk_id,
                site_id: risk.site_id,
                authority_id,
                risky_from: risk.risky_from,
                risky_until: risk.risky_until,
                issued_at: Some(UnixMicros::now().to_timestamp()),
                retracted: true,
                note: args.note,
            }
        }
        None => pb::SiteRiskEvent {
            event_id: args.event_id.unwrap_or_else(|| generated_id("site-risk")),
            risk_id: args.risk_id.unwrap_or_else(|| generated_id("risk")),
            site_id: args.site.unwrap_or_default(),
            authority_id,
            risky_from: ts(args.from),
            risky_until: ts(args.until),
            issued_at: Some(UnixMicros::now().to_timestamp()),
            retracted: false,
            note: args.note,
        },
    };
    let risk_id = event.risk_id.clone();
    let mut client = IngestClient::new(channel(&args.target).await?);
    let message = pb::SubmitSiteRiskRequest { event: Some(event) };
    let reply = client.submit_site_risk(request(&args.target, Role::Authority, message)?).await?.into_inner();
    let what = if args.retract.is_some() { "retraction of site risk" } else { "site risk" };
    Ok(print_reply(reply, &format!("{what} {risk_id}, event"), args.target.json)?)
}

pub async fn site_risks(args: SiteRisksArgs) -> anyhow::Result<()> {
    let risks = list(&args.target, args.site).await?;
    if risks.is_empty() && !args.target.json {
        out!("no site risks on record")?;
    }
    for r in risks {
        let (from, until, issued) = (rfc3339(&r.risky_from), rfc3339(&r.risky_until), rfc3339(&r.issued_at));
        if args.target.json {
            out!(
                "{}",
                json!({
                    "risk_id": r.risk_id, "site_id": r.site_id, "authority_id": r.authority_id,
                    "risky_from": from, "risky_until": until, "issued_at": issued,
                    "retracted": r.retracted, "note": r.note, "event_id": r.event_id,
                    "exposed_residents": r.exposed_residents,
                })
            )?;
        } else {
            let dash = || "-".to_string();
            let state = if r.retracted { "retracted".to_string() } else { format!("{} exposed", r.exposed_residents) };
            out!(
                "{} at {} from {} until {} by {}: {state}{}",
                r.risk_id,
                r.site_id,
                from.unwrap_or_else(dash),
                until.unwrap_or_else(dash),
                r.authority_id,
                if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) },
            )?;
        }
    }
    Ok(())
}
