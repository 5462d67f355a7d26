//! Reads every resident's status back and compares it with the expected one.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use futures_util::{StreamExt, stream};
use healthcode_core::UnixMicros;
use healthcode_proto::v1::{self as pb, lookup_client::LookupClient};
use tonic::transport::Channel;

use crate::replay::{REPLAY_FILE, ReplayRecord, UNACKNOWLEDGED_FILE};
use crate::schedule::EXPECTED_FILE;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub resident_id: String,
    pub color: String,
    pub reason: String,
    pub last_negative_ms: Option<i64>,
    pub last_positive_ms: Option<i64>,
}

pub fn parse_line(line: &str) -> anyhow::Result<Expected> {
    let mut f = line.split(',');
    let mut next = || f.next().context("expected.csv: short line");
    let opt = |s: &str| -> anyhow::Result<Option<i64>> { if s.is_empty() { Ok(None) } else { Ok(Some(s.parse()?)) } };
    Ok(Expected {
        resident_id: next()?.to_owned(),
        color: next()?.to_owned(),
        reason: next()?.to_owned(),
        last_negative_ms: opt(next()?)?,
        last_positive_ms: opt(next()?)?,
    })
}

/// What differs between the expected and the actual status, if anything.
pub fn compare(expected: &Expected, actual: &pb::ResidentStatus, anchor_ms: i64) -> Option<String> {
    let color = pb::Color::try_from(actual.color).unwrap_or_default().as_str_name();
    let reason = pb::Reason::try_from(actual.reason).unwrap_or_default().as_str_name();
    let ms = |t: &Option<healthcode_proto::Timestamp>| {
        t.as_ref().and_then(UnixMicros::from_timestamp).map(|t| t.0.div_euclid(1000) - anchor_ms)
    };
    let (negative, positive) = (ms(&actual.last_negative_sampled_at), ms(&actual.last_positive_sampled_at));
    if actual.resident_id != expected.resident_id
        || color != expected.color
        || reason != expected.reason
        || negative != expected.last_negative_ms
        || positive != expected.last_positive_ms
    {
        return Some(format!(
            "{}: expected {} {} neg={:?} pos={:?}, got {} {} neg={:?} pos={:?}{}",
            expected.resident_id,
            expected.color,
            expected.reason,
            expected.last_negative_ms,
            expected.last_positive_ms,
            color,
            reason,
            negative,
            positive,
            if actual.stale { " (stale)" } else { "" }
        ));
    }
    None
}

/// Residents touched by an event the replay could not get acknowledged.
pub fn unacknowledged_residents(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|id| {
            let mut parts = id.split('-');
            let prefix = parts.next()?;
            let index: u64 = match prefix {
                "o" => parts.nth(1)?.parse().ok()?,
                _ => parts.next()?.parse().ok()?,
            };
            Some(crate::round::resident_id(index))
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub checked: u64,
    pub mismatches: u64,
    pub first: Vec<String>,
    /// Residents left out because one of their events was never acknowledged.
    pub unacknowledged: u64,
    /// Residents whose status changed by itself between the round's end
    /// (what expected.csv holds) and the read (an override or a negative
    /// ran out): judged again by the oracle at the server's clock, and right.
    pub changed_by_the_clock: u64,
}

/// The oracle's answer for resident `id` at the server's clock while the
/// read ran (`from`..`to`, round time), when it is the same at both ends.
fn at_read_time(
    round: &crate::round::RoundConfig,
    risks: &crate::oracle::Risks,
    id: &str,
    (from, to): (i64, i64),
) -> Option<Expected> {
    let i: u64 = id.strip_prefix('r')?.parse().ok()?;
    let rules = crate::oracle::Rules::default();
    let history = round.history(i);
    let (first, last) =
        (crate::oracle::judge(&history, risks, &rules, from), crate::oracle::judge(&history, risks, &rules, to));
    (first == last).then(|| Expected {
        resident_id: id.to_owned(),
        color: first.color.to_owned(),
        reason: first.reason.to_owned(),
        last_negative_ms: first.last_negative_ms,
        last_positive_ms: first.last_positive_ms,
    })
}

/// Attempts per read, as a station retries (backoff up to 2 s): a store
/// still folding in the round's last burst may time reads out for a while.
pub const VERIFY_ATTEMPTS: usize = 15;

/// A lookup client with the verifying gate's credential.
pub type StatusReader = LookupClient<tonic::service::interceptor::InterceptedService<Channel, healthcode_auth::Bearer>>;

/// Statuses of `ids` (at most 500) read as a station would (retried with
/// backoff, `attempts` in all), without tokens: nobody hands these answers
/// to a station. With the round times (from `anchor_ms`) the read began
/// and ended at.
pub async fn read_statuses(
    client: &StatusReader,
    ids: Vec<String>,
    attempts: usize,
    anchor_ms: i64,
) -> anyhow::Result<(Vec<pb::ResidentStatus>, (i64, i64))> {
    let request = pb::BatchGetStatusRequest { resident_id: ids, omit_status_tokens: true };
    let from = round_now(anchor_ms);
    let reply = crate::replay::as_station(attempts, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.batch_get_status(request).await }
    })
    .await?;
    Ok((reply.into_inner().statuses, (from, round_now(anchor_ms))))
}

