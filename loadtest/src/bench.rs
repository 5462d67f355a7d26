//! The machine's ceiling, side by side: the same client at the same
//! concurrency drives a bare tonic server (a reply of the same size, no work)
//! and the target.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use healthcode_auth::Bearer;
use healthcode_core::UnixMicros;
use healthcode_proto::v1::ingest_server::{Ingest, IngestServer};
use healthcode_proto::v1::lookup_server::{Lookup, LookupServer};
use healthcode_proto::v1::{self as pb, ingest_client::IngestClient, lookup_client::LookupClient};
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::round::{mix, resident_id};
use crate::stats::{Percentiles, histogram, micros};

/// Answers like the real services, with replies of the same shape, doing nothing.
struct Bare;

fn canned_status(resident_id: String) -> pb::ResidentStatus {
    let now = Some(UnixMicros::now().to_timestamp());
    pb::ResidentStatus {
        resident_id,
        color: pb::Color::Green as i32,
        reason: pb::Reason::NegativeTestValid as i32,
        valid_until: now,
        last_negative_sampled_at: now,
        last_positive_sampled_at: None,
        updated_at: now,
        as_of: now,
        stale: false,
        override_expires_at: None,
        status_token: String::new(),
        exposed_at: None,
    }
}

fn accepted(event_id: String) -> pb::SubmitReply {
    pb::SubmitReply { event_id, outcome: pb::Outcome::Accepted as i32 }
}

#[tonic::async_trait]
impl Lookup for Bare {
    async fn get_status(&self, r: Request<pb::GetStatusRequest>) -> Result<Response<pb::ResidentStatus>, Status> {
        Ok(Response::new(canned_status(r.into_inner().resident_id)))
    }
    async fn batch_get_status(
        &self,
        r: Request<pb::BatchGetStatusRequest>,
    ) -> Result<Response<pb::BatchGetStatusReply>, Status> {
        Ok(Response::new(pb::BatchGetStatusReply {
            statuses: r.into_inner().resident_id.into_iter().map(canned_status).collect(),
        }))
    }
    async fn list_overrides(
        &self,
        _: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::ListOverridesReply>, Status> {
        Ok(Response::new(pb::ListOverridesReply::default()))
    }
    async fn list_site_risks(
        &self,
        _: Request<pb::ListSiteRisksRequest>,
    ) -> Result<Response<pb::ListSiteRisksReply>, Status> {
        Ok(Response::new(pb::ListSiteRisksReply::default()))
    }
}

#[tonic::async_trait]
impl Ingest for Bare {
    async fn submit_scan(&self, r: Request<pb::SubmitScanRequest>) -> Result<Response<pb::SubmitReply>, Status> {
        Ok(Response::new(accepted(r.into_inner().event.map(|e| e.event_id).unwrap_or_default())))
    }
    async fn submit_test_result(
        &self,
        r: Request<pb::SubmitTestResultRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        Ok(Response::new(accepted(r.into_inner().event.map(|e| e.event_id).unwrap_or_default())))
    }
    async fn submit_override(
        &self,
        r: Request<pb::SubmitOverrideRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        Ok(Response::new(accepted(r.into_inner().event.map(|e| e.event_id).unwrap_or_default())))
    }
    async fn submit_site_risk(
        &self,
        r: Request<pb::SubmitSiteRiskRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        Ok(Response::new(accepted(r.into_inner().event.map(|e| e.event_id).unwrap_or_default())))
    }
    async fn submit_batch(&self, r: Request<pb::SubmitBatchRequest>) -> Result<Response<pb::SubmitBatchReply>, Status> {
        let results = r
            .into_inner()
            .events
            .iter()
            .map(|e| pb::EventResult {
                event_id: healthcode_core::wire::event_id(e).to_owned(),
                outcome: pb::Outcome::Accepted as i32,
                reason: String::new(),
            })
            .collect();
        Ok(Response::new(pb::SubmitBatchReply { results }))
    }
}

/// Starts the bare server on a free loopback port.
pub async fn start_bare() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LookupServer::new(Bare))
            .add_service(IngestServer::new(Bare))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(addr)
}

#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub workload: String,
    /// Which of `--rounds` pairs of runs this was (from 1).
    pub round: usize,
    pub server: String,
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub latency: Percentiles,
    /// For lookups under ingest: the flood's own durable events per second
    /// and its failed calls (shed ones included).
    pub ingest_beside: Option<(f64, u64)>,
}

