//! The schedule file: every RPC of the round in send order, and the
//! generator that writes it with bounded memory.
//!
//! Framing of one entry: `at_ms` (u64 LE, from the round start), kind (u8),
//! payload length (u32 LE), payload (a protobuf request). Event times inside
//! payloads are offsets from the round start too (the Unix epoch stands for
//! the start); the replay moves them onto the wall clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::oracle::Rules;
use anyhow::Context;
use healthcode_core::{Event, EventBody, ScanKind, TestOutcome};
use healthcode_proto::Message;
use healthcode_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::round::{MINUTE, RoundConfig, SALT_LOOKUP, mix, ms, resident_id, slot_suffix};

pub const SCHEDULE_FILE: &str = "schedule.bin";
pub const EXPECTED_FILE: &str = "expected.csv";
pub const MANIFEST_FILE: &str = "round.json";

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    SubmitBatch = 1,
    GetStatus = 2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at_ms: u64,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub entries: u64,
    pub batches: u64,
    pub events: u64,
    pub test_results: u64,
    pub duplicate_submissions: u64,
    pub overrides: u64,
    pub scans: u64,
    pub lookups: u64,
    /// Versions of site risks (declarations, moves, withdrawals).
    #[serde(default)]
    pub site_risks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub round: RoundConfig,
    pub end_ms: u64,
    pub counts: Counts,
}

pub fn write_entry(out: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    out.write_all(&entry.at_ms.to_le_bytes())?;
    out.write_all(&[entry.kind as u8])?;
    out.write_all(&(entry.payload.len() as u32).to_le_bytes())?;
    out.write_all(&entry.payload)
}

/// Reads entries until the end of the file; a truncated entry is an error.
pub struct Reader<R> {
    input: R,
}

impl Reader<BufReader<File>> {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SCHEDULE_FILE);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Reader { input: BufReader::with_capacity(1 << 20, file) })
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = anyhow::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.input.fill_buf() {
            Ok([]) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e.into())),
        }
        let mut header = [0u8; 13];
        let read = (|| -> anyhow::Result<Entry> {
            self.input.read_exact(&mut header).context("truncated entry header")?;
            let at_ms = u64::from_le_bytes(header[..8].try_into()?);
            let kind = match header[8] {
                1 => Kind::SubmitBatch,
                2 => Kind::GetStatus,
                k => anyhow::bail!("unknown entry kind {k}"),
            };
            let len = u32::from_le_bytes(header[9..13].try_into()?) as usize;
            let mut payload = vec![0; len];
            self.input.read_exact(&mut payload).context("truncated entry payload")?;
            Ok(Entry { at_ms, kind, payload })
        })();
        Some(read)
    }
}

/// Work scheduled for later, small enough to keep many of: the payload is
/// regenerated from the round model when the entry is due.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    /// Results of lab batch k in test slot s; `late` for the held-back ones.
    Lab { s: u64, k: u64, late: bool, duplicate: bool },
    /// Overrides for the contacts of positives in lab batch k of slot s.
    Overrides { s: u64, k: u64, late: bool },
    /// Venue entries of the residents of site batch j.
    Venues { j: u64 },
    /// Version `n` of site risk `r`.
    SiteRisk { r: u64, n: usize },
}

/// A scan of resident `i`. A batch is submitted by one station (the edge
/// admits only the caller's own events): test-site arrivals by the site's
/// station, venue entries by the district gateway that forwards its venues' scans.
pub(crate) fn scan(round: &RoundConfig, i: u64, kind: ScanKind, at_ms: u64, slot: u64) -> Event {
    let batch = i / round.site_batch;
    let (site, station, prefix) = match kind {
        ScanKind::TestSiteArrival => (format!("site-{}", batch % 2000), format!("st-site-{}", batch % 2000), "a"),
        _ => (round.venue_of(i), format!("st-venues-{}", batch % 100), "v"),
    };
    Event {
        event_id: format!("{prefix}-{i}{}", slot_suffix(slot)),
        resident_id: resident_id(i),
        body: EventBody::Scan { station_id: station, site_id: site, kind, scanned_at: ms(at_ms) },
    }
}

