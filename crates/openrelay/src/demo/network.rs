//! A whole OpenRelay network in one process on loopback: what `openrelay demo` runs and
//! what the integration tests drive.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::Context;
use control::AdmitPolicy;
use directory::{Directory, PublicKey32, Relay, Role};
use relay::evidence::{EvidenceSource, Sim};
use relay::policy::DestinationPolicy;
use relay::run::{
    run_egress, run_ingress, Common, EgressSettings, IngressSettings, Observation, RelayHandle,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc;
use tunnel::StaticSecret;

use super::http;

/// One egress of the demo: its operator, key and running relay.
pub struct DemoEgress {
    /// Name in the directory.
    pub name: String,
    /// Operator in the directory.
    pub operator: String,
    /// The relay's key (kept so the relay can be restarted with it).
    pub key: StaticSecret,
    /// The running relay.
    pub handle: Option<RelayHandle>,
    /// Its UDP endpoint.
    pub endpoint: SocketAddr,
    /// Its TEE evidence (kept for restarts).
    evidence: Arc<dyn EvidenceSource>,
}

/// The running demo network.
pub struct DemoNetwork {
    /// The web server standing in for the internet.
    pub web: SocketAddr,
    /// The ingress.
    pub ingress: RelayHandle,
    ingress_key: StaticSecret,
    /// The egresses, of two operators.
    pub egresses: Vec<DemoEgress>,
    /// The signed directory's text and the key that verifies it.
    pub signed_directory: String,
    /// The directory signer's public key (base64).
    pub directory_key: String,
    /// The verified directory, as the client reads it.
    pub directory: Directory,
    /// The client.
    pub client: client::run::ClientHandle,
    /// What the relays saw.
    pub observations: mpsc::UnboundedReceiver<Observation>,
    observer: mpsc::UnboundedSender<Observation>,
    ingress_evidence: Arc<dyn EvidenceSource>,
    tokens: Option<relay::run::Tokens>,
    offload: relay::udp::Offload,
    idle: relay::run::Idle,
    /// The token issuer and what the demo account did, when accounts are on.
    pub issuer: Option<DemoIssuer>,
    web_task: tokio::task::JoinHandle<()>,
}

/// The demo's issuer and the account the demo made with it.
pub struct DemoIssuer {
    /// The running issuer.
    pub handle: crate::issuer::run::IssuerHandle,
    /// The account number the user was shown.
    pub account: account::AccountNumber,
    /// Credit granted.
    pub credited: u64,
    /// Connections paid for ahead of time (two tokens each).
    pub connections_bought: usize,
    /// Credit left after buying.
    pub balance: u64,
    /// The token stock file (a temporary directory, removed at shutdown).
    pub stock: std::path::PathBuf,
    state_dir: std::path::PathBuf,
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed for the client's route choice; random when `None`.
    pub seed: Option<u64>,
    /// Extra networks the egresses may reach besides the web server (tests add their own
    /// servers on loopback).
    pub extra_allowed: Vec<ipnet::IpNet>,
    /// Relays (by name) that run an image the directory does not approve, to see the
    /// client refuse them.
    pub unapproved: Vec<String>,
    /// Let the client try other relays after one fails attestation.
    pub try_other_relays: bool,
    /// UDP segmentation offloads on the relays' sockets.
    pub offload: relay::udp::Offload,
    /// When the egresses release idle flows and session stacks.
    pub idle: relay::run::Idle,
    /// Run a token issuer: relays require tokens, and the demo creates an account, credits
    /// it and buys tickets before connecting.
    pub accounts: bool,
    /// When the client's idle connection rests (see `control::REST_AFTER`).
    pub rest_after: Option<Duration>,
}

/// The demo as `openrelay demo` runs it, without accounts: any seed, nothing extra allowed,
/// every relay approved, offloads on, the relays' default idle times.
impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            seed: None,
            extra_allowed: vec![],
            unapproved: vec![],
            try_other_relays: false,
            offload: relay::udp::Offload::On,
            accounts: false,
            idle: relay::run::Idle::default(),
            rest_after: Some(control::REST_AFTER),
        }
    }
}

