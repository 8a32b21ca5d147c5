//! The directory: every relay a client may use, and the rules a directory must follow
//! before anyone signs or uses it.

#![deny(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ValidationError};
use crate::relay::{Relay, Role};

/// The directory format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest advertised bandwidth accepted (10 Tbit/s), so weights never overflow a sum.
pub const MAX_BANDWIDTH_MBPS: u64 = 10_000_000;

/// The list of relays, as signed. In TOML each relay is a `[[relay]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Format version; must be [`FORMAT_VERSION`].
    pub version: u32,
    /// Increases with every published directory, so clients can refuse an older one.
    pub serial: u64,
    /// The relays, in no particular order.
    #[serde(rename = "relay", default)]
    pub relays: Vec<Relay>,
    /// Approved relay images: clients accept a relay only with verified evidence of one of
    /// these. In TOML each is an `[[image]]` table.
    #[serde(rename = "image", default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// Keys of sim TEE vendors whose reports clients accept (development and demos only;
    /// base64 ed25519 public keys). A production directory lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sim_vendors: Vec<String>,
    /// The token issuer; when listed, relays admit only sessions that spend its tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<crate::Issuer>,
}

/// An approved relay image on one TEE platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `sgx`, `tdx`, `sev-snp` or `sim`.
    pub platform: String,
    /// The measurement, hex: MRENCLAVE (sgx, 32 bytes), MRTD (tdx, 48), MEASUREMENT
    /// (sev-snp, 48), or the SHA-256 of the relay executable (sim, 32).
    pub measurement: String,
    /// Intel advisories accepted for this image (platforms needing only this hardening pass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_advisories: Vec<String>,
    /// Accept this image on platforms whose TCB is `OutOfDate` (clients warn each time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_out_of_date: bool,
    /// sev-snp only: the lowest firmware versions accepted (AMD publishes which fix what).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<SnpMinTcb>,
}

