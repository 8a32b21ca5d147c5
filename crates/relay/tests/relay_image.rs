//! The `openrelay-relay` executable itself, as a process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_openrelay-relay");

/// The relay turns transparent huge pages off for itself: with them its allocator's page
/// faults gave setup latency a 30 ms tail.
#[test]
fn the_relay_runs_without_transparent_huge_pages() {
    let dir = std::env::temp_dir().join(format!("openrelay-relay-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("egress.toml");
    std::fs::write(
        &config,
        "private_key = \"mFmqtEGsvYfL1Wz4ltzPEvJrS9RshoHC9PfOzWPX3Vo=\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["egress", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("egress listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the egress did not start within 20 s: {seen:#?}");
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not report it; there is nothing to check then.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "transparent huge pages are on for the relay");
    }
    assert!(
        !seen.iter().any(|l| l.contains("huge pages")),
        "the relay could not turn them off: {seen:#?}"
    );
}
