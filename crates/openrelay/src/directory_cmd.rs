//! `openrelay directory`: make, sign and inspect the signed relay list.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

/// Directory commands.
#[derive(Debug, Subcommand)]
pub(crate) enum DirectoryCommand {
    /// Make an ed25519 signing key for directories. Writes the private key to FILE (mode
    /// 0600) and prints the public key, which clients and relays pass as --trust /
    /// directory_keys.
    Keygen {
        /// Where to write the private signing key. Refuses to overwrite.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Sign a directory body (TOML with `version`, `serial` and `[[relay]]` tables) and
    /// write the signed file. The body is checked first: unique names and keys, an
    /// operator for every relay, non-zero ports, bandwidth for egresses.
    Sign {
        /// The private signing key written by `openrelay directory keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The unsigned body.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Where to write the signed directory; standard output if omitted.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Verify a signed directory and print its relays. Fails, saying why, if the file was
    /// changed after signing or was signed by a key not given with --trust.
    Show {
        /// The signed directory file.
        file: PathBuf,
        /// A public key trusted to sign directories (base64). Repeatable.
        #[arg(long, value_name = "KEY", required = true)]
        trust: Vec<String>,
    },
}

pub(crate) fn run(cmd: DirectoryCommand) -> anyhow::Result<()> {
    match cmd {
        DirectoryCommand::Keygen { output } => {
            let key = directory::generate_signing_key();
            crate::write_secret(&output, &directory::encode_signing_key(&key))?;
            println!("{}", directory::encode_verifying_key(&key.verifying_key()));
            eprintln!(
                "signing key written to {}; the line above is its public key",
                output.display()
            );
        }
        DirectoryCommand::Sign { key, input, output } => {
            let key_text = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the signing key {}", key.display()))?;
            let key = directory::decode_signing_key(key_text.trim())
                .context("the signing key is unusable")?;
            let body = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read the directory body {}", input.display()))?;
            let signed = directory::sign(&body, &key)?;
            match output {
                Some(path) => std::fs::write(&path, signed)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{signed}"),
            }
        }
        DirectoryCommand::Show { file, trust } => {
            let keys = trust
                .iter()
                .map(|k| directory::decode_verifying_key(k))
                .collect::<Result<Vec<_>, _>>()
                .context("a --trust key is unusable")?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let dir = match directory::verify(&text, &keys) {
                Ok(d) => d,
                Err(e) => bail!("{} is refused: {e}", file.display()),
            };
            println!(
                "directory serial {} (format {}), signature ok",
                dir.serial, dir.version
            );
            println!(
                "{:<16} {:<8} {:<24} {:<12} {:>10}  key",
                "name", "role", "endpoint", "operator", "Mbit/s"
            );
            for r in &dir.relays {
                let role = match r.role {
                    directory::Role::Ingress => "ingress",
                    directory::Role::Egress => "egress",
                };
                println!(
                    "{:<16} {:<8} {:<24} {:<12} {:>10}  {}",
                    r.name, role, r.endpoint, r.operator, r.bandwidth_mbps, r.wg_public_key
                );
            }
        }
    }
    Ok(())
}
