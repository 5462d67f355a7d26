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
