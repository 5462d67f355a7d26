//! The gRPC listener's accepted connections. An accept that fails (the
//! process ran out of file descriptors, the kernel out of buffers) fails
//! again at once until something changes, so retrying it in a loop spins a
//! core: failures back off (1 ms doubling to 1 s) and are counted in
//! `healthcode_grpc_accept_errors_total`; the first success resets the wait.

use std::future::Future;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};

const FIRST_WAIT: Duration = Duration::from_millis(1);
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// Connections from `listener`, Nagle off: small replies go out at once
/// instead of waiting on the peer's delayed ACK (a 40 ms stall at the tail).
pub fn connections(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    with_backoff(std::sync::Arc::new(listener), |listener: std::sync::Arc<TcpListener>| async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// What `accept` yields, waiting after each failure instead of retrying at
/// once; never yields an error (there is nothing a server can do with one).
pub fn with_backoff<S, F, Fut, T>(source: S, accept: F) -> impl Stream<Item = std::io::Result<T>>
where
    S: Clone,
    F: Fn(S) -> Fut + Clone,
    Fut: Future<Output = std::io::Result<T>>,
{
    futures_util::stream::unfold((source, accept), |(source, accept)| async move {
        let mut wait = FIRST_WAIT;
        loop {
            match accept(source.clone()).await {
                Ok(item) => return Some((Ok(item), (source, accept))),
                Err(e) => {
                    metrics::counter!("healthcode_grpc_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "accepting a gRPC connection failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LONGEST_WAIT);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_instead_of_spinning() {
        // Twelve failures (as with no descriptors left), then a connection.
        let calls = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let stream = with_backoff(calls.clone(), |calls: Arc<AtomicUsize>| async move {
            if calls.fetch_add(1, Ordering::SeqCst) < 12 {
                Err(std::io::Error::from_raw_os_error(24)) // EMFILE
            } else {
                Ok("connection")
            }
        });
        futures_util::pin_mut!(stream);
        assert_eq!(stream.next().await.unwrap().unwrap(), "connection");
        assert_eq!(calls.load(Ordering::SeqCst), 13);
        // 1 + 2 + 4 + ... + 512 ms, then 1 s twice: the loop waited, it did not spin.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1023 + 2000), "waited only {waited:?}");
        assert!(waited < Duration::from_millis(1023 + 2000 + 50), "waited {waited:?}");
    }
}