/// The demo account's password (a demo has no secrets; tests log in with it).
pub const DEMO_PASSWORD: &[u8] = b"demo password, never sent to the issuer";

/// The demo account, when accounts are on: its credit, the stock bought before the client
/// starts, and whether the client refills it.
#[derive(Debug, Clone)]
pub struct DemoAccount {
    /// Credit the operator grants.
    pub credit: u64,
    /// Connections bought before the client starts (two tokens each).
    pub connections: usize,
    /// Let the client refill the stock by itself: keep this many connections, waiting a
    /// random time in this range first.
    pub refill: Option<(usize, RangeInclusive<Duration>)>,
}

impl Default for DemoAccount {
    /// What `openrelay demo` does: 10 units, 4 connections bought, no refill.
    fn default() -> Self {
        Self {
            credit: 10,
            connections: 4,
            refill: None,
        }
    }
}

fn admit() -> AdmitPolicy {
    AdmitPolicy {
        mtu: 1420,
        lifetime: Duration::from_secs(24 * 3600),
    }
}

fn common(
    key: StaticSecret,
    listen: SocketAddr,
    observer: &mpsc::UnboundedSender<Observation>,
    evidence: &Arc<dyn EvidenceSource>,
    tokens: &Option<relay::run::Tokens>,
    offload: &relay::udp::Offload,
) -> Common {
    Common {
        key,
        listen,
        admit: admit(),
        max_sessions: 1024,
        report_interval: Duration::from_secs(3600),
        observer: Some(observer.clone()),
        evidence: Some(evidence.clone()),
        tokens: tokens.clone(),
        offload: *offload,
        socket_buffer: relay::udp::SOCKET_BUFFER,
        workers: 0,
    }
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Starts a relay on a loopback port below Linux's ephemeral range (32768 and up), so
/// that while it is stopped for a restart no other socket's port 0 can take its port.
async fn outside_ephemeral<F, Fut>(mut start: F) -> std::io::Result<RelayHandle>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<RelayHandle>>,
{
    let mut last = None;
    for _ in 0..100 {
        let port = rand::random_range(20_000..32_000);
        match start(SocketAddr::new(LOOPBACK, port)).await {
            Ok(h) => return Ok(h),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

impl DemoNetwork {
    /// Starts the web server, two egresses, the ingress and the client.
    pub async fn start(opts: DemoOptions) -> anyhow::Result<Self> {
        Self::start_with(opts, DemoAccount::default()).await
    }

    /// As [`DemoNetwork::start`], with this account when `opts.accounts` is on.
    pub async fn start_with(opts: DemoOptions, demo_account: DemoAccount) -> anyhow::Result<Self> {
        let (listener, web) = http::bind()
            .await
            .context("cannot start the demo web server")?;
        let web_task = tokio::spawn(http::serve(listener));
        let (observer, observations) = mpsc::unbounded_channel();

        // Every relay runs in the sim TEE of one demo vendor; its measurement is the SHA-256
        // of this executable, which the directory approves.
        let vendor = directory::generate_signing_key();
        let exe =
            std::env::current_exe().context("cannot find the running executable to measure")?;
        let sim = Sim::new(attest::SimVendor::new(vendor.clone()), &exe)
            .context("cannot measure the running executable")?;
        let measurement = sim.measurement();
        let approved: Arc<dyn EvidenceSource> = Arc::new(sim);
        // A modified build: same vendor, another measurement.
        let modified: Arc<dyn EvidenceSource> = Arc::new(Sim::with_measurement(
            attest::SimVendor::new(vendor.clone()),
            Sha256::digest([&measurement[..], b"modified"].concat()).into(),
        ));
        let evidence_of = |name: &str| {
            if opts.unapproved.iter().any(|u| u == name) {
                modified.clone()
            } else {
                approved.clone()
            }
        };
        let ingress_evidence = evidence_of("ingress-north");
        let issuer = if opts.accounts {
            Some(start_issuer(&approved).await?)
        } else {
            None
        };
        let tokens = issuer.as_ref().map(|i| relay::run::Tokens {
            issuer_name: i.name.clone(),
            keys: vec![i.key.clone()],
        });
        let mut allowed = vec![ipnet::IpNet::from(web.ip())];
        allowed.extend(opts.extra_allowed.iter().copied());
        let mut egresses = Vec::new();
        for (name, operator) in [("egress-east", "east-net"), ("egress-west", "west-net")] {
            let key = StaticSecret::generate();
            let evidence = evidence_of(name);
            let handle = outside_ephemeral(|listen| {
                run_egress(EgressSettings {
                    common: common(
                        key.clone(),
                        listen,
                        &observer,
                        &evidence,
                        &tokens,
                        &opts.offload,
                    ),
                    policy: DestinationPolicy::new(allowed.clone(), vec![]),
                    idle: opts.idle,
                })
            })
            .await
            .with_context(|| format!("cannot start {name}"))?;
            egresses.push(DemoEgress {
                name: name.into(),
                operator: operator.into(),
                endpoint: handle.local_addr,
                key,
                handle: Some(handle),
                evidence,
            });
        }
        let ingress_key = StaticSecret::generate();
        let egress_endpoints: Vec<SocketAddr> = egresses.iter().map(|e| e.endpoint).collect();
        let ingress = outside_ephemeral(|listen| {
            run_ingress(IngressSettings {
                common: common(
                    ingress_key.clone(),
                    listen,
                    &observer,
                    &ingress_evidence,
                    &tokens,
                    &opts.offload,
                ),
                egresses: egress_endpoints.clone(),
            })
        })
        .await
        .context("cannot start the ingress")?;

        let mut dir = Directory::new(1);
        dir.relays.push(Relay {
            name: "ingress-north".into(),
            role: Role::Ingress,
            wg_public_key: PublicKey32(*ingress_key.public_key().as_bytes()),
            endpoint: ingress.local_addr,
            operator: "north-net".into(),
            bandwidth_mbps: 1000,
        });
        for (e, bw) in egresses.iter().zip([600, 400]) {
            dir.relays.push(Relay {
                name: e.name.clone(),
                role: Role::Egress,
                wg_public_key: PublicKey32(*e.key.public_key().as_bytes()),
                endpoint: e.endpoint,
                operator: e.operator.clone(),
                bandwidth_mbps: bw,
            });
        }
        dir.images.push(directory::Image {
            platform: "sim".into(),
            measurement: hex::encode(measurement),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_tcb: None,
        });
        dir.sim_vendors
            .push(directory::encode_verifying_key(&vendor.verifying_key()));
        if let Some(i) = &issuer {
            dir.issuer = Some(directory::Issuer {
                name: i.name.clone(),
                endpoint: i.handle.relay.local_addr,
                wg_public_key: PublicKey32(*i.wg_key.public_key().as_bytes()),
                keys: vec![directory::IssuerKey {
                    epoch: i.key.epoch.0,
                    public_key: i.key.to_base64(),
                }],
            });
        }
        let signer = directory::generate_signing_key();
        let signed_directory = directory::sign(&dir.to_body_toml()?, &signer)?;
        let directory = directory::verify(&signed_directory, &[signer.verifying_key()])?;

        let mut settings =
            client::run::ClientSettings::new(directory.clone(), SocketAddr::new(LOOPBACK, 0));
        settings.seed = opts.seed;
        settings.retry_after_attestation_failure = opts.try_other_relays;
        settings.rest_after = opts.rest_after;
        let issuer = match issuer {
            Some(i) => {
                let demo = open_account(i, &directory, &demo_account).await?;
                settings.stock = Some(demo.stock.clone());
                settings.refill = demo_account.refill.clone().map(|(keep, delay)| {
                    client::refill::RefillSettings {
                        account: demo.account,
                        password: client::refill::Password::new(DEMO_PASSWORD.to_vec()),
                        keep,
                        delay,
                    }
                });
                Some(demo)
            }
            None => None,
        };
        let client = client::run::run_client(settings)
            .await
            .context("cannot start the client")?;
        Ok(Self {
            web,
            ingress,
            ingress_key,
            egresses,
            signed_directory,
            directory_key: directory::encode_verifying_key(&signer.verifying_key()),
            directory,
            client,
            observations,
            observer,
            ingress_evidence,
            tokens,
            offload: opts.offload,
            idle: opts.idle,
            issuer,
            web_task,
        })
    }

    /// Waits until the client reports a connection through both hops.
    pub async fn wait_connected(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<client::run::Status> {
        let mut status = self.client.status.clone();
        let found = match tokio::time::timeout(
            timeout,
            status.wait_for(|s| matches!(s, client::run::Status::Connected { .. })),
        )
        .await
        {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        match found {
            Some(s) => Ok(s),
            None => anyhow::bail!(
                "the client did not connect within {timeout:?}; last status: {:?}",
                *status.borrow()
            ),
        }
    }

    /// Stops an egress (it forgets every session, as a restart does).
    pub async fn stop_egress(&mut self, i: usize) -> anyhow::Result<()> {
        let e = self.egresses.get_mut(i).context("no such egress")?;
        if let Some(h) = e.handle.take() {
            let _ = h.shutdown.send(());
            let _ = h.task.await;
        }
        Ok(())
    }

    /// Starts a stopped egress again on the same endpoint with the same key.
    pub async fn start_egress(
        &mut self,
        i: usize,
        allowed: Vec<ipnet::IpNet>,
    ) -> anyhow::Result<()> {
        let observer = self.observer.clone();
        let e = self.egresses.get_mut(i).context("no such egress")?;
        let handle = run_egress(EgressSettings {
            common: common(
                e.key.clone(),
                e.endpoint,
                &observer,
                &e.evidence,
                &self.tokens,
                &self.offload,
            ),
            policy: DestinationPolicy::new(allowed, vec![]),
            idle: self.idle,
        })
        .await
        .with_context(|| format!("cannot restart {}", e.name))?;
        e.handle = Some(handle);
        Ok(())
    }

    /// Restarts the ingress on the same endpoint with the same key; it forgets every
    /// session, as a real restart does.
    pub async fn restart_ingress(&mut self) -> anyhow::Result<()> {
        let endpoint = self.ingress.local_addr;
        let (tx, _) = tokio::sync::oneshot::channel();
        let old = std::mem::replace(&mut self.ingress.shutdown, tx);
        let _ = old.send(());
        (&mut self.ingress.task).await.ok();
        self.ingress = run_ingress(IngressSettings {
            common: common(
                self.ingress_key.clone(),
                endpoint,
                &self.observer,
                &self.ingress_evidence,
                &self.tokens,
                &self.offload,
            ),
            egresses: self.egresses.iter().map(|e| e.endpoint).collect(),
        })
        .await
        .context("cannot restart the ingress")?;
        Ok(())
    }

    /// Logs in to the demo account, as its owner would, and returns its credit.
    pub async fn account_credit(&self) -> anyhow::Result<u64> {
        let demo = self.issuer.as_ref().context("accounts are off")?;
        let entry = self
            .directory
            .issuer
            .as_ref()
            .context("the directory lists no issuer")?;
        let mut c = client::issuer_client::IssuerClient::connect(
            entry.endpoint,
            tunnel::PublicKey::from_bytes(entry.wg_public_key.0),
            client::run::verification(&self.directory, false),
        )
        .await?;
        Ok(client::tickets::login(&mut c, demo.account, DEMO_PASSWORD)
            .await?
            .credit)
    }

    /// The egress the client is using, from its status.
    pub fn egress_index(&self, name: &str) -> Option<usize> {
        self.egresses.iter().position(|e| e.name == name)
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for i in 0..self.egresses.len() {
            let _ = self.stop_egress(i).await;
        }
        let _ = self.client.shutdown.send(());
        let _ = self.client.task.await;
        let _ = self.ingress.shutdown.send(());
        let _ = self.ingress.task.await;
        if let Some(i) = self.issuer.take() {
            let _ = i.handle.relay.shutdown.send(());
            let _ = i.handle.relay.task.await;
            let _ = std::fs::remove_dir_all(&i.state_dir);
        }
        self.web_task.abort();
    }
}

/// The issuer as started, before the demo account exists.
struct StartedIssuer {
    handle: crate::issuer::run::IssuerHandle,
    name: String,
    wg_key: StaticSecret,
    key: token::IssuerPublicKey,
    state_dir: std::path::PathBuf,
}

/// Starts an issuer in the sim TEE with a fresh account store and this week's token key.
async fn start_issuer(evidence: &Arc<dyn EvidenceSource>) -> anyhow::Result<StartedIssuer> {
    let state_dir = std::env::temp_dir().join(format!(
        "openrelay-demo-issuer-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let store = account::Store::open(
        state_dir.join("accounts.store"),
        account::SealingKey::from_bytes(rand::random()),
    )?;
    let accounts =
        account::DurableServer::open(store, account::Limits::default(), &mut rand::rng())?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let key = token::IssuerKey::generate(token::Epoch::at(unix))?;
    let public = key.public().clone();
    let service = issuer::Service::new(accounts, vec![key], issuer::IssueLimits::default());
    let wg_key = StaticSecret::generate();
    let (tx, _) = mpsc::unbounded_channel();
    let common = common(
        wg_key.clone(),
        SocketAddr::new(LOOPBACK, 0),
        &tx,
        evidence,
        &None,
        &relay::udp::Offload::On,
    );
    let handle = crate::issuer::run::run_issuer(common, service)
        .await
        .context("cannot start the issuer")?;
    Ok(StartedIssuer {
        handle,
        name: "issuer.demo.openrelay".into(),
        wg_key,
        key: public,
        state_dir,
    })
}

/// What a new user does: create an account (the issuer picks the number), get credit (here
/// from the operator, later by payment), log in and buy tickets for a few connections.
async fn open_account(
    i: StartedIssuer,
    dir: &Directory,
    demo_account: &DemoAccount,
) -> anyhow::Result<DemoIssuer> {
    let issuer_entry = dir
        .issuer
        .as_ref()
        .context("the directory lists no issuer")?;
    let verification = client::run::verification(dir, false);
    let key = tunnel::PublicKey::from_bytes(issuer_entry.wg_public_key.0);
    let mut c = client::issuer_client::IssuerClient::connect(
        issuer_entry.endpoint,
        key,
        verification.clone(),
    )
    .await?;
    let password = DEMO_PASSWORD;
    let account = client::tickets::create_account(&mut c, password).await?;
    let credited = demo_account.credit;
    let (reply, answer) = tokio::sync::oneshot::channel();
    i.handle
        .admin
        .send(crate::issuer::run::Admin::Credit {
            account,
            units: credited,
            reply,
        })
        .await
        .map_err(|_| anyhow::anyhow!("the issuer stopped"))?;
    answer.await?.map_err(anyhow::Error::msg)?;
    // A fresh session for the login and purchase, as a returning user would have.
    let mut c =
        client::issuer_client::IssuerClient::connect(issuer_entry.endpoint, key, verification)
            .await?;
    client::tickets::login(&mut c, account, password).await?;
    let connections = demo_account.connections;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (prepaid, balance) = client::tickets::buy(&mut c, dir, connections, unix).await?;
    let stock_path = i.state_dir.join("tokens.toml");
    let mut stock = client::tickets::Stock::load(&stock_path)?;
    stock.add(prepaid);
    stock.save()?;
    Ok(DemoIssuer {
        handle: i.handle,
        account,
        credited,
        connections_bought: connections,
        balance,
        stock: stock_path,
        state_dir: i.state_dir,
    })
}
