//! Open-loop replay of a schedule against a target. Each request is timed
//! from the moment the schedule meant to send it, not from when it was sent:
//! when the target (or the replay's in-flight limit) falls behind, the wait
//! counts as latency, so slowness is never hidden (no coordinated omission).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use healthcode_auth::with_token;
use healthcode_core::UnixMicros;
use healthcode_core::wire::event_id;
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use healthcode_proto::{Message, Timestamp};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::credentials::{Credentials, gate};
use crate::midround::{MidRound, MidRoundCheck, Watermark};
pub use crate::report::ReplayReport;
use crate::schedule::{Entry, Kind, Reader, read_manifest};
use crate::stats::{KindStats, Percentiles, histogram, micros, timeline};

pub const REPLAY_FILE: &str = "replay.json";
pub const UNACKNOWLEDGED_FILE: &str = "unacknowledged.txt";

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub target: String,
    /// Where lookups go when the Lookup service is not at `target`.
    pub lookup_target: Option<String>,
    /// Round time runs this many times faster than the wall clock.
    pub compression: f64,
    /// HTTP/2 connections to spread requests over.
    pub connections: usize,
    /// Requests in flight at most; beyond it the replay falls behind schedule
    /// (and the delay is counted as latency).
    pub max_in_flight: usize,
    /// Every n-th acknowledged batch carrying test results, measure how long
    /// until its first result is visible.
    pub freshness_every: u64,
    /// Attempts per request on UNAVAILABLE or RESOURCE_EXHAUSTED, as a station would retry.
    pub attempts: usize,
    pub progress: bool,
    /// Sends the round's submissions in an order shuffled with this seed,
    /// as fast as `max_in_flight` allows, with every event time already in
    /// the past (lookups are left out): the statuses must not depend on the
    /// order events arrive in.
    pub shuffle: Option<u64>,
    /// Checks of a sample of residents while the round runs (0: none; a
    /// shuffled replay has none).
    pub checks: usize,
    /// The CA that signed an `https://` target's certificate.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Where the round sits on the wall clock, and what the replay saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// Wall-clock instant (Unix ms) that round time 0 was mapped to.
    pub anchor_unix_ms: i64,
    pub target: String,
    pub compression: f64,
}

/// Moves an offset-from-round-start timestamp onto the wall clock.
pub fn rebase(ts: &mut Option<Timestamp>, anchor_ms: i64) {
    if let Some(t) = ts {
        let ms = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000 + anchor_ms;
        t.seconds = ms.div_euclid(1000);
        t.nanos = (ms.rem_euclid(1000) * 1_000_000) as i32;
    }
}

pub fn rebase_event(event: &mut pb::Event, anchor_ms: i64) {
    use pb::event::Kind as K;
    match &mut event.kind {
        Some(K::Scan(e)) => rebase(&mut e.scanned_at, anchor_ms),
        Some(K::TestResult(e)) => {
            rebase(&mut e.sampled_at, anchor_ms);
            rebase(&mut e.resulted_at, anchor_ms);
        }
        Some(K::OverrideEvent(e)) => {
            rebase(&mut e.issued_at, anchor_ms);
            rebase(&mut e.expires_at, anchor_ms);
        }
        Some(K::SiteRisk(e)) => {
            rebase(&mut e.issued_at, anchor_ms);
            rebase(&mut e.risky_from, anchor_ms);
            rebase(&mut e.risky_until, anchor_ms);
        }
        None => {}
    }
}

/// The anchor that keeps every event time at or before the moment it is
/// sent, whatever the compression: round time `t` is sent at `start + t/c`
/// and stamped `anchor + t`.
pub fn anchor_for(start_unix_ms: i64, end_ms: u64, compression: f64) -> i64 {
    let behind = end_ms as f64 * (1.0 - 1.0 / compression.max(1.0));
    start_unix_ms - behind.ceil() as i64 - 60_000
}

/// When an entry is meant to be sent.
pub fn intended(start: tokio::time::Instant, at_ms: u64, compression: f64) -> tokio::time::Instant {
    start + Duration::from_secs_f64(at_ms as f64 / 1000.0 / compression)
}