fn round_now(anchor_ms: i64) -> i64 {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    wall.unwrap_or(0) - anchor_ms
}

pub async fn verify(
    dir: &Path,
    target: &str,
    ca_file: Option<&Path>,
    show: usize,
    concurrency: usize,
) -> anyhow::Result<VerifyOutcome> {
    let record: ReplayRecord = serde_json::from_slice(
        &std::fs::read(dir.join(REPLAY_FILE)).context("no replay.json: replay the round first")?,
    )?;
    let skip = unacknowledged_residents(&std::fs::read_to_string(dir.join(UNACKNOWLEDGED_FILE)).unwrap_or_default());
    let channel: Channel = crate::endpoint(target, ca_file)?.connect().await?;
    let credentials = crate::credentials::Credentials::load(dir)?;
    let bearer = healthcode_auth::Bearer::new(credentials.token(&crate::credentials::gate(0))?)?;
    let lines = BufReader::with_capacity(1 << 20, File::open(dir.join(EXPECTED_FILE))?).lines().skip(1);
    let mut expected = lines.map(|l| l.map_err(anyhow::Error::from).and_then(|l| parse_line(&l)));
    let chunks = std::iter::from_fn(move || {
        let chunk: Vec<anyhow::Result<Expected>> = expected.by_ref().take(500).collect();
        (!chunk.is_empty()).then_some(chunk)
    });
    let mut results = stream::iter(chunks)
        .map(|chunk| {
            let client = LookupClient::with_interceptor(channel.clone(), bearer.clone());
            async move {
                let chunk: Vec<Expected> = chunk.into_iter().collect::<anyhow::Result<_>>()?;
                let ids = chunk.iter().map(|e| e.resident_id.clone()).collect();
                let (statuses, read_at) = read_statuses(&client, ids, VERIFY_ATTEMPTS, record.anchor_unix_ms).await?;
                anyhow::Ok((chunk, statuses, read_at))
            }
        })
        .buffered(concurrency.max(1));
    let mut outcome = VerifyOutcome::default();
    let round = crate::schedule::read_manifest(dir)?.round;
    let mut risks = None;
    // Judges one answer: true when it is right, at the round's end or at the
    // read's own time (an override or a negative may have run out since).
    let mut judge = |e: &Expected, actual: &pb::ResidentStatus, read_at, outcome: &mut VerifyOutcome| {
        if compare(e, actual, record.anchor_unix_ms).is_none() {
            return true;
        }
        let risks = risks.get_or_insert_with(|| round.risks());
        if let Some(now) = at_read_time(&round, risks, &e.resident_id, read_at)
            && compare(&now, actual, record.anchor_unix_ms).is_none()
        {
            outcome.changed_by_the_clock += 1;
            return true;
        }
        false
    };
    let mut wrong: Vec<Expected> = Vec::new();
    while let Some(result) = results.next().await {
        let (chunk, statuses, read_at) = result?;
        anyhow::ensure!(chunk.len() == statuses.len(), "BatchGetStatus answered {} of {}", statuses.len(), chunk.len());
        for (e, actual) in chunk.into_iter().zip(&statuses) {
            if skip.contains(&e.resident_id) {
                outcome.unacknowledged += 1;
                continue;
            }
            outcome.checked += 1;
            if !judge(&e, actual, read_at, &mut outcome) {
                wrong.push(e);
            }
        }
    }
    // The last events may still be on their way into the store (a replay
    // that ends on a burst): a wrong answer is read again, every 2 s for
    // 10 s, and counts only if it stays wrong.
    let client = LookupClient::with_interceptor(channel.clone(), bearer.clone());
    for _ in 0..5 {
        if wrong.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let mut still = Vec::new();
        for chunk in wrong.chunks(500) {
            let ids = chunk.iter().map(|e| e.resident_id.clone()).collect();
            let (statuses, read_at) = read_statuses(&client, ids, VERIFY_ATTEMPTS, record.anchor_unix_ms).await?;
            for (e, actual) in chunk.iter().zip(&statuses) {
                if !judge(e, actual, read_at, &mut outcome) {
                    still.push((e.clone(), compare(e, actual, record.anchor_unix_ms).unwrap_or_default()));
                }
            }
        }
        outcome.first = still.iter().take(show).map(|(_, diff)| diff.clone()).collect();
        wrong = still.into_iter().map(|(e, _)| e).collect();
    }
    outcome.mismatches = wrong.len() as u64;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lines_parse_with_and_without_samples() {
        let e = parse_line("r000000001,GREEN,NEGATIVE_TEST_VALID,5000,").unwrap();
        assert_eq!((e.last_negative_ms, e.last_positive_ms), (Some(5000), None));
        assert!(parse_line("r1,GREEN").is_err());
    }

    #[test]
    fn a_status_that_differs_in_any_field_is_a_mismatch() {
        let anchor = 1_000_000;
        let e = parse_line("r000000001,GREEN,NEGATIVE_TEST_VALID,5000,").unwrap();
        let mut actual = pb::ResidentStatus {
            resident_id: "r000000001".into(),
            color: pb::Color::Green as i32,
            reason: pb::Reason::NegativeTestValid as i32,
            last_negative_sampled_at: Some(UnixMicros((anchor + 5000) * 1000).to_timestamp()),
            ..Default::default()
        };
        assert_eq!(compare(&e, &actual, anchor), None);
        actual.last_negative_sampled_at = Some(UnixMicros((anchor + 4000) * 1000).to_timestamp());
        assert!(compare(&e, &actual, anchor).is_some(), "an older sample means an event left no trace");
        actual.last_negative_sampled_at = Some(UnixMicros((anchor + 5000) * 1000).to_timestamp());
        actual.color = pb::Color::Yellow as i32;
        assert!(compare(&e, &actual, anchor).is_some());
    }

    #[test]
    fn a_status_that_ran_out_after_the_round_is_judged_at_the_read_time() {
        use crate::oracle::Happened;
        let round = crate::round::RoundConfig { residents: 3_000, ..Default::default() };
        let risks = round.risks();
        let (i, expires) = (0..round.residents)
            .find_map(|i| {
                round.history(i).iter().find_map(|h| match h {
                    Happened::Override { expires_ms, .. } => Some((i, *expires_ms)),
                    _ => None,
                })
            })
            .expect("a contact with an override");
        let id = crate::round::resident_id(i);
        let before = at_read_time(&round, &risks, &id, (expires - 2, expires - 1)).unwrap();
        let after = at_read_time(&round, &risks, &id, (expires + 1, expires + 2)).unwrap();
        assert_eq!(before.reason, "OVERRIDE");
        assert_ne!(after.reason, "OVERRIDE", "the override ran out");
        assert_eq!(
            at_read_time(&round, &risks, &id, (expires - 1, expires + 1)),
            None,
            "a read across the change is not judged"
        );
    }

    #[test]
    fn unacknowledged_event_ids_name_their_residents() {
        let skip = unacknowledged_residents("t-12 not acknowledged: Unavailable\no-7-8 rejected: x\n");
        assert!(skip.contains("r000000012") && skip.contains("r000000008") && skip.len() == 2);
    }
}
