//! `POST /policy/diff` on the admin port (ops role): the rules in force and
//! a candidate policy file, evaluated side by side over every resident's
//! facts at one instant. Nothing is written. The scan is paced so that
//! lookups keep their answer time, stops when the caller goes away, and
//! shows its progress in `healthcode_policy_diff_residents`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use healthcode_core::shadow::PolicyDiff;
use healthcode_core::{SITE_RISKS_KEY, SiteRisks, UnixMicros};
use healthcode_proto::v1 as pb;
use healthcode_store::{StatusStore, StoreError};
use serde::Serialize;

use crate::config::VersionedPolicy;

/// Residents read per store page.
const PAGE: usize = 1_000;
/// Most residents evaluated per second, all shards together: a store read
/// per resident on CQL, so the scan takes a bounded share of the store and
/// of the CPU.
const MAX_RATE: f64 = 50_000.0;
/// Shards (token ranges on CQL) scanned at once.
const PARALLEL_SHARDS: usize = 4;

/// What a diff needs: the store and the rules in force.
pub struct ShadowRules {
    pub store: Arc<dyn StatusStore>,
    pub current: VersionedPolicy,
    /// The last diff this process made, for the operations console.
    pub last: std::sync::Mutex<Option<DiffReport>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DiffReport {
    pub residents: u64,
    pub as_of: String,
    pub current: String,
    pub candidate: String,
    /// Residents whose color the candidate changes.
    pub changed: u64,
    /// Every (from, to) pair of colors met, unchanged ones included.
    pub transitions: Vec<ColorTransition>,
    pub reasons: Vec<ReasonTransition>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ColorTransition {
    pub from: String,
    pub to: String,
    pub count: u64,
    /// Up to 10 residents, pseudonymised.
    pub samples: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReasonTransition {
    pub from: String,
    pub to: String,
    pub count: u64,
}

impl ShadowRules {
    /// Evaluates `candidate` beside the rules in force over every resident.
    pub async fn diff(&self, candidate: &VersionedPolicy) -> Result<DiffReport, StoreError> {
        let now = UnixMicros::now();
        let progress = metrics::gauge!("healthcode_policy_diff_residents");
        progress.set(0.0);
        // Both policies judge exposure against the same site risks.
        let risks = self.store.get(SITE_RISKS_KEY).await?.map(|f| SiteRisks::from_facts(&f)).unwrap_or_default();
        let shards = self.store.scan_shards();
        let parallel = PARALLEL_SHARDS.min(shards.len()).max(1);
        let rate = MAX_RATE / parallel as f64;
        let risks = &risks;
        let mut diffs = futures_util::stream::iter(shards)
            .map(|start| self.diff_shard(start, candidate, risks, now, rate, &progress))
            .buffer_unordered(parallel);
        let mut diff = PolicyDiff::default();
        while let Some(shard) = diffs.next().await {
            diff.absorb(shard?);
        }
        let report = self.report(&diff, candidate, now);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        Ok(report)
    }

    /// The last diff made, if any.
    pub fn last(&self) -> Option<DiffReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One shard, page by page, at `rate` residents/s.
    async fn diff_shard(
        &self,
        start: Option<String>,
        candidate: &VersionedPolicy,
        risks: &SiteRisks,
        now: UnixMicros,
        rate: f64,
        progress: &metrics::Gauge,
    ) -> Result<PolicyDiff, StoreError> {
        let mut diff = PolicyDiff::default();
        let mut cursor = start;
        loop {
            let page_started = tokio::time::Instant::now();
            let page = self.store.scan(cursor, PAGE).await?;
            // The registry of site risks is kept like a resident's facts; it is not one.
            for u in page.residents.iter().filter(|u| u.resident != SITE_RISKS_KEY) {
                diff.add(&u.resident, &u.facts, risks, (&self.current.policy, &candidate.policy), now);
            }
            progress.increment(page.residents.len() as f64);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(diff),
            }
            let paced = Duration::from_secs_f64(page.residents.len() as f64 / rate);
            tokio::time::sleep_until(page_started + paced).await;
        }
    }

    fn report(&self, diff: &PolicyDiff, candidate: &VersionedPolicy, now: UnixMicros) -> DiffReport {
        let color = |c| pb::Color::from(c).as_str_name().to_owned();
        let reason = |r| pb::Reason::from(r).as_str_name().to_owned();
        DiffReport {
            residents: diff.residents,
            as_of: humantime::format_rfc3339_micros(now.to_system_time()).to_string(),
            current: self.current.version.clone(),
            candidate: candidate.version.clone(),
            changed: diff.changed(),
            transitions: diff
                .colors
                .iter()
                .map(|((from, to), t)| ColorTransition {
                    from: color(*from),
                    to: color(*to),
                    count: t.count,
                    samples: t.samples.clone(),
                })
                .collect(),
            reasons: diff
                .reasons
                .iter()
                .map(|((from, to), count)| ReasonTransition { from: reason(*from), to: reason(*to), count: *count })
                .collect(),
        }
    }
}
