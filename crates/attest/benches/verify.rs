//! Time to verify each kind of evidence: `cargo bench -p openrelay-attest`.
//!
//! A benchmark, not a test: it prints the median of many runs and asserts nothing about
//! speed (shared machines are noisy).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attest::{binding, verify, Evidence, Platform, SimVendor};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vectors")
            .join(name),
    )
    .unwrap()
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    const JUNE_2025: u64 = 1_750_809_600;
    let sgx = Evidence {
        platform: Platform::Sgx,
        quote: vector("dcap/sgx_quote"),
        collateral: Some(vector("dcap/sgx_quote_collateral.json")),
    };
    let tdx = Evidence {
        platform: Platform::Tdx,
        quote: vector("dcap/tdx_quote"),
        collateral: Some(vector("dcap/tdx_quote_collateral.json")),
    };
    let report = hex::decode(
        String::from_utf8(vector("sev-snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let snp = Evidence {
        platform: Platform::SevSnp,
        quote: report,
        collateral: Some(vector("sev-snp/vcek_milan.der")),
    };
    let vendor = SimVendor::new(ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
    let sim = Evidence {
        platform: Platform::Sim,
        quote: vendor.report(&[2; 32], &binding(&[3; 32], &[4; 32], &[5; 32])),
        collateral: None,
    };
    let trusted = [vendor.verifying_key()];
    println!("{:<10} {:>12}", "evidence", "median");
    for (name, e, runs) in [
        ("SGX", &sgx, 50),
        ("TDX", &tdx, 50),
        ("SEV-SNP", &snp, 50),
        ("sim", &sim, 500),
    ] {
        let t = median(|| drop(verify(e, JUNE_2025, &trusted).unwrap()), runs);
        println!("{name:<10} {:>9.3} ms", t.as_secs_f64() * 1000.0);
    }
}