fn batch_entry(at_ms: u64, events: &[Event]) -> Entry {
    let request = pb::SubmitBatchRequest { events: events.iter().map(pb::Event::from).collect() };
    Entry { at_ms, kind: Kind::SubmitBatch, payload: request.encode_to_vec() }
}

/// Writes the schedule, the expected statuses and the manifest into `dir`.
pub fn generate(round: &RoundConfig, dir: &Path, progress: impl Fn(u64)) -> anyhow::Result<Manifest> {
    anyhow::ensure!(round.residents > 0, "residents must be at least 1");
    anyhow::ensure!(round.lab_batch > 0 && round.site_batch > 0, "batch sizes must be at least 1");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join(SCHEDULE_FILE))?);
    let mut counts = Counts::default();
    let mut emit = |entry: Entry, counts: &mut Counts| -> anyhow::Result<()> {
        counts.entries += 1;
        write_entry(&mut out, &entry)?;
        Ok(())
    };

    let mut pending: BinaryHeap<Reverse<(u64, Pending)>> = BinaryHeap::new();
    let lookup_rate = round.baseline_lookups_per_ms();
    let mut next_lookup = Lookups { round, rate: lookup_rate, t: 0.0, n: 0 };
    let (mut next_lab, mut lab_slot) = (0, 0);
    for r in 0..round.site_risks() {
        for (n, v) in round.risk_versions(r).iter().enumerate() {
            pending.push(Reverse((v.issued_ms as u64, Pending::SiteRisk { r, n })));
        }
    }

    // Site batches come in time order, slot after slot; everything else is
    // scheduled at least a result delay after its residents' samples, so it
    // waits in `pending` (a few small descriptors per lab batch) until the
    // clock passes it.
    let batches = round.site_batches();
    let steps = round.slots() * batches;
    for step in 0..=steps {
        let (now, site_events) = if step < steps {
            let (slot, j) = (step / batches, step % batches);
            let range = round.range(j, round.site_batch);
            let start = round.slot_start_ms(slot);
            let now = start + round.sampled_ms(range.end - 1);
            let events: Vec<Event> = range
                .filter(|i| round.tested_in(*i, slot))
                .map(|i| scan(round, i, ScanKind::TestSiteArrival, start + round.sampled_ms(i), slot))
                .collect();
            (now, Some((slot, j, events)))
        } else {
            (u64::MAX, None)
        };
        while let Some(Reverse((at, _))) = pending.peek().copied() {
            if at > now {
                break;
            }
            next_lookup.emit_until(at, &mut counts, &mut emit)?;
            let Reverse((at, work)) = pending.pop().expect("peeked");
            if let Some(entry) = expand(round, at, work, &mut counts) {
                counts.batches += 1;
                emit(entry, &mut counts)?;
            }
        }
        let Some((slot, j, events)) = site_events else { break };
        next_lookup.emit_until(now, &mut counts, &mut emit)?;
        if !events.is_empty() {
            counts.scans += events.len() as u64;
            counts.events += events.len() as u64;
            counts.batches += 1;
            emit(batch_entry(now, &events), &mut counts)?;
        }
        progress(events.len() as u64);

        if round.venue_fraction > 0.0 && slot == round.venue_slot() {
            // Offline venue stations upload their scans hours after the visits.
            pending.push(Reverse((round.venues_submitted_ms(j), Pending::Venues { j })));
        }
        // A lab batch is due once its last resident was sampled.
        if slot != lab_slot {
            (next_lab, lab_slot) = (0, slot);
        }
        let sampled_up_to = round.range(j, round.site_batch).end;
        while next_lab < round.lab_batches() && round.range(next_lab, round.lab_batch).end <= sampled_up_to {
            let k = next_lab;
            next_lab += 1;
            let report = round.slot_start_ms(slot) + round.lab_report_ms(k);
            let late = report + round.late_extra_ms;
            let s = slot;
            pending.push(Reverse((report, Pending::Lab { s, k, late: false, duplicate: false })));
            pending.push(Reverse((late, Pending::Lab { s, k, late: true, duplicate: false })));
            if round.duplicated(k, s) {
                pending.push(Reverse((report + 5 * MINUTE, Pending::Lab { s, k, late: false, duplicate: true })));
            }
            pending.push(Reverse((report + 30 * MINUTE, Pending::Overrides { s, k, late: false })));
            pending.push(Reverse((late + 30 * MINUTE, Pending::Overrides { s, k, late: true })));
        }
    }
    next_lookup.emit_until(round.end_ms(), &mut counts, &mut emit)?;
    out.flush()?;

    write_expected(round, dir)?;
    let manifest = Manifest { round: round.clone(), end_ms: round.end_ms(), counts };
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// Regenerates the payload of due work; `None` when it holds no event.
fn expand(round: &RoundConfig, at: u64, work: Pending, counts: &mut Counts) -> Option<Entry> {
    let events: Vec<Event> = match work {
        Pending::Lab { s, k, late, duplicate } => {
            let events: Vec<Event> = round
                .range(k, round.lab_batch)
                .filter_map(|i| round.test_in(i, s))
                .filter(|r| r.late == late)
                .map(|r| round.test_event(&r))
                .collect();
            if duplicate {
                counts.duplicate_submissions += events.len() as u64;
            } else {
                counts.test_results += events.len() as u64;
            }
            events
        }
        Pending::Overrides { s, k, late } => {
            let events: Vec<Event> = round
                .range(k, round.lab_batch)
                .filter_map(|i| round.test_in(i, s))
                .filter(|r| r.late == late && r.outcome == TestOutcome::Positive)
                .flat_map(|r| round.override_events(&r))
                .collect();
            counts.overrides += events.len() as u64;
            events
        }
        Pending::Venues { j } => {
            let events: Vec<Event> = round
                .range(j, round.site_batch)
                .filter(|i| round.resident(*i).venue)
                .map(|i| scan(round, i, ScanKind::VenueEntry, round.venue_ms(i), 0))
                .collect();
            counts.scans += events.len() as u64;
            events
        }
        Pending::SiteRisk { r, n } => {
            counts.site_risks += 1;
            vec![RoundConfig::site_risk_event(&round.risk_versions(r)[n])]
        }
    };
    if events.is_empty() {
        return None;
    }
    counts.events += events.len() as u64;
    Some(batch_entry(at, &events))
}

