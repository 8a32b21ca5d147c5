//! The setup exchange as sans-IO state types (rustls `ExpectCertificate` style).
//!
//! Client: [`ClientSetup::start`] yields the `Hello` to send and an [`ExpectAdmitted`],
//! which consumes the relay's answer and yields an [`Admission`] or a [`SetupError`].
//! Relay: [`AdmitPolicy::respond`] turns a received message into the reply.
//!
//! Later steps slot in as further states: `ClientSetup::start` will send `Attest` and
//! return an `ExpectEvidence`, whose `handle` sends `Redeem` and returns `ExpectAdmitted`.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::SetupError;
use crate::message::{Detail, Message, MessageType, RefuseReason};

/// The setup protocol version this build's client sends in `Hello`.
pub const CLIENT_VERSION: u16 = 1;

/// Client versions this build's relay admits.
pub const SUPPORTED_CLIENT_VERSIONS: RangeInclusive<u16> = 1..=1;

/// Smallest MTU a client accepts: IPv6 needs 1280.
pub const MIN_MTU: u16 = 1280;

/// Largest MTU a client accepts: jumbo frames.
pub const MAX_MTU: u16 = 9000;

/// What the client learns when admitted: how to configure its tunnel interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The client's address inside the tunnel.
    pub tunnel_addr: Ipv4Addr,
    /// MTU of the tunnel interface, within [`MIN_MTU`]..=[`MAX_MTU`].
    pub mtu: u16,
    /// How long the admission holds; the client sets up again before it runs out.
    pub lifetime: Duration,
}

/// The start of a client's setup; holds what the client will announce.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    client_version: u16,
}

impl ClientSetup {
    /// A setup that announces `client_version` (normally [`CLIENT_VERSION`]).
    pub const fn new(client_version: u16) -> Self {
        Self { client_version }
    }

    /// Begins the exchange: returns the state waiting for the relay and the message to send
    /// to [`crate::control_endpoint`].
    pub fn start(self) -> (ExpectAdmitted, Message) {
        let hello = Message::Hello {
            client_version: self.client_version,
        };
        (ExpectAdmitted { _private: () }, hello)
    }
}

/// Client state after `Hello`: waiting for `Admitted` or `Refused`.
#[derive(Debug)]
pub struct ExpectAdmitted {
    _private: (),
}

impl ExpectAdmitted {
    /// Consumes the relay's reply; any admission is checked before it is returned, so a
    /// misconfigured relay cannot make the client configure an unusable interface.
    pub fn handle(self, message: Message) -> Result<Admission, SetupError> {
        match message {
            Message::Admitted {
                tunnel_addr,
                mtu,
                lifetime_secs,
            } => {
                if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                    return Err(SetupError::MtuOutOfRange {
                        mtu,
                        min: MIN_MTU,
                        max: MAX_MTU,
                    });
                }
                if !is_host_addr(tunnel_addr) {
                    return Err(SetupError::InvalidTunnelAddr { addr: tunnel_addr });
                }
                if lifetime_secs == 0 {
                    return Err(SetupError::ZeroLifetime);
                }
                Ok(Admission {
                    tunnel_addr,
                    mtu,
                    lifetime: Duration::from_secs(u64::from(lifetime_secs)),
                })
            }
            Message::Refused { reason, detail } => Err(SetupError::Refused { reason, detail }),
            other => Err(SetupError::UnexpectedMessage {
                expected: MessageType::Admitted,
                got: other.message_type(),
            }),
        }
    }
}

/// Whether an address can be assigned to an interface as its own.
fn is_host_addr(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback())
}

/// What a relay assigns to every session it admits (its operator's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitPolicy {
    /// MTU of the client's tunnel interface; keep within [`MIN_MTU`]..=[`MAX_MTU`] or
    /// clients refuse the admission.
    pub mtu: u16,
    /// How long an admission holds; sent in whole seconds, capped at `u32::MAX`.
    pub lifetime: Duration,
}

