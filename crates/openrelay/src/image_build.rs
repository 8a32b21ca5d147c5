//! Reproducible builds of the relay executable: `openrelay image build` and `verify`.
//!
//! The recipe: a fresh clone of one commit, `cargo build --release --locked -p
//! openrelay-relay`, with the checkout's and Cargo's paths remapped to fixed names and
//! symbols stripped, no incremental compilation, `SOURCE_DATE_EPOCH` set to the commit's
//! time (the C allocator's `__DATE__`) and the caller's C compiler settings removed. Nothing
//! else of the machine (user, time, core count) reaches the executable, so the same commit
//! gives the same bytes anywhere with the same toolchain (Rust's and the C compiler's, both
//! in the manifest).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The relay executable that is measured.
pub(crate) const BINARY: &str = "openrelay-relay";

/// What a build produced and from what: the manifest validators publish and compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// The executable's name.
    pub binary: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The sim-TEE measurement derived from it (the same SHA-256).
    pub sim_measurement: String,
    /// The commit built.
    pub commit: String,
    /// Git's hash of the commit's source tree.
    pub source_tree: String,
    /// `rustc --version`, `cargo --version` and the first line of `cc --version`.
    pub toolchain: Vec<String>,
    /// The RUSTFLAGS of the recipe (with the placeholders used for paths).
    pub rustflags: String,
    /// Every registry crate in Cargo.lock: "name version checksum".
    pub crates: Vec<String>,
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds `commit` of the repository at `repo` in a fresh checkout under `work`, and
/// describes the result.
pub(crate) fn build(repo: &Path, commit: &str, work: &Path) -> anyhow::Result<Manifest> {
    let (inputs, src) = prepare(repo, commit, work)?;
    compile(inputs, &src, work)
}

/// Clones `commit` into `work/src` and describes its build inputs (no hash yet).
pub(crate) fn prepare(
    repo: &Path,
    commit: &str,
    work: &Path,
) -> anyhow::Result<(Manifest, PathBuf)> {
    let src = work.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src)
            .with_context(|| format!("cannot remove the old checkout {}", src.display()))?;
    }
    eprintln!("[1/4] cloning {} at {commit}", repo.display());
    run(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(repo)
            .arg(&src),
        "git clone",
    )?;
    run(
        Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["checkout", "--quiet", "--detach", commit]),
        "git checkout",
    )?;
    let commit = run(
        Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["rev-parse", "HEAD"]),
        "git rev-parse",
    )?;
    let source_tree = run(
        Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["rev-parse", "HEAD^{tree}"]),
        "git rev-parse",
    )?;
    let toolchain = vec![
        run(
            in_checkout("rustc", &src).arg("--version"),
            "rustc --version",
        )?,
        run(
            in_checkout("cargo", &src).arg("--version"),
            "cargo --version",
        )?,
        run(Command::new("cc").arg("--version"), "cc --version")?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    ];
    let lock = std::fs::read_to_string(src.join("Cargo.lock")).context("cannot read Cargo.lock")?;
    let inputs = Manifest {
        format: 1,
        binary: BINARY.into(),
        sha256: String::new(),
        sim_measurement: String::new(),
        commit,
        source_tree,
        toolchain,
        rustflags: "--remap-path-prefix=<checkout>=/openrelay --remap-path-prefix=<CARGO_HOME>=/cargo -C strip=symbols".into(),
        crates: locked_crates(&lock),
    };
    Ok((inputs, src))
}

/// Builds the checkout at `src` (from [`prepare`]) and fills in the hash.
pub(crate) fn compile(mut inputs: Manifest, src: &Path, work: &Path) -> anyhow::Result<Manifest> {
    let target = work.join("target");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustflags = format!(
        "--remap-path-prefix={}=/openrelay --remap-path-prefix={}=/cargo -C strip=symbols",
        src.display(),
        cargo_home.display()
    );
    let epoch = run(
        Command::new("git")
            .arg("-C")
            .arg(src)
            .args(["show", "-s", "--format=%ct", "HEAD"]),
        "git show",
    )?;
    eprintln!("[2/4] building {BINARY} (release, --locked, paths remapped, stripped)");
    let mut cargo = in_checkout("cargo", src);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_c_build_setting) {
            cargo.env_remove(name);
        }
    }
    let status = cargo
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            BINARY,
            "--bin",
            BINARY,
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_INCREMENTAL", "0")
        .env("RUSTFLAGS", &rustflags)
        .env("SOURCE_DATE_EPOCH", &epoch)
        // Nothing from the caller's build settings may change the recipe.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of {BINARY} failed (see above)");
    }
    eprintln!("[3/4] hashing");
    let exe = target.join("release").join(BINARY);
    let digest =
        relay::evidence::measure(&exe).with_context(|| format!("cannot hash {}", exe.display()))?;
    let sha256 = hex::encode(digest);
    eprintln!("[4/4] done");
    inputs.sim_measurement = sha256.clone();
    inputs.sha256 = sha256;
    Ok(inputs)
}

