//! Exposure sites: which of a resident's visits fall in an active site risk.
//!
//! Judged at read time, from the resident's visits and the city's site
//! risks, both grow-only sets: a risk declared after the visits, a visit
//! uploaded after the risk, a retraction or a moved window all meet the same
//! way whatever order they arrived in, and a lookup reads one resident and
//! the (small, cached) risk list, never a site's visitors.

use std::collections::HashMap;

use crate::facts::{Facts, SiteRiskFact};
use crate::time::UnixMicros;

/// The active (latest version, not retracted) site risks, by site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteRisks {
    windows: HashMap<String, Vec<(UnixMicros, UnixMicros)>>,
    active: usize,
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
        // Visits ascend by time: the first covered one from the end is the latest.
        facts.visits.iter().rev().find(|v| self.covers(&v.site_id, v.scanned_at)).map(|v| v.scanned_at)
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
}
