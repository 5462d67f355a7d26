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
