use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    healthcode::cli::run(healthcode::config::Cli::parse()).await
}
