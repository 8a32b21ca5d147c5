//! Requests and responses as bytes: version, request id, kind, body.
//!
//! | kind | request           | body                                   |
//! |------|-------------------|----------------------------------------|
//! | 1    | Account           | an account message (OPAQUE, credit)    |
//! | 2    | Issue             | count (u8 ≤ 4), token requests (259 B) |
//!
//! | kind | response          | body                                          |
//! |------|-------------------|-----------------------------------------------|
//! | 1    | Account           | an account message                            |
//! | 2    | Issued            | balance (u64), count (u8), blind sigs (256 B) |
//! | 3    | Refused           | reason (u8), text (UTF-8, ≤ 200 bytes)        |

#![deny(clippy::unwrap_used)]

use token::{TokenRequest, TokenResponse, NK, REQUEST_LEN};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 1;
/// Most tokens in one request: their blind signatures fit one datagram.
pub const MAX_BATCH: usize = 4;
/// Largest account message carried.
const MAX_ACCOUNT_LEN: usize = 1200;
const MAX_TEXT_LEN: usize = 200;

/// A malformed request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its header or its declared contents.
    #[error("issuer message truncated: {0}")]
    Truncated(&'static str),
    /// Another protocol version.
    #[error("issuer protocol version {0}, this build speaks 1; update the older side")]
    Version(u8),
    /// An unknown kind number.
    #[error("unknown issuer message kind {0}")]
    Kind(u8),
    /// A count or length out of range, or trailing bytes.
    #[error("issuer message malformed: {0}")]
    Invalid(&'static str),
    /// A token request inside does not parse.
    #[error(transparent)]
    Token(#[from] token::WireError),
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client; a repeat gets the first answer again.
    pub id: u32,
    /// What is asked.
    pub body: RequestBody,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// An account message (registration, login, balance).
    Account(Vec<u8>),
    /// Sign these blinded tokens, paid from the logged-in account's credit.
    Issue(Vec<TokenRequest>),
}

/// The issuer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u32,
    /// The answer.
    pub body: ResponseBody,
}

/// What the issuer answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// An account message.
    Account(Vec<u8>),
    /// The blind signatures, in request order, and the credit left.
    Issued {
        /// Credit left after paying.
        balance: u64,
        /// One per token request.
        responses: Vec<TokenResponse>,
    },
    /// The request was not served.
    Refused {
        /// Why, as a number.
        reason: Refusal,
        /// Why, in words.
        text: String,
    },
}

/// Why the issuer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// The message does not parse.
    Malformed = 1,
    /// Issuance needs a logged-in account on this session.
    NotLoggedIn = 2,
    /// Not enough credit for the batch.
    InsufficientCredit = 3,
    /// The account reached its tokens for this epoch.
    BatchLimit = 4,
    /// A token request for another key than the current one.
    WrongKey = 5,
    /// Too many attempts; wait.
    RateLimited = 6,
    /// Something failed at the issuer.
    Internal = 7,
}

impl Refusal {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Malformed,
            2 => Self::NotLoggedIn,
            3 => Self::InsufficientCredit,
            4 => Self::BatchLimit,
            5 => Self::WrongKey,
            6 => Self::RateLimited,
            7 => Self::Internal,
            _ => return None,
        })
    }
}

fn header(id: u32, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 1100);
    out.push(VERSION);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(kind);
    out
}

/// Splits off the header: (id, kind, body).
fn split(bytes: &[u8]) -> Result<(u32, u8, &[u8]), WireError> {
    let Some((&[version, i0, i1, i2, i3, kind], body)) = bytes.split_first_chunk::<HEADER_LEN>()
    else {
        return Err(WireError::Truncated("header"));
    };
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    Ok((u32::from_be_bytes([i0, i1, i2, i3]), kind, body))
}

fn account(body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.is_empty() || body.len() > MAX_ACCOUNT_LEN {
        return Err(WireError::Invalid("account message length"));
    }
    Ok(body.to_vec())
}

/// A count byte followed by exactly `count` items of `len` bytes.
fn items(body: &[u8], len: usize) -> Result<Vec<&[u8]>, WireError> {
    let Some((&count, rest)) = body.split_first() else {
        return Err(WireError::Truncated("count"));
    };
    let count = usize::from(count);
    if count == 0 || count > MAX_BATCH {
        return Err(WireError::Invalid("batch size must be 1 to 4"));
    }
    if rest.len() != count * len {
        return Err(WireError::Invalid("batch length does not match its count"));
    }
    Ok(rest.chunks_exact(len).collect())
}

