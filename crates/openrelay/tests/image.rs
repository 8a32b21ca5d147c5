//! The relay executable builds bit for bit the same from the same commit: in another
//! directory, with another SOURCE_DATE_EPOCH, core count and user-visible environment.
//! Slow (two release builds of the relay), and run in CI all the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_openrelay");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn two_builds_of_one_commit_in_different_places_are_identical() {
    let base = std::env::temp_dir().join(format!("openrelay-image-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (a, b) = (base.join("a"), base.join("b/somewhere/much/deeper"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let manifest = base.join("image.json");

    let out = Command::new(BIN)
        .args(["image", "build", "--commit", "HEAD", "--repo"])
        .arg(repo())
        .arg("--output")
        .arg(&manifest)
        .env("TMPDIR", &a)
        .env("SOURCE_DATE_EPOCH", "1")
        .env("CARGO_BUILD_JOBS", "2")
        .env("USER", "alice")
        .env("LANG", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let sha = m["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);
    assert_eq!(m["sim_measurement"].as_str(), Some(sha.as_str()));
    assert!(m["crates"].as_array().unwrap().len() > 50, "{m}");
    assert_eq!(m["source_tree"].as_str().unwrap().len(), 40);

    // The rebuild in another place, at another time, on one core, by another user.
    let out = Command::new(BIN)
        .args(["image", "verify", "--manifest"])
        .arg(&manifest)
        .arg("--repo")
        .arg(repo())
        .env("TMPDIR", &b)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("CARGO_BUILD_JOBS", "1")
        .env("USER", "bob")
        .env("LANG", "de_DE.UTF-8")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the rebuild differs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("match: {sha}")));
    let _ = std::fs::remove_dir_all(&base);
}
