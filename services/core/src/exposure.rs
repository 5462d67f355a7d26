//! Exposure sites: which of a resident's visits fall in an active site risk.
//!
//! Judged at read time, from the resident's visits and the city's site
//! risks, both grow-only sets: a risk declared after the visits, a visit
//! uploaded after the risk, a retraction or a moved window all meet the same
//! way whatever order they arrived in, and a lookup reads one resident and
//! the (small, cached) risk list, never a site's visitors.

use crate::facts::{Facts, SiteRiskFact};
use crate::time::UnixMicros;

/// The active (latest version, not retracted) site risks, by site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRisks {
    /// foldhash, not SipHash: every lookup hashes each of the resident's
    /// visits (up to 512) into this map, and SipHash was 14% of a lookup
    /// bench's samples.
    windows: foldhash::HashMap<String, Vec<(UnixMicros, UnixMicros)>>,
    active: usize,
    /// The earliest `risky_from` and the latest `risky_until` of them all:
    /// visits outside are judged without a look-up.
    from: UnixMicros,
    until: UnixMicros,
}

impl Default for SiteRisks {
    fn default() -> Self {
        let (from, until) = (UnixMicros(i64::MAX), UnixMicros(i64::MIN));
        SiteRisks { windows: foldhash::HashMap::default(), active: 0, from, until }
    }
}

impl SiteRisks {
    /// No site is risky.
    pub fn none() -> SiteRisks {
        SiteRisks::default()
    }

    /// The active risks among the facts kept under
    /// [`crate::facts::SITE_RISKS_KEY`].
    pub fn from_facts(registry: &Facts) -> SiteRisks {
        SiteRisks::from_risks(&registry.site_risks)
    }

    /// The active ones of `risks` (each the latest version of its risk_id).
    pub fn from_risks(risks: &[SiteRiskFact]) -> SiteRisks {
        let mut out = SiteRisks::default();
        for risk in risks.iter().filter(|r| !r.retracted) {
            out.windows.entry(risk.site_id.clone()).or_default().push((risk.risky_from, risk.risky_until));
            out.active += 1;
            (out.from, out.until) = (out.from.min(risk.risky_from), out.until.max(risk.risky_until));
        }
        out
    }

    /// How many risks are active.
    pub fn len(&self) -> usize {
        self.active
    }

    pub fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// Whether a scan at `site_id` at `at` lies in an active risk's window
    /// `[risky_from, risky_until)`.
    pub fn covers(&self, site_id: &str, at: UnixMicros) -> bool {
        self.windows.get(site_id).is_some_and(|ws| ws.iter().any(|(from, until)| *from <= at && at < *until))
    }

    /// The latest of the resident's visits that an active risk covers: the
    /// time the resident was (last) exposed.
    pub fn exposed_at(&self, facts: &Facts) -> Option<UnixMicros> {
        if self.is_empty() {
            return None;
        }
        // Visits ascend by time: the first covered one from the end is the
        // latest, and none before the earliest window can be covered (a
        // resident keeps up to 512 visits; the risks are usually recent).
        facts
            .visits
            .iter()
            .rev()
            .skip_while(|v| v.scanned_at >= self.until)
            .take_while(|v| v.scanned_at >= self.from)
            .find(|v| self.covers(&v.site_id, v.scanned_at))
            .map(|v| v.scanned_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::VisitFact;

    fn t(s: i64) -> UnixMicros {
        UnixMicros(s * 1_000_000)
    }

    fn risk(id: &str, site: &str, from: i64, until: i64, retracted: bool) -> SiteRiskFact {
        SiteRiskFact {
            risk_id: id.into(),
            issued_at: t(100),
            event_id: format!("e-{id}"),
            site_id: site.into(),
            authority_id: "cdc".into(),
            risky_from: t(from),
            risky_until: t(until),
            retracted,
            note: String::new(),
        }
    }

    fn visits(list: &[(&str, i64)]) -> Facts {
        let mut v: Vec<VisitFact> =
            list.iter().map(|(site, at)| VisitFact { scanned_at: t(*at), site_id: (*site).into() }).collect();
        v.sort();
        Facts { visits: v, ..Facts::default() }
    }

    #[test]
    fn the_latest_covered_visit_is_the_exposure_and_the_window_end_is_open() {
        let risks = SiteRisks::from_risks(&[risk("r1", "mall", 10, 20, false), risk("r2", "gym", 0, 50, true)]);
        assert_eq!(risks.len(), 1);
        assert_eq!(risks.exposed_at(&visits(&[("mall", 12), ("mall", 15), ("mall", 25)])), Some(t(15)));
        assert_eq!(risks.exposed_at(&visits(&[("mall", 20)])), None, "risky_until is excluded");
        assert_eq!(risks.exposed_at(&visits(&[("mall", 10)])), Some(t(10)), "risky_from is included");
        assert_eq!(risks.exposed_at(&visits(&[("gym", 12)])), None, "a retracted risk exposes nobody");
        assert_eq!(SiteRisks::none().exposed_at(&visits(&[("mall", 12)])), None);
    }

    #[test]
    fn visits_outside_every_window_are_passed_over_and_inside_still_found() {
        let risks = SiteRisks::from_risks(&[risk("r1", "mall", 100, 200, false), risk("r2", "gym", 300, 400, false)]);
        // Many visits after the last window and before the first one, one
        // covered visit between them, one at a risky site but out of its window.
        let mut list: Vec<(&str, i64)> = (0..300).map(|i| ("mall", 500 + i)).collect();
        list.extend((0..50).map(|i| ("gym", i)));
        list.extend([("gym", 350), ("mall", 250)]);
        assert_eq!(risks.exposed_at(&visits(&list)), Some(t(350)));
        assert_eq!(risks.exposed_at(&visits(&[("mall", 99), ("gym", 400), ("mall", 250)])), None);
    }
}