/// Environment variables the `cc` crate reads for C builds (also in `HOST_`, `TARGET_` and
/// per-target forms), which would change the allocator's machine code.
fn is_c_build_setting(name: &str) -> bool {
    let base = name
        .strip_prefix("HOST_")
        .or_else(|| name.strip_prefix("TARGET_"))
        .unwrap_or(name);
    [
        "CC", "CFLAGS", "CPPFLAGS", "CXX", "CXXFLAGS", "AR", "ARFLAGS",
    ]
    .iter()
    .any(|v| base == *v || base.starts_with(&format!("{v}_")))
        || name == "CRATE_CC_NO_DEFAULTS"
}

/// A toolchain command run in the checkout, so the commit's rust-toolchain.toml picks the
/// compiler (not a toolchain the caller's rustup chose for itself).
fn in_checkout(program: &str, src: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(src).env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// "name version checksum" for every package of Cargo.lock that has a checksum.
fn locked_crates(lock: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in lock.split("[[package]]") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name "), field("version "), field("checksum "))
        {
            out.push(format!("{n} {v} {c}"));
        }
    }
    out
}

/// The first build input in which two manifests differ (the hash aside).
pub(crate) fn first_input_difference(want: &Manifest, got: &Manifest) -> Option<String> {
    let mut a = want.clone();
    a.sha256 = got.sha256.clone();
    a.sim_measurement = got.sim_measurement.clone();
    first_difference(&a, got)
}

/// The first field in which two manifests differ, as "field: expected … got …".
pub(crate) fn first_difference(want: &Manifest, got: &Manifest) -> Option<String> {
    let pairs: [(&str, String, String); 7] = [
        ("commit", want.commit.clone(), got.commit.clone()),
        (
            "source_tree",
            want.source_tree.clone(),
            got.source_tree.clone(),
        ),
        (
            "toolchain",
            want.toolchain.join("; "),
            got.toolchain.join("; "),
        ),
        ("rustflags", want.rustflags.clone(), got.rustflags.clone()),
        ("binary", want.binary.clone(), got.binary.clone()),
        ("sha256", want.sha256.clone(), got.sha256.clone()),
        (
            "sim_measurement",
            want.sim_measurement.clone(),
            got.sim_measurement.clone(),
        ),
    ];
    for (name, a, b) in pairs {
        if a != b {
            return Some(format!(
                "{name}: the manifest says {a}, this build gives {b}"
            ));
        }
    }
    if want.crates != got.crates {
        let a: std::collections::BTreeSet<_> = want.crates.iter().collect();
        let b: std::collections::BTreeSet<_> = got.crates.iter().collect();
        let only_a = a
            .difference(&b)
            .next()
            .map_or(String::new(), |s| (*s).clone());
        let only_b = b
            .difference(&a)
            .next()
            .map_or(String::new(), |s| (*s).clone());
        return Some(format!(
            "crates: the manifest lists {only_a:?}, this build has {only_b:?}"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crates_come_from_cargo_lock_with_their_checksums() {
        let lock = "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+x\"\nchecksum = \"abc\"\n\n[[package]]\nname = \"local\"\nversion = \"0.1.0\"\n";
        assert_eq!(locked_crates(lock), vec!["a 1.0.0 abc".to_string()]);
    }

    #[test]
    fn the_callers_c_compiler_settings_are_recognised() {
        for name in [
            "CC",
            "CFLAGS",
            "HOST_CFLAGS",
            "TARGET_CC",
            "CFLAGS_x86_64-unknown-linux-gnu",
            "CC_x86_64_unknown_linux_gnu",
            "AR",
            "CRATE_CC_NO_DEFAULTS",
        ] {
            assert!(is_c_build_setting(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "PATH",
            "CCACHE_DIR",
            "ARCH",
            "RUSTFLAGS",
            "HOME",
        ] {
            assert!(!is_c_build_setting(name), "{name}");
        }
    }

    #[test]
    fn the_first_difference_is_named() {
        let m = Manifest {
            format: 1,
            binary: BINARY.into(),
            sha256: "aa".into(),
            sim_measurement: "aa".into(),
            commit: "c".into(),
            source_tree: "t".into(),
            toolchain: vec!["rustc 1".into()],
            rustflags: "f".into(),
            crates: vec!["a 1 x".into()],
        };
        assert_eq!(first_difference(&m, &m), None);
        let mut other = m.clone();
        other.sha256 = "bb".into();
        other.sim_measurement = "bb".into();
        let d = first_difference(&m, &other).unwrap();
        assert!(
            d.starts_with("sha256: the manifest says aa, this build gives bb"),
            "{d}"
        );
        let mut other = m.clone();
        other.crates = vec!["a 1 y".into()];
        assert!(first_difference(&m, &other).unwrap().starts_with("crates:"));
    }
}
