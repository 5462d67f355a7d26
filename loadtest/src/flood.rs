//! A flood of unauthenticated, maximum-size requests, as an attacker would
//! send before holding any credential: many connections, each with many
//! SubmitBatch calls of about 2 MiB in flight, no token. The server should
//! refuse each on its headers and keep its memory bounded; the peak is read
//! from the server's /proc entry by whoever runs this (see docs/security.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use healthcode_proto::v1::{self as pb, ingest_client::IngestClient};
use tonic::transport::Endpoint;

/// What the flood got back, by gRPC code.
pub struct Flooded {
    pub calls: u64,
    pub codes: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// A SubmitBatch of about `bytes` bytes: one scan whose ids carry the weight.
fn heavy_batch(bytes: usize) -> pb::SubmitBatchRequest {
    let scan = pb::ScanEvent { event_id: "x".repeat(bytes.saturating_sub(64)), ..Default::default() };
    pb::SubmitBatchRequest { events: vec![pb::Event { kind: Some(pb::event::Kind::Scan(scan)), provenance: None }] }
}

/// `connections` connections, each with `per_connection` calls in flight,
/// each call about `bytes` bytes, for `duration`.
pub async fn flood(
    target: &str,
    connections: usize,
    per_connection: usize,
    bytes: usize,
    duration: Duration,
) -> anyhow::Result<Flooded> {
    let started = Instant::now();
    let request = heavy_batch(bytes);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let channel = Endpoint::from_shared(target.to_owned())?.connect().await?;
        for _ in 0..per_connection {
            let (mut client, request) =
                (IngestClient::new(channel.clone()).max_encoding_message_size(bytes * 2), request.clone());
            tasks.spawn(async move {
                let mut codes: BTreeMap<String, u64> = BTreeMap::new();
                while started.elapsed() < duration {
                    let code = match client.submit_batch(request.clone()).await {
                        Ok(_) => "OK".to_owned(),
                        Err(status) => format!("{:?}", status.code()),
                    };
                    *codes.entry(code).or_default() += 1;
                }
                codes
            });
        }
    }
    let mut total = Flooded { calls: 0, codes: BTreeMap::new(), elapsed: Duration::ZERO };
    while let Some(codes) = tasks.join_next().await {
        for (code, n) in codes? {
            total.calls += n;
            *total.codes.entry(code).or_default() += n;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use healthcode_proto::Message;

    use super::*;

    #[test]
    fn a_heavy_batch_weighs_what_was_asked() {
        let len = heavy_batch(2 * 1024 * 1024).encoded_len();
        assert!((2 * 1024 * 1024 - 64..=2 * 1024 * 1024).contains(&len), "{len}");
    }
}
