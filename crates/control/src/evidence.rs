//! Evidence travels in parts: a quote with its collateral is larger than one datagram.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::{Message, EVIDENCE_PART_LEN, MAX_EVIDENCE_PARTS};

/// Why a blob cannot be sent or reassembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    /// The blob would need more than [`MAX_EVIDENCE_PARTS`] parts.
    #[error("evidence of {0} bytes is too large to send")]
    TooLarge(usize),
    /// A part disagrees with the earlier ones on the number of parts.
    #[error("evidence part {part} says {parts} parts, earlier parts said {expected}")]
    Inconsistent {
        /// The part.
        part: u16,
        /// Its count.
        parts: u16,
        /// The count seen first.
        expected: u16,
    },
}

/// The `Evidence` messages carrying `blob`.
pub fn split_evidence(blob: &[u8]) -> Result<Vec<Message>, PartsError> {
    let chunks: Vec<&[u8]> = if blob.is_empty() {
        vec![&[][..]]
    } else {
        blob.chunks(EVIDENCE_PART_LEN).collect()
    };
    let parts = u16::try_from(chunks.len())
        .ok()
        .filter(|n| *n <= MAX_EVIDENCE_PARTS)
        .ok_or(PartsError::TooLarge(blob.len()))?;
    Ok(chunks
        .into_iter()
        .zip(0u16..)
        .map(|(bytes, part)| Message::Evidence {
            part,
            parts,
            bytes: bytes.to_vec(),
        })
        .collect())
}

/// Collects parts in any order; duplicates are ignored.
#[derive(Debug, Default)]
pub struct EvidenceAssembler {
    parts: Vec<Option<Vec<u8>>>,
    missing: usize,
}

impl EvidenceAssembler {
    /// Adds one part; returns the whole blob once every part has arrived.
    pub fn add(
        &mut self,
        part: u16,
        parts: u16,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, PartsError> {
        if self.parts.is_empty() {
            self.parts = vec![None; usize::from(parts)];
            self.missing = usize::from(parts);
        } else if self.parts.len() != usize::from(parts) {
            return Err(PartsError::Inconsistent {
                part,
                parts,
                expected: u16::try_from(self.parts.len()).unwrap_or(u16::MAX),
            });
        }
        if let Some(slot @ None) = self.parts.get_mut(usize::from(part)) {
            *slot = Some(bytes);
            self.missing -= 1;
        }
        if self.missing > 0 {
            return Ok(None);
        }
        Ok(Some(
            self.parts.iter().flatten().flatten().copied().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reassemble(msgs: Vec<Message>) -> Option<Vec<u8>> {
        let mut a = EvidenceAssembler::default();
        let mut out = None;
        for m in msgs {
            let Message::Evidence { part, parts, bytes } = m else {
                panic!()
            };
            out = a.add(part, parts, bytes).unwrap();
        }
        out
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        let mut a = EvidenceAssembler::default();
        assert_eq!(a.add(0, 3, vec![1]), Ok(None));
        assert!(matches!(
            a.add(1, 4, vec![2]),
            Err(PartsError::Inconsistent { .. })
        ));
        assert_eq!(
            split_evidence(&vec![0; EVIDENCE_PART_LEN * 1025]),
            Err(PartsError::TooLarge(EVIDENCE_PART_LEN * 1025))
        );
    }

    proptest! {
        #[test]
        fn any_order_with_duplicates_reassembles(blob in proptest::collection::vec(any::<u8>(), 0..5000), seed: u64) {
            let mut msgs = split_evidence(&blob).unwrap();
            for m in &msgs {
                prop_assert!(Message::decode(&m.encode()).is_ok());
            }
            let n = msgs.len();
            let dup = msgs[(seed as usize) % n].clone();
            msgs.insert(0, dup);
            msgs.rotate_left((seed as usize) % (n + 1));
            prop_assert_eq!(reassemble(msgs), Some(blob));
        }
    }
}
