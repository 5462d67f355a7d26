//! Wire events to domain events. Every rule names the field it guards, so a
//! station maker sees exactly what to fix.

use std::time::Duration;

use healthcode_proto::Timestamp;
use healthcode_proto::v1 as pb;

use crate::event::{Color, Event, EventBody, ScanKind, TestKind, TestOutcome};
use crate::time::UnixMicros;

pub const MAX_ID_LEN: usize = 64;
pub const MAX_NOTE_LEN: usize = 1024;
pub const MAX_BATCH_EVENTS: usize = 1000;
pub const MAX_LOOKUP_BATCH: usize = 500;

/// A rejected field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// Path of the field in the request, e.g. `event.sampled_at`.
    pub field: String,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ValidationError { field: field.into(), rule: rule.into() }
    }
}

/// Bounds that depend on the clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How far in the future an event time may be (clock skew of stations).
    pub max_future_skew: Duration,
    /// How old an event time may be; facts older than this are forgotten.
    pub retention: Duration,
}

/// How long facts are kept unless a deployment says otherwise: the log's
/// topics, the store's cells and the edge's refusal of old events share it.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for Limits {
    fn default() -> Self {
        Limits { max_future_skew: Duration::from_secs(5 * 60), retention: DEFAULT_RETENTION }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Validator {
    pub limits: Limits,
}

/// The clock rules apply at the edge, when the event arrives; a record read
/// back from the log later is checked for shape only.
#[derive(Copy, Clone)]
enum Clock {
    At(UnixMicros),
    Ignore,
}

/// Where an event sits in its request: `event`, or `events[3]`.
#[derive(Copy, Clone, Debug)]
pub struct EventPath<'a> {
    name: &'a str,
    index: Option<usize>,
}

impl<'a> EventPath<'a> {
    /// An event on its own (`event`, `record`).
    pub fn single(name: &'a str) -> Self {
        EventPath { name, index: None }
    }

    /// The `index`th event of a repeated field (`events[3]`).
    pub fn indexed(name: &'a str, index: usize) -> Self {
        EventPath { name, index: Some(index) }
    }
}

impl std::fmt::Display for EventPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            None => f.write_str(self.name),
            Some(i) => write!(f, "{}[{i}]", self.name),
        }
    }
}

/// The path of the fields of one event: `events[3].scan`. It is spelled out
/// only when a rule is broken: formatting it for every valid event was a
/// fifth of the materializer's allocations under a flood.
#[derive(Copy, Clone)]
struct Fields<'a> {
    event: EventPath<'a>,
    oneof: Option<&'static str>,
}

impl Fields<'_> {
    fn path(&self, name: &str) -> String {
        match self.oneof {
            None => format!("{}.{name}", self.event),
            Some(oneof) => format!("{}.{oneof}.{name}", self.event),
        }
    }

    fn error(&self, name: &str, rule: impl Into<String>) -> ValidationError {
        ValidationError::new(self.path(name), rule)
    }

    fn id(&self, value: String, name: &str) -> Result<String, ValidationError> {
        match id_rule(&value) {
            Ok(()) => Ok(value),
            Err(rule) => Err(self.error(name, rule)),
        }
    }
}

impl Validator {
    pub fn new(limits: Limits) -> Self {
        Validator { limits }
    }

    /// Full validation at arrival time `now`. Field paths name the oneof:
    /// `events[3].scan.site_id`.
    pub fn validate(&self, event: pb::Event, at: EventPath<'_>, now: UnixMicros) -> Result<Event, ValidationError> {
        self.check(event, at, Clock::At(now))
    }

    /// Full validation of an event sent on its own (`SubmitScan`, ...): field
    /// paths are `{at}.{field}`, without the oneof name.
    pub fn validate_single(
        &self,
        event: pb::Event,
        at: EventPath<'_>,
        now: UnixMicros,
    ) -> Result<Event, ValidationError> {
        let p = Fields { event: at, oneof: None };
        match event.kind {
            None => Err(ValidationError::new(at.to_string(), "must be set")),
            Some(kind) => self.kind(kind, p, Clock::At(now)),
        }
    }

