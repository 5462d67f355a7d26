//! Shadow evaluation of a rule change: the policy in force and a candidate,
//! over the same facts at the same instant, counted per transition. Nothing
//! is written; ops see how many residents would change color before the
//! change goes live.

use std::collections::BTreeMap;

use crate::event::Color;
use crate::exposure::SiteRisks;
use crate::facts::Facts;
use crate::policy::{Policy, Reason};
use crate::time::UnixMicros;

/// Sample residents kept per color transition.
pub const SAMPLES_PER_TRANSITION: usize = 10;

/// How many residents go from one color (or reason) under the policy in
/// force to another under the candidate; unchanged ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub residents: u64,
    pub colors: BTreeMap<(Color, Color), Transition>,
    pub reasons: BTreeMap<(Reason, Reason), u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transition {
    pub count: u64,
    /// Up to [`SAMPLES_PER_TRANSITION`] residents, as the store keys them
    /// (pseudonyms), in the order met.
    pub samples: Vec<String>,
}

impl PolicyDiff {
    /// Adds one resident: both policies evaluated at `now`, over the same
    /// site risks.
    pub fn add(
        &mut self,
        resident: &str,
        facts: &Facts,
        risks: &SiteRisks,
        policies: (&Policy, &Policy),
        now: UnixMicros,
    ) {
        let (current, candidate) = policies;
        let (from, to) = (current.evaluate(facts, risks, now), candidate.evaluate(facts, risks, now));
        self.residents += 1;
        let transition = self.colors.entry((from.color, to.color)).or_default();
        transition.count += 1;
        if transition.samples.len() < SAMPLES_PER_TRANSITION {
            transition.samples.push(resident.to_owned());
        }
        *self.reasons.entry((from.reason, to.reason)).or_default() += 1;
    }

    /// Adds the counts of a diff over other residents (another shard).
    pub fn absorb(&mut self, other: PolicyDiff) {
        self.residents += other.residents;
        for (pair, theirs) in other.colors {
            let mine = self.colors.entry(pair).or_default();
            mine.count += theirs.count;
            let room = SAMPLES_PER_TRANSITION.saturating_sub(mine.samples.len());
            mine.samples.extend(theirs.samples.into_iter().take(room));
        }
        for (pair, count) in other.reasons {
            *self.reasons.entry(pair).or_default() += count;
        }
    }

    /// Residents whose color the candidate changes.
    pub fn changed(&self) -> u64 {
        self.colors.iter().filter(|((from, to), _)| from != to).map(|(_, t)| t.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_resident_counts_once_under_its_pair_of_colors_and_reasons() {
        let now = UnixMicros(1_800_000_000_000_000);
        let hours = |h: u64| UnixMicros(now.0 - (h * 3_600_000_000) as i64);
        let negative_30h_ago =
            Facts { latest_negatives: [Some(hours(30)), None], latest_test: Some(hours(30)), ..Facts::default() };
        let current = Policy::default();
        let shorter = Policy::new(Duration::from_secs(24 * 3600), 2).unwrap();
        let mut diff = PolicyDiff::default();
        for i in 0..12 {
            diff.add(&format!("r{i}"), &negative_30h_ago, &SiteRisks::none(), (&current, &shorter), now);
        }
        diff.add("nobody", &Facts::default(), &SiteRisks::none(), (&current, &shorter), now);
        assert_eq!(diff.residents, 13);
        let greens = &diff.colors[&(Color::Green, Color::Yellow)];
        assert_eq!(greens.count, 12, "a 30-hour-old negative is green for 48 h, not for 24 h");
        assert_eq!(greens.samples.len(), SAMPLES_PER_TRANSITION);
        assert_eq!(diff.colors[&(Color::Yellow, Color::Yellow)].count, 1, "unchanged ones are counted too");
        assert_eq!(diff.reasons[&(Reason::NegativeTestValid, Reason::NoValidTest)], 12);
        assert_eq!(diff.changed(), 12);

        // Two shards' diffs add up to the diff of all, samples still capped.
        let mut halves = PolicyDiff::default();
        for i in 0..6 {
            halves.add(&format!("r{i}"), &negative_30h_ago, &SiteRisks::none(), (&current, &shorter), now);
        }
        let mut other = PolicyDiff::default();
        for i in 6..12 {
            other.add(&format!("r{i}"), &negative_30h_ago, &SiteRisks::none(), (&current, &shorter), now);
        }
        other.add("nobody", &Facts::default(), &SiteRisks::none(), (&current, &shorter), now);
        halves.absorb(other);
        assert_eq!(halves, diff);
    }
}
