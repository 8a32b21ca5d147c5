//! Account messages between a client and the issuer, one per UDP datagram inside the
//! tunnel.
//!
//! ```text
//!  0         1       2             4
//!  +---------+-------+-------------+----------------------+
//!  | version | type  | body length | body (length bytes)  |
//!  |  (=1)   |       | (u16, BE)   |                      |
//!  +---------+-------+-------------+----------------------+
//! ```
//!
//! | type | message         | direction       | body                                   |
//! |------|-----------------|-----------------|----------------------------------------|
//! | 0x01 | CreateAccount   | client → issuer | empty                                  |
//! | 0x02 | RegisterStart   | client → issuer | account (16), registration request (32)|
//! | 0x03 | RegisterFinish  | client → issuer | account (16), registration upload (192)|
//! | 0x04 | LoginStart      | client → issuer | account (16), KE1 (96)                 |
//! | 0x05 | LoginFinish     | client → issuer | KE3 (64)                               |
//! | 0x81 | AccountCreated  | issuer → client | account (16)                           |
//! | 0x82 | RegisterStarted | issuer → client | registration response (64)             |
//! | 0x83 | Registered      | issuer → client | empty                                  |
//! | 0x84 | LoginStarted    | issuer → client | KE2 (320)                              |
//! | 0x85 | LoggedIn        | issuer → client | credit (u64)                           |
//! | 0x86 | Refused         | issuer → client | reason (u8), retry after minutes (u16), detail length (u8), detail (UTF-8, ≤ 200) |
//!
//! All integers are big-endian. Requests and responses use disjoint type numbers, so a
//! reflected datagram never decodes as the other direction. OPAQUE messages are those of
//! RFC 9807 §5 and §6 for [`Suite`]; decoding checks that their group elements are valid.
//! Every message is far below [`MAX_MESSAGE_LEN`], which keeps a datagram unfragmented.

#![deny(clippy::unwrap_used)]

use std::fmt;

use opaque_ke::generic_array::typenum::Unsigned;
use opaque_ke::{
    CredentialFinalization, CredentialFinalizationLen, CredentialRequest, CredentialRequestLen,
    CredentialResponse, CredentialResponseLen, RegistrationRequest, RegistrationRequestLen,
    RegistrationResponse, RegistrationResponseLen, RegistrationUpload, RegistrationUploadLen,
};
use thiserror::Error;

use crate::account_number::AccountNumber;
use crate::suite::Suite;

/// The wire format version this build reads and writes.
pub const VERSION: u8 = 1;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 4;

/// Largest message: 1200 bytes plus IPv6 and UDP headers fit the 1280-byte IPv6 minimum
/// MTU, so no account message is ever fragmented.
pub const MAX_MESSAGE_LEN: usize = 1200;

const ACCOUNT_LEN: usize = AccountNumber::LEN;
const REGISTRATION_REQUEST_LEN: usize = <RegistrationRequestLen<Suite> as Unsigned>::USIZE;
const REGISTRATION_RESPONSE_LEN: usize = <RegistrationResponseLen<Suite> as Unsigned>::USIZE;
const REGISTRATION_UPLOAD_LEN: usize = <RegistrationUploadLen<Suite> as Unsigned>::USIZE;
const KE1_LEN: usize = <CredentialRequestLen<Suite> as Unsigned>::USIZE;
const KE2_LEN: usize = <CredentialResponseLen<Suite> as Unsigned>::USIZE;
const KE3_LEN: usize = <CredentialFinalizationLen<Suite> as Unsigned>::USIZE;
/// Refused: reason, retry-after minutes, detail length.
const REFUSED_FIXED_LEN: usize = 1 + 2 + 1;

/// The longest body of any message.
const MAX_BODY: usize = {
    let bodies = [
        ACCOUNT_LEN + REGISTRATION_REQUEST_LEN,
        ACCOUNT_LEN + REGISTRATION_UPLOAD_LEN,
        ACCOUNT_LEN + KE1_LEN,
        KE3_LEN,
        REGISTRATION_RESPONSE_LEN,
        KE2_LEN,
        REFUSED_FIXED_LEN + Detail::MAX_LEN,
    ];
    let mut max = 0;
    let mut i = 0;
    while i < bodies.len() {
        if bodies[i] > max {
            max = bodies[i];
        }
        i += 1;
    }
    max
};
const _: () = assert!(HEADER_LEN + MAX_BODY <= MAX_MESSAGE_LEN);

