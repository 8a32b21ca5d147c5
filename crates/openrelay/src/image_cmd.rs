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
    }
    Ok(())
}
