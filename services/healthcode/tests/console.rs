//! The operations console in a real browser: Debian's headless Chromium,
//! driven by playwright-core (tests/console/console.mjs), against a fresh
//! `healthcode up --fault-injection`. Sign in, numbers that move while the
//! CLI verbs run, a banner while the store fails and none after, sign out.
//! Screenshots are kept in target/console/. Without node, Chromium or
//! playwright-core (scripts/setup.sh installs them) the test says SKIPPED.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use healthcode_testkit::skipped;
use support::{Process, free_addr};

const CHROMIUM: &str = "/usr/bin/chromium";

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<String> {
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Some("node is not installed".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)"));
    }
    if !script_dir().join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (scripts/setup.sh runs npm ci)".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_moves_shows_a_failing_store_and_signs_out() {
    if let Some(why) = missing() {
        return skipped("the_console_signs_in_moves_shows_a_failing_store_and_signs_out", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (grpc, admin) = (free_addr(), free_addr());
    let args: Vec<String> = [
        "up",
        "--fault-injection",
        "true",
        "--data-dir",
        &data.display().to_string(),
        "--admin-addr",
        &admin.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let server = Process::start_with_env(&args, Some(grpc), &dir.path().join("up.log"), &[]).await;
    let token = std::fs::read_to_string(data.join("credentials/ops.token")).unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console");
    let out = Command::new("node")
        .arg(script_dir().join("console.mjs"))
        .current_dir(script_dir())
        .env("ADMIN_ADDR", admin.to_string())
        .env("GRPC_ADDR", grpc.to_string())
        .env("OPS_TOKEN", token.trim())
        .env("HEALTHCODE_BIN", env!("CARGO_BIN_EXE_healthcode"))
        .env("DATA_DIR", &data)
        .env("ARTIFACTS", &artifacts)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\nserver log: {}",
        dir.path().join("up.log").display()
    );
    assert!(stdout.contains("console: every check passed"), "{stdout}");
    assert!(artifacts.join("console.png").exists(), "a screenshot is kept in {}", artifacts.display());
    assert!(server.terminate().success());
}

/// One HTTP/1.1 exchange on the admin port: status, headers, body.
async fn exchange(addr: std::net::SocketAddr, request: String) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (head[9..12].parse().unwrap(), head.to_owned(), body.to_owned())
}

/// A split deployment's console: this process plus the peers the setting
/// lists, read with the signed-in operator's token; a peer that does not
/// answer shows as unreachable instead of breaking the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_reads_its_peers_with_the_operators_token() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_admin, b_admin) = (free_addr(), free_addr());
    let a_tokens = a_data.join("credentials/tokens.toml");
    let a = Process::start_with_env(
        &["up", "--data-dir", &a_data.display().to_string(), "--admin-addr", &a_admin.to_string()].map(String::from),
        Some(free_addr()),
        &dir.path().join("a.log"),
        &[],
    )
    .await;
    // The peer admits the same tokens, as every process of a deployment does.
    let b = Process::start_with_env(
        &["up", "--data-dir", &b_data.display().to_string(), "--admin-addr", &b_admin.to_string(), "--tokens-file"]
            .map(String::from)
            .into_iter()
            .chain([a_tokens.display().to_string()])
            .collect::<Vec<_>>(),
        Some(free_addr()),
        &dir.path().join("b.log"),
        &[],
    )
    .await;
    drop(a);
    let console_admin = free_addr();
    let peers = format!("{b_admin},127.0.0.1:1");
    let console = Process::start_with_env(
        &[
            "up",
            "--data-dir",
            &a_data.display().to_string(),
            "--admin-addr",
            &console_admin.to_string(),
            "--console-peers",
            &peers,
        ]
        .map(String::from),
        Some(free_addr()),
        &dir.path().join("console.log"),
        &[],
    )
    .await;
    let token = std::fs::read_to_string(a_data.join("credentials/ops.token")).unwrap();
    let form = |token: &str| {
        let body = format!("token={}", token.trim());
        format!(
            "POST /console/sign-in HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (code, _, body) = exchange(console_admin, form("0000")).await;
    assert_eq!(code, 401, "an unknown token signs nobody in: {body}");
    let (code, head, _) = exchange(console_admin, form(&token)).await;
    assert_eq!(code, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let get = |cookie: &str| {
        format!("GET /console/api/state HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n")
    };
    let (code, _, _) = exchange(console_admin, get("healthcode_console=forged")).await;
    assert_eq!(code, 401, "a made-up session reads nothing");
    let (code, _, body) = exchange(console_admin, get(&cookie)).await;
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = state["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(nodes[1]["name"], b_admin.to_string());
    assert_eq!(nodes[1]["up"], true, "the peer was read with the operator's token: {:?}", nodes[1]["error"]);
    assert!(nodes[1]["samples"].as_object().is_some_and(|s| s.keys().any(|k| k.starts_with("healthcode_"))));
    assert_eq!(nodes[2]["up"], false, "an address nobody listens on is unreachable, not an error page");
    drop((b, console));
}