/// The round's submissions in an order drawn from `seed` (Fisher-Yates),
/// each due at once.
pub fn shuffled(entries: impl Iterator<Item = anyhow::Result<Entry>>, seed: u64) -> anyhow::Result<Vec<Entry>> {
    let mut submits = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.kind == Kind::SubmitBatch {
            submits.push(Entry { at_ms: 0, ..entry });
        }
    }
    for i in (1..submits.len()).rev() {
        let j = (crate::round::mix(seed, i as u64, 0x5eed) % (i as u64 + 1)) as usize;
        submits.swap(i, j);
    }
    Ok(submits)
}

/// Sends every entry at its intended time with at most `max_in_flight`
/// outstanding, and reports each one's latency measured from its intended
/// time: `done(entry_kind, intended_second, latency, result)`.
pub async fn dispatch<S, F, T>(
    entries: impl Iterator<Item = anyhow::Result<Entry>>,
    compression: f64,
    max_in_flight: usize,
    mut send: S,
    done: impl Fn(Kind, usize, Duration, T) + Send + Sync + 'static,
    mut dispatched: impl FnMut(),
) -> anyhow::Result<()>
where
    S: FnMut(Entry) -> F,
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = tokio::time::Instant::now();
    let limit = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let done = Arc::new(done);
    for entry in entries {
        let entry = entry?;
        let due = intended(start, entry.at_ms, compression);
        tokio::time::sleep_until(due).await;
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let (kind, second) = (entry.kind, (due - start).as_secs() as usize);
        let request = send(entry);
        let done = done.clone();
        tokio::spawn(async move {
            let result = request.await;
            done(kind, second, due.elapsed(), result);
            drop(permit);
        });
        dispatched();
    }
    // Wait for everything in flight.
    let _ = limit.acquire_many(max_in_flight.max(1) as u32).await.expect("semaphore open");
    Ok(())
}

struct Shared {
    ingest: KindStats,
    lookup: KindStats,
    events: BTreeMap<String, u64>,
    freshness: hdrhistogram::Histogram<u64>,
    freshness_timeouts: u64,
    unacknowledged: Vec<String>,
    acked_batches: u64,
}

/// What one request came back with.
enum Outcome {
    Batch(Result<pb::SubmitBatchReply, tonic::Status>, pb::SubmitBatchRequest),
    Lookup(Result<pb::ResidentStatus, tonic::Status>),
}

/// `connections` channels, spread over the comma-separated `targets` (the
/// replicas of a role), one after another.
async fn connect(targets: &str, connections: usize, ca_file: Option<&Path>) -> anyhow::Result<Vec<Channel>> {
    let targets: Vec<&str> = targets.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    anyhow::ensure!(!targets.is_empty(), "no target to connect to");
    let mut channels = Vec::with_capacity(connections);
    for i in 0..connections.max(targets.len()) {
        let target = targets[i % targets.len()];
        let channel = crate::endpoint(target, ca_file)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What a station retries: the server asked for it (UNAVAILABLE,
/// RESOURCE_EXHAUSTED), or the call broke off without an answer (a process
/// killed mid-call: UNKNOWN, CANCELLED) or ran out of time. Submits are
/// idempotent by event id and lookups read-only, so a retry is always safe.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(status.code(), Unavailable | ResourceExhausted | Unknown | Cancelled | DeadlineExceeded)
}

/// Calls as a station does: retries what [`retryable`] allows with jittered
/// backoff (100 ms to 2 s), waiting at least the `retry-after-ms` the server
/// gave, `attempts` times in all.
pub async fn as_station<T, Fut>(attempts: usize, call: impl FnMut() -> Fut) -> Result<T, tonic::Status>
where
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1));
    call.retry(backoff)
        .when(retryable)
        // At least what the server asked, and never less than the backoff:
        // a short hint must not burn the attempts that ride out an outage.
        // Only while attempts are left: `None` ends the retries.
        .adjust(|status, wait| wait.map(|w| healthcode_rpc::retry_after(status).map_or(w, |asked| asked.max(w))))
        .await
}

