//! Whole exchanges between the client states and the issuer, in memory with a simulated
//! clock. Every message goes through its encoding, and a [`Wire`] records what crosses.
//! The KSF runs with cheap Argon2 parameters (production ones take seconds in debug).

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::client::{ClientError, ClientLogin, ClientRegistration, ExpectAccountCreated, LoggedIn};
use crate::server::{Change, CreditError, Limits, Server, SourceId};
use crate::state::State;
use crate::wire::{RefuseReason, Request, Response};
use crate::AccountNumber;

pub(super) const PASSWORD: &[u8] = "Zebra-Quartz-7f3a 🐎 correct horse".as_bytes();

/// The transport: encodes, hands bytes to the issuer, decodes, and keeps every datagram
/// the client sent and received.
pub(super) struct Wire {
    pub(super) server: Server,
    pub(super) now: u64,
    pub(super) sent: Vec<Vec<u8>>,
    pub(super) received: Vec<Vec<u8>>,
}

impl Wire {
    pub(super) fn new() -> Self {
        Self::with_server(Server::new(
            State::generate(&mut StdRng::seed_from_u64(1)),
            [2; 32],
        ))
    }

    pub(super) fn with_limits(limits: Limits) -> Self {
        Self::with_server(Server::with_limits(
            State::generate(&mut StdRng::seed_from_u64(1)),
            limits,
            [2; 32],
        ))
    }

