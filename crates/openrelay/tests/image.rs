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
    remove_stale_runs();
    let base = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let _cleanup = Cleanup(base.clone());
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

    // The rebuild in another place, at another time, on one core, by another user. Its
    // directory is kept for the one-line change below, which then rebuilds only what the
    // change touches.
    let kept = b.join("work");
    let out = Command::new(BIN)
        .args(["image", "verify", "--manifest"])
        .arg(&manifest)
        .arg("--repo")
        .arg(repo())
        .arg("--work-dir")
        .arg(&kept)
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

    // A manifest whose locked crate checksum differs is reported before building.
    let mut tampered = m.clone();
    let first = tampered["crates"][0].as_str().unwrap().to_string();
    let last = if first.ends_with('0') { '1' } else { '0' };
    let changed = format!("{}{last}", &first[..first.len() - 1]);
    tampered["crates"][0] = serde_json::Value::String(changed.clone());
    let bad = base.join("tampered.json");
    std::fs::write(&bad, tampered.to_string()).unwrap();
    let out = verify(&bad, &repo());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("build inputs differ: crates") && err.contains(&changed),
        "{err}"
    );

    // A manifest built with another compiler: named before building.
    let mut other_rustc = m.clone();
    other_rustc["toolchain"][0] = "rustc 1.0.0 (a28077b28 2015-05-13)".into();
    let bad = base.join("other-rustc.json");
    std::fs::write(&bad, other_rustc.to_string()).unwrap();
    let out = verify(&bad, &repo());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("build inputs differ: toolchain: the manifest says rustc 1.0.0"),
        "{err}"
    );
    // The toolchain is the one rust-toolchain.toml pins.
    let pinned = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
    let channel = pinned
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        m["toolchain"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("rustc {channel} ")),
        "{m}"
    );

    // A one-line source change: another commit, and another hash, which verify reports.
    let fork = base.join("fork");
    git(&[
        "clone",
        "--quiet",
        repo().to_str().unwrap(),
        fork.to_str().unwrap(),
    ]);
    // The relay's --help text: part of the executable.
    let file = fork.join("crates/relay/src/main.rs");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed_text = text.replacen("aggregate counters", "aggregate numbers", 1);
    assert_ne!(
        changed_text,
        text,
        "the line to change is gone from {}",
        file.display()
    );
    std::fs::write(&file, changed_text).unwrap();
    let f = fork.to_str().unwrap();
    git(&[
        "-C",
        f,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "-am",
        "one line",
    ]);
    let mut changed = m.clone();
    changed["commit"] = git(&["-C", f, "rev-parse", "HEAD"]).into();
    changed["source_tree"] = git(&["-C", f, "rev-parse", "HEAD^{tree}"]).into();
    let other = base.join("other.json");
    std::fs::write(&other, changed.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["image", "verify", "--manifest"])
        .arg(&other)
        .arg("--repo")
        .arg(&fork)
        .arg("--work-dir")
        .arg(&kept)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the rebuild differs: sha256: the manifest says {sha}"
        )),
        "{err}"
    );
}

/// Names this test's directories, followed by the test process's id.
const PREFIX: &str = "openrelay-image-test-";

/// Removes the test's directory however the test ends: it holds two release builds (about
/// a gigabyte), and directories left by failed runs add up on a machine kept between runs.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes directories of earlier runs whose process is gone (killed before its cleanup).
fn remove_stale_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn verify(manifest: &std::path::Path, repo: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["image", "verify", "--manifest"])
        .arg(manifest)
        .arg("--repo")
        .arg(repo)
        .output()
        .unwrap()
}

fn git(args: &[&str]) -> String {
    let out = Command::new("git").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
