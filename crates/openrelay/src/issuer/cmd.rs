//! `openrelay issuer`: run the token issuer, publish its keys, credit accounts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use serde::Deserialize;

/// The issuer's config file (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The name tokens carry; the directory's `[issuer] name`.
    pub name: String,
    /// The issuer's WireGuard private key (from `openrelay keygen`).
    pub private_key_file: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the sealed account store and token keys live.
    pub state_dir: PathBuf,
    /// The 32-byte sealing key (base64). In a TEE this would come from the platform's
    /// sealing; today it is a file (`openrelay keygen` makes a suitable one).
    pub sealing_key_file: PathBuf,
    /// The TEE, as for a relay: `tdx`, `sev-snp`, `sgx` or `sim`.
    pub tee: Option<String>,
    /// The sim vendor's signing key (with `tee = "sim"`).
    pub sim_vendor_key_file: Option<PathBuf>,
    /// DCAP collateral bundled with SGX/TDX quotes.
    pub collateral_file: Option<PathBuf>,
    /// Credit units per token.
    #[serde(default = "one")]
    pub price: u64,
    /// Tokens one account may receive per week.
    #[serde(default = "per_week")]
    pub tokens_per_week: u32,
}

fn one() -> u64 {
    1
}
fn per_week() -> u32 {
    500
}

/// Issuer commands.
#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// Run the issuer: accounts (OPAQUE) and token issuance over attested WireGuard
    /// sessions. Keeps this and next week's token keys, making them as needed.
    Run {
        /// The issuer's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make this and next week's token keys if missing, and print the `[issuer]` section
    /// to put in the directory body (then sign the directory again).
    Keys {
        /// The issuer's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The endpoint clients reach the issuer at (default: the `listen` address).
        #[arg(long, value_name = "ADDR")]
        endpoint: Option<SocketAddr>,
    },
    /// Add credit to an account (the developer stand-in for payments). The issuer must be
    /// stopped: it holds the store while it runs.
    Credit {
        /// The issuer's config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The account number.
        account: String,
        /// Credit units to add (one buys one token).
        units: u64,
    },
}

impl IssuerConfig {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the issuer config {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid issuer config", path.display()))
    }

    fn sealing_key(&self) -> anyhow::Result<[u8; 32]> {
        let text = std::fs::read_to_string(&self.sealing_key_file).with_context(|| {
            format!(
                "cannot read the sealing key {}",
                self.sealing_key_file.display()
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| {
                format!(
                    "{} is not 32 bytes of base64 (make one with `openrelay keygen --output FILE`)",
                    self.sealing_key_file.display()
                )
            })?;
        Ok(bytes)
    }

    /// Locks the state directory, so only one process uses the store.
    fn lock(&self) -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("cannot create {}", self.state_dir.display()))?;
        let path = self.state_dir.join("lock");
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "{} is in use: the issuer is running; stop it first",
                self.state_dir.display()
            )
        })?;
        Ok(f)
    }

    fn store(&self) -> anyhow::Result<account::Store> {
        Ok(account::Store::open(
            self.state_dir.join("accounts.store"),
            account::SealingKey::from_bytes(self.sealing_key()?),
        )?)
    }

    /// The token keys, rotated and saved.
    fn keys(&self) -> anyhow::Result<Vec<token::IssuerKey>> {
        let path = self.state_dir.join("token-keys");
        let seal = self.sealing_key()?;
        let mut keys = issuer::keys::load(&path, &seal)?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        if issuer::keys::rotate(&mut keys, unix)? {
            issuer::keys::save(&path, &seal, &keys)?;
            eprintln!("token keys updated; publish them: `openrelay issuer keys`");
        }
        Ok(keys)
    }
}

/// Runs an issuer command.
pub async fn run(cmd: IssuerCommand) -> anyhow::Result<()> {
    match cmd {
        IssuerCommand::Run { config } => {
            let cfg = IssuerConfig::load(&config)?;
            let _lock = cfg.lock()?;
            let keys = cfg.keys()?;
            let accounts = account::DurableServer::open(
                cfg.store()?,
                account::Limits::default(),
                &mut rand::rng(),
            )?;
            let service = issuer::Service::new(
                accounts,
                keys,
                issuer::IssueLimits {
                    price: cfg.price,
                    per_epoch: cfg.tokens_per_week,
                },
            );
            let mut relay =
                relay::config::RelayConfig::service(cfg.private_key_file.clone(), cfg.listen);
            relay.tee = cfg.tee.clone();
            relay.sim_vendor_key_file = cfg.sim_vendor_key_file.clone();
            relay.collateral_file = cfg.collateral_file.clone();
            let common = relay.common_settings()?;
            let handle = super::run::run_issuer(common, service).await?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = handle.relay.shutdown.send(());
            let _ = handle.relay.task.await;
        }
        IssuerCommand::Keys { config, endpoint } => {
            let cfg = IssuerConfig::load(&config)?;
            let _lock = cfg.lock()?;
            let keys = cfg.keys()?;
            let wg = std::fs::read_to_string(&cfg.private_key_file)
                .with_context(|| format!("cannot read {}", cfg.private_key_file.display()))?;
            let wg = tunnel::StaticSecret::from_base64(wg.trim())?;
            println!("[issuer]");
            println!("name = {:?}", cfg.name);
            println!("endpoint = \"{}\"", endpoint.unwrap_or(cfg.listen));
            println!("wg_public_key = \"{}\"", wg.public_key());
            for k in &keys {
                println!();
                println!("[[issuer.key]]");
                println!("epoch = {}", k.public().epoch.0);
                println!("public_key = \"{}\"", k.public().to_base64());
            }
        }
        IssuerCommand::Credit {
            config,
            account,
            units,
        } => {
            let cfg = IssuerConfig::load(&config)?;
            let _lock = cfg.lock()?;
            let account: account::AccountNumber = account.parse()?;
            let mut accounts = account::DurableServer::open(
                cfg.store()?,
                account::Limits::default(),
                &mut rand::rng(),
            )?;
            let balance = accounts.credit(account, units)?;
            println!("account {account}: {balance} credit units");
        }
    }
    Ok(())
}
