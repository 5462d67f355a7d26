//! Per-resident facts and their merge.
//!
//! Every field is a max register or a last-writer-wins register with a total
//! order on (time, event_id), so [`Facts::merge`] is idempotent, commutative
//! and associative, and `Facts::default()` is its identity. Delivery order,
//! retries and duplicates therefore cannot change a resident's facts.

use serde::{Deserialize, Serialize};

use crate::event::{Color, Event, EventBody, ScanKind, TestOutcome};
use crate::time::UnixMicros;

/// How many overrides a resident's facts keep for the audit list: the latest
/// by (issued_at, event_id). Keeping the top K of a union is still a
/// semilattice join, and it bounds what one busy authority can add.
pub const OVERRIDES_KEPT: usize = 64;

/// How many negative samples are kept: the policy never needs more than the
/// two latest to decide whether a positive has been cleared.
pub const NEGATIVES_KEPT: usize = 2;

/// How many visits (site, scan time) a resident's facts keep: the latest.
/// An exposure site can only reach the visits kept, so this bounds both
/// the facts a lookup reads and how far back a very busy scanner is
/// traceable (512 is 17 scans a day for 30 days).
pub const VISITS_KEPT: usize = 512;

/// The store key under which the city's site risks are kept, as the facts
/// of no resident. `~` is outside the id alphabet, and pseudonyms are hex,
/// so no resident can ever have this key.
pub const SITE_RISKS_KEY: &str = "~site-risks";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Latest `sampled_at` of a positive result.
    pub latest_positive: Option<UnixMicros>,
    /// The distinct latest negative `sampled_at`s, newest first.
    pub latest_negatives: [Option<UnixMicros>; NEGATIVES_KEPT],
    /// Latest `sampled_at` of any result, inconclusive included: "a test is on record".
    pub latest_test: Option<UnixMicros>,
    /// The overrides, ascending by (issued_at, event_id): the last one is in
    /// force, the others are the audit trail.
    pub overrides: Vec<OverrideFact>,
    /// The scan with the greatest (scanned_at, event_id).
    pub latest_scan: Option<ScanFact>,
    /// The latest event time folded in (resulted_at, issued_at or scanned_at).
    pub updated_at: Option<UnixMicros>,
    /// Every site the resident scanned in at and when, ascending; the
    /// latest [`VISITS_KEPT`]. A grow-only set: exposure is judged at read
    /// time against the site risks, so a risk declared after the visit and a
    /// visit uploaded after the risk meet the same way.
    pub visits: Vec<VisitFact>,
    /// Only under [`SITE_RISKS_KEY`]: per `risk_id` the version with the
    /// greatest (issued_at, event_id), ascending by risk_id.
    pub site_risks: Vec<SiteRiskFact>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VisitFact {
    // Field order is the keep-the-latest order.
    pub scanned_at: UnixMicros,
    pub site_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteRiskFact {
    // Field order: per risk_id, the LWW order (issued_at, then event_id).
    pub risk_id: String,
    pub issued_at: UnixMicros,
    pub event_id: String,
    pub site_id: String,
    pub authority_id: String,
    pub risky_from: UnixMicros,
    pub risky_until: UnixMicros,
    pub retracted: bool,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OverrideFact {
    // Field order is the LWW order: derived Ord compares issued_at, then event_id.
    pub issued_at: UnixMicros,
    pub event_id: String,
    pub expires_at: UnixMicros,
    pub color: Color,
    pub authority_id: String,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScanFact {
    // Field order is the LWW order: derived Ord compares scanned_at, then event_id.
    pub scanned_at: UnixMicros,
    pub event_id: String,
    pub site_id: String,
    pub station_id: String,
    pub kind: ScanKind,
}

impl Facts {
    /// The facts a single event contributes.
    pub fn from_event(event: &Event) -> Facts {
        Facts::from(event.clone())
    }

    /// Join of two fact sets (the semilattice's least upper bound).
    pub fn merge(&mut self, other: &Facts) {
        self.join_times(other);
        if !other.overrides.is_empty() {
            let mut all = std::mem::take(&mut self.overrides);
            all.extend(other.overrides.iter().cloned());
            self.overrides = latest(all, OVERRIDES_KEPT);
        }
        if other.latest_scan > self.latest_scan {
            self.latest_scan.clone_from(&other.latest_scan);
        }
        if !other.visits.is_empty() {
            let mut all = std::mem::take(&mut self.visits);
            all.extend(other.visits.iter().cloned());
            self.visits = latest(all, VISITS_KEPT);
        }
        if !other.site_risks.is_empty() {
            let mut all = std::mem::take(&mut self.site_risks);
            all.extend(other.site_risks.iter().cloned());
            self.site_risks = latest_per_risk(all);
        }
    }

    /// The same join, taking `other`'s strings instead of copying them.
    pub fn absorb(&mut self, other: Facts) {
        self.join_times(&other);
        if !other.overrides.is_empty() {
            let mut all = std::mem::take(&mut self.overrides);
            all.extend(other.overrides);
            self.overrides = latest(all, OVERRIDES_KEPT);
        }
        if other.latest_scan > self.latest_scan {
            self.latest_scan = other.latest_scan;
        }
        if !other.visits.is_empty() {
            if self.visits.is_empty() {
                self.visits = other.visits;
            } else {
                let mut all = std::mem::take(&mut self.visits);
                all.extend(other.visits);
                self.visits = latest(all, VISITS_KEPT);
            }
        }
        if !other.site_risks.is_empty() {
            let mut all = std::mem::take(&mut self.site_risks);
            all.extend(other.site_risks);
            self.site_risks = latest_per_risk(all);
        }
    }

    /// The max registers of both joins.
    fn join_times(&mut self, other: &Facts) {
        self.latest_positive = self.latest_positive.max(other.latest_positive);
        self.latest_test = self.latest_test.max(other.latest_test);
        self.updated_at = self.updated_at.max(other.updated_at);
        self.latest_negatives = top_distinct(&self.latest_negatives, &other.latest_negatives);
    }

    pub fn merged(mut self, other: &Facts) -> Facts {
        self.merge(other);
        self
    }

    pub fn apply(&mut self, event: Event) {
        self.absorb(Facts::from(event));
    }

    /// The override in force unless expired: the one with the greatest (issued_at, event_id).
    pub fn latest_override(&self) -> Option<&OverrideFact> {
        self.overrides.last()
    }

    /// The newest negative sample time.
    pub fn latest_negative(&self) -> Option<UnixMicros> {
        self.latest_negatives[0]
    }

    /// These facts without those older than `cutoff`, each judged by its own
    /// time (sample, issue, scan or event time): what retention keeps. A
    /// store that expires each written cell on its own (TTL) keeps exactly
    /// this, and no store can refresh an old fact's life without reading it
    /// first, so this is the one rule every store follows. It takes the facts
    /// and filters them in place: every store read and merge passes through
    /// here, and a resident with hundreds of visits would otherwise be copied
    /// once more each time.
    pub fn retained(self, cutoff: UnixMicros) -> Facts {
        // Taken apart field by field, so a new field cannot miss retention.
        let Facts {
            latest_positive,
            latest_negatives,
            latest_test,
            mut overrides,
            latest_scan,
            updated_at,
            mut visits,
            mut site_risks,
        } = self;
        let keep = |t: Option<UnixMicros>| t.filter(|t| *t >= cutoff);
        let mut negatives = [None; NEGATIVES_KEPT];
        for (slot, t) in negatives.iter_mut().zip(latest_negatives.into_iter().filter_map(keep)) {
            *slot = Some(t);
        }
        overrides.retain(|o| o.issued_at >= cutoff);
        visits.retain(|v| v.scanned_at >= cutoff);
        // A newer version of a risk is always issued later, so it outlives
        // the older ones: an expired retraction never revives its risk.
        site_risks.retain(|r| r.issued_at >= cutoff);
        Facts {
            latest_positive: keep(latest_positive),
            latest_negatives: negatives,
            latest_test: keep(latest_test),
            overrides,
            latest_scan: latest_scan.filter(|s| s.scanned_at >= cutoff),
            updated_at: keep(updated_at),
            visits,
            site_risks,
        }
    }

    /// Nothing is known: the identity of merge.
    pub fn is_empty(&self) -> bool {
        *self == Facts::default()
    }
}

impl From<Event> for Facts {
    /// The facts a single event contributes, taking its strings.
    fn from(event: Event) -> Facts {
        let mut facts = Facts { updated_at: Some(event.occurred_at()), ..Facts::default() };
        match event.body {
            EventBody::Scan { station_id, site_id, kind, scanned_at } => {
                facts.visits = vec![VisitFact { scanned_at, site_id: site_id.clone() }];
                facts.latest_scan = Some(ScanFact { scanned_at, event_id: event.event_id, site_id, station_id, kind });
            }
            EventBody::TestResult { outcome, sampled_at, .. } => {
                facts.latest_test = Some(sampled_at);
                match outcome {
                    TestOutcome::Positive => facts.latest_positive = Some(sampled_at),
                    TestOutcome::Negative => facts.latest_negatives[0] = Some(sampled_at),
                    TestOutcome::Inconclusive => {}
                }
            }
            EventBody::Override { authority_id, color, note, issued_at, expires_at } => {
                facts.overrides =
                    vec![OverrideFact { issued_at, event_id: event.event_id, expires_at, color, authority_id, note }];
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
            } => {
                facts.site_risks = vec![SiteRiskFact {
                    risk_id,
                    issued_at,
                    event_id: event.event_id,
                    site_id,
                    authority_id,
                    risky_from,
                    risky_until,
                    retracted,
                    note,
                }];
            }
        }
        facts
    }
}

/// The `keep` greatest distinct elements of `all`, ascending.
fn latest<T: Ord>(mut all: Vec<T>, keep: usize) -> Vec<T> {
    all.sort_unstable();
    all.dedup();
    let excess = all.len().saturating_sub(keep);
    all.drain(..excess);
    all
}

/// Per risk_id the greatest version, ascending by risk_id: a map of LWW
/// registers, so still a semilattice join.
fn latest_per_risk(mut all: Vec<SiteRiskFact>) -> Vec<SiteRiskFact> {
    all.sort_unstable();
    let mut out: Vec<SiteRiskFact> = Vec::with_capacity(all.len());
    for risk in all {
        match out.last_mut() {
            // Sorted, so a later element with the same id is a newer version.
            Some(last) if last.risk_id == risk.risk_id => *last = risk,
            _ => out.push(risk),
        }
    }
    out
}

/// The `NEGATIVES_KEPT` largest distinct values of both arrays, newest first.
/// On the stack: this runs for every merge.
fn top_distinct(
    a: &[Option<UnixMicros>; NEGATIVES_KEPT],
    b: &[Option<UnixMicros>; NEGATIVES_KEPT],
) -> [Option<UnixMicros>; NEGATIVES_KEPT] {
    let mut all = [None; 2 * NEGATIVES_KEPT];
    all[..NEGATIVES_KEPT].copy_from_slice(a);
    all[NEGATIVES_KEPT..].copy_from_slice(b);
    // None sorts below every time, so descending order puts it last.
    all.sort_unstable_by(|x, y| y.cmp(x));
    let mut out = [None; NEGATIVES_KEPT];
    let mut filled = 0;
    for t in all.into_iter().flatten() {
        if filled == NEGATIVES_KEPT {
            break;
        }
        if filled == 0 || out[filled - 1] != Some(t) {
            out[filled] = Some(t);
            filled += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Option<UnixMicros> {
        Some(UnixMicros(s * 1_000_000))
    }

    #[test]
    fn negatives_keep_the_two_latest_distinct_samples() {
        let merged = top_distinct(&[t(5), t(1)], &[t(5), t(3)]);
        assert_eq!(merged, [t(5), t(3)]);
        let merged = top_distinct(&[t(2), None], &[None, None]);
        assert_eq!(merged, [t(2), None]);
        assert_eq!(top_distinct(&[t(4), t(4)], &[t(4), None]), [t(4), None]);
        assert_eq!(top_distinct(&[None, None], &[t(1), t(7)]), [t(7), t(1)]);
    }

    #[test]
    fn overrides_keep_the_latest_distinct_ones_in_order() {
        let merged = latest(vec![1, 3, 5, 2, 3, 6], 4);
        assert_eq!(merged, vec![2, 3, 5, 6]);
        assert_eq!(latest(vec![1, 2], 8), vec![1, 2]);
    }

    #[test]
    fn retention_drops_each_fact_older_than_the_cutoff_on_its_own() {
        let facts = Facts {
            latest_positive: t(10),
            latest_negatives: [t(30), t(20)],
            latest_test: t(30),
            updated_at: t(31),
            ..Facts::default()
        };
        let kept = facts.clone().retained(UnixMicros(25 * 1_000_000));
        assert_eq!(kept.latest_positive, None);
        assert_eq!(kept.latest_negatives, [t(30), None]);
        assert_eq!((kept.latest_test, kept.updated_at), (t(30), t(31)));
        assert_eq!(facts.clone().retained(UnixMicros(0)), facts);
        assert!(facts.retained(UnixMicros(32 * 1_000_000)).is_empty());
    }

    #[test]
    fn retention_and_merge_commute() {
        // Dropping old facts before or after a merge gives the same facts:
        // what makes a per-cell TTL agree with the embedded store.
        let a = Facts { latest_negatives: [t(9), t(3)], latest_positive: t(2), ..Facts::default() };
        let b = Facts { latest_negatives: [t(7), t(5)], updated_at: t(9), ..Facts::default() };
        let cutoff = UnixMicros(4 * 1_000_000);
        assert_eq!(a.clone().merged(&b).retained(cutoff), a.retained(cutoff).merged(&b.retained(cutoff)));
    }

    #[test]
    fn default_is_the_identity_of_merge() {
        let facts = Facts { latest_positive: t(4), latest_negatives: [t(9), t(7)], ..Facts::default() };
        assert_eq!(facts.clone().merged(&Facts::default()), facts);
        assert_eq!(Facts::default().merged(&facts), facts);
    }
}
