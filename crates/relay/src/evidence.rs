//! Where a relay gets its TEE evidence: the platform it runs on.
//!
//! - TDX and SEV-SNP guests: Linux configfs-tsm (`/sys/kernel/config/tsm/report`): make an
//!   entry, write the 64 bytes of report data to `inblob`, read the quote from `outblob`
//!   (and, for SNP, the VCEK from `auxblob`), remove the entry.
//! - SGX under Gramine: write `/dev/attestation/user_report_data`, read
//!   `/dev/attestation/quote`.
//! - The sim TEE, only when configured: a sim vendor key signs (SHA-256 of the running
//!   executable, report data).
//!
//! DCAP collateral is not produced by the TEE: the operator fetches it from Intel's PCCS
//! and the relay bundles it, so clients verify offline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use attest::{Evidence, Platform, SimVendor};
use sha2::{Digest, Sha256};

/// Why evidence could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// A TEE interface file could not be used.
    #[error("{path}: {source} (is this a TEE guest with the interface enabled?)")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process wrote to the configfs-tsm entry while the report was made.
    #[error("the configfs-tsm entry was written by someone else during the report (generation {before} → {after}); try again")]
    Raced {
        /// `generation` after our write.
        before: String,
        /// `generation` after reading the report.
        after: String,
    },
    /// configfs-tsm names a provider OpenRelay does not know.
    #[error("configfs-tsm provider {0:?} is not supported (expected tdx_guest or sev_guest)")]
    Provider(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A source of evidence for given report data.
pub trait EvidenceSource: Send + Sync {
    /// Evidence binding `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;

    /// Whether a report may take long: a TDX quote goes through the host's quoting
    /// service, an SNP report through the PSP, each milliseconds or more. Such evidence is
    /// made off the relay's event loop ([`crate::table::TableEvent::Attest`]), so that
    /// one client's Attest does not stall every other session of the worker.
    fn is_slow(&self) -> bool {
        true
    }
}

/// What a client is told by a relay that has no evidence source.
pub const NO_EVIDENCE: &str = "this relay runs without TEE evidence";

/// Evidence from `source`, or the reason a client is told when there is none.
pub fn obtain(source: &dyn EvidenceSource, report_data: &[u8; 64]) -> Result<Evidence, String> {
    source
        .evidence(report_data)
        .map_err(|e| format!("this relay could not obtain TEE evidence: {e}"))
}

/// Linux configfs-tsm (TDX and SEV-SNP guests).
pub struct ConfigfsTsm {
    root: PathBuf,
    collateral: Option<Vec<u8>>,
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

impl ConfigfsTsm {
    /// The kernel's report directory.
    pub const ROOT: &'static str = "/sys/kernel/config/tsm/report";

    /// Reports from `root`; `collateral` is bundled for DCAP (TDX) quotes.
    pub fn new(root: impl Into<PathBuf>, collateral: Option<Vec<u8>>) -> Self {
        Self {
            root: root.into(),
            collateral,
        }
    }
}

impl EvidenceSource for ConfigfsTsm {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        // A private entry per report: the kernel fills it with its attribute files.
        let entry = self.root.join(format!(
            "openrelay-{}-{}",
            std::process::id(),
            NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&entry).map_err(io(&entry))?;
        let result = report_in(&entry, report_data, self.collateral.as_deref());
        // Remove the entry even after an error. configfs removes its attribute files with
        // the directory; anywhere else they must go first.
        if std::fs::remove_dir(&entry).is_err() {
            let _ = std::fs::remove_dir_all(&entry);
        }
        result
    }
}

/// One report from a configfs-tsm entry: write `inblob`, read `outblob` (and `auxblob` for
/// SNP). `generation` counts writes to the entry; if it moved while the quote was made,
/// another process wrote its own report data and the quote may not bind ours.
fn report_in(
    entry: &Path,
    report_data: &[u8; 64],
    collateral: Option<&[u8]>,
) -> Result<Evidence, EvidenceError> {
    let read_string = |name: &str| {
        let p = entry.join(name);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(io(&p))
    };
    let inblob = entry.join("inblob");
    std::fs::write(&inblob, report_data).map_err(io(&inblob))?;
    let provider = read_string("provider")?;
    let platform = match provider.as_str() {
        "tdx_guest" => Platform::Tdx,
        "sev_guest" => Platform::SevSnp,
        other => return Err(EvidenceError::Provider(other.to_string())),
    };
    let generation = read_string("generation")?;
    let outblob = entry.join("outblob");
    let quote = std::fs::read(&outblob).map_err(io(&outblob))?;
    let after = read_string("generation")?;
    if after != generation {
        return Err(EvidenceError::Raced {
            before: generation,
            after,
        });
    }
    let collateral = match platform {
        Platform::SevSnp => {
            // The VCEK certificate chain, when the host provides it (extended report).
            let aux = entry.join("auxblob");
            std::fs::read(&aux).ok().filter(|a| !a.is_empty())
        }
        _ => collateral.map(<[u8]>::to_vec),
    };
    Ok(Evidence {
        platform,
        quote,
        collateral,
    })
}

/// Gramine's attestation interface (SGX).
pub struct Gramine {
    dev: PathBuf,
    collateral: Option<Vec<u8>>,
}

impl Gramine {
    /// Gramine's pseudo-filesystem.
    pub const DEV: &'static str = "/dev/attestation";

    /// Quotes from `dev`, with the operator's DCAP collateral.
    pub fn new(dev: impl Into<PathBuf>, collateral: Option<Vec<u8>>) -> Self {
        Self {
            dev: dev.into(),
            collateral,
        }
    }
}

impl EvidenceSource for Gramine {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let data = self.dev.join("user_report_data");
        std::fs::write(&data, report_data).map_err(io(&data))?;
        let quote_path = self.dev.join("quote");
        let quote = std::fs::read(&quote_path).map_err(io(&quote_path))?;
        Ok(Evidence {
            platform: Platform::Sgx,
            quote,
            collateral: self.collateral.clone(),
        })
    }
}

/// The simulated TEE (development and tests only; clients must be told to trust it).
pub struct Sim {
    vendor: SimVendor,
    measurement: [u8; 32],
}

impl Sim {
    /// Sim evidence for the executable at `exe` (normally `/proc/self/exe`).
    pub fn new(vendor: SimVendor, exe: &Path) -> Result<Self, EvidenceError> {
        Ok(Self {
            vendor,
            measurement: measure(exe)?,
        })
    }

    /// Sim evidence for an executable measured before (see [`measure`]).
    pub fn with_measurement(vendor: SimVendor, measurement: [u8; 32]) -> Self {
        Self {
            vendor,
            measurement,
        }
    }

    /// The measurement this relay reports.
    pub fn measurement(&self) -> [u8; 32] {
        self.measurement
    }
}

/// The sim measurement of an executable: its SHA-256.
pub fn measure(exe: &Path) -> Result<[u8; 32], EvidenceError> {
    // Streamed: a debug build of the relay is over 100 MB.
    let mut file = std::fs::File::open(exe).map_err(io(exe))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(exe))?;
    Ok(hasher.finalize().into())
}

