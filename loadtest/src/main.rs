use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    healthcode_loadtest::run(healthcode_loadtest::Cli::parse()).await
}