/// Closed loop: `concurrency` workers send back to back for `duration`.
pub async fn drive<F, Fut>(concurrency: usize, duration: Duration, request: F) -> (u64, u64, Percentiles)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (request, counter) = (request.clone(), counter.clone());
            tokio::spawn(async move {
                let mut h = histogram(3);
                let mut errors = 0u64;
                while Instant::now() < stop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    if request(n).await.is_err() {
                        errors += 1;
                    }
                    h.record(micros(started.elapsed())).expect("clamped");
                }
                (h, errors)
            })
        })
        .collect();
    let mut all = histogram(3);
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await.expect("bench worker");
        all.add(&h).expect("same bounds");
        errors += e;
    }
    (all.len(), errors, Percentiles::of(&all))
}

fn scan(run: u64, n: u64, residents: u64, station: &str) -> pb::ScanEvent {
    pb::ScanEvent {
        event_id: format!("bench-{run}-{n}"),
        resident_id: resident_id(mix(run, n, 1) % residents),
        station_id: station.into(),
        site_id: "bench-site".into(),
        kind: pb::ScanKind::VenueEntry as i32,
        scanned_at: Some(UnixMicros::now().to_timestamp()),
    }
}

/// The requests of one workload against one server.
#[derive(Clone)]
struct Workload {
    channel: Channel,
    bearer: Bearer,
    station: Arc<str>,
    run: u64,
    residents: u64,
    batch: u64,
}

impl Workload {
    fn lookups(&self) -> impl Fn(u64) -> futures_util::future::BoxFuture<'static, Result<(), Status>> + use<> {
        let w = self.clone();
        move |n| {
            let mut c = LookupClient::with_interceptor(w.channel.clone(), w.bearer.clone());
            let id = resident_id(mix(w.run, n, 2) % w.residents);
            Box::pin(async move { c.get_status(pb::GetStatusRequest { resident_id: id }).await.map(drop) })
        }
    }

    fn unary_scans(&self) -> impl Fn(u64) -> futures_util::future::BoxFuture<'static, Result<(), Status>> + use<> {
        let w = self.clone();
        move |n| {
            let mut c = IngestClient::with_interceptor(w.channel.clone(), w.bearer.clone());
            let event = scan(w.run, n, w.residents, &w.station);
            Box::pin(async move { c.submit_scan(pb::SubmitScanRequest { event: Some(event) }).await.map(drop) })
        }
    }

    fn batches(&self) -> impl Fn(u64) -> futures_util::future::BoxFuture<'static, Result<(), Status>> + use<> {
        let w = self.clone();
        move |n| {
            let mut c = IngestClient::with_interceptor(w.channel.clone(), w.bearer.clone());
            let events = (n * w.batch..(n + 1) * w.batch)
                .map(|m| pb::Event {
                    kind: Some(pb::event::Kind::Scan(scan(w.run, m, w.residents, &w.station))),
                    provenance: None,
                })
                .collect();
            Box::pin(async move { honour_retry_after(c.submit_batch(pb::SubmitBatchRequest { events }).await).await })
        }
    }
}

/// A station told to come back later waits as long as the server asked
/// before its next call, instead of spinning on refusals.
async fn honour_retry_after<T>(result: Result<T, Status>) -> Result<(), Status> {
    let status = match result {
        Ok(_) => return Ok(()),
        Err(status) => status,
    };
    if let Some(wait) = healthcode_rpc::retry_after(&status) {
        tokio::time::sleep(wait).await;
    }
    Err(status)
}

pub struct BenchOptions {
    /// Where lookups go.
    pub target: String,
    /// Where ingest goes, when not to `target`: a split deployment's edge.
    pub ingest_target: Option<String>,
    pub concurrency: usize,
    pub duration: Duration,
    /// Unmeasured lookups before each server's lookup run.
    pub warmup: Duration,
    pub residents: u64,
    pub batch: usize,
    /// Pairs of runs (the bare server's, then the target's) per workload.
    pub rounds: usize,
    /// Which of [`WORKLOADS`] to run.
    pub workloads: Vec<String>,
    /// The station the target admits: its id and bearer token.
    pub station: String,
    pub token: String,
}

