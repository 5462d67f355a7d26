use std::fmt;
use std::str::FromStr;

use healthcode_proto::v1::{self as pb, event::Kind};
use healthcode_rpc::ServiceError;
use serde::{Deserialize, Serialize};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Scanning stations: submit scans, read statuses.
    Station,
    /// Labs: submit test results.
    Lab,
    /// Health authorities: submit and list overrides.
    Authority,
    /// Operators: metrics and admin endpoints.
    Ops,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Station, Role::Lab, Role::Authority, Role::Ops];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Station => "station",
            Role::Lab => "lab",
            Role::Authority => "authority",
            Role::Ops => "ops",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (one of station, lab, authority, ops)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// How it proved its name: what the audit record keeps beside it.
    pub proof: Proof,
}

/// The credential a principal was recognised by.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Proof {
    BearerToken,
    ClientCertificate,
}

/// The calls that need a credential.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Rpc {
    SubmitScan,
    SubmitTestResult,
    SubmitOverride,
    SubmitBatch,
    GetStatus,
    BatchGetStatus,
    ListOverrides,
    SubmitSiteRisk,
    ListSiteRisks,
    Metrics,
}

impl Rpc {
    pub const ALL: [Rpc; 10] = [
        Rpc::SubmitScan,
        Rpc::SubmitTestResult,
        Rpc::SubmitOverride,
        Rpc::SubmitBatch,
        Rpc::GetStatus,
        Rpc::BatchGetStatus,
        Rpc::ListOverrides,
        Rpc::SubmitSiteRisk,
        Rpc::ListSiteRisks,
        Rpc::Metrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::SubmitScan => "SubmitScan",
            Rpc::SubmitTestResult => "SubmitTestResult",
            Rpc::SubmitOverride => "SubmitOverride",
            Rpc::SubmitBatch => "SubmitBatch",
            Rpc::GetStatus => "GetStatus",
            Rpc::BatchGetStatus => "BatchGetStatus",
            Rpc::ListOverrides => "ListOverrides",
            Rpc::SubmitSiteRisk => "SubmitSiteRisk",
            Rpc::ListSiteRisks => "ListSiteRisks",
            Rpc::Metrics => "metrics",
        }
    }

    /// The roles admitted. A batch is open to every submitting role; each
    /// event in it must still be the caller's own ([`check_owner`]).
    pub fn roles(self) -> &'static [Role] {
        match self {
            Rpc::SubmitScan | Rpc::GetStatus | Rpc::BatchGetStatus => &[Role::Station],
            Rpc::SubmitTestResult => &[Role::Lab],
            Rpc::SubmitOverride | Rpc::ListOverrides | Rpc::SubmitSiteRisk => &[Role::Authority],
            Rpc::ListSiteRisks => &[Role::Authority, Role::Ops],
            Rpc::SubmitBatch => &[Role::Station, Role::Lab, Role::Authority],
            Rpc::Metrics => &[Role::Ops],
        }
    }
}

/// Who an event says submitted it: the role, the id field and its value.
pub fn owner(event: &pb::Event) -> Option<(Role, &'static str, &str)> {
    match &event.kind {
        Some(Kind::Scan(e)) => Some((Role::Station, "station_id", &e.station_id)),
        Some(Kind::TestResult(e)) => Some((Role::Lab, "lab_id", &e.lab_id)),
        Some(Kind::OverrideEvent(e)) => Some((Role::Authority, "authority_id", &e.authority_id)),
        Some(Kind::SiteRisk(e)) => Some((Role::Authority, "authority_id", &e.authority_id)),
        None => None,
    }
}

/// An event may only be submitted by the station, lab or authority it names.
/// `field` prefixes the error (`event`, `events[3]`). Events without a kind
/// pass here and are refused by validation, which names the missing field.
pub fn check_owner(principal: &Principal, event: &pb::Event, field: &str) -> Result<(), ServiceError> {
    let Some((role, id_field, id)) = owner(event) else { return Ok(()) };
    if principal.role != role {
        return Err(ServiceError::PermissionDenied(format!(
            "{field}: a {} may not submit this kind of event (it needs the {role} role)",
            principal.role
        )));
    }
    if id != principal.name {
        return Err(ServiceError::PermissionDenied(format!(
            "{field}.{id_field}: must be the caller's own id {:?}",
            principal.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_listed_at_its_own_index() {
        for (i, rpc) in Rpc::ALL.iter().enumerate() {
            assert_eq!(*rpc as usize, i, "{rpc:?}");
        }
    }

    fn scan(station: &str) -> pb::Event {
        pb::Event {
            kind: Some(Kind::Scan(pb::ScanEvent { station_id: station.into(), ..Default::default() })),
            provenance: None,
        }
    }

    #[test]
    fn an_event_must_name_its_caller() {
        let st = Principal { name: "st-1".into(), role: Role::Station, proof: Proof::BearerToken };
        assert!(check_owner(&st, &scan("st-1"), "event").is_ok());
        let err = check_owner(&st, &scan("st-2"), "events[4]").unwrap_err().to_string();
        assert!(err.contains("events[4].station_id"), "{err}");
        let lab = Principal { name: "st-1".into(), role: Role::Lab, proof: Proof::BearerToken };
        let err = check_owner(&lab, &scan("st-1"), "event").unwrap_err().to_string();
        assert!(err.contains("needs the station role"), "{err}");
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
