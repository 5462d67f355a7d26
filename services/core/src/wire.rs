//! Conversions between domain values and the wire form: `From` each domain
//! value to its wire type, `TryFrom` each wire enum back (the event itself
//! goes back through [`crate::Validator`], which checks it).

use healthcode_proto::v1 as pb;

use crate::audit::Credential;
use crate::event::{Color, Event, EventBody, ScanKind, TestKind, TestOutcome};
use crate::policy::Reason;
use crate::time::UnixMicros;

/// The `event_id` of a wire event, whatever its kind (empty when unset).
pub fn event_id(e: &pb::Event) -> &str {
    use pb::event::Kind;
    match &e.kind {
        Some(Kind::Scan(s)) => &s.event_id,
        Some(Kind::TestResult(t)) => &t.event_id,
        Some(Kind::OverrideEvent(o)) => &o.event_id,
        Some(Kind::SiteRisk(r)) => &r.event_id,
        None => "",
    }
}

/// Each domain enum and its wire enum name the same values; the wire's
/// `UNSPECIFIED` (0) has no domain value and converts to this error.
macro_rules! enum_pair {
    ($domain:ident <=> $wire:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$domain> for pb::$wire {
            fn from(value: $domain) -> Self {
                match value {
                    $($domain::$variant => pb::$wire::$variant,)+
                }
            }
        }

        impl TryFrom<pb::$wire> for $domain {
            type Error = Unspecified;
            fn try_from(value: pb::$wire) -> Result<Self, Unspecified> {
                match value {
                    $(pb::$wire::$variant => Ok($domain::$variant),)+
                    pb::$wire::Unspecified => Err(Unspecified),
                }
            }
        }
    };
}

/// A wire enum left at its `UNSPECIFIED` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspecified;

enum_pair!(Color <=> Color { Green, Yellow, Red });
enum_pair!(ScanKind <=> ScanKind { VenueEntry, Checkpoint, TestSiteArrival });
enum_pair!(TestKind <=> TestKind { Pcr, PcrPooled, Antigen });
enum_pair!(TestOutcome <=> TestOutcome { Negative, Positive, Inconclusive });
enum_pair!(Credential <=> Credential { BearerToken, ClientCertificate });

impl From<Reason> for pb::Reason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::NegativeTestValid => pb::Reason::NegativeTestValid,
            Reason::NoValidTest => pb::Reason::NoValidTest,
            Reason::NoRecord => pb::Reason::NoRecord,
            Reason::PositiveTest => pb::Reason::PositiveTest,
            Reason::Override => pb::Reason::Override,
            Reason::Exposure => pb::Reason::Exposure,
        }
    }
}

/// The wire form of a valid event; [`crate::Validator`] is the way back,
/// since a wire event must be checked before it is one.
impl From<&Event> for pb::Event {
    fn from(event: &Event) -> Self {
        use pb::event::Kind as W;
        let ts = |t: UnixMicros| Some(t.to_timestamp());
        let kind = match &event.body {
            EventBody::Scan { station_id, site_id, kind, scanned_at } => W::Scan(pb::ScanEvent {
                event_id: event.event_id.clone(),
                resident_id: event.resident_id.clone(),
                station_id: station_id.clone(),
                site_id: site_id.clone(),
                kind: pb::ScanKind::from(*kind) as i32,
                scanned_at: ts(*scanned_at),
            }),
            EventBody::TestResult { sample_id, lab_id, kind, outcome, sampled_at, resulted_at } => {
                W::TestResult(pb::TestResultEvent {
                    event_id: event.event_id.clone(),
                    resident_id: event.resident_id.clone(),
                    sample_id: sample_id.clone(),
                    lab_id: lab_id.clone(),
                    kind: pb::TestKind::from(*kind) as i32,
                    outcome: pb::TestOutcome::from(*outcome) as i32,
                    sampled_at: ts(*sampled_at),
                    resulted_at: ts(*resulted_at),
                })
            }
            EventBody::Override { authority_id, color, note, issued_at, expires_at } => {
                W::OverrideEvent(pb::OverrideEvent {
                    event_id: event.event_id.clone(),
                    resident_id: event.resident_id.clone(),
                    authority_id: authority_id.clone(),
                    color: pb::Color::from(*color) as i32,
                    note: note.clone(),
                    issued_at: ts(*issued_at),
                    expires_at: ts(*expires_at),
                })
            }
            EventBody::SiteRisk {
                risk_id,
                site_id,
                authority_id,
                risky_from,
                risky_until,
                issued_at,
                retracted,
                note,
            } => W::SiteRisk(pb::SiteRiskEvent {
                event_id: event.event_id.clone(),
                risk_id: risk_id.clone(),
                site_id: site_id.clone(),
                authority_id: authority_id.clone(),
                risky_from: ts(*risky_from),
                risky_until: ts(*risky_until),
                issued_at: ts(*issued_at),
                retracted: *retracted,
                note: note.clone(),
            }),
        };
        pb::Event { kind: Some(kind), provenance: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Validator;

    #[test]
    fn validating_the_wire_form_gives_the_event_back() {
        let at = UnixMicros(1_800_000_000_000_000);
        let events = [
            Event {
                event_id: "e1".into(),
                resident_id: "r1".into(),
                body: EventBody::Scan {
                    station_id: "st".into(),
                    site_id: "site".into(),
                    kind: ScanKind::Checkpoint,
                    scanned_at: at,
                },
            },
            Event {
                event_id: "e2".into(),
                resident_id: "r1".into(),
                body: EventBody::TestResult {
                    sample_id: "s".into(),
                    lab_id: "lab".into(),
                    kind: TestKind::Antigen,
                    outcome: TestOutcome::Inconclusive,
                    sampled_at: at,
                    resulted_at: at,
                },
            },
            Event {
                event_id: "e3".into(),
                resident_id: "r1".into(),
                body: EventBody::Override {
                    authority_id: "cdc".into(),
                    color: Color::Red,
                    note: "case".into(),
                    issued_at: at,
                    expires_at: UnixMicros(at.0 + 1),
                },
            },
            Event {
                event_id: "e4".into(),
                resident_id: crate::facts::SITE_RISKS_KEY.into(),
                body: EventBody::SiteRisk {
                    risk_id: "k1".into(),
                    site_id: "mall".into(),
                    authority_id: "cdc".into(),
                    risky_from: UnixMicros(at.0 - 10),
                    risky_until: at,
                    issued_at: at,
                    retracted: true,
                    note: "withdrawn".into(),
                },
            },
        ];
        for event in events {
            assert_eq!(Validator::default().decode_record(pb::Event::from(&event)).unwrap(), event);
        }
    }
}