pub async fn replay(dir: &Path, options: &ReplayOptions, out: &Path) -> anyhow::Result<ReplayReport> {
    let manifest = read_manifest(dir)?;
    let credentials = Arc::new(Credentials::load(dir)?);
    let probe_token: Arc<str> = credentials.token(&gate(0))?.into();
    let channels = connect(&options.target, options.connections, options.ca_file.as_deref()).await?;
    let lookup_channels = match &options.lookup_target {
        Some(target) => connect(target, options.connections, options.ca_file.as_deref()).await?,
        None => channels.clone(),
    };
    let probe_channel = lookup_channels[0].clone();
    let started_wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let anchor_ms = match options.shuffle {
        // The whole round is over before the first event goes out.
        Some(_) => started_wall - manifest.end_ms as i64 - 60_000,
        None => anchor_for(started_wall, manifest.end_ms, options.compression),
    };
    let record =
        ReplayRecord { anchor_unix_ms: anchor_ms, target: options.target.clone(), compression: options.compression };
    std::fs::write(dir.join(REPLAY_FILE), serde_json::to_vec_pretty(&record)?)?;

    let shared = Arc::new(Mutex::new(Shared {
        ingest: KindStats::default(),
        lookup: KindStats::default(),
        events: BTreeMap::new(),
        freshness: histogram(3),
        freshness_timeouts: 0,
        unacknowledged: Vec::new(),
        acked_batches: 0,
    }));
    let bar = if options.progress { ProgressBar::new(manifest.counts.entries) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} requests, eta {eta}")
            .expect("valid template"),
    );

    let attempts = options.attempts.max(1);
    let watermark = Arc::new(Watermark::default());
    let mut next = 0usize;
    let sending = watermark.clone();
    let send = |entry: Entry| {
        let at = entry.at_ms;
        sending.sent(at);
        let channel = match entry.kind {
            Kind::SubmitBatch => channels[next % channels.len()].clone(),
            Kind::GetStatus => lookup_channels[next % lookup_channels.len()].clone(),
        };
        let gate = gate(next);
        next += 1;
        let credentials = credentials.clone();
        async move {
            match entry.kind {
                Kind::SubmitBatch => {
                    let mut request = pb::SubmitBatchRequest::decode(entry.payload.as_slice()).expect("own schedule");
                    request.events.iter_mut().for_each(|e| rebase_event(e, anchor_ms));
                    // A missing credential goes out empty and shows as UNAUTHENTICATED.
                    let token = credentials.for_batch(&request).unwrap_or_default();
                    let client = IngestClient::new(channel);
                    let reply = as_station(attempts, || {
                        let (mut client, request) = (client.clone(), with_token(request.clone(), token));
                        async move { client.submit_batch(request).await.map(|r| r.into_inner()) }
                    })
                    .await;
                    (at, Outcome::Batch(reply, request))
                }
                Kind::GetStatus => {
                    let request = pb::GetStatusRequest::decode(entry.payload.as_slice()).expect("own schedule");
                    let token = credentials.token(&gate).unwrap_or_default();
                    let client = LookupClient::new(channel);
                    let reply = as_station(attempts, || {
                        let (mut client, request) = (client.clone(), with_token(request.clone(), token));
                        async move { client.get_status(request).await.map(|r| r.into_inner()) }
                    })
                    .await;
                    (at, Outcome::Lookup(reply))
                }
            }
        }
    };

    let recorder = shared.clone();
    let freshness_every = options.freshness_every.max(1);
    let answered = watermark.clone();
    let (check_channel, check_token) = (probe_channel.clone(), probe_token.clone());
    let done = move |_kind: Kind, second: usize, latency: Duration, (at, outcome): (u64, Outcome)| {
        answered.answered(at);
        let mut s = recorder.lock().expect("stats lock");
        match outcome {
            Outcome::Lookup(reply) => {
                let code = reply.as_ref().err().map(|e| code_name(e.code())).unwrap_or("OK");
                s.lookup.record(second, latency, code);
            }
            Outcome::Batch(reply, request) => match reply {
                Ok(reply) => {
                    s.ingest.record(second, latency, "OK");
                    for r in &reply.results {
                        let name = pb::Outcome::try_from(r.outcome).unwrap_or_default().as_str_name();
                        *s.events.entry(name.to_owned()).or_default() += 1;
                        if r.outcome == pb::Outcome::Rejected as i32 {
                            s.unacknowledged.push(format!("{} rejected: {}", r.event_id, r.reason));
                        }
                    }
                    // Count only batches that carry a result that can be probed.
                    let probe = freshness_probe(&request);
                    s.acked_batches += u64::from(probe.is_some());
                    if let Some(probe) = probe
                        && s.acked_batches.is_multiple_of(freshness_every)
                    {
                        let (channel, stats, token) = (probe_channel.clone(), recorder.clone(), probe_token.clone());
                        tokio::spawn(async move {
                            let visible = probe.wait_visible(channel, &token).await;
                            let mut s = stats.lock().expect("stats lock");
                            match visible {
                                Some(d) => s.freshness.record(micros(d)).expect("clamped"),
                                None => s.freshness_timeouts += 1,
                            }
                        });
                    }
                }
                Err(status) => {
                    s.ingest.record(second, latency, code_name(status.code()));
                    for e in &request.events {
                        s.unacknowledged.push(format!("{} not acknowledged: {}", event_id(e), status.code()));
                    }
                }
            },
        }
    };

    let started = Instant::now();
    let reader = Reader::open(dir)?;
    let entries: Box<dyn Iterator<Item = anyhow::Result<Entry>> + Send> = match options.shuffle {
        Some(seed) => Box::new(shuffled(reader, seed)?.into_iter().map(Ok)),
        None => Box::new(reader),
    };
    let checks = match options.shuffle {
        Some(_) => None,
        None if options.checks == 0 => None,
        None => {
            let checker = MidRoundChecker {
                check: MidRound::new(manifest.round.clone()),
                watermark: watermark.clone(),
                channel: check_channel,
                token: check_token,
                anchor_ms,
                round_seconds: manifest.end_ms as f64 / 1000.0 / options.compression,
                count: options.checks,
            };
            Some(tokio::spawn(checker.run(tokio::time::Instant::now())))
        }
    };
    dispatch(entries, options.compression, options.max_in_flight, send, done, || bar.inc(1)).await?;
    bar.finish_and_clear();
    let mid_round = match checks {
        Some(task) => task.await.context("the mid-round checks failed")??,
        None => Vec::new(),
    };
    // Let the last freshness probes finish.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&shared) > 1 && Instant::now() < probe_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed().as_secs_f64();

    let s = shared.lock().expect("stats lock");
    let report = ReplayReport {
        target: options.target.clone(),
        residents: manifest.round.residents,
        compression: options.compression,
        anchor_unix_ms: anchor_ms,
        wall_seconds: wall,
        ingest: s.ingest.summary(wall),
        lookup: s.lookup.summary(wall),
        events: s.events.clone(),
        freshness: Percentiles::of(&s.freshness),
        freshness_timeouts: s.freshness_timeouts,
        timeline: timeline(&s.ingest, &s.lookup),
        mid_round,
    };
    std::fs::write(dir.join(UNACKNOWLEDGED_FILE), s.unacknowledged.join("\n"))?;
    std::fs::create_dir_all(out)?;
    report.write(out)?;
    Ok(report)
}

