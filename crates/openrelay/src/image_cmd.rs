//! `openrelay image`: the identity of a relay executable, as clients approve it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// Image commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Print the SHA-256 of a relay executable and the sim-TEE measurement derived from it,
    /// as a `[[image]]` entry for the directory. Compare it with a running relay's evidence
    /// (`openrelay attest verify`) or with a published image.
    Hash {
        /// The executable (for example target/release/openrelay-relay).
        file: PathBuf,
    },
    /// Build the relay executable reproducibly from a commit, in a fresh checkout, and
    /// write its manifest: hash, sim measurement, commit, source tree, toolchain, and the
    /// checksum of every crate in Cargo.lock. Anyone building the same commit with the same
    /// toolchain gets the same bytes.
    Build {
        /// The commit (or branch, tag) to build.
        #[arg(long, default_value = "HEAD")]
        commit: String,
        /// The git repository to clone from.
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// Where to write the manifest.
        #[arg(long, value_name = "FILE", default_value = "image.json")]
        output: PathBuf,
        /// Build in DIR and keep it, instead of a temporary directory that is removed.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
    /// Rebuild the commit a manifest names and compare every field; prints the first
    /// difference and exits with an error unless everything matches.
    Verify {
        /// The manifest (from `openrelay image build`).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The git repository to clone from.
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// Build in DIR and keep it, instead of a temporary directory that is removed. The
        /// checkout in DIR/src is made anew each time, but compiled crates in DIR/target
        /// are reused, so verifying several commits is faster (a first verify of a release
        /// should start from an empty DIR).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
}

/// The directory of one build: a temporary one removed afterwards, or the user's, kept.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(work_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let keep = work_dir.is_some();
        let dir = work_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "openrelay-image-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ))
        });
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Hash { file } => {
            let digest = relay::evidence::measure(&file)
                .with_context(|| format!("cannot hash {}", file.display()))?;
            let hex = hex::encode(digest);
            println!("sha256 {hex}");
            // In the sim TEE the measurement is the executable's SHA-256 itself.
            println!("sim measurement {hex}");
            println!();
            println!("[[image]]");
            println!("platform = \"sim\"");
            println!("measurement = \"{hex}\"");
        }
        ImageCommand::Build {
            commit,
            repo,
            output,
            work_dir,
        } => {
            let scratch = Scratch::new(work_dir)?;
            let m = crate::image_build::build(&repo, &commit, &scratch.dir)?;
            let text = serde_json::to_string_pretty(&m)?;
            std::fs::write(&output, format!("{text}\n"))
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("{} {}", m.sha256, m.binary);
            eprintln!(
                "image of {} written to {} ({} locked crates)",
                m.commit,
                output.display(),
                m.crates.len()
            );
        }
        ImageCommand::Verify {
            manifest,
            repo,
            work_dir,
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let want: crate::image_build::Manifest = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an image manifest", manifest.display()))?;
            let scratch = Scratch::new(work_dir)?;
            // The inputs first: a differing crate or toolchain is reported before building.
            let (inputs, src) = crate::image_build::prepare(&repo, &want.commit, &scratch.dir)?;
            if let Some(d) = crate::image_build::first_input_difference(&want, &inputs) {
                anyhow::bail!("the build inputs differ: {d}");
            }
            let got = crate::image_build::compile(inputs, &src, &scratch.dir)?;
            if let Some(d) = crate::image_build::first_difference(&want, &got) {
                anyhow::bail!("the rebuild differs: {d}");
            }
            println!("match: {} {} from {}", got.sha256, got.binary, got.commit);
        }
    }
    Ok(())
}
