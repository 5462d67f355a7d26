//! Validated domain events. Built only by [`crate::Validator`] from the wire
//! form, so every field here already satisfies the rules.

use serde::{Deserialize, Serialize};

use crate::time::UnixMicros;

/// Health-code color, ordered by severity: a larger value is more severe.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Color {
    Green = 1,
    Yellow = 2,
    Red = 3,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScanKind {
    VenueEntry,
    Checkpoint,
    TestSiteArrival,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TestKind {
    Pcr,
    PcrPooled,
    Antigen,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TestOutcome {
    Negative,
    Positive,
    Inconclusive,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The client's idempotency key.
    pub event_id: String,
    pub resident_id: String,
    pub body: EventBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBody {
    Scan {
        station_id: String,
        site_id: String,
        kind: ScanKind,
        scanned_at: UnixMicros,
    },
    TestResult {
        sample_id: String,
        lab_id: String,
        kind: TestKind,
        outcome: TestOutcome,
        sampled_at: UnixMicros,
        resulted_at: UnixMicros,
    },
    Override {
        authority_id: String,
        color: Color,
        note: String,
        issued_at: UnixMicros,
        expires_at: UnixMicros,
    },
    /// A health authority declares (or moves, or withdraws) an exposure
    /// site: who scanned in at `site_id` in `[risky_from, risky_until)`
    /// was exposed. Not about one resident: its `resident_id` is
    /// [`crate::facts::SITE_RISKS_KEY`].
    SiteRisk {
        risk_id: String,
        site_id: String,
        authority_id: String,
        risky_from: UnixMicros,
        risky_until: UnixMicros,
        issued_at: UnixMicros,
        retracted: bool,
        note: String,
    },
}

impl Event {
    /// The time this event happened in the world (not when it arrived).
    pub fn occurred_at(&self) -> UnixMicros {
        match &self.body {
            EventBody::Scan { scanned_at, .. } => *scanned_at,
            EventBody::TestResult { resulted_at, .. } => *resulted_at,
            EventBody::Override { issued_at, .. } | EventBody::SiteRisk { issued_at, .. } => *issued_at,
        }
    }

    /// The event's kind as an index into [`Event::KIND_LABELS`] (for
    /// per-kind metrics registered once).
    pub fn kind_index(&self) -> usize {
        match self.body {
            EventBody::Scan { .. } => 0,
            EventBody::TestResult { .. } => 1,
            EventBody::Override { .. } => 2,
            EventBody::SiteRisk { .. } => 3,
        }
    }

    /// Short, bounded names of the kinds for metrics labels, by [`Event::kind_index`].
    pub const KIND_LABELS: [&'static str; 4] = ["scan", "test_result", "override", "site_risk"];

    /// A short, bounded name for metrics labels.
    pub fn kind_label(&self) -> &'static str {
        Self::KIND_LABELS[self.kind_index()]
    }
}