    /// Shape-only validation of a record already accepted once (read from the log).
    pub fn decode_record(&self, event: pb::Event) -> Result<Event, ValidationError> {
        self.check(event, EventPath::single("record"), Clock::Ignore)
    }

    fn check(&self, event: pb::Event, at: EventPath<'_>, clock: Clock) -> Result<Event, ValidationError> {
        use pb::event::Kind;
        let oneof = match &event.kind {
            None => {
                return Err(ValidationError::new(
                    format!("{at}.kind"),
                    "must be set to one of scan, test_result, override_event, site_risk",
                ));
            }
            Some(Kind::Scan(_)) => "scan",
            Some(Kind::TestResult(_)) => "test_result",
            Some(Kind::OverrideEvent(_)) => "override_event",
            Some(Kind::SiteRisk(_)) => "site_risk",
        };
        let kind = event.kind.expect("matched above");
        self.kind(kind, Fields { event: at, oneof: Some(oneof) }, clock)
    }

    fn kind(&self, kind: pb::event::Kind, p: Fields<'_>, clock: Clock) -> Result<Event, ValidationError> {
        use pb::event::Kind;
        match kind {
            Kind::Scan(e) => self.scan(e, p, clock),
            Kind::TestResult(e) => self.test_result(e, p, clock),
            Kind::OverrideEvent(e) => self.override_event(e, p, clock),
            Kind::SiteRisk(e) => self.site_risk(e, p, clock),
        }
    }

    fn scan(&self, e: pb::ScanEvent, p: Fields<'_>, clock: Clock) -> Result<Event, ValidationError> {
        let event_id = p.id(e.event_id, "event_id")?;
        let resident_id = p.id(e.resident_id, "resident_id")?;
        let station_id = p.id(e.station_id, "station_id")?;
        let site_id = p.id(e.site_id, "site_id")?;
        let kind = enum_field::<pb::ScanKind, ScanKind>(e.kind, p, "kind")?;
        let scanned_at = self.event_time(e.scanned_at.as_ref(), p, "scanned_at", clock)?;
        Ok(Event { event_id, resident_id, body: EventBody::Scan { station_id, site_id, kind, scanned_at } })
    }

    fn test_result(&self, e: pb::TestResultEvent, p: Fields<'_>, clock: Clock) -> Result<Event, ValidationError> {
        let event_id = p.id(e.event_id, "event_id")?;
        let resident_id = p.id(e.resident_id, "resident_id")?;
        let sample_id = p.id(e.sample_id, "sample_id")?;
        let lab_id = p.id(e.lab_id, "lab_id")?;
        let kind = enum_field::<pb::TestKind, TestKind>(e.kind, p, "kind")?;
        let outcome = enum_field::<pb::TestOutcome, TestOutcome>(e.outcome, p, "outcome")?;
        let sampled_at = self.event_time(e.sampled_at.as_ref(), p, "sampled_at", clock)?;
        let resulted_at = self.event_time(e.resulted_at.as_ref(), p, "resulted_at", clock)?;
        if resulted_at < sampled_at {
            return Err(p.error("resulted_at", "must not be before sampled_at"));
        }
        Ok(Event {
            event_id,
            resident_id,
            body: EventBody::TestResult { sample_id, lab_id, kind, outcome, sampled_at, resulted_at },
        })
    }