/// What a client asks the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Asks for a fresh account number. The issuer draws it (uniform, checked unique) and
    /// reserves it for this source for a minute, during which only this source may
    /// register it.
    CreateAccount,
    /// OPAQUE registration, first message: the blinded password.
    RegisterStart {
        /// The number from `AccountCreated`.
        account: AccountNumber,
        /// OPRF blinded element (RFC 9807 §5.1).
        registration_request: RegistrationRequest<Suite>,
    },
    /// OPAQUE registration, last message: the record the issuer stores.
    RegisterFinish {
        /// The number being registered.
        account: AccountNumber,
        /// Client public key, masking key and envelope (RFC 9807 §5.1).
        registration_upload: RegistrationUpload<Suite>,
    },
    /// OPAQUE login, KE1.
    LoginStart {
        /// The account logging in; doubles as OPAQUE's credential identifier.
        account: AccountNumber,
        /// KE1 (RFC 9807 §6.1).
        credential_request: CredentialRequest<Suite>,
    },
    /// OPAQUE login, KE3: proves the client opened the envelope.
    LoginFinish {
        /// KE3 (RFC 9807 §6.1).
        credential_finalization: CredentialFinalization<Suite>,
    },
}

/// What the issuer answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A fresh account number, reserved for the asking source for a minute.
    AccountCreated {
        /// The number to register and to show the user.
        account: AccountNumber,
    },
    /// OPAQUE registration response (evaluated element and the issuer's public key).
    RegisterStarted {
        /// RFC 9807 §5.1; boxed, as its unpacked points are large.
        registration_response: Box<RegistrationResponse<Suite>>,
    },
    /// The record is stored durably; the account exists.
    Registered,
    /// KE2. For an unknown account it is built from a fake record and looks the same.
    LoginStarted {
        /// RFC 9807 §6.1; boxed because it is by far the largest message.
        credential_response: Box<CredentialResponse<Suite>>,
    },
    /// KE3 verified: this source is logged in to the account.
    LoggedIn {
        /// The account's credit at login, in units.
        credit: u64,
    },
    /// The request was not acted upon.
    Refused {
        /// What the client can do about it.
        reason: RefuseReason,
        /// Human-readable explanation.
        detail: Detail,
    },
}

/// Why the issuer refused, as a code the client can act on without reading the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The datagram did not decode; the client speaks another version.
    Malformed,
    /// Too many login attempts for this account or from this source, or too many new
    /// accounts from this source.
    RateLimited {
        /// When to try again, rounded up to whole minutes.
        retry_after_minutes: u16,
    },
    /// `RegisterStart`/`RegisterFinish` for a number not reserved for this source (none
    /// asked for, another source's, or older than a minute).
    NoPendingAccount,
    /// `LoginFinish` without a `LoginStart` from this source in the last minute.
    NoLoginInProgress,
    /// KE3 did not verify: wrong account number or password (indistinguishable on
    /// purpose).
    LoginFailed,
    /// Too many exchanges in progress at the issuer.
    Busy,
    /// The issuer could not store the change durably; nothing was changed.
    Unavailable,
}

impl RefuseReason {
    /// Whether trying again (later, or from the start of the exchange) can succeed.
    pub const fn retry_helps(self) -> bool {
        !matches!(self, Self::Malformed | Self::LoginFailed)
    }

    const fn code(self) -> u8 {
        match self {
            Self::Malformed => 1,
            Self::RateLimited { .. } => 2,
            Self::NoPendingAccount => 3,
            Self::NoLoginInProgress => 4,
            Self::LoginFailed => 5,
            Self::Busy => 6,
            Self::Unavailable => 7,
        }
    }

    const fn retry_after_minutes(self) -> u16 {
        match self {
            Self::RateLimited {
                retry_after_minutes,
            } => retry_after_minutes,
            _ => 0,
        }
    }

