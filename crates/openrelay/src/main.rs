//! `openrelay`: the user's command for OpenRelay, an attested, two-hop, decentralized VPN.

mod account_cmd;
mod attest_cmd;
mod client_cmd;

mod directory_cmd;
mod image_build;
mod image_cmd;
mod password;

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// OpenRelay: a two-hop VPN. Your traffic goes client → ingress relay → egress relay →
/// destination inside two WireGuard tunnels, one inside the other: the ingress sees who
/// you are but not where you go, the egress sees where you go but not who you are.
///
/// Start with `openrelay demo`, which runs everything on loopback and shows what each
/// relay can see. Set OPENRELAY_LOG (e.g. OPENRELAY_LOG=debug) for more output.
#[derive(Debug, Parser)]
#[command(name = "openrelay", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete two-hop network on loopback (no root, no network): one ingress, two
    /// egresses of two operators, a web server and a client; fetch a page through both
    /// hops and show what each hop saw.
    Demo(openrelay::demo::DemoArgs),
    /// Connect through two hops and offer a SOCKS5 proxy on 127.0.0.1.
    Client(client_cmd::ClientArgs),
    /// Run a relay (ingress or egress). Relays keep everything in RAM, write nothing to
    /// disk and log only aggregate counters, never an address.
    #[command(subcommand)]
    Relay(relay::cli::RelayCommand),
    /// Make, sign and inspect the signed list of relays.
    #[command(subcommand)]
    Directory(directory_cmd::DirectoryCommand),
    /// Your anonymous account: create it, check credit, buy the tokens that pay for
    /// connections. The password never leaves this machine; tokens cannot be linked to
    /// the account that bought them.
    #[command(subcommand)]
    Account(account_cmd::AccountCommand),
    /// Run the token issuer (an attested service like a relay), publish its keys, credit
    /// accounts.
    #[command(subcommand)]
    Issuer(openrelay::issuer::cmd::IssuerCommand),
    /// The identity of a relay executable: its hash and the measurement clients approve.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Check TEE evidence (Intel SGX/TDX quotes, sim reports) by hand.
    #[command(subcommand)]
    Attest(attest_cmd::AttestCommand),
    /// Make a WireGuard key pair for a relay: writes the private key to FILE (mode 0600)
    /// and prints the public key for the directory.
    Keygen {
        /// Where to write the private key. Refuses to overwrite an existing file.
        #[arg(long, value_name = "FILE")]
        output: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes, without a backtrace: errors here are for users.
            eprintln!("openrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo(_)) && std::env::var_os("OPENRELAY_LOG").is_none() {
        // The demo prints what matters itself; the relays' own log lines would interleave.
        std::env::set_var("OPENRELAY_LOG", "warn");
    }
    relay::cli::init_logging();
    let runtime = || tokio::runtime::Runtime::new().context("cannot start the async runtime");
    match cli.command {
        Command::Demo(args) => runtime()?.block_on(openrelay::demo::run(args)),
        Command::Client(args) => client::run::runtime()
            .context("cannot start the async runtime")?
            .block_on(client_cmd::run(args)),
        Command::Relay(cmd) => Ok(runtime()?.block_on(relay::cli::run_until_signal(&cmd))?),
        Command::Directory(cmd) => directory_cmd::run(cmd),
        Command::Attest(cmd) => attest_cmd::run(cmd),
        Command::Image(cmd) => image_cmd::run(cmd),
        Command::Account(cmd) => runtime()?.block_on(account_cmd::run(cmd)),
        Command::Issuer(cmd) => runtime()?.block_on(openrelay::issuer::cmd::run(cmd)),
        Command::Keygen { output } => {
            let key = tunnel::StaticSecret::generate();
            write_secret(&output, &key.to_base64())?;
            println!("{}", key.public_key());
            eprintln!(
                "private key written to {}; the line above is its public key",
                output.display()
            );
            Ok(())
        }
    }
}

/// Writes a secret to a new file readable by its owner only.
pub(crate) fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
