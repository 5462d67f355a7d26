use std::process::ExitCode;

use clap::Parser;

// glibc's allocator spent a fifth of the server's CPU under a city round
// (malloc_consolidate, unlink_chunk); mimalloc's thread-local pages do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    healthcode::cli::run(healthcode::cli::Cli::parse()).await
}
