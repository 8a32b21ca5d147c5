//! Evidence as one blob, to send in control messages.
//!
//! platform (u8) | quote length (u32) | quote | collateral length (u32, 0 = none) | collateral
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::{AttestError, Evidence, Platform};

impl Platform {
    fn code(self) -> u8 {
        match self {
            Platform::Sgx => 1,
            Platform::Tdx => 2,
            Platform::SevSnp => 3,
            Platform::Sim => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Platform::Sgx,
            2 => Platform::Tdx,
            3 => Platform::SevSnp,
            4 => Platform::Sim,
            _ => return None,
        })
    }
}

impl Evidence {
    /// The blob.
    pub fn encode(&self) -> Vec<u8> {
        let collateral = self.collateral.as_deref().unwrap_or_default();
        let mut b = Vec::with_capacity(9 + self.quote.len() + collateral.len());
        b.push(self.platform.code());
        b.extend_from_slice(
            &u32::try_from(self.quote.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        b.extend_from_slice(&self.quote);
        b.extend_from_slice(
            &u32::try_from(collateral.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        b.extend_from_slice(collateral);
        b
    }

    /// Reads a blob; any inconsistency is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Self, AttestError> {
        let bad = |what: &'static str| AttestError::Encoding(what);
        let (&code, rest) = b.split_first().ok_or(bad("empty evidence"))?;
        let platform = Platform::from_code(code).ok_or(bad("unknown platform"))?;
        let (quote, rest) = take(rest).ok_or(bad("truncated quote"))?;
        let (collateral, rest) = take(rest).ok_or(bad("truncated collateral"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the collateral"));
        }
        Ok(Evidence {
            platform,
            quote: quote.to_vec(),
            collateral: (!collateral.is_empty()).then(|| collateral.to_vec()),
        })
    }
}

fn take(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(p in 0usize..4, quote in proptest::collection::vec(any::<u8>(), 0..300), col in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..300))) {
            let e = Evidence { platform: [Platform::Sgx, Platform::Tdx, Platform::SevSnp, Platform::Sim][p], quote, collateral: col };
            prop_assert_eq!(Evidence::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Evidence::decode(&b);
        }
    }
}