    pub(super) fn with_server(server: Server) -> Self {
        Self {
            server,
            now: 1_700_000_000,
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    pub(super) fn exchange(&mut self, source: SourceId, request: Request) -> Response {
        let bytes = request.encode();
        assert!(bytes.len() <= crate::wire::MAX_MESSAGE_LEN);
        self.sent.push(bytes.clone());
        let reply = self.server.handle_bytes(self.now, source, &bytes);
        let bytes = reply.response.encode();
        assert!(bytes.len() <= crate::wire::MAX_MESSAGE_LEN);
        self.received.push(bytes.clone());
        Response::decode(&bytes).expect("issuer's response decodes")
    }

    pub(super) fn register(
        &mut self,
        rng: &mut StdRng,
        source: SourceId,
        password: &[u8],
    ) -> AccountNumber {
        let (expect, request) = ExpectAccountCreated::start();
        let account = expect
            .finish(self.exchange(source, request))
            .expect("account");
        let (registration, request) =
            ClientRegistration::start_cheap(rng, account, password).expect("start");
        let response = self.exchange(source, request);
        let (expect, request) = registration.finish(rng, response).expect("finish");
        let reply = self.server.handle(self.now, source, request.clone());
        assert_eq!(reply.change, Some(Change::Registered(account)));
        self.sent.push(request.encode());
        expect.finish(reply.response).expect("registered")
    }

    pub(super) fn login(
        &mut self,
        rng: &mut StdRng,
        source: SourceId,
        account: AccountNumber,
        password: &[u8],
    ) -> Result<LoggedIn, ClientError> {
        let (login, request) = ClientLogin::start_cheap(rng, account, password)?;
        let response = self.exchange(source, request);
        let (expect, request) = login.finish(rng, response)?;
        let response = self.exchange(source, request);
        expect.finish(response)
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

const ALICE: SourceId = SourceId(1);
const BOB: SourceId = SourceId(2);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn refusal(response: &Response) -> Option<RefuseReason> {
    match response {
        Response::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

/// A LoginStart for `account` with a throwaway client.
fn login_start(
    wire: &mut Wire,
    rng: &mut StdRng,
    source: SourceId,
    account: AccountNumber,
) -> Response {
    let (_, request) = ClientLogin::start_cheap(rng, account, b"guess").expect("start");
    wire.exchange(source, request)
}

/// A LoginStart for a fresh random (unregistered) account.
fn login_start_unknown(wire: &mut Wire, rng: &mut StdRng, source: SourceId) -> Response {
    let account = AccountNumber::random(rng);
    login_start(wire, rng, source, account)
}

#[test]
fn register_and_login_agree_on_the_session_key() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    assert_eq!(wire.server.balance(account), Some(0));
    assert_eq!(wire.server.logged_in(ALICE), None);

    let logged_in = wire
        .login(&mut rng, ALICE, account, PASSWORD)
        .expect("login");
    assert_eq!(logged_in.account, account);
    assert_eq!(logged_in.credit, 0);
    let session = wire.server.session(ALICE).expect("issuer logged ALICE in");
    assert_eq!(session.account, account);
    assert_eq!(
        session.session_key.as_bytes(),
        logged_in.session_key.as_bytes()
    );
    assert_eq!(wire.server.logged_in(ALICE), Some(account));
    assert_eq!(wire.server.logged_in(BOB), None);

    // Another login derives another key.
    let again = wire.login(&mut rng, BOB, account, PASSWORD).expect("login");
    assert_ne!(
        again.session_key.as_bytes(),
        logged_in.session_key.as_bytes()
    );

    assert_eq!(wire.server.logout(ALICE), Some(account));
    assert_eq!(wire.server.logged_in(ALICE), None);
    assert_eq!(wire.server.logged_in(BOB), Some(account));
}

#[test]
fn wrong_password_fails_at_the_client_and_logs_nobody_in() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let err = wire
        .login(&mut rng, BOB, account, b"not the password")
        .expect_err("wrong password");
    assert_eq!(err, ClientError::WrongCredentials);
    assert_eq!(wire.server.logged_in(BOB), None);

    // A client that sends a KE3 anyway (it cannot compute a valid one) is refused.
    let response = login_start(&mut wire, &mut rng, BOB, account);
    assert!(matches!(response, Response::LoginStarted { .. }));
    let forged = Request::decode(&[[1, 5, 0, 64].as_slice(), &[0x42; 64]].concat()).expect("KE3");
    let response = wire.exchange(BOB, forged);
    assert_eq!(refusal(&response), Some(RefuseReason::LoginFailed));
    assert_eq!(wire.server.logged_in(BOB), None);
}

#[test]
fn the_password_never_crosses_the_wire() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    wire.login(&mut rng, ALICE, account, PASSWORD)
        .expect("login");
    let _ = wire.login(&mut rng, ALICE, account, b"Zebra-Quartz-7f3a wrong");
    assert_eq!(
        wire.sent.len(),
        6,
        "3 to register, 2 to log in, 1 failed login"
    );
    for bytes in wire.sent.iter().chain(&wire.received) {
        assert!(!contains(bytes, PASSWORD));
        // Nor any 8-byte piece of it.
        for piece in PASSWORD.windows(8) {
            assert!(!contains(bytes, piece), "{piece:?} crossed the wire");
        }
    }
}

#[test]
fn unknown_account_gets_a_ke2_like_a_real_one() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let unknown = AccountNumber::random(&mut rng);

    let real = login_start(&mut wire, &mut rng, BOB, account);
    let real_len = wire.received.last().expect("sent").len();
    let fake = login_start(&mut wire, &mut rng, BOB, unknown);
    let fake_len = wire.received.last().expect("sent").len();
    assert!(matches!(real, Response::LoginStarted { .. }));
    assert!(matches!(fake, Response::LoginStarted { .. }));
    assert_eq!(real_len, fake_len);
    assert_eq!(fake_len, 4 + 320);

    // Even with the right password the flow fails, at the client's envelope check.
    let err = wire
        .login(&mut rng, BOB, unknown, PASSWORD)
        .expect_err("unknown account");
    assert_eq!(err, ClientError::WrongCredentials);
    assert_eq!(wire.server.logged_in(BOB), None);
}

#[test]
fn login_attempts_are_limited_per_account() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let unknown = AccountNumber::random(&mut rng);
    let base = wire.now;
    // Different sources, so only the account limit applies; a known and an unknown
    // account behave the same.
    for (round, target) in [account, unknown].into_iter().enumerate() {
        let start = base + 10_000 * round as u64;
        wire.now = start;
        for i in 0..5 {
            let response = login_start(&mut wire, &mut rng, SourceId(100 + i), target);
            assert!(
                matches!(response, Response::LoginStarted { .. }),
                "attempt {i}"
            );
        }
        let response = login_start(&mut wire, &mut rng, SourceId(200), target);
        assert_eq!(
            refusal(&response),
            Some(RefuseReason::RateLimited {
                retry_after_minutes: 10
            })
        );
        let Response::Refused { detail, .. } = &response else {
            unreachable!()
        };
        assert!(detail.as_str().contains("this account"), "{detail}");
        assert!(detail.as_str().contains("10 minute"), "{detail}");
        wire.now = start + 599;
        let response = login_start(&mut wire, &mut rng, SourceId(201), target);
        assert_eq!(
            refusal(&response),
            Some(RefuseReason::RateLimited {
                retry_after_minutes: 1
            })
        );
        if target == account {
            // Even the right password is refused for the rest of the window.
            let err = wire
                .login(&mut rng, SourceId(201), account, PASSWORD)
                .expect_err("still limited");
            assert!(
                matches!(
                    err,
                    ClientError::Refused {
                        reason: RefuseReason::RateLimited { .. },
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        wire.now = start + 600;
        let response = login_start(&mut wire, &mut rng, SourceId(202), target);
        assert!(matches!(response, Response::LoginStarted { .. }));
    }
}

#[test]
fn login_attempts_are_limited_per_source() {
    let mut wire = Wire::new();
    let mut rng = rng();
    for i in 0..20 {
        let response = login_start_unknown(&mut wire, &mut rng, ALICE);
        assert!(
            matches!(response, Response::LoginStarted { .. }),
            "attempt {i}"
        );
    }
    let response = login_start_unknown(&mut wire, &mut rng, ALICE);
    assert_eq!(
        refusal(&response),
        Some(RefuseReason::RateLimited {
            retry_after_minutes: 10
        })
    );
    let Response::Refused { detail, .. } = &response else {
        unreachable!()
    };
    assert!(detail.as_str().contains("this connection"), "{detail}");
    // Other sources are not affected.
    let response = login_start_unknown(&mut wire, &mut rng, BOB);
    assert!(matches!(response, Response::LoginStarted { .. }));
    wire.now += 600;
    let response = login_start_unknown(&mut wire, &mut rng, ALICE);
    assert!(matches!(response, Response::LoginStarted { .. }));
}

#[test]
fn successful_logins_give_their_attempt_back() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    for i in 0..8 {
        wire.login(&mut rng, ALICE, account, PASSWORD)
            .unwrap_or_else(|err| panic!("login {i}: {err}"));
    }
    // Every success refunded its attempt, but guesses (LoginStarts that never succeed)
    // still count: 5 of them fill the window.
    for _ in 0..5 {
        let _ = wire.login(&mut rng, BOB, account, b"guess");
    }
    let err = wire
        .login(&mut rng, ALICE, account, PASSWORD)
        .expect_err("limited after 5 guesses");
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
}

#[test]
fn a_login_in_progress_expires_after_a_minute() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);

    let (login, request) = ClientLogin::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = wire.exchange(ALICE, request);
    let (_, request) = login.finish(&mut rng, response).expect("KE3");
    wire.now += 60;
    let response = wire.exchange(ALICE, request);
    assert_eq!(refusal(&response), Some(RefuseReason::NoLoginInProgress));
    assert_eq!(wire.server.logged_in(ALICE), None);

    let (login, request) = ClientLogin::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = wire.exchange(ALICE, request);
    let (expect, request) = login.finish(&mut rng, response).expect("KE3");
    wire.now += 59;
    let response = wire.exchange(ALICE, request);
    expect.finish(response).expect("in time");
    assert_eq!(wire.server.logged_in(ALICE), Some(account));
}

#[test]
fn login_state_belongs_to_its_source() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let (login, request) = ClientLogin::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let response = wire.exchange(ALICE, request);
    let (_, request) = login.finish(&mut rng, response).expect("KE3");
    // KE3 from another source finds no login there.
    let response = wire.exchange(BOB, request.clone());
    assert_eq!(refusal(&response), Some(RefuseReason::NoLoginInProgress));
    assert_eq!(wire.server.logged_in(BOB), None);
    // And it is single use.
    let response = wire.exchange(ALICE, request.clone());
    assert!(matches!(response, Response::LoggedIn { .. }));
    let response = wire.exchange(ALICE, request);
    assert_eq!(refusal(&response), Some(RefuseReason::NoLoginInProgress));
}

#[test]
fn registration_needs_this_sources_fresh_reservation() {
    let mut wire = Wire::new();
    let mut rng = rng();
    // A number of the client's choosing.
    let chosen = AccountNumber::random(&mut rng);
    let (_, request) = ClientRegistration::start_cheap(&mut rng, chosen, PASSWORD).expect("start");
    assert_eq!(
        refusal(&wire.exchange(ALICE, request)),
        Some(RefuseReason::NoPendingAccount)
    );
    // Another source's reservation.
    let (expect, request) = ExpectAccountCreated::start();
    let account = expect
        .finish(wire.exchange(ALICE, request))
        .expect("created");
    let (_, request) = ClientRegistration::start_cheap(&mut rng, account, PASSWORD).expect("start");
    assert_eq!(
        refusal(&wire.exchange(BOB, request.clone())),
        Some(RefuseReason::NoPendingAccount)
    );
    // An expired one.
    wire.now += 60;
    assert_eq!(
        refusal(&wire.exchange(ALICE, request)),
        Some(RefuseReason::NoPendingAccount)
    );
    // A registered number cannot be registered again.
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let (registration, request) =
        ClientRegistration::start_cheap(&mut rng, account, b"takeover").expect("start");
    let response = wire.exchange(ALICE, request);
    assert_eq!(refusal(&response), Some(RefuseReason::NoPendingAccount));
    let err = registration
        .finish(&mut rng, response)
        .expect_err("refused");
    assert!(matches!(
        err,
        ClientError::Refused {
            reason: RefuseReason::NoPendingAccount,
            ..
        }
    ));
    wire.login(&mut rng, ALICE, account, PASSWORD)
        .expect("original password");
}

#[test]
fn account_numbers_are_fresh_and_creation_is_limited() {
    let mut wire = Wire::new();
    let mut numbers = Vec::new();
    for _ in 0..3 {
        let (expect, request) = ExpectAccountCreated::start();
        numbers.push(
            expect
                .finish(wire.exchange(ALICE, request))
                .expect("created"),
        );
    }
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 3);
    let response = wire.exchange(ALICE, Request::CreateAccount);
    assert!(matches!(
        refusal(&response),
        Some(RefuseReason::RateLimited { .. })
    ));
    assert!(matches!(
        wire.exchange(BOB, Request::CreateAccount),
        Response::AccountCreated { .. }
    ));
}

