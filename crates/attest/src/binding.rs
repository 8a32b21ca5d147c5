//! What the TEE's report data must hold for OpenRelay.

use sha2::{Digest, Sha512};

/// Domain separation for the binding.
pub const BINDING_LABEL: &[u8] = b"openrelay attest v1";

/// SHA-512("openrelay attest v1" || relay WireGuard key || client's session key || nonce).
///
/// Binding the client's fresh session key, not only the relay's, stops a holder of a
/// leaked relay key from relaying the client's nonce to a genuine enclave and passing its
/// evidence off as its own.
pub fn binding(relay_key: &[u8; 32], client_key: &[u8; 32], nonce: &[u8; 32]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(BINDING_LABEL);
    h.update(relay_key);
    h.update(client_key);
    h.update(nonce);
    h.finalize().into()
}