/// Every workload `bench` knows, in the order it runs them: the lookup
/// workloads first, because each ingest run leaves the target's materializer a
/// backlog (a batch run 1-2M events), and lookups beside that backlog
/// would measure it instead of the flood they are run with.
pub const WORKLOADS: [&str; 4] = ["lookup", "lookup-under-ingest", "ingest-unary", "ingest-batch"];

/// Runs each chosen workload against the bare server and the target, in
/// turn, `rounds` times.
pub async fn bench(options: &BenchOptions) -> anyhow::Result<Vec<Measured>> {
    let bare = format!("http://{}", start_bare().await?);
    let bearer = Bearer::new(&options.token)?;
    let station: Arc<str> = options.station.as_str().into();
    let target_ingest = options.ingest_target.as_deref().unwrap_or(&options.target);
    let mut out = Vec::new();
    let chosen = WORKLOADS.iter().filter(|w| options.workloads.iter().any(|c| c == *w));
    let runs = chosen.flat_map(|w| (1..=options.rounds.max(1)).map(move |round| (*w, round)));
    for (workload, round) in runs {
        // Each round its own event ids, so no run's events are duplicates.
        let run = UnixMicros::now().0 as u64;
        for (server, lookup_url, ingest_url) in
            [("bare", bare.as_str(), bare.as_str()), ("target", options.target.as_str(), target_ingest)]
        {
            let url = if workload.starts_with("ingest-") { ingest_url } else { lookup_url };
            let channel: Channel = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?;
            let w = Workload {
                channel,
                bearer: bearer.clone(),
                station: station.clone(),
                run,
                residents: options.residents.max(1),
                batch: options.batch.max(1) as u64,
            };
            let (c, d) = (options.concurrency, options.duration);
            let mut ingest_beside = None;
            let (requests, errors, latency) = match workload {
                "lookup" => {
                    if !options.warmup.is_zero() {
                        drive(c, options.warmup, w.lookups()).await;
                    }
                    drive(c, d, w.lookups()).await
                }
                "ingest-unary" => drive(c, d, w.unary_scans()).await,
                "ingest-batch" => drive(c, d, w.batches()).await,
                _ => {
                    // Lookups measured while a batch-ingest flood of the same
                    // concurrency runs on its own connection (to the edge, in a
                    // split deployment).
                    let flood_channel =
                        Endpoint::from_shared(ingest_url.to_owned())?.tcp_nodelay(true).connect().await?;
                    let flood = Workload { channel: flood_channel, run: run ^ 1, ..w.clone() };
                    let flooding = tokio::spawn(drive(c, d, flood.batches()));
                    let measured = drive(c, d, w.lookups()).await;
                    let (batches, failed, _) = flooding.await?;
                    let events = (batches - failed) * w.batch;
                    ingest_beside = Some((events as f64 / d.as_secs_f64(), failed));
                    measured
                }
            };
            out.push(Measured {
                workload: workload.into(),
                round,
                server: server.into(),
                requests,
                errors,
                per_second: requests as f64 / options.duration.as_secs_f64(),
                latency,
                ingest_beside,
            });
        }
    }
    Ok(out)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One line per workload: the target's rate against the bare server's in
/// the same round, the median over rounds; for lookups under ingest, each
/// server's p99 under the flood against its own p99 alone in the same
/// round, and what the flood got through beside them.
pub fn summarize(results: &[Measured]) -> Vec<String> {
    let find = |workload: &str, round: usize, server: &str| {
        results.iter().find(|m| m.workload == workload && m.round == round && m.server == server)
    };
    let rounds = results.iter().map(|m| m.round).max().unwrap_or(0);
    let mut lines = Vec::new();
    for workload in WORKLOADS {
        let ratios: Vec<f64> = (1..=rounds)
            .filter_map(|r| Some(find(workload, r, "target")?.per_second / find(workload, r, "bare")?.per_second))
            .filter(|ratio| ratio.is_finite())
            .collect();
        let shown: Vec<String> = ratios.iter().map(|r| format!("{:.2}", r)).collect();
        if let Some(m) = median(ratios) {
            lines.push(format!("{workload}: target {m:.2}x the bare server (median; rounds: {})", shown.join(" ")));
        }
    }
    for server in ["bare", "target"] {
        let rounds: Vec<(f64, f64, f64, u64)> = (1..=rounds)
            .filter_map(|r| {
                let (idle, flooded) = (find("lookup", r, server)?, find("lookup-under-ingest", r, server)?);
                let (events, failed) = flooded.ingest_beside.unwrap_or_default();
                Some((flooded.latency.p99_ms / idle.latency.p99_ms.max(1e-9), flooded.latency.p99_ms, events, failed))
            })
            .collect();
        let failed: u64 = rounds.iter().map(|r| r.3).sum();
        let shown: Vec<String> = rounds.iter().map(|(ratio, p99, ..)| format!("{ratio:.1}x ({p99:.2} ms)")).collect();
        if let (Some(ratio), Some(events)) =
            (median(rounds.iter().map(|r| r.0).collect()), median(rounds.iter().map(|r| r.2).collect()))
        {
            lines.push(format!(
                "{server}: lookup p99 under ingest {ratio:.1}x idle (median; rounds: {}); the flood beside them: {events:.0} events/s (median), {failed} calls failed or shed",
                shown.join(", ")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(workload: &str, round: usize, server: &str, per_second: f64, p99_ms: f64) -> Measured {
        Measured {
            workload: workload.into(),
            round,
            server: server.into(),
            requests: 0,
            errors: 0,
            per_second,
            latency: Percentiles { p99_ms, ..Percentiles::default() },
            ingest_beside: (workload == "lookup-under-ingest").then_some((1_000.0, 2)),
        }
    }

    #[test]
    fn ratios_are_the_median_of_the_rounds_pairs() {
        let results = vec![
            measured("lookup", 1, "bare", 50_000.0, 4.0),
            measured("lookup", 1, "target", 40_000.0, 5.0),
            measured("lookup", 2, "bare", 40_000.0, 4.0),
            measured("lookup", 2, "target", 36_000.0, 5.0),
            measured("lookup", 3, "bare", 60_000.0, 4.0),
            measured("lookup", 3, "target", 42_000.0, 5.0),
            measured("lookup-under-ingest", 1, "target", 1.0, 10.0),
            measured("lookup-under-ingest", 2, "target", 1.0, 15.0),
            measured("lookup-under-ingest", 3, "target", 1.0, 7.5),
        ];
        let lines = summarize(&results);
        // Per round 0.80, 0.90, 0.70: the median is the round's own 0.80,
        // not the 0.79 of the summed rates.
        assert!(lines[0].starts_with("lookup: target 0.80x"), "{lines:?}");
        // Per round 2.0x, 3.0x, 1.5x of the idle p99.
        assert!(lines.iter().any(|l| l.starts_with("target: lookup p99 under ingest 2.0x idle")), "{lines:?}");
        assert!(lines.iter().any(|l| l.ends_with("6 calls failed or shed")), "the three rounds' failures: {lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("bare: lookup p99")), "the bare server had no flooded run");
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0]), Some(2.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_targets_ingest_goes_to_its_edge_and_lookups_to_the_lookup_process() {
        let lookups = format!("http://{}", start_bare().await.unwrap());
        // Nothing listens on port 1: only a run that sends it something fails.
        let options = |workload: &str| BenchOptions {
            target: lookups.clone(),
            ingest_target: Some("http://127.0.0.1:1".into()),
            concurrency: 2,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            residents: 10,
            batch: 5,
            rounds: 1,
            workloads: vec![workload.into()],
            station: "st".into(),
            token: "a-token".into(),
        };
        let looked_up = bench(&options("lookup")).await.unwrap();
        assert!(looked_up.iter().all(|m| m.requests > 0 && m.errors == 0), "lookups reach --target alone");
        for workload in ["ingest-unary", "ingest-batch", "lookup-under-ingest"] {
            assert!(bench(&options(workload)).await.is_err(), "{workload} must reach --ingest-target");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bare_server_answers_with_replies_of_the_real_shape() {
        let addr = start_bare().await.unwrap();
        let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let status = LookupClient::new(channel.clone())
            .get_status(pb::GetStatusRequest { resident_id: "r000000001".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.resident_id, "r000000001");
        assert!(status.as_of.is_some() && status.valid_until.is_some());
        let events = (0..3)
            .map(|n| pb::Event { kind: Some(pb::event::Kind::Scan(scan(1, n, 10, "st"))), provenance: None })
            .collect();
        let reply = IngestClient::new(channel).submit_batch(pb::SubmitBatchRequest { events }).await.unwrap();
        assert_eq!(reply.into_inner().results.len(), 3);
    }
}