#[test]
fn pending_state_is_bounded() {
    let mut wire = Wire::with_limits(Limits {
        max_pending: 2,
        ..Limits::default()
    });
    let mut rng = rng();
    for source in [SourceId(1), SourceId(2)] {
        let response = login_start_unknown(&mut wire, &mut rng, source);
        assert!(matches!(response, Response::LoginStarted { .. }));
    }
    let response = login_start_unknown(&mut wire, &mut rng, SourceId(3));
    assert_eq!(refusal(&response), Some(RefuseReason::Busy));
    // A source that already has a login in progress may restart it.
    let response = login_start_unknown(&mut wire, &mut rng, SourceId(1));
    assert!(matches!(response, Response::LoginStarted { .. }));
    // Expired logins are swept, which frees room.
    wire.now += 61;
    let response = login_start_unknown(&mut wire, &mut rng, SourceId(3));
    assert!(matches!(response, Response::LoginStarted { .. }));
}

#[test]
fn credit_and_spend() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let server = &mut wire.server;
    assert_eq!(server.credit(account, 10), Ok(10));
    assert_eq!(server.spend(account, 3), Ok(7));
    assert_eq!(
        server.spend(account, 8),
        Err(CreditError::InsufficientCredit {
            balance: 7,
            requested: 8
        })
    );
    assert_eq!(server.balance(account), Some(7));
    assert_eq!(
        server.credit(account, u64::MAX),
        Err(CreditError::Overflow {
            balance: 7,
            units: u64::MAX
        })
    );
    assert_eq!(server.balance(account), Some(7));
    let unknown = AccountNumber::random(&mut rng);
    assert_eq!(
        server.credit(unknown, 1),
        Err(CreditError::UnknownAccount(unknown))
    );
    assert_eq!(
        server.spend(unknown, 0),
        Err(CreditError::UnknownAccount(unknown))
    );
    assert_eq!(server.balance(unknown), None);
    assert_eq!(server.spend(account, 7), Ok(0));
    assert_eq!(server.credit(account, 5), Ok(5));
    let logged_in = wire
        .login(&mut rng, ALICE, account, PASSWORD)
        .expect("login");
    assert_eq!(logged_in.credit, 5);
}

