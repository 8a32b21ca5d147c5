//! A whole OpenRelay network in one process on loopback: what `openrelay demo` runs and
//! what the integration tests drive.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    web_task: tokio::task::JoinHandle<()>,
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
) -> Common {
    Common {
        key,
        listen,
        admit: admit(),
        max_sessions: 1024,
        report_interval: Duration::from_secs(3600),
        observer: Some(observer.clone()),
        evidence: Some(evidence.clone()),
        tokens: None,
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
        let mut allowed = vec![ipnet::IpNet::from(web.ip())];
        allowed.extend(opts.extra_allowed.iter().copied());
        let mut egresses = Vec::new();
        for (name, operator) in [("egress-east", "east-net"), ("egress-west", "west-net")] {
            let key = StaticSecret::generate();
            let evidence = evidence_of(name);
            let handle = outside_ephemeral(|listen| {
                run_egress(EgressSettings {
                    common: common(key.clone(), listen, &observer, &evidence),
                    policy: DestinationPolicy::new(allowed.clone(), vec![]),
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
                common: common(ingress_key.clone(), listen, &observer, &ingress_evidence),
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
        });
        dir.sim_vendors
            .push(directory::encode_verifying_key(&vendor.verifying_key()));
        let signer = directory::generate_signing_key();
        let signed_directory = directory::sign(&dir.to_body_toml()?, &signer)?;
        let directory = directory::verify(&signed_directory, &[signer.verifying_key()])?;

        let mut settings =
            client::run::ClientSettings::new(directory.clone(), SocketAddr::new(LOOPBACK, 0));
        settings.seed = opts.seed;
        settings.retry_after_attestation_failure = opts.try_other_relays;
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
            common: common(e.key.clone(), e.endpoint, &observer, &e.evidence),
            policy: DestinationPolicy::new(allowed, vec![]),
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
            ),
            egresses: self.egresses.iter().map(|e| e.endpoint).collect(),
        })
        .await
        .context("cannot restart the ingress")?;
        Ok(())
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
        self.web_task.abort();
    }
}