/// Lookups in time order at the surge-shaped rate.
struct Lookups<'a> {
    round: &'a RoundConfig,
    rate: f64,
    t: f64,
    n: u64,
}

impl Lookups<'_> {
    fn emit_until(
        &mut self,
        until: u64,
        counts: &mut Counts,
        emit: &mut impl FnMut(Entry, &mut Counts) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        while self.t <= until as f64 && self.t < self.round.end_ms() as f64 {
            let at = self.t as u64;
            let target = mix(self.round.seed, self.n, SALT_LOOKUP) % self.round.residents;
            let request = pb::GetStatusRequest { resident_id: resident_id(target) };
            counts.lookups += 1;
            emit(Entry { at_ms: at, kind: Kind::GetStatus, payload: request.encode_to_vec() }, counts)?;
            self.n += 1;
            self.t += 1.0 / (self.rate * self.round.surge_profile(at));
        }
        Ok(())
    }
}

/// One line per resident: id, color, reason, last negative and positive sample (ms from start).
fn write_expected(round: &RoundConfig, dir: &Path) -> anyhow::Result<()> {
    // The load test's own oracle, not the code under test.
    let rules = Rules::default();
    let risks = round.risks();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join(EXPECTED_FILE))?);
    writeln!(out, "resident_id,color,reason,last_negative_ms,last_positive_ms")?;
    let as_ms = |t: Option<i64>| t.map(|t| t.to_string()).unwrap_or_default();
    for i in 0..round.residents {
        let s = round.expected(i, &risks, &rules);
        writeln!(
            out,
            "{},{},{},{},{}",
            resident_id(i),
            s.color,
            s.reason,
            as_ms(s.last_negative_ms),
            as_ms(s.last_positive_ms)
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round::HOUR;

    fn small() -> RoundConfig {
        RoundConfig { residents: 3_000, lookups_per_resident: 0.5, ..RoundConfig::default() }
    }

    fn entries(dir: &Path) -> Vec<Entry> {
        Reader::open(dir).unwrap().collect::<anyhow::Result<_>>().unwrap()
    }

    #[test]
    fn the_same_seed_writes_the_same_round() {
        let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(&small(), a.path(), |_| {}).unwrap();
        generate(&small(), b.path(), |_| {}).unwrap();
        generate(&RoundConfig { seed: 9, ..small() }, c.path(), |_| {}).unwrap();
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(read(a.path(), SCHEDULE_FILE), read(b.path(), SCHEDULE_FILE));
        assert_eq!(read(a.path(), EXPECTED_FILE), read(b.path(), EXPECTED_FILE));
        assert_ne!(read(a.path(), SCHEDULE_FILE), read(c.path(), SCHEDULE_FILE));
    }

    #[test]
    fn the_schedule_is_in_time_order_and_holds_every_result_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let round = small();
        let manifest = generate(&round, dir.path(), |_| {}).unwrap();
        let entries = entries(dir.path());
        assert_eq!(entries.len() as u64, manifest.counts.entries);
        assert!(entries.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "entries in send order");
        assert!(entries.last().unwrap().at_ms <= round.end_ms());

        // Per sample: a lab batch submitted twice sends its samples twice.
        let mut results = std::collections::HashMap::new();
        let mut residents = std::collections::HashSet::new();
        let mut lookups = 0;
        for entry in &entries {
            match entry.kind {
                Kind::GetStatus => lookups += 1,
                Kind::SubmitBatch => {
                    let batch = pb::SubmitBatchRequest::decode(entry.payload.as_slice()).unwrap();
                    for e in batch.events {
                        if let Some(pb::event::Kind::TestResult(t)) = e.kind {
                            let resulted =
                                healthcode_core::UnixMicros::from_timestamp(&t.resulted_at.unwrap()).unwrap();
                            assert!(resulted.0 / 1000 <= entry.at_ms as i64, "a result is not sent before it exists");
                            residents.insert(t.resident_id.clone());
                            *results.entry((t.resident_id, t.sample_id)).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(residents.len() as u64, round.residents, "every resident's result is submitted");
        let samples: u64 = (0..round.residents).map(|i| round.tests_of(i).count() as u64).sum();
        assert_eq!(results.len() as u64, samples, "every test of every day");
        assert_eq!(samples, manifest.counts.test_results);
        let resubmitted = results.values().filter(|n| **n > 1).count() as u64;
        assert_eq!(resubmitted, manifest.counts.duplicate_submissions);
        assert_eq!(lookups, manifest.counts.lookups);
        assert!((lookups as f64 - 1_500.0).abs() < 30.0, "{lookups} lookups");
    }

    #[test]
    fn every_batch_is_submitted_by_one_principal() {
        // The edge refuses a batch holding another station's, lab's or
        // authority's events, so the round must never send one.
        let dir = tempfile::tempdir().unwrap();
        generate(&small(), dir.path(), |_| {}).unwrap();
        let mut owners = std::collections::HashSet::new();
        for entry in Reader::open(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.kind != Kind::SubmitBatch {
                continue;
            }
            let batch = pb::SubmitBatchRequest::decode(entry.payload.as_slice()).unwrap();
            let mut in_batch = batch.events.iter().map(|e| healthcode_auth::owner(e).map(|(r, _, id)| (r, id)));
            let first = in_batch.next().unwrap().unwrap();
            assert!(in_batch.all(|o| o == Some(first)), "a batch with several submitters: {first:?}");
            owners.insert((first.0, first.1.to_owned()));
        }
        assert!(owners.len() > 3, "scans, results and overrides come from many principals: {owners:?}");
    }

    #[test]
    fn lookups_follow_the_morning_surge() {
        let dir = tempfile::tempdir().unwrap();
        let round = RoundConfig { residents: 20_000, venue_fraction: 0.0, ..RoundConfig::default() };
        generate(&round, dir.path(), |_| {}).unwrap();
        let per_hour = |h: u64| {
            entries(dir.path()).iter().filter(|e| e.kind == Kind::GetStatus && e.at_ms / HOUR == h).count() as f64
        };
        let (quiet, surge) = (per_hour(6), per_hour(2));
        assert!((surge / quiet - 10.0).abs() < 0.5, "surge {surge} vs baseline {quiet}");
    }
}
