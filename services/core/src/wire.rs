//! Domain values back to the wire form: the inverse of [`crate::validation`],
//! for the lookup's replies and for tools that write events.

use healthcode_proto::v1 as pb;

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
        None => "",
    }
}

pub fn color_to_wire(color: Color) -> pb::Color {
    match color {
        Color::Green => pb::Color::Green,
        Color::Yellow => pb::Color::Yellow,
        Color::Red => pb::Color::Red,
    }
}

pub fn reason_to_wire(reason: Reason) -> pb::Reason {
    match reason {
        Reason::NegativeTestValid => pb::Reason::NegativeTestValid,
        Reason::NoValidTest => pb::Reason::NoValidTest,
        Reason::NoRecord => pb::Reason::NoRecord,
        Reason::PositiveTest => pb::Reason::PositiveTest,
        Reason::Override => pb::Reason::Override,
    }
}

pub fn event_to_wire(event: &Event) -> pb::Event {
    use pb::event::Kind as W;
    let ts = |t: UnixMicros| Some(t.to_timestamp());
    let kind = match &event.body {
        EventBody::Scan { station_id, site_id, kind, scanned_at } => W::Scan(pb::ScanEvent {
            event_id: event.event_id.clone(),
            resident_id: event.resident_id.clone(),
            station_id: station_id.clone(),
            site_id: site_id.clone(),
            kind: match kind {
                ScanKind::VenueEntry => pb::ScanKind::VenueEntry,
                ScanKind::Checkpoint => pb::ScanKind::Checkpoint,
                ScanKind::TestSiteArrival => pb::ScanKind::TestSiteArrival,
            } as i32,
            scanned_at: ts(*scanned_at),
        }),
        EventBody::TestResult { sample_id, lab_id, kind, outcome, sampled_at, resulted_at } => {
            W::TestResult(pb::TestResultEvent {
                event_id: event.event_id.clone(),
                resident_id: event.resident_id.clone(),
                sample_id: sample_id.clone(),
                lab_id: lab_id.clone(),
                kind: match kind {
                    TestKind::Pcr => pb::TestKind::Pcr,
                    TestKind::PcrPooled => pb::TestKind::PcrPooled,
                    TestKind::Antigen => pb::TestKind::Antigen,
                } as i32,
                outcome: match outcome {
                    TestOutcome::Negative => pb::TestOutcome::Negative,
                    TestOutcome::Positive => pb::TestOutcome::Positive,
                    TestOutcome::Inconclusive => pb::TestOutcome::Inconclusive,
                } as i32,
                sampled_at: ts(*sampled_at),
                resulted_at: ts(*resulted_at),
            })
        }
        EventBody::Override { authority_id, color, note, issued_at, expires_at } => {
            W::OverrideEvent(pb::OverrideEvent {
                event_id: event.event_id.clone(),
                resident_id: event.resident_id.clone(),
                authority_id: authority_id.clone(),
                color: color_to_wire(*color) as i32,
                note: note.clone(),
                issued_at: ts(*issued_at),
                expires_at: ts(*expires_at),
            })
        }
    };
    pb::Event { kind: Some(kind) }
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
        ];
        for event in events {
            assert_eq!(Validator::default().decode_record(&event_to_wire(&event)).unwrap(), event);
        }
    }
}
