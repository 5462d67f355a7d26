//! The `healthcode` binary's parts: configuration, telemetry, the admin HTTP
//! server, the assembly of roles into a running process, and client verbs.

pub mod admin;
pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod telemetry;
