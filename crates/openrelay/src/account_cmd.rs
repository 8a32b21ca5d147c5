//! `openrelay account`: an anonymous account with the token issuer, and the tokens that pay
//! for connections.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use directory::DirectorySource;

/// Where the client keeps its token stock unless told otherwise.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPENRELAY_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("openrelay");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/openrelay"))
        .unwrap_or_else(|| PathBuf::from(".openrelay"))
}

/// The stock file in a data directory.
pub(crate) fn stock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.toml")
}

/// What every account command needs: the directory (for the issuer and its keys).
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// The signed relay directory (it names the issuer and its keys).
    #[arg(long, value_name = "FILE")]
    directory: PathBuf,
    /// A public key trusted to sign the directory (base64). Repeatable.
    #[arg(long, value_name = "KEY", required = true)]
    trust: Vec<String>,
    /// Read the password from the first line of FILE instead of standard input.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Where the token stock is kept [default: $OPENRELAY_DATA_DIR, else
    /// $XDG_DATA_HOME/openrelay, else ~/.local/share/openrelay].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Account commands.
#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Create an account: the issuer picks a random account number, shown once. No e-mail,
    /// no name; the password never leaves this machine (OPAQUE).
    Create(Common),
    /// Log in and show the account's credit and the tokens in stock.
    #[command(alias = "login")]
    Status {
        #[command(flatten)]
        common: Common,
        /// The account number (as `account create` printed it).
        #[arg(long)]
        account: String,
    },
    /// Log in and buy tokens for CONNECTIONS connections (two tokens each, one per relay),
    /// kept in the stock that `openrelay client` spends from. Buy ahead of time: the issuer
    /// sees when you buy, never when or where you connect.
    Tokens {
        #[command(flatten)]
        common: Common,
        /// The account number.
        #[arg(long)]
        account: String,
        /// Connections to pay for.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
}

fn password(common: &Common) -> anyhow::Result<Vec<u8>> {
    crate::password::read(common.password_file.as_deref())
}

async fn connect(
    common: &Common,
) -> anyhow::Result<(directory::Directory, client::issuer_client::IssuerClient)> {
    let keys = common
        .trust
        .iter()
        .map(|k| directory::decode_verifying_key(k))
        .collect::<Result<Vec<_>, _>>()
        .context("a --trust key is unusable")?;
    let dir = directory::FileSource::new(common.directory.clone(), keys)
        .load()
        .with_context(|| format!("the directory {} is refused", common.directory.display()))?;
    let issuer = dir
        .issuer
        .as_ref()
        .context("the directory lists no token issuer: its relays need no account")?;
    let verification = client::run::verification(&dir, false);
    let c = client::issuer_client::IssuerClient::connect(
        issuer.endpoint,
        tunnel::PublicKey::from_bytes(issuer.wg_public_key.0),
        verification,
    )
    .await
    .context("cannot open a session with the issuer")?;
    eprintln!(
        "issuer {} attested: {:?}, measurement {}, TCB {:?}",
        issuer.name,
        c.attested.platform,
        hex::encode(&c.attested.measurement),
        c.attested.tcb_status
    );
    Ok((dir, c))
}

pub(crate) async fn run(cmd: AccountCommand) -> anyhow::Result<()> {
    match cmd {
        AccountCommand::Create(common) => {
            let pw = password(&common)?;
            let (_, mut c) = connect(&common).await?;
            let account = client::tickets::create_account(&mut c, &pw).await?;
            println!("{account}");
            eprintln!(
                "account created. The line above is your account number: it is shown once and \
                 OpenRelay keeps no copy you could recover; write it down. Add credit, then run \
                 `openrelay account tokens --account {account}`."
            );
        }
        AccountCommand::Status { common, account } => {
            let account = account.parse::<account::AccountNumber>()?;
            let pw = password(&common)?;
            let (_, mut c) = connect(&common).await?;
            let who = client::tickets::login(&mut c, account, &pw).await?;
            let data = common.data_dir.clone().unwrap_or_else(default_data_dir);
            let stock = client::tickets::Stock::load(&stock_path(&data))?;
            println!("account {account}: {} credit units", who.credit);
            println!("tokens in stock: for {} connections", stock.len());
        }
        AccountCommand::Tokens {
            common,
            account,
            connections,
        } => {
            let account = account.parse::<account::AccountNumber>()?;
            let pw = password(&common)?;
            let (dir, mut c) = connect(&common).await?;
            client::tickets::login(&mut c, account, &pw).await?;
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let data = common.data_dir.clone().unwrap_or_else(default_data_dir);
            let path = stock_path(&data);
            // One issuer request at a time (two connections), each saved before the next is
            // paid for, so a refusal midway (credit, weekly cap) loses nothing bought.
            let (mut bought, mut balance, mut in_stock) = (0, None, 0);
            let mut refused = None;
            while bought < connections {
                let batch = (connections - bought).min(client::tickets::CONNECTIONS_PER_REQUEST);
                let (prepaid, left) = match client::tickets::buy(&mut c, &dir, batch, unix).await {
                    Ok(b) => b,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                };
                bought += prepaid.len();
                balance = Some(left);
                // Under the stock's lock: a running client may be taking or adding tickets.
                in_stock = client::tickets::Stock::update(&path, |stock| {
                    stock.add(prepaid);
                    stock.len()
                })?;
            }
            if bought > 0 {
                println!(
                    "bought tokens for {bought} connections ({} tokens); {} credit units left; {in_stock} connections in stock at {}",
                    2 * bought,
                    balance.unwrap_or_default(),
                    path.display()
                );
            }
            if let Some(e) = refused {
                return Err(anyhow::Error::new(e).context(format!(
                    "bought {bought} of {connections} connections' tokens, then the issuer refused"
                )));
            }
        }
    }
    Ok(())
}