    fn override_event(&self, e: pb::OverrideEvent, p: Fields<'_>, clock: Clock) -> Result<Event, ValidationError> {
        let event_id = p.id(e.event_id, "event_id")?;
        let resident_id = p.id(e.resident_id, "resident_id")?;
        let authority_id = p.id(e.authority_id, "authority_id")?;
        let color = enum_field::<pb::Color, Color>(e.color, p, "color")?;
        if e.note.len() > MAX_NOTE_LEN {
            return Err(p.error("note", format!("must be at most {MAX_NOTE_LEN} bytes")));
        }
        let issued_at = self.event_time(e.issued_at.as_ref(), p, "issued_at", clock)?;
        let expires_at = timestamp(e.expires_at.as_ref(), p, "expires_at")?;
        if expires_at <= issued_at {
            return Err(p.error("expires_at", "must be after issued_at"));
        }
        // Facts live for the retention window after their own time, so an
        // override that outlasted it would silently end at its end. Refused
        // instead, at arrival (records already in the log keep applying).
        if matches!(clock, Clock::At(_)) && expires_at > issued_at.saturating_add(self.limits.retention) {
            return Err(p.error(
                "expires_at",
                format!(
                    "must be at most the retention window of {}s after issued_at; issue a new override before this one ends",
                    self.limits.retention.as_secs()
                ),
            ));
        }
        Ok(Event {
            event_id,
            resident_id,
            body: EventBody::Override { authority_id, color, note: e.note, issued_at, expires_at },
        })
    }

    fn site_risk(&self, e: pb::SiteRiskEvent, p: Fields<'_>, clock: Clock) -> Result<Event, ValidationError> {
        let event_id = p.id(e.event_id, "event_id")?;
        let risk_id = p.id(e.risk_id, "risk_id")?;
        let site_id = p.id(e.site_id, "site_id")?;
        let authority_id = p.id(e.authority_id, "authority_id")?;
        if e.note.len() > MAX_NOTE_LEN {
            return Err(p.error("note", format!("must be at most {MAX_NOTE_LEN} bytes")));
        }
        let issued_at = self.event_time(e.issued_at.as_ref(), p, "issued_at", clock)?;
        let risky_from = timestamp(e.risky_from.as_ref(), p, "risky_from")?;
        let risky_until = timestamp(e.risky_until.as_ref(), p, "risky_until")?;
        if risky_until <= risky_from {
            return Err(p.error("risky_until", "must be after risky_from"));
        }
        if risky_until > risky_from.saturating_add(self.limits.retention) {
            return Err(p.error(
                "risky_until",
                format!(
                    "must be at most the retention window of {}s after risky_from",
                    self.limits.retention.as_secs()
                ),
            ));
        }
        if let Clock::At(now) = clock
            && risky_from > now.saturating_add(self.limits.max_future_skew)
        {
            return Err(p.error(
                "risky_from",
                format!("must not be more than {}s in the future", self.limits.max_future_skew.as_secs()),
            ));
        }
        Ok(Event {
            event_id,
            resident_id: crate::facts::SITE_RISKS_KEY.to_owned(),
            body: EventBody::SiteRisk {
                risk_id,
                site_id,
                authority_id,
                risky_from,
                risky_until,
                issued_at,
                retracted: e.retracted,
                note: e.note,
            },
        })
    }

    /// A timestamp that must be set and, at arrival, lie within
    /// [now - retention, now + skew].
    fn event_time(
        &self,
        ts: Option<&Timestamp>,
        p: Fields<'_>,
        name: &str,
        clock: Clock,
    ) -> Result<UnixMicros, ValidationError> {
        let t = timestamp(ts, p, name)?;
        if let Clock::At(now) = clock {
            if t > now.saturating_add(self.limits.max_future_skew) {
                return Err(p.error(
                    name,
                    format!("must not be more than {}s in the future", self.limits.max_future_skew.as_secs()),
                ));
            }
            if t < now.saturating_sub(self.limits.retention) {
                return Err(p.error(
                    name,
                    format!("must not be older than the retention window of {}s", self.limits.retention.as_secs()),
                ));
            }
        }
        Ok(t)
    }
}

fn timestamp(ts: Option<&Timestamp>, p: Fields<'_>, name: &str) -> Result<UnixMicros, ValidationError> {
    let ts = ts.ok_or_else(|| p.error(name, "must be set"))?;
    UnixMicros::from_timestamp(ts).ok_or_else(|| p.error(name, "must be a valid timestamp between years 1 and 9999"))
}