impl EvidenceSource for Sim {
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        Ok(Evidence {
            platform: Platform::Sim,
            quote: self.vendor.report(&self.measurement, report_data),
            collateral: None,
        })
    }

    /// One ed25519 signature, tens of microseconds: cheaper made in place than handed off.
    fn is_slow(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("openrelay-evidence-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn configfs_tsm_reports_a_missing_interface_and_leaves_no_entry() {
        let root = tmp("tsm");
        let src = ConfigfsTsm::new(&root, None);
        // An ordinary directory has no provider or outblob: the error names the file.
        let err = src.evidence(&[1; 64]).unwrap_err();
        assert!(err.to_string().contains("provider"), "{err}");
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "the entry was not removed"
        );
    }

    /// A configfs-tsm entry as the kernel presents it after `mkdir`.
    fn fake_entry(name: &str, provider: &str) -> PathBuf {
        let entry = tmp(name);
        std::fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(entry.join("generation"), "1\n").unwrap();
        std::fs::write(entry.join("outblob"), b"QUOTE").unwrap();
        entry
    }

    #[test]
    fn configfs_tsm_tdx_writes_inblob_reads_the_quote_and_bundles_collateral() {
        let entry = fake_entry("tsm-tdx", "tdx_guest");
        let e = report_in(&entry, &[3; 64], Some(b"{\"tcb\":1}")).unwrap();
        assert_eq!(std::fs::read(entry.join("inblob")).unwrap(), vec![3; 64]);
        assert_eq!(e.platform, Platform::Tdx);
        assert_eq!(e.quote, b"QUOTE");
        assert_eq!(e.collateral.as_deref(), Some(&b"{\"tcb\":1}"[..]));
    }

    #[test]
    fn configfs_tsm_snp_takes_the_certificates_from_auxblob() {
        let entry = fake_entry("tsm-snp", "sev_guest");
        std::fs::write(entry.join("auxblob"), b"CERTS").unwrap();
        let e = report_in(&entry, &[4; 64], Some(b"ignored")).unwrap();
        assert_eq!(e.platform, Platform::SevSnp);
        assert_eq!(e.collateral.as_deref(), Some(&b"CERTS"[..]));
        // Without an extended report there is no auxblob: the client must then have the
        // VCEK some other way, and says so when verifying.
        std::fs::remove_file(entry.join("auxblob")).unwrap();
        let e = report_in(&entry, &[4; 64], None).unwrap();
        assert_eq!(e.collateral, None);
    }

    #[test]
    fn configfs_tsm_refuses_an_unknown_provider() {
        let entry = fake_entry("tsm-unknown", "arm_cca_guest");
        let err = report_in(&entry, &[0; 64], None).unwrap_err();
        assert!(
            matches!(&err, EvidenceError::Provider(p) if p == "arm_cca_guest"),
            "{err}"
        );
    }

    #[test]
    fn configfs_tsm_detects_another_writer_during_the_report() {
        let entry = fake_entry("tsm-race", "tdx_guest");
        let outblob = entry.join("outblob");
        std::fs::remove_file(&outblob).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&outblob).status();
        assert!(made.unwrap().success(), "mkfifo (coreutils) works");
        // The "kernel": once the relay waits for the quote, another writer bumps the
        // generation, then the quote is delivered.
        let writer = {
            let entry = entry.clone();
            std::thread::spawn(move || {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .open(entry.join("outblob"))
                    .unwrap();
                std::fs::write(entry.join("generation"), "2\n").unwrap();
                std::io::Write::write_all(&mut out, b"QUOTE").unwrap();
            })
        };
        let err = report_in(&entry, &[5; 64], None).unwrap_err();
        writer.join().unwrap();
        assert!(
            matches!(&err, EvidenceError::Raced { before, after } if before == "1" && after == "2"),
            "{err}"
        );
    }

    #[test]
    fn gramine_writes_user_report_data_and_reads_the_quote() {
        let dev = tmp("gramine");
        std::fs::write(dev.join("quote"), b"QUOTE").unwrap();
        let src = Gramine::new(&dev, Some(b"{}".to_vec()));
        let e = src.evidence(&[7; 64]).unwrap();
        assert_eq!(
            std::fs::read(dev.join("user_report_data")).unwrap(),
            vec![7; 64]
        );
        assert_eq!(e.platform, Platform::Sgx);
        assert_eq!(e.quote, b"QUOTE");
        assert_eq!(e.collateral.as_deref(), Some(&b"{}"[..]));
        let missing = Gramine::new(dev.join("nope"), None);
        assert!(matches!(
            missing.evidence(&[0; 64]),
            Err(EvidenceError::Io { .. })
        ));
    }

    #[test]
    fn sim_measures_the_executable_and_signs_the_report_data() {
        let dir = tmp("sim");
        let exe = dir.join("relay");
        std::fs::write(&exe, b"relay image bytes").unwrap();
        let vendor = SimVendor::new(ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
        let key = vendor.verifying_key();
        let sim = Sim::new(vendor, &exe).unwrap();
        assert_eq!(
            sim.measurement(),
            <[u8; 32]>::from(Sha256::digest(b"relay image bytes"))
        );
        let e = sim.evidence(&[9; 64]).unwrap();
        let claims = attest::verify(&e, 0, &[key]).unwrap();
        assert_eq!(claims.measurement, sim.measurement().to_vec());
        assert_eq!(claims.report_data, [9; 64]);
    }
}
