//! Properties of the wire format: decoding never panics on any bytes, and every message
//! survives encode → decode.

use opaque_ke::{
    ClientLogin, ClientRegistration, CredentialFinalization, RegistrationResponse,
    RegistrationUpload, ServerLogin, ServerLoginParameters, ServerSetup,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::rng::Compat;
use crate::suite::Suite;
use crate::wire::{Detail, RefuseReason, Request, Response, MAX_MESSAGE_LEN};
use crate::AccountNumber;

/// A valid ristretto255 point encoding (a blinded element of a random input).
fn point(rng: &mut StdRng) -> Vec<u8> {
    let input: [u8; 8] = rng.random();
    ClientRegistration::<Suite>::start(&mut Compat(rng), &input)
        .expect("blind")
        .message
        .serialize()
        .to_vec()
}

fn bytes<const N: usize>(rng: &mut StdRng) -> Vec<u8> {
    let mut out = vec![0; N];
    rng.fill(out.as_mut_slice());
    out
}

fn request(seed: u64, which: u8) -> Request {
    let mut rng = StdRng::seed_from_u64(seed);
    let account = AccountNumber::random(&mut rng);
    match which % 5 {
        0 => Request::CreateAccount,
        1 => Request::RegisterStart {
            account,
            registration_request: ClientRegistration::<Suite>::start(&mut Compat(&mut rng), b"pw")
                .expect("start")
                .message,
        },
        2 => Request::RegisterFinish {
            account,
            registration_upload: RegistrationUpload::deserialize(
                &[
                    point(&mut rng),
                    bytes::<64>(&mut rng),
                    bytes::<96>(&mut rng),
                ]
                .concat(),
            )
            .expect("upload"),
        },
        3 => Request::LoginStart {
            account,
            credential_request: ClientLogin::<Suite>::start(&mut Compat(&mut rng), b"pw")
                .expect("start")
                .message,
        },
        _ => Request::LoginFinish {
            credential_finalization: CredentialFinalization::deserialize(&bytes::<64>(&mut rng))
                .expect("KE3"),
        },
    }
}

fn response(seed: u64, which: u8, detail: &str) -> Response {
    let mut rng = StdRng::seed_from_u64(seed);
    match which % 6 {
        0 => Response::AccountCreated {
            account: AccountNumber::random(&mut rng),
        },
        1 => Response::RegisterStarted {
            registration_response: Box::new(
                RegistrationResponse::deserialize(&[point(&mut rng), point(&mut rng)].concat())
                    .expect("response"),
            ),
        },
        2 => Response::Registered,
        3 => {
            let setup = ServerSetup::<Suite>::new(&mut Compat(&mut rng));
            let ke1 = ClientLogin::<Suite>::start(&mut Compat(&mut rng), b"pw")
                .expect("KE1")
                .message;
            let ke2 = ServerLogin::start(
                &mut Compat(&mut rng),
                &setup,
                None,
                ke1,
                b"id",
                ServerLoginParameters::default(),
            )
            .expect("KE2")
            .message;
            Response::LoginStarted {
                credential_response: Box::new(ke2),
            }
        }
        4 => Response::LoggedIn {
            credit: rng.random(),
        },
        _ => {
            let reasons = [
                RefuseReason::Malformed,
                RefuseReason::RateLimited {
                    retry_after_minutes: rng.random(),
                },
                RefuseReason::NoPendingAccount,
                RefuseReason::NoLoginInProgress,
                RefuseReason::LoginFailed,
                RefuseReason::Busy,
                RefuseReason::Unavailable,
            ];
            Response::Refused {
                reason: reasons[rng.random_range(0..reasons.len())],
                detail: Detail::truncate(detail),
            }
        }
    }
}

/// A datagram with a valid header around arbitrary body bytes, so decoding reaches the
/// body parsers (random bytes rarely get past the header).
fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind];
    out.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
    out.extend_from_slice(body);
    out
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
    }

    #[test]
    fn decoding_any_body_never_panics(
        kind in prop_oneof![1u8..=5, 0x81u8..=0x86, any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let bytes = framed(kind, &body);
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
    }

    #[test]
    fn bodies_of_the_right_length_decode_or_fail_cleanly(
        seed in any::<u64>(),
        which in any::<u8>(),
        flip in any::<prop::sample::Index>(),
    ) {
        // A valid message with one byte of its body changed.
        let mut bytes = request(seed, which).encode();
        if bytes.len() > 4 {
            let at = 4 + flip.index(bytes.len() - 4);
            bytes[at] ^= 0x80;
        }
        let _ = Request::decode(&bytes);
        let mut bytes = response(seed, which, "x").encode();
        if bytes.len() > 4 {
            let at = 4 + flip.index(bytes.len() - 4);
            bytes[at] ^= 0x80;
        }
        let _ = Response::decode(&bytes);
    }

    #[test]
    fn requests_round_trip(seed in any::<u64>(), which in any::<u8>()) {
        let request = request(seed, which);
        let bytes = request.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        prop_assert_eq!(Request::decode(&bytes), Ok(request));
        // Never mistaken for the other direction.
        prop_assert!(Response::decode(&bytes).is_err());
    }

    #[test]
    fn responses_round_trip(seed in any::<u64>(), which in any::<u8>(), detail in "\\PC{0,120}") {
        let response = response(seed, which, &detail);
        let bytes = response.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        prop_assert_eq!(Response::decode(&bytes), Ok(response));
        prop_assert!(Request::decode(&bytes).is_err());
    }
}