/// A wire enum field as its domain value: known and not unspecified.
fn enum_field<W, D>(raw: i32, p: Fields<'_>, name: &str) -> Result<D, ValidationError>
where
    W: TryFrom<i32>,
    D: TryFrom<W>,
{
    let wire = W::try_from(raw).map_err(|_| p.error(name, format!("unknown value {raw}")))?;
    D::try_from(wire).map_err(|_| p.error(name, "must not be unspecified"))
}

/// Checks an identifier: 1 to 64 characters from `[A-Za-z0-9._:-]`.
pub fn check_id(value: &str, field: &str) -> Result<(), ValidationError> {
    id_rule(value).map_err(|rule| ValidationError::new(field, rule))
}

/// The rule an identifier breaks, if any.
fn id_rule(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err("must only contain characters from [A-Za-z0-9._:-]".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> UnixMicros {
        UnixMicros(1_800_000_000_000_000)
    }

    fn ts(t: UnixMicros) -> Option<Timestamp> {
        Some(t.to_timestamp())
    }

    fn good_test() -> pb::TestResultEvent {
        pb::TestResultEvent {
            event_id: "e-1".into(),
            resident_id: "r:1".into(),
            sample_id: "s.1".into(),
            lab_id: "lab_1".into(),
            kind: pb::TestKind::Pcr as i32,
            outcome: pb::TestOutcome::Negative as i32,
            sampled_at: ts(now().saturating_sub(Duration::from_secs(3600))),
            resulted_at: ts(now()),
        }
    }

    fn wrap(e: pb::TestResultEvent) -> pb::Event {
        pb::Event { kind: Some(pb::event::Kind::TestResult(e)), provenance: None }
    }

    fn err(e: pb::TestResultEvent) -> ValidationError {
        Validator::default().validate_single(wrap(e), EventPath::single("event"), now()).unwrap_err()
    }

    #[test]
    fn a_good_event_passes() {
        let e = Validator::default().validate_single(wrap(good_test()), EventPath::single("event"), now()).unwrap();
        assert_eq!(e.resident_id, "r:1");
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(err(pb::TestResultEvent { event_id: "".into(), ..good_test() }).field, "event.event_id");
        assert_eq!(err(pb::TestResultEvent { lab_id: "x".repeat(65), ..good_test() }).field, "event.lab_id");
        assert_eq!(err(pb::TestResultEvent { sample_id: "a b".into(), ..good_test() }).field, "event.sample_id");
        assert_eq!(err(pb::TestResultEvent { kind: 0, ..good_test() }).field, "event.kind");
        assert_eq!(err(pb::TestResultEvent { outcome: 42, ..good_test() }).rule, "unknown value 42");
        assert_eq!(err(pb::TestResultEvent { sampled_at: None, ..good_test() }).field, "event.sampled_at");
        let early =
            pb::TestResultEvent { resulted_at: ts(now().saturating_sub(Duration::from_secs(7200))), ..good_test() };
        assert_eq!(err(early).rule, "must not be before sampled_at");
    }

    #[test]
    fn a_batched_event_names_its_index_and_kind() {
        let bad = wrap(pb::TestResultEvent { lab_id: String::new(), ..good_test() });
        let e = Validator::default().validate(bad, EventPath::indexed("events", 3), now()).unwrap_err();
        assert_eq!(e.field, "events[3].test_result.lab_id");
        let unset = Validator::default().validate(
            pb::Event { kind: None, provenance: None },
            EventPath::indexed("events", 7),
            now(),
        );
        assert_eq!(unset.unwrap_err().field, "events[7].kind");
    }

    #[test]
    fn ids_accept_exactly_the_documented_alphabet() {
        assert!(check_id("Az09._:-", "f").is_ok());
        assert!(check_id(&"a".repeat(64), "f").is_ok());
        for bad in ["", "é", "a/b", "a b", "a\0"] {
            assert!(check_id(bad, "f").is_err(), "{bad:?} accepted");
        }
    }

    fn override_lasting(d: Duration) -> pb::Event {
        pb::Event {
            kind: Some(pb::event::Kind::OverrideEvent(pb::OverrideEvent {
                event_id: "o-1".into(),
                resident_id: "r:1".into(),
                authority_id: "auth-1".into(),
                color: pb::Color::Yellow as i32,
                note: String::new(),
                issued_at: ts(now()),
                expires_at: ts(now().saturating_add(d)),
            })),
            provenance: None,
        }
    }

    #[test]
    fn an_override_may_last_the_retention_window_and_no_longer() {
        let v = Validator::default();
        let retention = Limits::default().retention;
        assert!(v.validate_single(override_lasting(retention), EventPath::single("event"), now()).is_ok());
        let longer = override_lasting(retention + Duration::from_micros(1));
        let e = v.validate_single(longer, EventPath::single("event"), now()).unwrap_err();
        assert_eq!(e.field, "event.expires_at");
        assert!(e.rule.contains("retention window of 2592000s"), "{}", e.rule);
        // 60 days: refused at submission, never silently cut at day 30.
        let sixty_days = override_lasting(Duration::from_secs(60 * 24 * 3600));
        assert_eq!(
            v.validate_single(sixty_days.clone(), EventPath::single("event"), now()).unwrap_err().field,
            "event.expires_at"
        );
        // A record already in the log still applies.
        assert!(v.decode_record(sixty_days).is_ok());
    }

    fn site_risk(from: i64, until: i64) -> pb::Event {
        let hours = |h: i64| ts(UnixMicros(now().0 + h * 3_600_000_000));
        pb::Event {
            kind: Some(pb::event::Kind::SiteRisk(pb::SiteRiskEvent {
                event_id: "k-1".into(),
                risk_id: "risk-1".into(),
                site_id: "mall-7".into(),
                authority_id: "auth-1".into(),
                risky_from: hours(from),
                risky_until: hours(until),
                issued_at: ts(now()),
                retracted: false,
                note: String::new(),
            })),
            provenance: None,
        }
    }

    #[test]
    fn a_site_risk_needs_a_window_forward_in_time_and_no_longer_than_retention() {
        let v = Validator::default();
        let at = EventPath::single("event");
        let ok = v.validate_single(site_risk(-48, -24), at, now()).unwrap();
        assert_eq!(ok.resident_id, crate::facts::SITE_RISKS_KEY);
        let e = v.validate_single(site_risk(-24, -24), at, now()).unwrap_err();
        assert_eq!((e.field.as_str(), e.rule.as_str()), ("event.risky_until", "must be after risky_from"));
        let e = v.validate_single(site_risk(-31 * 24, -1), at, now()).unwrap_err();
        assert_eq!(e.field, "event.risky_until");
        assert!(e.rule.contains("retention window"), "{}", e.rule);
        let e = v.validate_single(site_risk(2, 3), at, now()).unwrap_err();
        assert_eq!(e.field, "event.risky_from");
        let mut no_site = site_risk(-2, -1);
        if let Some(pb::event::Kind::SiteRisk(r)) = &mut no_site.kind {
            r.site_id.clear();
        }
        assert_eq!(
            v.validate(no_site, EventPath::indexed("events", 2), now()).unwrap_err().field,
            "events[2].site_risk.site_id"
        );
    }

    #[test]
    fn clock_rules_apply_only_at_arrival() {
        let old = pb::Event {
            kind: Some(pb::event::Kind::TestResult(pb::TestResultEvent {
                sampled_at: ts(UnixMicros(0)),
                resulted_at: ts(UnixMicros(1)),
                ..good_test()
            })),
            provenance: None,
        };
        let v = Validator::default();
        assert_eq!(
            v.validate(old.clone(), EventPath::single("event"), now()).unwrap_err().field,
            "event.test_result.sampled_at"
        );
        assert!(v.decode_record(old).is_ok());
    }
}
