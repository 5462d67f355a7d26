//! A minimal HTTP/1.1 client for a healthcode admin port (`/ready`,
//! `/metrics`, `/faults`): the drills and the tests use it, and pulling an
//! HTTP client crate in for three GETs and a POST is not worth it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `method path` with an optional bearer token: the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply)).await??;
    let code = reply.get(9..12).and_then(|c| c.parse().ok()).context("not an HTTP reply")?;
    Ok((code, reply.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()))
}