    fn from_wire(code: u8, minutes: u16) -> Result<Self, DecodeError> {
        let reason = match code {
            1 => Self::Malformed,
            2 => {
                return Ok(Self::RateLimited {
                    retry_after_minutes: minutes,
                })
            }
            3 => Self::NoPendingAccount,
            4 => Self::NoLoginInProgress,
            5 => Self::LoginFailed,
            6 => Self::Busy,
            7 => Self::Unavailable,
            got => return Err(DecodeError::UnknownRefuseReason { got }),
        };
        if minutes != 0 {
            return Err(DecodeError::UnexpectedRetryAfter { code, minutes });
        }
        Ok(reason)
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => {
                f.write_str("the issuer could not read the request; update the client")
            }
            Self::RateLimited {
                retry_after_minutes,
            } => write!(
                f,
                "too many attempts; try again in {retry_after_minutes} minute(s)"
            ),
            Self::NoPendingAccount => f.write_str(
                "no new account number is reserved for this connection (they expire after a \
                 minute); ask for a new account",
            ),
            Self::NoLoginInProgress => f.write_str(
                "no login is in progress on this connection (it expires after a minute); \
                 log in again",
            ),
            Self::LoginFailed => f.write_str("wrong account number or password"),
            Self::Busy => f.write_str("the issuer is busy; try again in a minute"),
            Self::Unavailable => {
                f.write_str("the issuer could not store the change; try again later")
            }
        }
    }
}

/// Human-readable refusal text, at most [`Detail::MAX_LEN`] bytes of UTF-8, so every
/// `Refused` can be encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Detail(String);

impl Detail {
    /// Longest detail in bytes.
    pub const MAX_LEN: usize = 200;

    /// Cuts `text` to at most [`Detail::MAX_LEN`] bytes at a character boundary, so the
    /// issuer can always refuse.
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

/// Why bytes are not an account message. Every variant means the peer speaks another
/// protocol or version (or the datagram was damaged): retrying the same bytes does not
/// help, updating the older side does.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed header.
    #[error(
        "account message is {len} bytes, shorter than the {header}-byte header; the \
         datagram was truncated or is not an OpenRelay account message"
    )]
    ShortHeader {
        /// Bytes received.
        len: usize,
        /// Header length.
        header: usize,
    },
    /// A wire version this build does not speak.
    #[error(
        "account message has wire version {got}, this build speaks version {supported}; \
         update the older side"
    )]
    UnsupportedVersion {
        /// Version in the message.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// Longer than any account message may be.
    #[error("account message is {len} bytes, more than the {max}-byte maximum")]
    Oversized {
        /// Bytes received.
        len: usize,
        /// Largest allowed message.
        max: usize,
    },
    /// The header announces more body than the datagram holds.
    #[error(
        "account message header announces a {declared}-byte body but only {available} \
         bytes follow; the datagram was truncated"
    )]
    Truncated {
        /// Body length from the header.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// Bytes after the announced body.
    #[error(
        "account message header announces a {declared}-byte body but {available} bytes \
         follow; trailing bytes are not allowed"
    )]
    TrailingBytes {
        /// Body length from the header.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// A type number that is not a request (when decoding requests) or not a response
    /// (when decoding responses).
    #[error("unknown account {direction} type {got:#04x}; update the older side")]
    UnknownType {
        /// "request" or "response".
        direction: &'static str,
        /// The type number found.
        got: u8,
    },
    /// A fixed-size body of the wrong size.
    #[error("{message} body is {got} bytes, expected {expected}")]
    BodyLength {
        /// The message type.
        message: &'static str,
        /// Body length found.
        got: usize,
        /// Its fixed length.
        expected: usize,
    },
    /// An OPAQUE field whose bytes are not a valid encoding (for example not a
    /// ristretto255 point).
    #[error("{message} carries an invalid {field}: not a valid RFC 9807 encoding")]
    InvalidField {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A refusal code this build does not know.
    #[error("unknown refusal reason {got}; update the client")]
    UnknownRefuseReason {
        /// The code found.
        got: u8,
    },
    /// A retry-after on a refusal that is not a rate limit.
    #[error(
        "refusal reason {code} carries a retry-after of {minutes} minutes; only rate limits do"
    )]
    UnexpectedRetryAfter {
        /// The reason code.
        code: u8,
        /// The retry-after found.
        minutes: u16,
    },
    /// The refusal's detail length disagrees with the body length.
    #[error("Refused announces a {declared}-byte detail but carries {available} bytes")]
    DetailLength {
        /// Detail length from the body.
        declared: usize,
        /// Bytes present.
        available: usize,
    },
    /// The refusal's detail is longer than [`Detail::MAX_LEN`].
    #[error("Refused detail is {len} bytes, more than the {max}-byte maximum")]
    DetailTooLong {
        /// Detail length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// The refusal's detail is not UTF-8.
    #[error("Refused detail is not UTF-8")]
    DetailNotUtf8,
}

