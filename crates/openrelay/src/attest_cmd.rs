//! `openrelay attest`: check TEE evidence by hand.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;

/// Attestation commands.
#[derive(Debug, Subcommand)]
pub(crate) enum AttestCommand {
    /// Verify TEE evidence (an Intel SGX or TDX DCAP quote with its collateral, an AMD
    /// SEV-SNP report with its VCEK certificate, or a sim report) and print its claims:
    /// platform, measurement, report data, TCB status and advisories. With
    /// --accept-advisory, also apply the TCB policy a client applies.
    Verify {
        /// The quote or report (raw bytes).
        #[arg(long, value_name = "FILE")]
        evidence: PathBuf,
        /// The DCAP collateral (JSON, as Intel's PCCS serves it), or the VCEK certificate
        /// (DER) of an SEV-SNP report.
        #[arg(long, value_name = "FILE")]
        collateral: Option<PathBuf>,
        /// Verify as of this time instead of now: RFC 3339 (2025-06-25T00:00:00Z) or Unix
        /// seconds. Collateral is only valid between its issue date and next update.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// An Intel advisory ID (e.g. INTEL-SA-00615) to accept for a platform that needs
        /// hardening. Repeatable. Without it, only UpToDate passes.
        #[arg(long = "accept-advisory", value_name = "ID")]
        accept_advisory: Vec<String>,
        /// Accept an OutOfDate TCB (not recommended).
        #[arg(long)]
        accept_out_of_date: bool,
        /// SEV-SNP: the lowest firmware versions to accept, as
        /// BOOTLOADER,TEE,SNP,MICROCODE (e.g. 3,0,8,115), as an image's min_tcb does.
        #[arg(long, value_name = "B,T,S,M", value_parser = parse_snp_tcb)]
        min_snp_tcb: Option<attest::SnpTcb>,
        /// A sim vendor key (base64 ed25519) to trust. Sim evidence proves nothing about
        /// hardware; only for development.
        #[arg(long, value_name = "KEY")]
        trust_sim_vendor: Vec<String>,
    },
}

fn parse_time(s: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("--at {s:?} is neither RFC 3339 (2025-06-25T00:00:00Z) nor Unix seconds")
    })?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_secs())
}

fn parse_snp_tcb(s: &str) -> Result<attest::SnpTcb, String> {
    let parts: Vec<u8> = s
        .split(',')
        .map(|p| p.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}; expected four numbers 0-255, e.g. 3,0,8,115"))?;
    let [bootloader, tee, snp, microcode] = parts[..] else {
        return Err(format!(
            "{s:?} has {} numbers; expected four: BOOTLOADER,TEE,SNP,MICROCODE",
            parts.len()
        ));
    };
    Ok(attest::SnpTcb {
        bootloader,
        tee,
        snp,
        microcode,
    })
}

pub(crate) fn run(cmd: AttestCommand) -> anyhow::Result<()> {
    let AttestCommand::Verify {
        evidence,
        collateral,
        at,
        accept_advisory,
        accept_out_of_date,
        min_snp_tcb,
        trust_sim_vendor,
    } = cmd;
    let mut quote =
        std::fs::read(&evidence).with_context(|| format!("cannot read {}", evidence.display()))?;
    // SEV-SNP reports are often kept as hex text.
    if let Ok(bytes) = hex::decode(String::from_utf8_lossy(&quote).trim()) {
        if bytes.len() == attest::SNP_REPORT_LEN {
            quote = bytes;
        }
    }
    let collateral = match &collateral {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let now = match at {
        Some(s) => parse_time(&s)?,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    };
    let vendors = trust_sim_vendor
        .iter()
        .map(|k| directory::decode_verifying_key(k))
        .collect::<Result<Vec<_>, _>>()
        .context("a --trust-sim-vendor key is unusable")?;
    let claims = match attest::verify_detect(&quote, collateral.as_deref(), now, &vendors) {
        Ok(c) => c,
        Err(e) => bail!("rejected: {e}"),
    };
    println!("platform:     {:?}", claims.platform);
    println!("measurement:  {}", hex::encode(&claims.measurement));
    println!("report data:  {}", hex::encode(claims.report_data));
    println!("TCB status:   {:?}", claims.tcb_status);
    if let Some(tcb) = &claims.snp_tcb {
        println!("SNP TCB:      {tcb}");
    }
    println!(
        "advisories:   {}",
        if claims.advisories.is_empty() {
            "none".to_string()
        } else {
            claims.advisories.join(", ")
        }
    );
    let policy = attest::Policy {
        approved: vec![attest::Approved {
            platform: claims.platform,
            measurement: claims.measurement.clone(),
            accepted_advisories: accept_advisory,
            accept_out_of_date: false,
            min_snp_tcb,
        }],
        accept_out_of_date,
    };
    match policy.check(&claims, &claims.report_data) {
        Ok(()) => println!("verdict:      accepted (signature chain, collateral and TCB policy)"),
        Err(e) => bail!("rejected by the TCB policy: {e}"),
    }
    Ok(())
}