impl Request {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        match &self.body {
            RequestBody::Account(m) => {
                let mut out = header(self.id, 1);
                out.extend_from_slice(m);
                out
            }
            RequestBody::Issue(reqs) => {
                let mut out = header(self.id, 2);
                out.push(reqs.len() as u8);
                for r in reqs {
                    out.extend_from_slice(&r.encode());
                }
                out
            }
        }
    }

    /// Parses a request.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (id, kind, body) = split(bytes)?;
        let body = match kind {
            1 => RequestBody::Account(account(body)?),
            2 => RequestBody::Issue(
                items(body, REQUEST_LEN)?
                    .into_iter()
                    .map(TokenRequest::decode)
                    .collect::<Result<_, _>>()?,
            ),
            other => return Err(WireError::Kind(other)),
        };
        Ok(Self { id, body })
    }
}

impl Response {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        match &self.body {
            ResponseBody::Account(m) => {
                let mut out = header(self.id, 1);
                out.extend_from_slice(m);
                out
            }
            ResponseBody::Issued { balance, responses } => {
                let mut out = header(self.id, 2);
                out.extend_from_slice(&balance.to_be_bytes());
                out.push(responses.len() as u8);
                for r in responses {
                    out.extend_from_slice(&r.encode());
                }
                out
            }
            ResponseBody::Refused { reason, text } => {
                let mut out = header(self.id, 3);
                out.push(*reason as u8);
                let mut end = text.len().min(MAX_TEXT_LEN);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(text.get(..end).unwrap_or_default().as_bytes());
                out
            }
        }
    }

    /// Parses a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (id, kind, body) = split(bytes)?;
        let body = match kind {
            1 => ResponseBody::Account(account(body)?),
            2 => {
                let Some((b, rest)) = body.split_first_chunk::<8>() else {
                    return Err(WireError::Truncated("balance"));
                };
                ResponseBody::Issued {
                    balance: u64::from_be_bytes(*b),
                    responses: items(rest, NK)?
                        .into_iter()
                        .map(TokenResponse::decode)
                        .collect::<Result<_, _>>()?,
                }
            }
            3 => {
                let Some((&r, text)) = body.split_first() else {
                    return Err(WireError::Truncated("refusal reason"));
                };
                let reason = Refusal::from_u8(r).ok_or(WireError::Invalid("refusal reason"))?;
                if text.len() > MAX_TEXT_LEN {
                    return Err(WireError::Invalid("refusal text too long"));
                }
                let text = std::str::from_utf8(text)
                    .map_err(|_| WireError::Invalid("refusal text is not UTF-8"))?
                    .to_string();
                ResponseBody::Refused { reason, text }
            }
            other => return Err(WireError::Kind(other)),
        };
        Ok(Self { id, body })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let req = Request {
            id: 7,
            body: RequestBody::Issue(vec![
                TokenRequest {
                    truncated_key_id: 3,
                    blinded_msg: [5; NK]
                };
                4
            ]),
        };
        assert_eq!(Request::decode(&req.encode()), Ok(req));
        let resp = Response {
            id: 7,
            body: ResponseBody::Issued {
                balance: 12,
                responses: vec![TokenResponse { blind_sig: [6; NK] }; 4],
            },
        };
        let bytes = resp.encode();
        assert!(bytes.len() <= 1392, "fits one tunnel datagram");
        assert_eq!(Response::decode(&bytes), Ok(resp));
        let refused = Response {
            id: 1,
            body: ResponseBody::Refused {
                reason: Refusal::BatchLimit,
                text: "limit".into(),
            },
        };
        assert_eq!(Response::decode(&refused.encode()), Ok(refused));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert_eq!(
            Request::decode(&[1, 0, 0]),
            Err(WireError::Truncated("header"))
        );
        assert_eq!(
            Request::decode(&[2, 0, 0, 0, 0, 1, 1]),
            Err(WireError::Version(2))
        );
        assert_eq!(
            Request::decode(&[1, 0, 0, 0, 0, 9, 1]),
            Err(WireError::Kind(9))
        );
        assert!(matches!(
            Request::decode(&[1, 0, 0, 0, 0, 2, 5]),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            Request::decode(&[1, 0, 0, 0, 0, 1]),
            Err(WireError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn account_messages_round_trip(id: u32, m in proptest::collection::vec(any::<u8>(), 1..1200)) {
            let r = Request { id, body: RequestBody::Account(m.clone()) };
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
            let r = Response { id, body: ResponseBody::Account(m) };
            prop_assert_eq!(Response::decode(&r.encode()), Ok(r));
        }
    }
}