mod kind {
    pub(super) const CREATE_ACCOUNT: u8 = 0x01;
    pub(super) const REGISTER_START: u8 = 0x02;
    pub(super) const REGISTER_FINISH: u8 = 0x03;
    pub(super) const LOGIN_START: u8 = 0x04;
    pub(super) const LOGIN_FINISH: u8 = 0x05;
    pub(super) const ACCOUNT_CREATED: u8 = 0x81;
    pub(super) const REGISTER_STARTED: u8 = 0x82;
    pub(super) const REGISTERED: u8 = 0x83;
    pub(super) const LOGIN_STARTED: u8 = 0x84;
    pub(super) const LOGGED_IN: u8 = 0x85;
    pub(super) const REFUSED: u8 = 0x86;
}

impl Request {
    /// The message's name, for errors and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::CreateAccount => "CreateAccount",
            Self::RegisterStart { .. } => "RegisterStart",
            Self::RegisterFinish { .. } => "RegisterFinish",
            Self::LoginStart { .. } => "LoginStart",
            Self::LoginFinish { .. } => "LoginFinish",
        }
    }

    /// The datagram for this request.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::CreateAccount => frame(kind::CREATE_ACCOUNT, &[]),
            Self::RegisterStart {
                account,
                registration_request,
            } => frame(
                kind::REGISTER_START,
                &[account.as_bytes(), &registration_request.serialize()],
            ),
            Self::RegisterFinish {
                account,
                registration_upload,
            } => frame(
                kind::REGISTER_FINISH,
                &[account.as_bytes(), &registration_upload.serialize()],
            ),
            Self::LoginStart {
                account,
                credential_request,
            } => frame(
                kind::LOGIN_START,
                &[account.as_bytes(), &credential_request.serialize()],
            ),
            Self::LoginFinish {
                credential_finalization,
            } => frame(kind::LOGIN_FINISH, &[&credential_finalization.serialize()]),
        }
    }

    /// Reads a request datagram; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (kind, body) = unframe(bytes)?;
        match kind {
            kind::CREATE_ACCOUNT => {
                Body::new("CreateAccount", body, 0)?;
                Ok(Self::CreateAccount)
            }
            kind::REGISTER_START => {
                let mut body = Body::new(
                    "RegisterStart",
                    body,
                    ACCOUNT_LEN + REGISTRATION_REQUEST_LEN,
                )?;
                Ok(Self::RegisterStart {
                    account: body.account()?,
                    registration_request: body.field(
                        "registration request",
                        REGISTRATION_REQUEST_LEN,
                        RegistrationRequest::deserialize,
                    )?,
                })
            }
            kind::REGISTER_FINISH => {
                let mut body = Body::new(
                    "RegisterFinish",
                    body,
                    ACCOUNT_LEN + REGISTRATION_UPLOAD_LEN,
                )?;
                Ok(Self::RegisterFinish {
                    account: body.account()?,
                    registration_upload: body.field(
                        "registration upload",
                        REGISTRATION_UPLOAD_LEN,
                        RegistrationUpload::deserialize,
                    )?,
                })
            }
            kind::LOGIN_START => {
                let mut body = Body::new("LoginStart", body, ACCOUNT_LEN + KE1_LEN)?;
                Ok(Self::LoginStart {
                    account: body.account()?,
                    credential_request: body.field(
                        "KE1",
                        KE1_LEN,
                        CredentialRequest::deserialize,
                    )?,
                })
            }
            kind::LOGIN_FINISH => {
                let mut body = Body::new("LoginFinish", body, KE3_LEN)?;
                Ok(Self::LoginFinish {
                    credential_finalization: body.field(
                        "KE3",
                        KE3_LEN,
                        CredentialFinalization::deserialize,
                    )?,
                })
            }
            got => Err(DecodeError::UnknownType {
                direction: "request",
                got,
            }),
        }
    }
}

impl Response {
    /// A refusal with the reason's standard text.
    pub fn refused(reason: RefuseReason) -> Self {
        Self::Refused {
            reason,
            detail: Detail::truncate(&reason.to_string()),
        }
    }

