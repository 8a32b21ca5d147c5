//! Control messages as parsed values (smoltcp's `Repr`): what [`Frame`] bodies mean.
//!
//! | type | message   | direction      | body                                           |
//! |------|-----------|----------------|------------------------------------------------|
//! | 1    | Hello     | client → relay | client version (u16)                           |
//! | 2    | Admitted  | relay → client | tunnel address (4), MTU (u16), lifetime (u32)  |
//! | 3    | Refused   | relay → client | reason (u8), detail (UTF-8, ≤ 200 bytes)       |
//! | 4    | Attest    | client → relay | nonce (32)                                     |
//! | 5    | Evidence  | relay → client | part (u16), parts (u16), bytes (≤ 1024)        |
//! | 6    | Redeem    | client → relay | challenge length (u16), challenge, token       |
//! | 7    | Ping      | client → relay | nonce (u64); admitted sessions only            |
//! | 8    | Pong      | relay → client | the ping's nonce (u64)                         |
//!
//! All integers are big-endian. The setup is Attest → Evidence, Redeem, Hello → Admitted.

#![deny(clippy::unwrap_used)]

use std::fmt;
use std::net::Ipv4Addr;

use crate::error::{DecodeError, DetailTooLong};
use crate::wire::{self, Frame};

/// The type numbers of control messages, including those reserved for later setup steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Client asks for admission.
    Hello = 1,
    /// Relay admits the session and assigns its parameters.
    Admitted = 2,
    /// Relay refuses the session or a packet of it.
    Refused = 3,
    /// Client sends a fresh nonce to get attestation evidence.
    Attest = 4,
    /// Relay answers an `Attest` with TEE evidence, in parts (quotes and collateral are
    /// larger than one datagram).
    Evidence = 5,
    /// Client presents an anonymous token bound to this relay and session.
    Redeem = 6,
    /// Client → relay: is this admitted session still known? (liveness after a stall)
    Ping = 7,
    /// Relay → client: yes; an unadmitted session gets `Refused(NotAdmitted)` instead.
    Pong = 8,
    /// Client → relay: idle, the client erased this session's keys; erase yours.
    Rest = 9,
}

impl TryFrom<u8> for MessageType {
    type Error = DecodeError;

    fn try_from(got: u8) -> Result<Self, DecodeError> {
        Ok(match got {
            1 => Self::Hello,
            2 => Self::Admitted,
            3 => Self::Refused,
            4 => Self::Attest,
            5 => Self::Evidence,
            6 => Self::Redeem,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::Rest,
            _ => return Err(DecodeError::UnknownType { got }),
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hello => "Hello",
            Self::Admitted => "Admitted",
            Self::Refused => "Refused",
            Self::Attest => "Attest",
            Self::Evidence => "Evidence",
            Self::Redeem => "Redeem",
            Self::Ping => "Ping",
            Self::Pong => "Pong",
            Self::Rest => "Rest",
        })
    }
}

/// Why a relay refuses, as a number the client can act on without reading the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefuseReason {
    /// The relay does not speak the client's version or did not expect that message.
    Unsupported = 1,
    /// The session is not admitted, yet it carried user traffic; sent so a client whose
    /// relay restarted (and forgot the admission) knows to set up again.
    NotAdmitted = 2,
    /// The relay is full.
    Capacity = 3,
    /// The relay's operator policy does not admit this session.
    Policy = 4,
    /// No valid, unspent token was redeemed for this session.
    Token = 5,
}

impl RefuseReason {
    /// Whether the client may succeed by setting up again: after a relay restart
    /// (`NotAdmitted`) at once, when full (`Capacity`) later or elsewhere.
    pub const fn retry_helps(self) -> bool {
        matches!(self, Self::NotAdmitted | Self::Capacity)
    }
}

impl TryFrom<u8> for RefuseReason {
    type Error = DecodeError;

