//! The `healthcode` binary's parts: configuration, telemetry, the admin HTTP
//! server, credentials, the assembly of roles into a running process, and
//! client verbs. Dependencies run one way: cli -> {app, client} ->
//! {config, credentials, telemetry, admin}.

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod credentials;
pub mod policy_diff;
pub mod telemetry;

/// Threads for blocking store and log calls, in the process's runtime.
/// tokio's default is 512, and a 13-million-resident round at 40x on two
/// cores reached it: lookups past their budget leave their store reads
/// running while new lookups start more, and each thread holds its stack
/// and its own allocator pages. Past this many, blocking calls queue.
pub const BLOCKING_THREADS: usize = 64;

/// The runtime `healthcode` runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(BLOCKING_THREADS).build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn blocking_calls_past_the_bound_queue_instead_of_starting_threads() {
        let runtime = super::runtime().unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        runtime.block_on(async {
            let calls: Vec<_> = (0..super::BLOCKING_THREADS * 2)
                .map(|_| {
                    let (running, most) = (running.clone(), most.clone());
                    tokio::task::spawn_blocking(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            for call in calls {
                call.await.unwrap();
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!(most <= super::BLOCKING_THREADS, "{most} blocking calls ran at once");
        assert!(most > 1, "they still run side by side");
    }
}
