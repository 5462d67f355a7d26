//! README's "Try it", as a newcomer types it: every `hc` line of its code
//! block runs, unchanged, against a real `healthcode up` started on a fresh
//! `./data` (only the addresses come from the environment, so the test
//! needs no fixed port). Lines that restart the server are left to
//! `rebuild.rs`; `curl` and `grpcurl` lines need tools the suite does not
//! install, and the gRPC API tests cover what they show.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Process, free_addr};

/// The shell lines of README's "Try it" code block that use `hc` or set
/// one up (`printf`), without those that restart the server.
fn try_it_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let section = readme.split("## Try it").nth(1).expect("README has a Try it section");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh code block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("hc ") || l.starts_with("printf "))
        .filter(|l| !l.contains("hc up") && !l.contains("hc rebuild"))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_in_the_readme_works_against_a_real_server() {
    let lines = try_it_lines();
    assert!(lines.len() >= 7, "the Try it block lost its verbs: {lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_addr(), free_addr());
    let server = Process::start_with_env(
        &[
            "up".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--admin-addr".into(),
            admin.to_string(),
        ],
        Some(grpc),
        &dir.path().join("up.log"),
        &[],
    )
    .await;
    let run = |line: &str| {
        // `hc` as README defines it, with the binary under test.
        let script = format!("hc() {{ \"{}\" \"$@\"; }}\n{line}", env!("CARGO_BIN_EXE_healthcode"));
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir.path())
            .env("HEALTHCODE_ADDR", format!("http://{grpc}"))
            .env("HEALTHCODE_ADMIN_ADDR", admin.to_string())
            .env_remove("HEALTHCODE_TOKEN")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{line}` failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    };
    let expected =
        [("alice", "GREEN"), ("bob", "RED"), ("carol", "YELLOW"), ("dave", "YELLOW"), ("erin", "YELLOW (exposure)")];
    let shows = |status: &str| {
        expected.iter().all(|(resident, color)| {
            status.lines().find(|l| l.starts_with(&format!("{resident}:"))).is_some_and(|l| l.contains(color))
        })
    };
    let mut outputs = Vec::new();
    for line in &lines {
        let mut stdout = run(line);
        // Typed by hand, seconds pass between lines; run at once, the
        // status line may come before the materializer folded the lines
        // above it in (tens of ms), so it is asked again until it shows them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while line.starts_with("hc status") && !shows(&stdout) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            stdout = run(line);
        }
        outputs.push((line.clone(), stdout));
    }
    let said =
        |verb: &str| outputs.iter().find(|(l, _)| l.starts_with(verb)).map(|(_, o)| o.clone()).unwrap_or_default();
    // What the lines before it submitted shows in the status line.
    let status = said("hc status");
    for (resident, color) in expected {
        let line = status.lines().find(|l| l.starts_with(&format!("{resident}:"))).unwrap_or_default();
        assert!(line.contains(color), "{resident} is not {color}: {status}");
    }
    assert!(
        said("hc site-risks").contains("cafe-9") && said("hc site-risks").contains("1 exposed"),
        "{}",
        said("hc site-risks")
    );
    let overrides = said("hc overrides");
    assert!(overrides.contains("close contact") && overrides.contains("(dev-authority, token)"), "{overrides}");
    assert!(said("hc policy diff").contains("would change color"), "{}", said("hc policy diff"));
    assert!(server.terminate().success());
}