/// Residents read back per mid-round check (about a third are certain
/// enough to judge at high compression).
const CHECK_SAMPLE: u64 = 1000;
/// How long after an answer its event is taken to be visible: well above
/// the materializer's p99 freshness on the machines here.
const VISIBLE_AFTER: Duration = Duration::from_secs(5);
/// When a mismatch is read again.
const REREAD_AFTER: Duration = Duration::from_secs(2);

struct MidRoundChecker {
    check: MidRound,
    watermark: Arc<Watermark>,
    channel: Channel,
    token: Arc<str>,
    anchor_ms: i64,
    round_seconds: f64,
    count: usize,
}

impl MidRoundChecker {
    fn round_now(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        (wall - self.anchor_ms).max(0) as u64
    }

    async fn read(&self, residents: &[u64]) -> anyhow::Result<Vec<pb::ResidentStatus>> {
        let client = LookupClient::with_interceptor(self.channel.clone(), healthcode_auth::Bearer::new(&self.token)?);
        let ids: Vec<String> = residents.iter().map(|i| crate::round::resident_id(*i)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            out.extend(crate::verify::read_statuses(&client, chunk.to_vec(), 5, self.anchor_ms).await?.0);
        }
        Ok(out)
    }

    /// `count` checks spread evenly over the round, then the tally.
    async fn run(self, start: tokio::time::Instant) -> anyhow::Result<Vec<MidRoundCheck>> {
        let mut checks = Vec::new();
        for n in 1..=self.count {
            let at = self.round_seconds * n as f64 / (self.count + 1) as f64;
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            let answered = self.watermark.answered_up_to();
            tokio::time::sleep(VISIBLE_AFTER).await;
            let sample = self.check.sample(n as u64, CHECK_SAMPLE);
            let from = self.round_now();
            let statuses = self.read(&sample).await?;
            let (to, sent) = (self.round_now(), self.watermark.sent_up_to());
            let mut tally = MidRoundCheck { at_ms: answered, ..MidRoundCheck::default() };
            let mut suspects = Vec::new();
            for (i, actual) in sample.iter().zip(&statuses) {
                match self.check.expected(*i, answered, sent, (from, to)) {
                    None => tally.skipped += 1,
                    Some(expected) => {
                        tally.checked += 1;
                        if crate::verify::compare(&expected, actual, self.anchor_ms).is_some() {
                            suspects.push(*i);
                        }
                    }
                }
            }
            // A slow materializer is late, not wrong: a mismatch is read once
            // more, soon (a later event of the resident would make it
            // uncertain), and counts if the answer is still certain and wrong.
            if !suspects.is_empty() {
                tokio::time::sleep(REREAD_AFTER).await;
                let again = self.read(&suspects).await?;
                let (to, sent) = (self.round_now(), self.watermark.sent_up_to());
                for (i, actual) in suspects.iter().zip(&again) {
                    let Some(expected) = self.check.expected(*i, answered, sent, (from, to)) else {
                        tally.checked -= 1;
                        tally.skipped += 1;
                        continue;
                    };
                    if let Some(diff) = crate::verify::compare(&expected, actual, self.anchor_ms) {
                        tally.mismatches += 1;
                        if tally.first.len() < 10 {
                            tally.first.push(diff);
                        }
                    }
                }
            }
            checks.push(tally);
        }
        Ok(checks)
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        InvalidArgument => "INVALID_ARGUMENT",
        Unavailable => "UNAVAILABLE",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        Unauthenticated => "UNAUTHENTICATED",
        PermissionDenied => "PERMISSION_DENIED",
        Internal => "INTERNAL",
        Unknown => "UNKNOWN",
        Cancelled => "CANCELLED",
        OutOfRange => "OUT_OF_RANGE",
        _ => "OTHER",
    }
}