    /// The message's name, for errors and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::AccountCreated { .. } => "AccountCreated",
            Self::RegisterStarted { .. } => "RegisterStarted",
            Self::Registered => "Registered",
            Self::LoginStarted { .. } => "LoginStarted",
            Self::LoggedIn { .. } => "LoggedIn",
            Self::Refused { .. } => "Refused",
        }
    }

    /// The datagram for this response.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::AccountCreated { account } => frame(kind::ACCOUNT_CREATED, &[account.as_bytes()]),
            Self::RegisterStarted {
                registration_response,
            } => frame(
                kind::REGISTER_STARTED,
                &[&registration_response.serialize()],
            ),
            Self::Registered => frame(kind::REGISTERED, &[]),
            Self::LoginStarted {
                credential_response,
            } => frame(kind::LOGIN_STARTED, &[&credential_response.serialize()]),
            Self::LoggedIn { credit } => frame(kind::LOGGED_IN, &[&credit.to_be_bytes()]),
            Self::Refused { reason, detail } => {
                // Detail::MAX_LEN < 256, so the length fits a byte.
                let detail_len = [u8::try_from(detail.0.len()).unwrap_or(u8::MAX)];
                frame(
                    kind::REFUSED,
                    &[
                        &[reason.code()],
                        &reason.retry_after_minutes().to_be_bytes(),
                        &detail_len,
                        detail.0.as_bytes(),
                    ],
                )
            }
        }
    }

    /// Reads a response datagram; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (kind, body) = unframe(bytes)?;
        match kind {
            kind::ACCOUNT_CREATED => {
                let mut body = Body::new("AccountCreated", body, ACCOUNT_LEN)?;
                Ok(Self::AccountCreated {
                    account: body.account()?,
                })
            }
            kind::REGISTER_STARTED => {
                let mut body = Body::new("RegisterStarted", body, REGISTRATION_RESPONSE_LEN)?;
                Ok(Self::RegisterStarted {
                    registration_response: Box::new(body.field(
                        "registration response",
                        REGISTRATION_RESPONSE_LEN,
                        RegistrationResponse::deserialize,
                    )?),
                })
            }
            kind::REGISTERED => {
                Body::new("Registered", body, 0)?;
                Ok(Self::Registered)
            }
            kind::LOGIN_STARTED => {
                let mut body = Body::new("LoginStarted", body, KE2_LEN)?;
                Ok(Self::LoginStarted {
                    credential_response: Box::new(body.field(
                        "KE2",
                        KE2_LEN,
                        CredentialResponse::deserialize,
                    )?),
                })
            }
            kind::LOGGED_IN => {
                let mut body = Body::new("LoggedIn", body, 8)?;
                Ok(Self::LoggedIn {
                    credit: u64::from_be_bytes(body.array()?),
                })
            }
            kind::REFUSED => decode_refused(body),
            got => Err(DecodeError::UnknownType {
                direction: "response",
                got,
            }),
        }
    }
}

fn decode_refused(body: &[u8]) -> Result<Response, DecodeError> {
    let Some((fixed, detail)) = body.split_at_checked(REFUSED_FIXED_LEN) else {
        return Err(DecodeError::BodyLength {
            message: "Refused",
            got: body.len(),
            expected: REFUSED_FIXED_LEN,
        });
    };
    let mut fixed = Body::new("Refused", fixed, REFUSED_FIXED_LEN)?;
    let [code] = fixed.array()?;
    let minutes = u16::from_be_bytes(fixed.array()?);
    let [declared] = fixed.array()?;
    let declared = usize::from(declared);
    if declared != detail.len() {
        return Err(DecodeError::DetailLength {
            declared,
            available: detail.len(),
        });
    }
    if detail.len() > Detail::MAX_LEN {
        return Err(DecodeError::DetailTooLong {
            len: detail.len(),
            max: Detail::MAX_LEN,
        });
    }
    let text = std::str::from_utf8(detail).map_err(|_| DecodeError::DetailNotUtf8)?;
    Ok(Response::Refused {
        reason: RefuseReason::from_wire(code, minutes)?,
        detail: Detail(text.to_owned()),
    })
}

/// Header and body parts into one datagram.
fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body_len: usize = parts.iter().map(|part| part.len()).sum();
    // Bodies are bounded by MAX_BODY (checked at compile time), far below u16::MAX.
    let length = u16::try_from(body_len).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// Checks the header and returns the type and the exact body.
fn unframe(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::Oversized {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let Some((&[version, kind, len_hi, len_lo], body)) = bytes.split_first_chunk::<HEADER_LEN>()
    else {
        return Err(DecodeError::ShortHeader {
            len: bytes.len(),
            header: HEADER_LEN,
        });
    };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: version,
            supported: VERSION,
        });
    }
    let declared = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if declared > body.len() {
        return Err(DecodeError::Truncated {
            declared,
            available: body.len(),
        });
    }
    if declared < body.len() {
        return Err(DecodeError::TrailingBytes {
            declared,
            available: body.len(),
        });
    }
    Ok((kind, body))
}