/// The lowest SEV-SNP firmware security versions an image accepts, per component of the
/// report's REPORTED_TCB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpMinTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP operating system SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl Image {
    /// The measurement's bytes, if it is hex of the right length for its platform.
    pub fn measurement_bytes(&self) -> Option<Vec<u8>> {
        let len = match self.platform.as_str() {
            "sgx" | "sim" => 32,
            "tdx" | "sev-snp" => 48,
            _ => return None,
        };
        let s = self.measurement.trim();
        if s.len() != 2 * len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        (0..len)
            .map(|i| {
                s.get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect()
    }
}

impl Directory {
    /// An empty directory of the current format, to fill in code.
    pub const fn new(serial: u64) -> Self {
        Self {
            version: FORMAT_VERSION,
            serial,
            relays: Vec::new(),
            images: Vec::new(),
            sim_vendors: Vec::new(),
            issuer: None,
        }
    }

    /// Checks the rules every directory follows: supported version, non-empty and unique
    /// names, unique keys, a named operator, usable endpoints and egress bandwidth.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.version != FORMAT_VERSION {
            return Err(ValidationError::UnsupportedVersion {
                got: self.version,
                supported: FORMAT_VERSION,
            });
        }
        let mut names = HashSet::new();
        let mut keys = HashMap::new();
        for (i, relay) in self.relays.iter().enumerate() {
            let name = &relay.name;
            if name.trim().is_empty() {
                return Err(ValidationError::EmptyName { index: i + 1 });
            }
            if !names.insert(name.as_str()) {
                return Err(ValidationError::DuplicateName { name: name.clone() });
            }
            if let Some(first) = keys.insert(relay.wg_public_key, name.as_str()) {
                return Err(ValidationError::DuplicateKey {
                    key: relay.wg_public_key.to_string(),
                    first: first.to_owned(),
                    second: name.clone(),
                });
            }
            if relay.operator.trim().is_empty() {
                return Err(ValidationError::EmptyOperator { name: name.clone() });
            }
            if relay.endpoint.port() == 0 {
                return Err(ValidationError::ZeroPort { name: name.clone() });
            }
            if relay.endpoint.ip().is_unspecified() {
                return Err(ValidationError::UnspecifiedAddress {
                    name: name.clone(),
                    addr: relay.endpoint.ip(),
                });
            }
            if relay.role == Role::Egress && relay.bandwidth_mbps == 0 {
                return Err(ValidationError::ZeroBandwidth { name: name.clone() });
            }
            if relay.bandwidth_mbps > MAX_BANDWIDTH_MBPS {
                return Err(ValidationError::BandwidthTooHigh {
                    name: name.clone(),
                    got: relay.bandwidth_mbps,
                    max: MAX_BANDWIDTH_MBPS,
                });
            }
        }
        for image in &self.images {
            if image.measurement_bytes().is_none() {
                return Err(ValidationError::BadImage {
                    platform: image.platform.clone(),
                    measurement: image.measurement.clone(),
                });
            }
            if image.min_tcb.is_some() && image.platform != "sev-snp" {
                return Err(ValidationError::MinTcbNotSnp {
                    platform: image.platform.clone(),
                });
            }
        }
        for key in &self.sim_vendors {
            crate::keys::decode_verifying_key(key)
                .map_err(|_| ValidationError::BadSimVendor { key: key.clone() })?;
        }
        if let Some(issuer) = &self.issuer {
            if issuer.name.trim().is_empty() {
                return Err(ValidationError::BadIssuer {
                    problem: "its name is empty".into(),
                });
            }
            if issuer.endpoint.port() == 0 || issuer.endpoint.ip().is_unspecified() {
                return Err(ValidationError::BadIssuer {
                    problem: format!("its endpoint {} is not reachable", issuer.endpoint),
                });
            }
            let mut epochs = HashSet::new();
            for k in &issuer.keys {
                if !epochs.insert(k.epoch) {
                    return Err(ValidationError::BadIssuer {
                        problem: format!("two keys for epoch {}", k.epoch),
                    });
                }
            }
            issuer
                .token_keys()
                .map_err(|(epoch, e)| ValidationError::BadIssuer {
                    problem: format!("its key for epoch {epoch}: {e}"),
                })?;
        }
        Ok(())
    }

    /// Parses and validates the body of a directory file (the text that is signed).
    pub fn from_body_toml(body: &str) -> Result<Self, Error> {
        let directory: Self = toml::from_str(body).map_err(|source| Error::BadBody { source })?;
        directory.validate()?;
        Ok(directory)
    }

    /// Writes a valid directory as the body text to sign, so the CLI and tests can build a
    /// directory in code.
    pub fn to_body_toml(&self) -> Result<String, Error> {
        self.validate()?;
        toml::to_string(self).map_err(|source| Error::Encode { source })
    }

    /// The relays of one role.
    pub fn relays_with_role(&self, role: Role) -> impl Iterator<Item = &Relay> {
        self.relays.iter().filter(move |r| r.role == role)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::relay::PublicKey32;

    pub(crate) fn relay(name: &str, role: Role, operator: &str, mbps: u64, key: u8) -> Relay {
        Relay {
            name: name.to_owned(),
            role,
            wg_public_key: PublicKey32([key; 32]),
            endpoint: format!("127.0.0.1:{}", 51000 + u16::from(key))
                .parse()
                .unwrap(),
            operator: operator.to_owned(),
            bandwidth_mbps: mbps,
        }
    }

    #[test]
    fn the_issuer_round_trips_and_is_checked() {
        let key = token::IssuerKey::generate(token::Epoch(2900)).unwrap();
        let mut d = sample();
        d.issuer = Some(crate::Issuer {
            name: "issuer.example".into(),
            endpoint: "192.0.2.9:51820".parse().unwrap(),
            wg_public_key: crate::PublicKey32([9; 32]),
            keys: vec![crate::IssuerKey {
                epoch: 2900,
                public_key: key.public().to_base64(),
            }],
        });
        let again = Directory::from_body_toml(&d.to_body_toml().unwrap()).unwrap();
        assert_eq!(again, d);
        let keys = again.issuer.as_ref().unwrap().token_keys().unwrap();
        assert_eq!(keys[0].key_id(), key.public().key_id());

        let mut bad = d.clone();
        if let Some(i) = bad.issuer.as_mut() {
            i.keys.push(i.keys[0].clone());
        }
        assert!(
            matches!(bad.validate(), Err(ValidationError::BadIssuer { problem }) if problem.contains("two keys"))
        );
        let mut bad = d.clone();
        if let Some(i) = bad.issuer.as_mut() {
            i.keys[0].public_key = "AAAA".into();
        }
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("epoch 2900"), "{err}");
        let mut bad = d;
        if let Some(i) = bad.issuer.as_mut() {
            i.name = " ".into();
        }
        assert!(bad.validate().is_err());
    }

    #[test]
    fn min_tcb_is_for_sev_snp_images_only() {
        let floor = SnpMinTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let mut d = sample();
        d.images.push(Image {
            platform: "sev-snp".into(),
            measurement: "ab".repeat(48),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_tcb: Some(floor),
        });
        let again = Directory::from_body_toml(&d.to_body_toml().unwrap()).unwrap();
        assert_eq!(again.images[0].min_tcb, Some(floor));
        let mut bad = sample();
        bad.images.push(Image {
            platform: "tdx".into(),
            measurement: "ab".repeat(48),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_tcb: Some(floor),
        });
        assert!(matches!(
            bad.validate(),
            Err(ValidationError::MinTcbNotSnp { .. })
        ));
    }

    #[test]
    fn images_and_sim_vendors_round_trip_and_are_checked() {
        let mut d = sample();
        d.images.push(Image {
            platform: "sim".into(),
            measurement: "ab".repeat(32),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_tcb: None,
        });
        d.images.push(Image {
            platform: "sgx".into(),
            measurement: "01".repeat(32),
            accepted_advisories: vec!["INTEL-SA-00615".into()],
            accept_out_of_date: true,
            min_tcb: None,
        });
        d.sim_vendors.push(crate::encode_verifying_key(
            &crate::generate_signing_key().verifying_key(),
        ));
        let again = Directory::from_body_toml(&d.to_body_toml().unwrap()).unwrap();
        assert_eq!(again, d);
        assert_eq!(again.images[0].measurement_bytes(), Some(vec![0xab; 32]));

        for (platform, measurement) in [
            ("sgx", "ab".repeat(48)),
            ("tdx", "ab".repeat(32)),
            ("nitro", "ab".repeat(32)),
            ("sim", "zz".repeat(32)),
        ] {
            let mut bad = sample();
            bad.images.push(Image {
                platform: platform.into(),
                measurement,
                accepted_advisories: vec![],
                accept_out_of_date: false,
                min_tcb: None,
            });
            assert!(
                matches!(bad.validate(), Err(ValidationError::BadImage { .. })),
                "{platform}"
            );
        }
        let mut bad = sample();
        bad.sim_vendors.push("not a key".into());
        assert!(matches!(
            bad.validate(),
            Err(ValidationError::BadSimVendor { .. })
        ));
    }

    pub(crate) fn sample() -> Directory {
        Directory {
            version: 1,
            serial: 7,
            relays: vec![
                relay("ingress-1", Role::Ingress, "op-a", 1000, 1),
                relay("egress-1", Role::Egress, "op-b", 1000, 2),
            ],
            images: Vec::new(),
            sim_vendors: Vec::new(),
            issuer: None,
        }
    }

    #[test]
    fn body_round_trips_through_toml() {
        let dir = sample();
        let body = dir.to_body_toml().unwrap();
        assert!(body.contains("[[relay]]"), "{body}");
        assert!(body.contains("role = \"ingress\""), "{body}");
        assert_eq!(Directory::from_body_toml(&body).unwrap(), dir);
    }

    #[test]
    fn body_in_the_documented_form_parses() {
        let key = PublicKey32([9; 32]);
        let body = format!(
            "version = 1\nserial = 7\n[[relay]]\nname = \"ingress-1\"\nrole = \"ingress\"\n\
             wg_public_key = \"{key}\"\nendpoint = \"127.0.0.1:51820\"\noperator = \"op-a\"\n\
             bandwidth_mbps = 1000\n"
        );
        let dir = Directory::from_body_toml(&body).unwrap();
        assert_eq!(dir.relays[0].wg_public_key, key);
        assert_eq!(dir.relays[0].endpoint.port(), 51820);
    }

    #[test]
    fn empty_directory_is_valid() {
        let dir = Directory::new(1);
        assert_eq!(
            Directory::from_body_toml(&dir.to_body_toml().unwrap()).unwrap(),
            dir
        );
    }

    fn invalid(change: impl FnOnce(&mut Directory)) -> ValidationError {
        let mut dir = sample();
        change(&mut dir);
        dir.validate().unwrap_err()
    }

    #[test]
    fn each_rule_has_its_own_error() {
        assert_eq!(
            invalid(|d| d.version = 2),
            ValidationError::UnsupportedVersion {
                got: 2,
                supported: 1
            }
        );
        assert_eq!(
            invalid(|d| d.relays[1].name = " ".into()),
            ValidationError::EmptyName { index: 2 }
        );
        assert_eq!(
            invalid(|d| d.relays[1].name = "ingress-1".into()),
            ValidationError::DuplicateName {
                name: "ingress-1".into()
            }
        );
        assert_eq!(
            invalid(|d| d.relays[1].wg_public_key = PublicKey32([1; 32])),
            ValidationError::DuplicateKey {
                key: PublicKey32([1; 32]).to_string(),
                first: "ingress-1".into(),
                second: "egress-1".into()
            }
        );
        assert_eq!(
            invalid(|d| d.relays[0].operator = String::new()),
            ValidationError::EmptyOperator {
                name: "ingress-1".into()
            }
        );
        assert_eq!(
            invalid(|d| d.relays[1].bandwidth_mbps = 0),
            ValidationError::ZeroBandwidth {
                name: "egress-1".into()
            }
        );
        assert_eq!(
            invalid(|d| d.relays[1].bandwidth_mbps = MAX_BANDWIDTH_MBPS + 1),
            ValidationError::BandwidthTooHigh {
                name: "egress-1".into(),
                got: MAX_BANDWIDTH_MBPS + 1,
                max: MAX_BANDWIDTH_MBPS
            }
        );
        assert_eq!(
            invalid(|d| d.relays[0].endpoint.set_port(0)),
            ValidationError::ZeroPort {
                name: "ingress-1".into()
            }
        );
        assert_eq!(
            invalid(|d| d.relays[0].endpoint = "0.0.0.0:1".parse().unwrap()),
            ValidationError::UnspecifiedAddress {
                name: "ingress-1".into(),
                addr: "0.0.0.0".parse().unwrap()
            }
        );
    }

    #[test]
    fn ingress_may_advertise_no_bandwidth() {
        let mut dir = sample();
        dir.relays[0].bandwidth_mbps = 0;
        assert_eq!(dir.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_body_errors() {
        let body = sample().to_body_toml().unwrap();
        for bad in [
            body.replace("operator", "operater"),
            body.replace("\"ingress\"", "\"middle\""),
            body.replace("127.0.0.1:51001", "nowhere"),
            format!("{body}\nextra = 1\n"),
            "version = 1\n".to_owned(),
        ] {
            assert!(
                matches!(Directory::from_body_toml(&bad), Err(Error::BadBody { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_wg_key_is_reported_by_name() {
        let body = sample()
            .to_body_toml()
            .unwrap()
            .replace(&PublicKey32([1; 32]).to_string(), "AAAA");
        let err = Directory::from_body_toml(&body).unwrap_err().to_string();
        assert!(
            err.contains("WireGuard public key decodes to 3 bytes"),
            "{err}"
        );
    }
}