/// A result whose visibility through Lookup is timed.
struct Probe {
    resident: String,
    sampled: UnixMicros,
    positive: bool,
    acked: Instant,
}

fn freshness_probe(request: &pb::SubmitBatchRequest) -> Option<Probe> {
    request.events.iter().find_map(|e| match &e.kind {
        Some(pb::event::Kind::TestResult(t)) if t.outcome != pb::TestOutcome::Inconclusive as i32 => Some(Probe {
            resident: t.resident_id.clone(),
            sampled: UnixMicros::from_timestamp(t.sampled_at.as_ref()?)?,
            positive: t.outcome == pb::TestOutcome::Positive as i32,
            acked: Instant::now(),
        }),
        _ => None,
    })
}

impl Probe {
    async fn wait_visible(self, channel: Channel, token: &str) -> Option<Duration> {
        let mut client = LookupClient::new(channel);
        let deadline = self.acked + Duration::from_secs(120);
        // Start at 10 ms, back off to 250 ms: hundreds of probes polling
        // every 10 ms while statuses lag would themselves become the load.
        let mut pause = Duration::from_millis(10);
        while Instant::now() < deadline {
            let request = with_token(pb::GetStatusRequest { resident_id: self.resident.clone() }, token);
            if let Ok(status) = client.get_status(request).await {
                let s = status.into_inner();
                let seen = if self.positive { s.last_positive_sampled_at } else { s.last_negative_sampled_at };
                if seen.as_ref().and_then(UnixMicros::from_timestamp).is_some_and(|t| t >= self.sampled) {
                    return Some(self.acked.elapsed());
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        None
    }
}

pub fn default_out(dir: &Path) -> PathBuf {
    dir.join("report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shuffle_sends_every_submission_once_in_another_order_and_no_lookup() {
        let entry = |n: u8, kind| Entry { at_ms: u64::from(n) * 10, kind, payload: vec![n] };
        let all: Vec<Entry> =
            (0..50).map(|n| entry(n, if n % 5 == 0 { Kind::GetStatus } else { Kind::SubmitBatch })).collect();
        let out = shuffled(all.clone().into_iter().map(Ok), 7).unwrap();
        let mut payloads: Vec<u8> = out.iter().map(|e| e.payload[0]).collect();
        assert_ne!(payloads, (0..50).filter(|n| n % 5 != 0).collect::<Vec<u8>>(), "the order changed");
        assert!(out.iter().all(|e| e.kind == Kind::SubmitBatch && e.at_ms == 0));
        payloads.sort_unstable();
        assert_eq!(payloads, (0..50).filter(|n| n % 5 != 0).collect::<Vec<u8>>(), "each submission once");
        let again: Vec<u8> = shuffled(all.into_iter().map(Ok), 7).unwrap().iter().map(|e| e.payload[0]).collect();
        assert_eq!(again, out.iter().map(|e| e.payload[0]).collect::<Vec<u8>>(), "the seed decides the order");
    }

    #[test]
    fn rebasing_moves_offsets_onto_the_clock() {
        let mut ts = Some(Timestamp { seconds: 3, nanos: 250_000_000 });
        rebase(&mut ts, 1_700_000_000_900);
        assert_eq!(ts, Some(Timestamp { seconds: 1_700_000_004, nanos: 150_000_000 }));
    }

    #[test]
    fn the_anchor_keeps_event_times_in_the_past_at_any_compression() {
        let start = 1_800_000_000_000i64;
        let end_ms = 17 * 3_600_000u64;
        for compression in [1.0, 7.5, 60.0, 10_000.0] {
            let anchor = anchor_for(start, end_ms, compression);
            for t in (0..=end_ms).step_by(600_000) {
                let sent = start + (t as f64 / compression) as i64;
                assert!(anchor + t as i64 <= sent, "t={t} c={compression}");
            }
        }
    }

    fn entries(n: u64, every_ms: u64) -> impl Iterator<Item = anyhow::Result<Entry>> {
        (0..n).map(move |i| Ok(Entry { at_ms: i * every_ms, kind: Kind::GetStatus, payload: vec![] }))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_out_on_schedule_open_loop() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let log = sent.clone();
        dispatch(
            entries(5, 100),
            2.0,
            100,
            move |_| {
                let log = log.clone();
                async move { log.lock().unwrap().push(start.elapsed()) }
            },
            |_, _, _, _| {},
            || {},
        )
        .await
        .unwrap();
        let sent = sent.lock().unwrap().clone();
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(i * 50)).collect();
        assert_eq!(sent, expected, "at compression 2, 100 ms of round time is 50 ms of wall time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_target_shows_as_latency_from_the_intended_time() {
        // One request at a time, each taking 50 ms, scheduled every 10 ms:
        // the n-th request waits for the ones before it, and that wait counts.
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let log = latencies.clone();
        dispatch(
            entries(10, 10),
            1.0,
            1,
            |_| tokio::time::sleep(Duration::from_millis(50)),
            move |_, _, latency, _| log.lock().unwrap().push(latency),
            || {},
        )
        .await
        .unwrap();
        let latencies = latencies.lock().unwrap().clone();
        assert_eq!(latencies.len(), 10);
        assert_eq!(latencies[0], Duration::from_millis(50));
        // Sent at 450 ms instead of 90 ms, done at 500 ms: 410 ms, not 50 ms.
        assert_eq!(latencies[9], Duration::from_millis(410));
    }

    /// A refusal carrying `retry-after-ms`.
    fn refused(code: tonic::Code, ms: u64) -> tonic::Status {
        let mut status = tonic::Status::new(code, "busy");
        status.metadata_mut().insert(healthcode_rpc::RETRY_AFTER_MS, ms.to_string().parse().unwrap());
        status
    }

    /// How long `as_station` takes when the first two calls are refused.
    async fn time_to_succeed(refusal: tonic::Status) -> Duration {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        as_station(3, || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let refusal = refusal.clone();
            async move { if n < 2 { Err(refusal) } else { Ok(()) } }
        })
        .await
        .unwrap();
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_station_waits_what_the_server_asks_and_never_less_than_its_backoff() {
        // Asked for 3 s twice: at least 6 s, more than the backoff's own 2 s cap.
        let asked = time_to_succeed(refused(tonic::Code::ResourceExhausted, 3_000)).await;
        assert!(asked >= Duration::from_secs(6), "{asked:?}");
        // A 1 ms hint does not shorten the backoff (at least 100 ms, then 200 ms).
        let short = time_to_succeed(refused(tonic::Code::Unavailable, 1)).await;
        assert!(short >= Duration::from_millis(300), "{short:?}");
    }
}
