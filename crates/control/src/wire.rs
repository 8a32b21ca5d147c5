//! The control frame: a typed view over a datagram's bytes (smoltcp `wire` style).
//!
//! ```text
//!  0      2         3       4             6
//!  +------+---------+-------+-------------+----------------------+
//!  | "OR" | version | type  | body length | body (length bytes)  |
//!  |      |  (=1)   |       | (u16, BE)   |                      |
//!  +------+---------+-------+-------------+----------------------+
//! ```
//!
//! The datagram must hold exactly the header and the announced body, and at most
//! [`MAX_FRAME_LEN`] bytes. [`Frame::new_checked`] proves that once, so the accessors can
//! index without further checks. What the body means is [`crate::Message`]'s concern.

#![deny(clippy::unwrap_used)]

use crate::error::DecodeError;

/// First two bytes of every frame, so stray datagrams are told apart from control frames.
pub const MAGIC: [u8; 2] = *b"OR";

/// The wire format version this build reads and writes.
pub const VERSION: u8 = 1;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 6;

/// Largest frame, so a control datagram never needs fragmenting: 1200 bytes plus IPv6 and
/// UDP headers fit the 1280-byte IPv6 minimum MTU.
pub const MAX_FRAME_LEN: usize = 1200;

/// Largest body that fits in [`MAX_FRAME_LEN`].
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

mod field {
    use std::ops::{Range, RangeFrom};

    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const TYPE: usize = 3;
    pub(super) const LENGTH: Range<usize> = 4..6;
    pub(super) const BODY: RangeFrom<usize> = 6..;
}

/// A control frame over a buffer whose header and length have been (or will be) checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it, for building a frame in place; reading an
    /// unchecked frame whose buffer is shorter than [`HEADER_LEN`] panics.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a received buffer after checking magic, version and length, so that the
    /// accessors cannot fail on untrusted bytes.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, DecodeError> {
        let frame = Frame::new_unchecked(buffer);
        frame.check()?;
        Ok(frame)
    }

    /// Checks everything [`Frame::new_checked`] promises, in wire order.
    pub fn check(&self) -> Result<(), DecodeError> {
        let data = self.buffer.as_ref();
        let (Some(magic), Some(&version), Some(length)) = (
            data.get(field::MAGIC),
            data.get(field::VERSION),
            data.get(field::LENGTH),
        ) else {
            return Err(DecodeError::ShortHeader {
                len: data.len(),
                header: HEADER_LEN,
            });
        };
        if magic != MAGIC {
            let mut got = [0; 2];
            got.copy_from_slice(magic);
            return Err(DecodeError::BadMagic { got });
        }
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                got: version,
                supported: VERSION,
            });
        }
        if data.len() > MAX_FRAME_LEN {
            return Err(DecodeError::Oversized {
                len: data.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let declared = usize::from(u16::from_be_bytes([length[0], length[1]]));
        let available = data.len() - HEADER_LEN;
        if declared > available {
            return Err(DecodeError::Truncated {
                declared,
                available,
            });
        }
        if declared < available {
            return Err(DecodeError::TrailingBytes {
                declared,
                available,
            });
        }
        Ok(())
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The wire format version (always [`VERSION`] once checked).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The message type number; [`crate::MessageType`] says which are assigned.
    pub fn message_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The body length announced by the header (equal to `body().len()` once checked).
    pub fn body_len(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[field::LENGTH.start], data[field::LENGTH.start + 1]])
    }

    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[field::BODY]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Writes magic and [`VERSION`], so a frame built in place always carries both.
    pub fn set_header(&mut self, message_type: u8, body_len: u16) {
        let data = self.buffer.as_mut();
        data[field::MAGIC].copy_from_slice(&MAGIC);
        data[field::VERSION] = VERSION;
        data[field::TYPE] = message_type;
        data[field::LENGTH].copy_from_slice(&body_len.to_be_bytes());
    }

    /// The message body, for writing.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::BODY]
    }
}

/// Total frame length for a body of `body_len` bytes, so callers can size buffers.
pub const fn frame_len(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(version: u8, ty: u8, declared: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'O', b'R', version, ty];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn accessors_read_a_checked_frame() {
        let bytes = frame(1, 3, 2, &[7, 8]);
        let f = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!(f.version(), 1);
        assert_eq!(f.message_type(), 3);
        assert_eq!(f.body_len(), 2);
        assert_eq!(f.body(), &[7, 8]);
    }

    #[test]
    fn set_header_writes_a_frame_that_checks() {
        let mut buf = vec![0u8; frame_len(3)];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_header(1, 3);
        f.body_mut().copy_from_slice(b"abc");
        let f = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.body(), b"abc");
    }

    #[test]
    fn short_header() {
        for len in 0..HEADER_LEN {
            let bytes = &frame(1, 1, 0, &[])[..len];
            assert_eq!(
                Frame::new_checked(bytes),
                Err(DecodeError::ShortHeader {
                    len,
                    header: HEADER_LEN
                })
            );
        }
    }

    #[test]
    fn bad_magic() {
        let mut bytes = frame(1, 1, 0, &[]);
        bytes[1] = b'X';
        assert_eq!(
            Frame::new_checked(&bytes[..]),
            Err(DecodeError::BadMagic { got: *b"OX" })
        );
    }

    #[test]
    fn wrong_version() {
        let bytes = frame(2, 1, 0, &[]);
        assert_eq!(
            Frame::new_checked(&bytes[..]),
            Err(DecodeError::UnsupportedVersion {
                got: 2,
                supported: 1
            })
        );
    }

    #[test]
    fn body_shorter_than_declared() {
        let bytes = frame(1, 1, 3, &[0, 1]);
        assert_eq!(
            Frame::new_checked(&bytes[..]),
            Err(DecodeError::Truncated {
                declared: 3,
                available: 2
            })
        );
    }

    #[test]
    fn body_longer_than_declared() {
        let bytes = frame(1, 1, 1, &[0, 1]);
        assert_eq!(
            Frame::new_checked(&bytes[..]),
            Err(DecodeError::TrailingBytes {
                declared: 1,
                available: 2
            })
        );
    }

    #[test]
    fn largest_frame_is_accepted_and_one_more_byte_is_not() {
        let body = vec![0u8; MAX_BODY_LEN];
        let bytes = frame(1, 3, MAX_BODY_LEN as u16, &body);
        assert!(Frame::new_checked(&bytes[..]).is_ok());

        let body = vec![0u8; MAX_BODY_LEN + 1];
        let bytes = frame(1, 3, (MAX_BODY_LEN + 1) as u16, &body);
        assert_eq!(
            Frame::new_checked(&bytes[..]),
            Err(DecodeError::Oversized {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
    }
}
