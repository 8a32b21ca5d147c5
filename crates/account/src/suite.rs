//! The OPAQUE cipher suite: ristretto255 for the OPRF and the key exchange, 3DH with
//! SHA-512, and Argon2id with pinned parameters as the key stretching function (KSF).
//!
//! The KSF runs on the client only (OPAQUE's server never sees the password), once at
//! registration and once per login. It is what makes an offline dictionary attack
//! expensive for someone who steals the issuer's store *and* its sealing key (the OPRF
//! key is in the store, so such an attacker can test guesses without the server).
//!
//! # Why these Argon2id parameters
//!
//! m = 19 MiB (19456 KiB), t = 2, p = 1: OWASP's Password Storage Cheat Sheet
//! recommendation for Argon2id, the same as RFC 9106's memory-constrained choices in
//! spirit. `cargo bench -p openrelay-account --bench ksf` measures one client finish
//! (the hash dominates it). The parameters are pinned here rather than taken from
//! `argon2::Params::default()` (which opaque-ke's own `Ksf` impl uses) because changing
//! them changes every derived key: a silent default change in a dependency update would
//! lock every user out. Changing them needs a migration (re-registration).

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::errors::InternalError;
use opaque_ke::generic_array::{ArrayLength, GenericArray};
use opaque_ke::ksf::Ksf;
use opaque_ke::{CipherSuite, Ristretto255, TripleDh};

/// Argon2id memory cost in KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// Argon2id passes over memory.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes; 1 because the client hashes once, on one core.
pub const ARGON2_P_COST: u32 = 1;

/// The production parameters, checked at compile time. The output length is left open:
/// OPAQUE asks for the hash's length (64 bytes).
const PRODUCTION_PARAMS: Params =
    match Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None) {
        Ok(params) => params,
        Err(_) => panic!("the production Argon2 parameters are valid"),
    };

/// The OPAQUE configuration every OpenRelay client and issuer speak (RFC 9807 §7:
/// ristretto255-SHA512 OPRF, 3DH over ristretto255 with SHA-512, Argon2id KSF).
pub struct Suite;

impl CipherSuite for Suite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;
    type Ksf = Argon2id;
}

/// Argon2id with OpenRelay's pinned parameters, as an OPAQUE key stretching function.
///
/// `Default` gives the production parameters; that is what opaque-ke uses when no KSF
/// is passed, so nothing outside tests can run with other parameters.
#[derive(Clone)]
pub struct Argon2id(Argon2<'static>);

impl Argon2id {
    /// The production parameters ([`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`],
    /// [`ARGON2_P_COST`]).
    pub fn production() -> Self {
        Self::with_params(PRODUCTION_PARAMS)
    }

    /// Minimal costs so that tests with many logins finish quickly in debug builds;
    /// never compiled into the library proper.
    #[cfg(test)]
    pub(crate) fn cheap_for_tests() -> Self {
        const CHEAP: Params = match Params::new(Params::MIN_M_COST, 1, 1, None) {
            Ok(params) => params,
            Err(_) => panic!("the minimal Argon2 parameters are valid"),
        };
        Self::with_params(CHEAP)
    }

    /// The parameters in use, for the benchmark's report and for tests.
    pub fn params(&self) -> &Params {
        self.0.params()
    }

    fn with_params(params: Params) -> Self {
        Self(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for Argon2id {
    fn default() -> Self {
        Self::production()
    }
}

impl Ksf for Argon2id {
    fn hash<L: ArrayLength<u8>>(
        &self,
        input: GenericArray<u8, L>,
    ) -> Result<GenericArray<u8, L>, InternalError> {
        // As in opaque-ke's own Argon2 KSF: a fixed all-zero salt. The input is the
        // OPRF output, already unique per account and password, so a salt adds nothing.
        let mut output = GenericArray::default();
        self.0
            .hash_password_into(&input, &[0; argon2::RECOMMENDED_SALT_LEN], &mut output)
            .map_err(|_| InternalError::KsfError)?;
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_parameters_are_owasps_argon2id() {
        let ksf = Argon2id::default();
        assert_eq!(ksf.params().m_cost(), 19_456);
        assert_eq!(ksf.params().t_cost(), 2);
        assert_eq!(ksf.params().p_cost(), 1);
    }

    #[test]
    fn ksf_is_argon2id_with_a_zero_salt() {
        // Same input through argon2 directly: proves the algorithm (id, v0x13), the
        // parameters and the salt, and that the output length follows the input.
        let ksf = Argon2id::cheap_for_tests();
        let input =
            GenericArray::<u8, opaque_ke::generic_array::typenum::U64>::clone_from_slice(&[7; 64]);
        let ours = ksf.hash(input).expect("hash");
        let mut direct = [0u8; 64];
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(Params::MIN_M_COST, 1, 1, None).expect("params"),
        )
        .hash_password_into(&[7; 64], &[0; 16], &mut direct)
        .expect("argon2");
        assert_eq!(ours.as_slice(), &direct);
        assert_ne!(ours.as_slice(), &[7; 64]);
    }
}