#[test]
fn revert_undoes_a_registration() {
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    wire.server.revert(&Change::Registered(account));
    assert_eq!(wire.server.balance(account), None);
    let err = wire
        .login(&mut rng, ALICE, account, PASSWORD)
        .expect_err("gone");
    assert_eq!(err, ClientError::WrongCredentials);
}

#[test]
fn undecodable_datagrams_are_refused_with_the_reason() {
    let mut wire = Wire::new();
    let reply = wire
        .server
        .handle_bytes(wire.now, ALICE, &[1, 4, 0, 3, 1, 2, 3]);
    assert!(reply.change.is_none());
    let Response::Refused { reason, detail } = reply.response else {
        panic!("refused")
    };
    assert_eq!(reason, RefuseReason::Malformed);
    assert!(
        detail.as_str().contains("LoginStart body is 3 bytes"),
        "{detail}"
    );
}

#[test]
fn client_reports_refusals_and_unexpected_responses() {
    let mut rng = rng();
    let account = AccountNumber::random(&mut rng);
    let (login, _) = ClientLogin::start_cheap(&mut rng, account, PASSWORD).expect("start");
    let err = login
        .finish(&mut rng, Response::Registered)
        .expect_err("unexpected");
    assert_eq!(
        err,
        ClientError::UnexpectedResponse {
            expected: "LoginStarted",
            got: "Registered"
        }
    );
    assert_eq!(
        ClientLogin::start_cheap(&mut rng, account, b"")
            .map(|_| ())
            .expect_err("empty"),
        ClientError::PasswordEmpty
    );
    assert_eq!(
        ClientLogin::start_cheap(&mut rng, account, &[b'x'; 1025])
            .map(|_| ())
            .expect_err("long"),
        ClientError::PasswordTooLong {
            len: 1025,
            max: 1024
        }
    );
}

#[test]
fn the_ksf_parameters_are_part_of_the_password() {
    // Registered with cheap Argon2 parameters, the same password under the production
    // parameters derives another key: proves the KSF (and its parameters) is applied.
    let mut wire = Wire::new();
    let mut rng = rng();
    let account = wire.register(&mut rng, ALICE, PASSWORD);
    let (login, request) = ClientLogin::start(&mut rng, account, PASSWORD).expect("start");
    let response = wire.exchange(ALICE, request);
    let err = login
        .finish(&mut rng, response)
        .expect_err("other parameters");
    assert_eq!(err, ClientError::WrongCredentials);
}