impl AdmitPolicy {
    /// The relay's reply to a control message from a session not yet admitted:
    /// `Admitted` with `tunnel_addr` for a `Hello` of a supported version, otherwise
    /// `Refused(Unsupported)` with a detail saying what was expected.
    pub fn respond(&self, request: &Message, tunnel_addr: Ipv4Addr) -> Message {
        match request {
            Message::Hello { client_version }
                if SUPPORTED_CLIENT_VERSIONS.contains(client_version) =>
            {
                Message::Admitted {
                    tunnel_addr,
                    mtu: self.mtu,
                    lifetime_secs: u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX),
                }
            }
            Message::Hello { client_version } => Message::Refused {
                reason: RefuseReason::Unsupported,
                detail: Detail::truncate(&format!(
                    "client version {client_version} is not supported; this relay supports {}..={}",
                    SUPPORTED_CLIENT_VERSIONS.start(),
                    SUPPORTED_CLIENT_VERSIONS.end()
                )),
            },
            other => Message::Refused {
                reason: RefuseReason::Unsupported,
                detail: Detail::truncate(&format!("expected Hello, got {}", other.message_type())),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POLICY: AdmitPolicy = AdmitPolicy {
        mtu: 1340,
        lifetime: Duration::from_secs(600),
    };
    const ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    fn admitted(tunnel_addr: Ipv4Addr, mtu: u16, lifetime_secs: u32) -> Message {
        Message::Admitted {
            tunnel_addr,
            mtu,
            lifetime_secs,
        }
    }

    #[test]
    fn client_and_relay_complete_setup_over_the_wire() {
        let (expect, hello) = ClientSetup::new(CLIENT_VERSION).start();
        assert_eq!(
            hello,
            Message::Hello {
                client_version: CLIENT_VERSION
            }
        );
        let received = Message::decode(&hello.encode()).unwrap();
        let reply = POLICY.respond(&received, ADDR);
        let admission = expect
            .handle(Message::decode(&reply.encode()).unwrap())
            .unwrap();
        assert_eq!(
            admission,
            Admission {
                tunnel_addr: ADDR,
                mtu: 1340,
                lifetime: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn refusal_is_reported_with_reason_and_detail() {
        let (expect, _) = ClientSetup::new(CLIENT_VERSION).start();
        let detail = Detail::new("full").unwrap();
        let err = expect
            .handle(Message::Refused {
                reason: RefuseReason::Capacity,
                detail: detail.clone(),
            })
            .unwrap_err();
        assert_eq!(
            err,
            SetupError::Refused {
                reason: RefuseReason::Capacity,
                detail
            }
        );
        assert!(err.to_string().contains("try again later"), "{err}");
    }

    #[test]
    fn unexpected_message_is_rejected() {
        let (expect, hello) = ClientSetup::new(CLIENT_VERSION).start();
        assert_eq!(
            expect.handle(hello),
            Err(SetupError::UnexpectedMessage {
                expected: MessageType::Admitted,
                got: MessageType::Hello
            })
        );
    }

    #[test]
    fn mtu_outside_bounds_is_rejected() {
        for mtu in [0, 1279, 9001, u16::MAX] {
            let (expect, _) = ClientSetup::new(CLIENT_VERSION).start();
            assert_eq!(
                expect.handle(admitted(ADDR, mtu, 60)),
                Err(SetupError::MtuOutOfRange {
                    mtu,
                    min: 1280,
                    max: 9000
                })
            );
        }
        for mtu in [1280, 9000] {
            let (expect, _) = ClientSetup::new(CLIENT_VERSION).start();
            assert!(expect.handle(admitted(ADDR, mtu, 60)).is_ok());
        }
    }

    #[test]
    fn non_host_tunnel_addr_is_rejected() {
        for addr in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::LOCALHOST,
        ] {
            let (expect, _) = ClientSetup::new(CLIENT_VERSION).start();
            assert_eq!(
                expect.handle(admitted(addr, 1340, 60)),
                Err(SetupError::InvalidTunnelAddr { addr })
            );
        }
    }

    #[test]
    fn zero_lifetime_is_rejected() {
        let (expect, _) = ClientSetup::new(CLIENT_VERSION).start();
        assert_eq!(
            expect.handle(admitted(ADDR, 1340, 0)),
            Err(SetupError::ZeroLifetime)
        );
    }

    #[test]
    fn relay_refuses_unsupported_version() {
        let reply = POLICY.respond(&Message::Hello { client_version: 2 }, ADDR);
        let Message::Refused { reason, detail } = reply else {
            panic!("expected Refused, got {reply:?}");
        };
        assert_eq!(reason, RefuseReason::Unsupported);
        assert!(detail.as_str().contains("client version 2"), "{detail}");
    }

    #[test]
    fn relay_refuses_anything_but_hello() {
        let reply = POLICY.respond(&admitted(ADDR, 1340, 60), ADDR);
        assert!(matches!(
            reply,
            Message::Refused {
                reason: RefuseReason::Unsupported,
                ..
            }
        ));
    }

    #[test]
    fn relay_caps_lifetime_at_u32_seconds() {
        let policy = AdmitPolicy {
            mtu: 1340,
            lifetime: Duration::from_secs(u64::MAX),
        };
        assert_eq!(
            policy.respond(&Message::Hello { client_version: 1 }, ADDR),
            admitted(ADDR, 1340, u32::MAX)
        );
    }
}