/// A body whose length has been checked against its message's fixed length, read front
/// to back.
struct Body<'a> {
    message: &'static str,
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    fn new(message: &'static str, body: &'a [u8], expected: usize) -> Result<Self, DecodeError> {
        if body.len() != expected {
            return Err(DecodeError::BodyLength {
                message,
                got: body.len(),
                expected,
            });
        }
        Ok(Self {
            message,
            rest: body,
        })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let Some((head, rest)) = self.rest.split_at_checked(len) else {
            // Unreachable after `new` checked the total; reported rather than panicking.
            return Err(DecodeError::BodyLength {
                message: self.message,
                got: self.rest.len(),
                expected: len,
            });
        };
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn account(&mut self) -> Result<AccountNumber, DecodeError> {
        Ok(AccountNumber::from_bytes(self.array()?))
    }

    fn field<T, E>(
        &mut self,
        field: &'static str,
        len: usize,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<T, DecodeError> {
        let message = self.message;
        parse(self.take(len)?).map_err(|_| DecodeError::InvalidField { message, field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sizes_are_those_of_rfc_9807_for_ristretto255_sha512() {
        assert_eq!(REGISTRATION_REQUEST_LEN, 32);
        assert_eq!(REGISTRATION_RESPONSE_LEN, 64);
        assert_eq!(REGISTRATION_UPLOAD_LEN, 192);
        assert_eq!(KE1_LEN, 96);
        assert_eq!(KE2_LEN, 320);
        assert_eq!(KE3_LEN, 64);
    }

    #[test]
    fn header_errors_are_precise() {
        assert_eq!(
            Request::decode(&[1, 1]),
            Err(DecodeError::ShortHeader { len: 2, header: 4 })
        );
        assert_eq!(
            Request::decode(&[2, 1, 0, 0]),
            Err(DecodeError::UnsupportedVersion {
                got: 2,
                supported: 1
            })
        );
        assert_eq!(
            Request::decode(&[1, 1, 0, 1]),
            Err(DecodeError::Truncated {
                declared: 1,
                available: 0
            })
        );
        assert_eq!(
            Request::decode(&[1, 1, 0, 0, 9]),
            Err(DecodeError::TrailingBytes {
                declared: 0,
                available: 1
            })
        );
        assert_eq!(
            Request::decode(&[1, 0x83, 0, 0]),
            Err(DecodeError::UnknownType {
                direction: "request",
                got: 0x83
            })
        );
        assert_eq!(
            Response::decode(&[1, 0x01, 0, 0]),
            Err(DecodeError::UnknownType {
                direction: "response",
                got: 0x01
            })
        );
        assert_eq!(
            Request::decode(&vec![1; MAX_MESSAGE_LEN + 1]),
            Err(DecodeError::Oversized {
                len: 1201,
                max: 1200
            })
        );
        assert_eq!(
            Request::decode(&[1, 5, 0, 1, 0]),
            Err(DecodeError::BodyLength {
                message: "LoginFinish",
                got: 1,
                expected: 64
            })
        );
    }

    #[test]
    fn invalid_points_are_named() {
        // 0xff.. is not a canonical ristretto255 encoding.
        let mut bytes = vec![1, kind::REGISTER_START, 0, 48];
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&[0xff; 32]);
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeError::InvalidField {
                message: "RegisterStart",
                field: "registration request"
            })
        );
    }

    #[test]
    fn refusals_round_trip_and_are_checked() {
        let refused = Response::refused(RefuseReason::RateLimited {
            retry_after_minutes: 7,
        });
        let bytes = refused.encode();
        assert_eq!(Response::decode(&bytes), Ok(refused));
        assert_eq!(
            Response::decode(&[1, 0x86, 0, 4, 9, 0, 0, 0]),
            Err(DecodeError::UnknownRefuseReason { got: 9 })
        );
        assert_eq!(
            Response::decode(&[1, 0x86, 0, 4, 5, 0, 3, 0]),
            Err(DecodeError::UnexpectedRetryAfter {
                code: 5,
                minutes: 3
            })
        );
        assert_eq!(
            Response::decode(&[1, 0x86, 0, 5, 5, 0, 0, 2, b'x']),
            Err(DecodeError::DetailLength {
                declared: 2,
                available: 1
            })
        );
        assert_eq!(
            Response::decode(&[1, 0x86, 0, 5, 5, 0, 0, 1, 0xff]),
            Err(DecodeError::DetailNotUtf8)
        );
        let long = Detail::truncate(&"é".repeat(150));
        assert!(long.as_str().len() <= Detail::MAX_LEN);
    }
}
