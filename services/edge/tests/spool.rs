//! The edge spool is bounded, durable across a restart, and drains into the
//! log once it takes records again.

use std::sync::Arc;
use std::time::Duration;

use healthcode_edge::spool::Spool;
use healthcode_log::{EmbeddedLog, EventLog, Record};
use tokio_util::sync::CancellationToken;

fn records(from: u8, n: u8) -> Vec<Record> {
    (from..from + n).map(|i| Record { key: vec![i], payload: vec![i; 8] }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_and_a_reopened_one_drains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    {
        let (spool, _drainer) = Spool::open(&spool_dir, 3, Duration::from_millis(250)).await.unwrap();
        spool.append(records(0, 2)).await.unwrap();
        let full = spool.append(records(2, 2)).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        spool.append(records(2, 1)).await.unwrap();
        assert_eq!(spool.depth(), 3);
        spool.close().await.unwrap();
    }

    // A restart finds the three spooled records and forwards them.
    let (spool, drainer) = Spool::open(&spool_dir, 3, Duration::from_millis(250)).await.unwrap();
    assert_eq!(spool.depth(), 3, "the spool survives a restart");
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log")).unwrap());
    let mut reader = log.consumer("check").await.unwrap();
    let shutdown = CancellationToken::new();
    let draining = tokio::spawn(drainer.run(log.clone(), Duration::from_secs(1), shutdown.clone()));
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "drained {} of 3", got.len());
        got.extend(reader.poll(10, Duration::from_millis(200)).await.unwrap().into_iter().map(|d| d.record.key[0]));
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while spool.depth() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the spool never emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spool.append(records(3, 3)).await.expect("room again once drained");
    shutdown.cancel();
    draining.await.unwrap();
}