    fn try_from(got: u8) -> Result<Self, DecodeError> {
        Ok(match got {
            1 => Self::Unsupported,
            2 => Self::NotAdmitted,
            3 => Self::Capacity,
            4 => Self::Policy,
            5 => Self::Token,
            _ => return Err(DecodeError::UnknownRefuseReason { got }),
        })
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsupported => "unsupported version or message; update the client",
            Self::NotAdmitted => {
                "session not admitted (the relay may have restarted); set up again"
            }
            Self::Capacity => "relay at capacity; try again later or use another relay",
            Self::Policy => "refused by the relay operator's policy; use another relay",
            Self::Token => {
                "no valid token for this session; fetch fresh tokens (openrelay account tokens)"
            }
        })
    }
}

/// Human-readable refusal text, at most [`Detail::MAX_LEN`] bytes of UTF-8, so that every
/// `Message` value can be encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Detail(String);

impl Detail {
    /// Longest detail in bytes; keeps a refusal far below the frame limit.
    pub const MAX_LEN: usize = 200;

    /// Accepts `text` if it fits.
    pub fn new(text: impl Into<String>) -> Result<Self, DetailTooLong> {
        let text = text.into();
        if text.len() > Self::MAX_LEN {
            return Err(DetailTooLong {
                len: text.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(text))
    }

    /// Cuts `text` to at most [`Detail::MAX_LEN`] bytes at a character boundary, for
    /// relay code that must always be able to refuse.
    pub fn truncate(text: &str) -> Self {
        let mut end = text.len().min(Self::MAX_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self(text.get(..end).unwrap_or_default().to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Detail {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → relay: asks for admission.
    Hello {
        /// Setup protocol version the client speaks (see [`crate::CLIENT_VERSION`]).
        client_version: u16,
    },
    /// Relay → client: the session is admitted; user traffic may flow.
    Admitted {
        /// The client's address inside the tunnel.
        tunnel_addr: Ipv4Addr,
        /// MTU of the tunnel interface.
        mtu: u16,
        /// Seconds until the client must set up again.
        lifetime_secs: u32,
    },
    /// Client → relay: send evidence bound to this nonce.
    Attest {
        /// Fresh randomness from the client.
        nonce: [u8; 32],
    },
    /// Relay → client: one part of the evidence.
    Evidence {
        /// Index of this part, from 0.
        part: u16,
        /// Number of parts.
        parts: u16,
        /// The bytes of this part.
        bytes: Vec<u8>,
    },
    /// Client → relay: an anonymous token (Privacy Pass, publicly verifiable) and the
    /// challenge it was issued for, which names this relay and this session's key.
    Redeem {
        /// The encoded `TokenChallenge`.
        challenge: Vec<u8>,
        /// The encoded token.
        token: Vec<u8>,
    },
    /// Client → relay: liveness check of an admitted session.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// Relay → client: the session is known.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// Client → relay: the client has been idle and has erased this session's keys; the
    /// relay erases its own and keeps the admission. The client's next handshake, with the
    /// same key, wakes the session with the same address and no new token. Keys that no
    /// one holds cannot be taken from a relay later, and an idle session costs the relay
    /// its admission only (a few hundred bytes instead of the WireGuard state).
    Rest,
    /// Relay → client: the session (or a packet of it) is refused.
    Refused {
        /// Why, as a number.
        reason: RefuseReason,
        /// Why, in words.
        detail: Detail,
    },
}

const HELLO_LEN: usize = 2;
const ADMITTED_LEN: usize = 4 + 2 + 4;
const REFUSED_MIN_LEN: usize = 1;
const PING_LEN: usize = 8;
const ATTEST_LEN: usize = 32;
const EVIDENCE_HEADER_LEN: usize = 4;
/// Largest evidence part in one message.
pub const EVIDENCE_PART_LEN: usize = 1024;
/// Most parts of one piece of evidence (1 MiB).
pub const MAX_EVIDENCE_PARTS: u16 = 1024;
/// Largest challenge or token in a `Redeem` (type 2 tokens are 354 bytes).
pub const REDEEM_FIELD_LEN: usize = 512;
const REDEEM_HEADER_LEN: usize = 2;

impl Message {
    /// The type number this message is sent with.
    pub const fn message_type(&self) -> MessageType {
        match self {
            Self::Hello { .. } => MessageType::Hello,
            Self::Admitted { .. } => MessageType::Admitted,
            Self::Refused { .. } => MessageType::Refused,
            Self::Attest { .. } => MessageType::Attest,
            Self::Evidence { .. } => MessageType::Evidence,
            Self::Redeem { .. } => MessageType::Redeem,
            Self::Ping { .. } => MessageType::Ping,
            Self::Pong { .. } => MessageType::Pong,
            Self::Rest => MessageType::Rest,
        }
    }

    /// Length of the encoded body.
    pub fn body_len(&self) -> usize {
        match self {
            Self::Hello { .. } => HELLO_LEN,
            Self::Rest => 0,
            Self::Admitted { .. } => ADMITTED_LEN,
            Self::Refused { detail, .. } => REFUSED_MIN_LEN + detail.as_str().len(),
            Self::Ping { .. } | Self::Pong { .. } => PING_LEN,
            Self::Attest { .. } => ATTEST_LEN,
            Self::Evidence { bytes, .. } => EVIDENCE_HEADER_LEN + bytes.len(),
            Self::Redeem { challenge, token } => REDEEM_HEADER_LEN + challenge.len() + token.len(),
        }
    }

    /// Length of the whole encoded frame, for sizing the buffer given to [`Message::emit`].
    pub fn buffer_len(&self) -> usize {
        wire::frame_len(self.body_len())
    }

    /// Reads the message in a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Self, DecodeError> {
        let ty = MessageType::try_from(frame.message_type())?;
        let body = frame.body();
        match ty {
            MessageType::Hello => {
                let [a, b] = fixed::<HELLO_LEN>(ty, body)?;
                Ok(Self::Hello {
                    client_version: u16::from_be_bytes([a, b]),
                })
            }
            MessageType::Admitted => {
                let [a0, a1, a2, a3, m0, m1, l0, l1, l2, l3] = fixed::<ADMITTED_LEN>(ty, body)?;
                Ok(Self::Admitted {
                    tunnel_addr: Ipv4Addr::new(a0, a1, a2, a3),
                    mtu: u16::from_be_bytes([m0, m1]),
                    lifetime_secs: u32::from_be_bytes([l0, l1, l2, l3]),
                })
            }
            MessageType::Refused => {
                let Some((&reason, detail)) = body.split_first() else {
                    return Err(DecodeError::BodyTooShort {
                        ty,
                        min: REFUSED_MIN_LEN,
                        got: body.len(),
                    });
                };
                let reason = RefuseReason::try_from(reason)?;
                if detail.len() > Detail::MAX_LEN {
                    return Err(DecodeError::DetailTooLong {
                        len: detail.len(),
                        max: Detail::MAX_LEN,
                    });
                }
                let detail =
                    std::str::from_utf8(detail).map_err(|e| DecodeError::DetailNotUtf8 {
                        valid_up_to: e.valid_up_to(),
                    })?;
                Ok(Self::Refused {
                    reason,
                    detail: Detail(detail.to_owned()),
                })
            }
            MessageType::Ping => Ok(Self::Ping {
                nonce: u64::from_be_bytes(fixed::<PING_LEN>(ty, body)?),
            }),
            MessageType::Pong => Ok(Self::Pong {
                nonce: u64::from_be_bytes(fixed::<PING_LEN>(ty, body)?),
            }),
            MessageType::Rest => {
                fixed::<0>(ty, body)?;
                Ok(Self::Rest)
            }
            MessageType::Attest => Ok(Self::Attest {
                nonce: fixed::<ATTEST_LEN>(ty, body)?,
            }),
            MessageType::Evidence => {
                let (Some(&[p0, p1, n0, n1]), Some(bytes)) =
                    (body.first_chunk::<4>(), body.get(EVIDENCE_HEADER_LEN..))
                else {
                    return Err(DecodeError::BodyTooShort {
                        ty,
                        min: EVIDENCE_HEADER_LEN,
                        got: body.len(),
                    });
                };
                let (part, parts) = (u16::from_be_bytes([p0, p1]), u16::from_be_bytes([n0, n1]));
                if parts == 0
                    || parts > MAX_EVIDENCE_PARTS
                    || part >= parts
                    || bytes.len() > EVIDENCE_PART_LEN
                {
                    return Err(DecodeError::BodyLength {
                        ty,
                        expected: EVIDENCE_HEADER_LEN + EVIDENCE_PART_LEN,
                        got: body.len(),
                    });
                }
                Ok(Self::Evidence {
                    part,
                    parts,
                    bytes: bytes.to_vec(),
                })
            }
            MessageType::Redeem => {
                let too_short = DecodeError::BodyTooShort {
                    ty,
                    min: REDEEM_HEADER_LEN + 1,
                    got: body.len(),
                };
                let Some((&[c0, c1], rest)) = body.split_first_chunk::<2>() else {
                    return Err(too_short);
                };
                let n = usize::from(u16::from_be_bytes([c0, c1]));
                let (Some(challenge), Some(token)) = (rest.get(..n), rest.get(n..)) else {
                    return Err(too_short);
                };
                if n > REDEEM_FIELD_LEN || token.is_empty() || token.len() > REDEEM_FIELD_LEN {
                    return Err(DecodeError::BodyLength {
                        ty,
                        expected: REDEEM_HEADER_LEN + 2 * REDEEM_FIELD_LEN,
                        got: body.len(),
                    });
                }
                Ok(Self::Redeem {
                    challenge: challenge.to_vec(),
                    token: token.to_vec(),
                })
            }
        }
    }

    /// Decodes a received datagram: checks the frame, then reads the message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::parse(&Frame::new_checked(bytes)?)
    }

    /// Writes header and body into `frame`.
    ///
    /// # Panics
    ///
    /// If the frame's buffer is shorter than [`Message::buffer_len`]; size it with that.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        // Every body is at most 1 + Detail::MAX_LEN bytes, far below u16::MAX.
        let body_len = u16::try_from(self.body_len()).unwrap_or(u16::MAX);
        frame.set_header(self.message_type() as u8, body_len);
        let body = frame.body_mut();
        match self {
            Self::Hello { client_version } => {
                body[..HELLO_LEN].copy_from_slice(&client_version.to_be_bytes());
            }
            Self::Admitted {
                tunnel_addr,
                mtu,
                lifetime_secs,
            } => {
                body[0..4].copy_from_slice(&tunnel_addr.octets());
                body[4..6].copy_from_slice(&mtu.to_be_bytes());
                body[6..10].copy_from_slice(&lifetime_secs.to_be_bytes());
            }
            Self::Refused { reason, detail } => {
                body[0] = *reason as u8;
                let text = detail.as_str().as_bytes();
                body[1..1 + text.len()].copy_from_slice(text);
            }
            Self::Ping { nonce } | Self::Pong { nonce } => {
                body[..PING_LEN].copy_from_slice(&nonce.to_be_bytes());
            }
            Self::Attest { nonce } => body[..ATTEST_LEN].copy_from_slice(nonce),
            Self::Rest => {}
            Self::Evidence { part, parts, bytes } => {
                body[0..2].copy_from_slice(&part.to_be_bytes());
                body[2..4].copy_from_slice(&parts.to_be_bytes());
                body[4..4 + bytes.len()].copy_from_slice(bytes);
            }
            Self::Redeem { challenge, token } => {
                let n = challenge.len();
                body[0..2].copy_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
                body[2..2 + n].copy_from_slice(challenge);
                body[2 + n..2 + n + token.len()].copy_from_slice(token);
            }
        }
    }

    /// Encodes the message as one datagram payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut buffer = vec![0; self.buffer_len()];
        self.emit(&mut Frame::new_unchecked(&mut buffer[..]));
        buffer
    }
}

/// The body as an array of exactly `N` bytes, or why not.
fn fixed<const N: usize>(ty: MessageType, body: &[u8]) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::try_from(body).map_err(|_| DecodeError::BodyLength {
        ty,
        expected: N,
        got: body.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn raw(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'O', b'R', 1, ty];
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello { client_version: 1 },
            Message::Admitted {
                tunnel_addr: Ipv4Addr::new(100, 64, 3, 7),
                mtu: 1340,
                lifetime_secs: 3600,
            },
            Message::Refused {
                reason: RefuseReason::NotAdmitted,
                detail: Detail::new("relay restarted").unwrap(),
            },
            Message::Refused {
                reason: RefuseReason::Policy,
                detail: Detail::default(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.encode();
            assert_eq!(bytes.len(), message.buffer_len());
            assert_eq!(Message::decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn encoding_is_the_documented_layout() {
        let hello = Message::Hello {
            client_version: 0x0102,
        };
        assert_eq!(hello.encode(), b"OR\x01\x01\x00\x02\x01\x02");
        let admitted = Message::Admitted {
            tunnel_addr: Ipv4Addr::new(10, 0, 0, 2),
            mtu: 1280,
            lifetime_secs: 60,
        };
        assert_eq!(
            admitted.encode(),
            b"OR\x01\x02\x00\x0a\x0a\x00\x00\x02\x05\x00\x00\x00\x00\x3c"
        );
        let refused = Message::Refused {
            reason: RefuseReason::Capacity,
            detail: Detail::new("full").unwrap(),
        };
        assert_eq!(refused.encode(), b"OR\x01\x03\x00\x05\x03full");
        assert_eq!(Message::Rest.encode(), b"OR\x01\x09\x00\x00");
    }

    #[test]
    fn unknown_type() {
        assert_eq!(
            Message::decode(&raw(0, &[])),
            Err(DecodeError::UnknownType { got: 0 })
        );
        assert_eq!(
            Message::decode(&raw(10, &[])),
            Err(DecodeError::UnknownType { got: 10 })
        );
        assert_eq!(
            Message::decode(&raw(7, &[1, 2])),
            Err(DecodeError::BodyLength {
                ty: MessageType::Ping,
                expected: 8,
                got: 2
            })
        );
    }

    #[test]
    fn redeem_round_trips_and_checks_its_lengths() {
        let m = Message::Redeem {
            challenge: vec![1; 80],
            token: vec![2; 354],
        };
        assert_eq!(Message::decode(&m.encode()), Ok(m));
        // Challenge length beyond the body, an empty token, an oversized token.
        for body in [
            [&[0u8, 200][..], &[1; 50]].concat(),
            [&[0u8, 3][..], &[1; 3]].concat(),
            [&[0u8, 1][..], &[1; 600]].concat(),
        ] {
            assert!(matches!(
                Message::decode(&raw(6, &body)),
                Err(DecodeError::BodyTooShort { .. } | DecodeError::BodyLength { .. })
            ));
        }
    }

    #[test]
    fn fixed_bodies_of_wrong_length() {
        assert_eq!(
            Message::decode(&raw(1, &[0, 1, 2])),
            Err(DecodeError::BodyLength {
                ty: MessageType::Hello,
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            Message::decode(&raw(2, &[0; 9])),
            Err(DecodeError::BodyLength {
                ty: MessageType::Admitted,
                expected: 10,
                got: 9
            })
        );
        assert_eq!(
            Message::decode(&raw(3, &[])),
            Err(DecodeError::BodyTooShort {
                ty: MessageType::Refused,
                min: 1,
                got: 0
            })
        );
        assert_eq!(
            Message::decode(&raw(9, &[0])),
            Err(DecodeError::BodyLength {
                ty: MessageType::Rest,
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn unknown_reason() {
        assert_eq!(
            Message::decode(&raw(3, &[0])),
            Err(DecodeError::UnknownRefuseReason { got: 0 })
        );
        assert_eq!(
            Message::decode(&raw(3, &[6, b'x'])),
            Err(DecodeError::UnknownRefuseReason { got: 6 })
        );
    }

    #[test]
    fn detail_not_utf8() {
        assert_eq!(
            Message::decode(&raw(3, &[1, b'o', b'k', 0xff])),
            Err(DecodeError::DetailNotUtf8 { valid_up_to: 2 })
        );
    }

    #[test]
    fn detail_too_long() {
        let mut body = vec![1];
        body.extend_from_slice(&[b'a'; Detail::MAX_LEN + 1]);
        assert_eq!(
            Message::decode(&raw(3, &body)),
            Err(DecodeError::DetailTooLong {
                len: Detail::MAX_LEN + 1,
                max: Detail::MAX_LEN
            })
        );
        assert_eq!(
            Detail::new("a".repeat(Detail::MAX_LEN + 1)),
            Err(DetailTooLong {
                len: Detail::MAX_LEN + 1,
                max: Detail::MAX_LEN
            })
        );
    }

    #[test]
    fn truncate_cuts_at_a_char_boundary() {
        // 'é' is two bytes; 101 of them is 202 bytes, so a cut at 200 is on a boundary
        // but one at 201 would not be.
        let text = "é".repeat(101);
        assert_eq!(Detail::truncate(&text).as_str().len(), 200);
        let text = format!("a{}", "é".repeat(100));
        let cut = Detail::truncate(&text);
        assert_eq!(cut.as_str().len(), 199);
        assert!(Detail::new(cut.as_str()).is_ok());
        assert_eq!(Detail::truncate("short").as_str(), "short");
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let e = Message::decode(b"OR\x02\x01\x00\x00").unwrap_err();
        assert_eq!(
            e.to_string(),
            "control frame has wire version 2, this build speaks version 1; update the older side"
        );
        let e = Message::decode(&raw(6, &[])).unwrap_err();
        assert!(e.to_string().contains("Redeem"), "{e}");
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let reason = prop_oneof![
            Just(RefuseReason::Unsupported),
            Just(RefuseReason::NotAdmitted),
            Just(RefuseReason::Capacity),
            Just(RefuseReason::Policy),
            Just(RefuseReason::Token),
        ];
        prop_oneof![
            any::<u16>().prop_map(|client_version| Message::Hello { client_version }),
            (any::<[u8; 4]>(), any::<u16>(), any::<u32>()).prop_map(|(a, mtu, lifetime_secs)| {
                Message::Admitted {
                    tunnel_addr: Ipv4Addr::from(a),
                    mtu,
                    lifetime_secs,
                }
            }),
            (reason, ".{0,80}").prop_map(|(reason, text)| Message::Refused {
                reason,
                detail: Detail::truncate(&text),
            }),
            any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
            any::<[u8; 32]>().prop_map(|nonce| Message::Attest { nonce }),
            (
                0u16..10,
                proptest::collection::vec(any::<u8>(), 0..EVIDENCE_PART_LEN)
            )
                .prop_map(|(part, bytes)| Message::Evidence {
                    part,
                    parts: part + 1,
                    bytes
                }),
            any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
            Just(Message::Rest),
            (
                proptest::collection::vec(any::<u8>(), 0..REDEEM_FIELD_LEN),
                proptest::collection::vec(any::<u8>(), 1..REDEEM_FIELD_LEN)
            )
                .prop_map(|(challenge, token)| Message::Redeem { challenge, token }),
        ]
    }

    proptest! {
        #[test]
        fn decode_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decode_of_arbitrary_bodies_never_panics(ty in 0u8..10, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Valid headers reach the body parsers far more often than random bytes do.
            let _ = Message::decode(&raw(ty, &body));
        }

        #[test]
        fn encode_then_decode_is_identity(message in arb_message()) {
            let bytes = message.encode();
            prop_assert!(bytes.len() <= wire::MAX_FRAME_LEN);
            prop_assert_eq!(Message::decode(&bytes), Ok(message));
        }

        #[test]
        fn whatever_decodes_re_encodes_to_the_same_bytes(ty in 1u8..9, body in proptest::collection::vec(any::<u8>(), 0..12)) {
            let bytes = raw(ty, &body);
            if let Ok(message) = Message::decode(&bytes) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }
    }
}
