//! Relay configuration files (TOML).
//!
//! ```toml
//! # Which key the relay answers with. Keep this file readable by the relay only.
//! private_key_file = "/etc/openrelay/relay.key"
//! listen = "0.0.0.0:51820"
//! mtu = 1420
//! lifetime_secs = 86400
//! max_sessions = 65536
//! report_interval_secs = 60
//!
//! # Ingress: the egresses it may forward to, from the signed directory.
//! directory = "/etc/openrelay/directory.toml"
//! directory_keys = ["<base64 ed25519 key of the directory signer>"]
//!
//! # Egress: destinations normally refused that this relay may reach (tests, demos).
//! allow_destinations = ["127.0.0.1/32"]
//! own_addresses = ["203.0.113.5"]
//! # Egress: kernel forwarding with NAT through this TUN device (root, nftables).
//! # tun = "orexit0"
//! # Event loops, one per core by default (0); each serves its own sessions.
//! # workers = 0
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use control::AdmitPolicy;
use ipnet::IpNet;
use serde::Deserialize;
use tunnel::StaticSecret;

use crate::policy::DestinationPolicy;
use crate::run::{Common, EgressSettings, IngressSettings};

/// A configuration that cannot be used, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type, or an unknown field.
    #[error("{path} is not a valid relay config: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's explanation, with line and column.
        message: String,
    },
    /// Neither or both of `private_key` and `private_key_file`.
    #[error(
        "set exactly one of `private_key` or `private_key_file` (make one with `openrelay keygen`)"
    )]
    Key,
    /// The key is not a WireGuard key.
    #[error("the relay's private key is unusable: {0}")]
    BadKey(#[from] tunnel::KeyError),
    /// An ingress needs to know its egresses.
    #[error("an ingress needs `directory` and `directory_keys`, or a static `egresses` list")]
    NoEgresses,
    /// The directory could not be loaded.
    #[error("cannot load the directory: {0}")]
    Directory(#[from] directory::Error),
    /// A directory key in `directory_keys` is not an ed25519 key.
    #[error("a key in `directory_keys` is unusable: {0}")]
    DirectoryKey(#[from] directory::KeyError),
    /// The evidence source could not be set up.
    #[error("cannot set up TEE evidence: {0}")]
    Evidence(String),
    /// A value out of range.
    #[error("`{field}` {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

fn default_mtu() -> u16 {
    1420
}
fn default_lifetime() -> u64 {
    86_400
}
fn default_max_sessions() -> usize {
    65_536
}
fn default_report() -> u64 {
    60
}

/// The relay config file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's WireGuard private key, base64 (as `wg genkey` prints).
    pub private_key: Option<String>,
    /// A file holding that key.
    pub private_key_file: Option<PathBuf>,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// MTU announced to clients.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Seconds an admission lasts.
    #[serde(default = "default_lifetime")]
    pub lifetime_secs: u64,
    /// Session limit.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Seconds between counter reports in the log.
    #[serde(default = "default_report")]
    pub report_interval_secs: u64,
    /// The signed directory: the ingress forwards to its egresses; both roles take its
    /// token issuer (when it lists one, only sessions that spend a token are admitted).
    pub directory: Option<PathBuf>,
    /// Ed25519 keys trusted to sign the directory (base64).
    #[serde(default)]
    pub directory_keys: Vec<String>,
    /// Ingress: egress endpoints, instead of a directory (tests).
    #[serde(default)]
    pub egresses: Vec<SocketAddr>,
    /// Egress: networks reachable although normally refused.
    #[serde(default)]
    pub allow_destinations: Vec<IpNet>,
    /// Egress: the relay's own public addresses, always refused.
    #[serde(default)]
    pub own_addresses: Vec<IpAddr>,
    /// Egress: forward in the kernel with NAT through a TUN device of this name (needs
    /// root and nftables) instead of the userspace TCP/IP stack.
    pub tun: Option<String>,
    /// The TEE this relay runs in, for its evidence: `tdx` or `sev-snp` (configfs-tsm),
    /// `sgx` (Gramine), or `sim` (development; needs `sim_vendor_key_file`). Without it the
    /// relay has no evidence and clients refuse it.
    pub tee: Option<String>,
    /// The sim vendor's ed25519 signing key (as `openrelay directory keygen` writes it).
    pub sim_vendor_key_file: Option<PathBuf>,
    /// DCAP collateral (JSON from Intel's PCCS) bundled with SGX/TDX quotes.
    pub collateral_file: Option<PathBuf>,
    /// Use the kernel's UDP segmentation offloads (GSO/GRO); `false` for kernels or
    /// drivers whose offloads misbehave.
    #[serde(default = "yes")]
    pub offload: bool,
    /// KiB of kernel buffer each way on the relay's UDP sockets. More loses fewer datagrams
    /// to bursts and holds a longer queue, so more round-trip time, behind a saturating flow.
    #[serde(default = "default_socket_buffer_kib")]
    pub socket_buffer_kib: usize,
    /// Event loops (each with its own socket on the port and its own sessions); 0, the
    /// default, runs one per core.
    #[serde(default)]
    pub workers: usize,
}

fn yes() -> bool {
    true
}

fn default_socket_buffer_kib() -> usize {
    crate::udp::SOCKET_BUFFER >> 10
}

/// The socket buffers a config may ask for, in KiB: below 64 a burst of one GRO receive
/// overflows them; above 64 MiB a queue would hold seconds of a slow link.
const SOCKET_BUFFER_KIB: std::ops::RangeInclusive<usize> = 64..=65_536;

impl RelayConfig {
    /// A config with the defaults, listening on `listen` with the key in
    /// `private_key_file`: for services that run like a relay (the token issuer).
    pub fn service(private_key_file: PathBuf, listen: SocketAddr) -> Self {
        Self {
            private_key: None,
            private_key_file: Some(private_key_file),
            listen,
            mtu: default_mtu(),
            lifetime_secs: default_lifetime(),
            max_sessions: default_max_sessions(),
            report_interval_secs: default_report(),
            directory: None,
            directory_keys: Vec::new(),
            egresses: Vec::new(),
            allow_destinations: Vec::new(),
            own_addresses: Vec::new(),
            tun: None,
            tee: None,
            sim_vendor_key_file: None,
            collateral_file: None,
            offload: true,
            socket_buffer_kib: default_socket_buffer_kib(),
            workers: 0,
        }
    }

    /// The settings every role shares (key, socket, evidence), without a directory.
    pub fn common_settings(&self) -> Result<Common, ConfigError> {
        self.common(None)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The signed directory named by `directory`, if any.
    fn load_directory(&self) -> Result<Option<directory::Directory>, ConfigError> {
        let Some(path) = &self.directory else {
            return Ok(None);
        };
        let keys = self
            .directory_keys
            .iter()
            .map(|k| directory::decode_verifying_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let source = directory::FileSource::new(path.clone(), keys);
        Ok(Some(directory::DirectorySource::load(&source)?))
    }

    fn common(&self, dir: Option<&directory::Directory>) -> Result<Common, ConfigError> {
        let key = match (&self.private_key, &self.private_key_file) {
            (Some(k), None) => StaticSecret::from_base64(k)?,
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                StaticSecret::from_base64(&text)?
            }
            _ => return Err(ConfigError::Key),
        };
        if !(control::MIN_MTU..=control::MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Invalid {
                field: "mtu",
                problem: "must be between 1280 and 9000",
            });
        }
        if !SOCKET_BUFFER_KIB.contains(&self.socket_buffer_kib) {
            return Err(ConfigError::Invalid {
                field: "socket_buffer_kib",
                problem: "must be from 64 to 65536 (KiB; 256 if left out)",
            });
        }
        if self.lifetime_secs == 0 || self.report_interval_secs == 0 || self.max_sessions == 0 {
            return Err(ConfigError::Invalid {
                field: "lifetime_secs/report_interval_secs/max_sessions",
                problem: "must be greater than zero",
            });
        }
        Ok(Common {
            key,
            listen: self.listen,
            admit: AdmitPolicy {
                mtu: self.mtu,
                lifetime: Duration::from_secs(self.lifetime_secs),
            },
            max_sessions: self.max_sessions,
            report_interval: Duration::from_secs(self.report_interval_secs),
            observer: None,
            evidence: self.evidence()?,
            tokens: dir
                .and_then(|d| d.issuer.as_ref())
                .map(|issuer| crate::run::Tokens {
                    issuer_name: issuer.name.clone(),
                    // The directory validated every key when it was loaded.
                    keys: issuer.token_keys().unwrap_or_default(),
                }),
            offload: if self.offload {
                crate::udp::Offload::On
            } else {
                crate::udp::Offload::Off
            },
            socket_buffer: self.socket_buffer_kib << 10,
            workers: self.workers,
        })
    }

    fn evidence(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn crate::evidence::EvidenceSource>>, ConfigError> {
        use crate::evidence::{ConfigfsTsm, Gramine, Sim};
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })
        };
        let collateral = self.collateral_file.as_ref().map(read).transpose()?;
        Ok(match self.tee.as_deref() {
            None => None,
            Some("tdx") | Some("sev-snp") => Some(std::sync::Arc::new(ConfigfsTsm::new(
                ConfigfsTsm::ROOT,
                collateral,
            ))),
            Some("sgx") => Some(std::sync::Arc::new(Gramine::new(Gramine::DEV, collateral))),
            Some("sim") => {
                let path = self
                    .sim_vendor_key_file
                    .as_ref()
                    .ok_or(ConfigError::Invalid {
                        field: "sim_vendor_key_file",
                        problem: "is needed with tee = \"sim\"",
                    })?;
                let text = String::from_utf8_lossy(&read(path)?).trim().to_string();
                let key = directory::decode_signing_key(&text)?;
                let exe = std::path::Path::new("/proc/self/exe");
                let sim = Sim::new(attest::SimVendor::new(key), exe)
                    .map_err(|e| ConfigError::Evidence(e.to_string()))?;
                Some(std::sync::Arc::new(sim))
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    field: "tee",
                    problem: "must be tdx, sev-snp, sgx or sim",
                })
            }
        })
    }

    /// Settings for an ingress; loads and verifies the directory if one is named.
    pub fn ingress(&self) -> Result<IngressSettings, ConfigError> {
        let dir = self.load_directory()?;
        let common = self.common(dir.as_ref())?;
        let mut egresses = self.egresses.clone();
        if let Some(dir) = &dir {
            egresses.extend(directory::egress_endpoints(dir));
        }
        if egresses.is_empty() {
            return Err(ConfigError::NoEgresses);
        }
        Ok(IngressSettings { common, egresses })
    }

    /// Settings for an egress.
    pub fn egress(&self) -> Result<EgressSettings, ConfigError> {
        let dir = self.load_directory()?;
        Ok(EgressSettings {
            common: self.common(dir.as_ref())?,
            policy: DestinationPolicy::new(
                self.allow_destinations.clone(),
                self.own_addresses.clone(),
            ),
            idle: crate::run::Idle::default(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn common(extra: &str) -> Result<Common, ConfigError> {
        let text = format!(
            "private_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\
             listen = \"127.0.0.1:0\"\n{extra}"
        );
        RelayConfig::parse(&text, Path::new("relay.toml"))
            .unwrap()
            .common_settings()
    }

    #[test]
    fn the_socket_buffers_are_the_default_unless_the_config_sets_them() {
        let default = common("").unwrap();
        assert_eq!(default.udp().buffer, crate::udp::SOCKET_BUFFER);
        assert_eq!(default.udp().offload, crate::udp::Offload::On);
        let set = common("socket_buffer_kib = 1024\noffload = false\n").unwrap();
        assert_eq!(set.udp().buffer, 1 << 20);
        assert_eq!(set.udp().offload, crate::udp::Offload::Off);
    }

    #[test]
    fn socket_buffers_out_of_range_are_refused_with_the_range() {
        for kib in [0, 63, 65_537] {
            let e = common(&format!("socket_buffer_kib = {kib}\n"))
                .err()
                .unwrap()
                .to_string();
            assert_eq!(
                e, "`socket_buffer_kib` must be from 64 to 65536 (KiB; 256 if left out)",
                "{kib}"
            );
        }
        assert!(common("socket_buffer_kib = 64\n").is_ok());
        assert!(common("socket_buffer_kib = 65536\n").is_ok());
    }

    /// The relay's sockets on its port are made with the buffers its config names.
    #[tokio::test]
    async fn the_relays_sockets_get_the_buffers_of_its_config() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: without root the kernel caps buffers at net.core.rmem_max");
            return;
        }
        let c = common("socket_buffer_kib = 2048\nworkers = 2\n").unwrap();
        let (_, shards) = c.bind_workers().unwrap();
        assert_eq!(shards.len(), 2);
        for (socket, _) in &shards {
            let s = socket2::SockRef::from(socket);
            // Linux reports twice what was asked (its bookkeeping's share).
            assert_eq!(s.recv_buffer_size().unwrap(), 4 << 20);
            assert_eq!(s.send_buffer_size().unwrap(), 4 << 20);
        }
    }
}
