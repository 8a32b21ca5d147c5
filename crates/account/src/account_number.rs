//! Account numbers: 128 random bits, the account's only identifier.
//!
//! Shown to the user once, as 28 Crockford base32 characters in groups of four,
//! `0ABC-DEFG-HJKM-NPQR-STVW-XYZ0-12AB`: 26 characters carry the 128 bits (the first one
//! only 3 of them, so it is 0 to 7) and the last 2 are check characters.
//!
//! The check characters matter more here than usual: an issuer answers a login for an
//! unknown account exactly like one for a known account with the wrong password (that is
//! what keeps accounts unenumerable), so a mistyped number would otherwise look like a
//! wrong password. They are a Reed-Solomon code over GF(32) with distance 3, which
//! detects every single mistyped character and every swap of two characters, whatever
//! the number.

#![deny(clippy::unwrap_used)]

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Crockford's base32 alphabet: digits and letters without I, L, O and U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters that carry the number's bits.
const DATA_SYMBOLS: usize = 26;
/// Characters in the written form, not counting dashes.
const SYMBOLS: usize = DATA_SYMBOLS + 2;
/// Characters per dash-separated group.
const GROUP: usize = 4;

/// A user's account number: 16 bytes from a CSPRNG, never derived from the password.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountNumber([u8; AccountNumber::LEN]);

impl AccountNumber {
    /// Length in bytes, on the wire and in the store.
    pub const LEN: usize = 16;

    /// Draws a fresh number; the issuer does this (see [`crate::Request::CreateAccount`])
    /// so that numbers are uniform and unique.
    pub fn random(rng: &mut impl rand::CryptoRng) -> Self {
        let mut bytes = [0; Self::LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps bytes received on the wire or read from the store.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes, as they go on the wire and into the OPAQUE credential identifier.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Reads the written form. Case, dashes and spaces do not matter, and O, I and L are
    /// read as 0, 1 and 1 (Crockford), since people confuse them.
    pub fn parse(text: &str) -> Result<Self, ParseAccountError> {
        let mut symbols = [0u8; SYMBOLS];
        let mut count = 0;
        for (position, ch) in text.chars().enumerate() {
            if ch == '-' || ch.is_whitespace() {
                continue;
            }
            let value =
                symbol_value(ch).ok_or(ParseAccountError::InvalidCharacter { ch, position })?;
            if let Some(slot) = symbols.get_mut(count) {
                *slot = value;
            }
            count += 1;
        }
        if count != SYMBOLS {
            return Err(ParseAccountError::WrongLength {
                got: count,
                expected: SYMBOLS,
            });
        }
        if syndromes(&symbols) != (0, 0) {
            return Err(ParseAccountError::Mistyped);
        }
        let mut value: u128 = 0;
        for (index, &symbol) in symbols.iter().take(DATA_SYMBOLS).enumerate() {
            if index == 0 && symbol >= 8 {
                return Err(ParseAccountError::FirstCharacterTooLarge);
            }
            value = (value << 5) | u128::from(symbol);
        }
        Ok(Self(value.to_be_bytes()))
    }

    /// The 28 symbols (values 0 to 31) of the written form, check characters last.
    fn symbols(&self) -> [u8; SYMBOLS] {
        let value = u128::from_be_bytes(self.0);
        let mut symbols = [0u8; SYMBOLS];
        for (index, slot) in symbols.iter_mut().take(DATA_SYMBOLS).enumerate() {
            let shift = 5 * (DATA_SYMBOLS - 1 - index);
            // Masked to 5 bits, so the cast keeps everything.
            *slot = ((value >> shift) & 0x1f) as u8;
        }
        let (check_low, check_high) = check_symbols(&symbols);
        symbols[DATA_SYMBOLS] = check_low;
        symbols[DATA_SYMBOLS + 1] = check_high;
        symbols
    }
}

impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, &symbol) in self.symbols().iter().enumerate() {
            if index > 0 && index % GROUP == 0 {
                f.write_str("-")?;
            }
            let ch = ALPHABET.get(usize::from(symbol)).copied().unwrap_or(b'?');
            write!(f, "{}", char::from(ch))?;
        }
        Ok(())
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountNumber({self})")
    }
}

impl FromStr for AccountNumber {
    type Err = ParseAccountError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Why a written account number was not accepted. None of these reach the issuer:
/// the user should retype the number from where it was saved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseAccountError {
    /// A character outside Crockford's base32 (and not a dash or space).
    #[error(
        "account number has an invalid character {ch:?} at position {position}; \
         account numbers use only the digits 0-9 and the letters A-Z without U"
    )]
    InvalidCharacter {
        /// The character found.
        ch: char,
        /// Its position in the text, counting from 0.
        position: usize,
    },
    /// Too few or too many characters.
    #[error(
        "account number has {got} characters (not counting dashes and spaces), \
         expected {expected}; check that all of it was copied"
    )]
    WrongLength {
        /// Characters found.
        got: usize,
        /// Characters in every account number.
        expected: usize,
    },
    /// The check characters do not match.
    #[error(
        "account number does not check out: a character is mistyped or two are \
         swapped; compare it with the saved copy"
    )]
    Mistyped,
    /// The first character is 8 or more, which no account number has.
    #[error(
        "account number starts with a character above 7, which no account number \
         does; compare it with the saved copy"
    )]
    FirstCharacterTooLarge,
}

fn symbol_value(ch: char) -> Option<u8> {
    let upper = match ch.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    let byte = u8::try_from(upper).ok()?;
    let index = ALPHABET.iter().position(|&c| c == byte)?;
    u8::try_from(index).ok()
}

// The check characters. Symbol `j` of the written form is the coefficient at position
// `e(j)` of a codeword over GF(32) whose syndromes at α and α² are zero: data symbols sit
// at positions 2..28 and the two check symbols at positions 0 and 1. Positions are
// distinct powers of α (which has order 31), so this is a (generalized) Reed-Solomon code
// with minimum distance 3: any one or two changed symbols give a nonzero syndrome.

/// GF(32) with the primitive polynomial x^5 + x^2 + 1; α = x = 2.
mod gf32 {
    const POLY: u16 = 0b10_0101;

    /// α^i for i in 0..62, so products need no reduction mod 31.
    pub(super) const EXP: [u8; 62] = {
        let mut table = [0u8; 62];
        let mut value: u16 = 1;
        let mut i = 0;
        while i < 62 {
            table[i] = value as u8;
            value <<= 1;
            if value & 0b10_0000 != 0 {
                value ^= POLY;
            }
            i += 1;
        }
        table
    };

    /// log_α of 1..32 (index 0 unused).
    const LOG: [u8; 32] = {
        let mut table = [0u8; 32];
        let mut i = 0;
        while i < 31 {
            table[EXP[i] as usize] = i as u8;
            i += 1;
        }
        table
    };

    fn log(a: u8) -> usize {
        usize::from(LOG[usize::from(a & 0x1f)])
    }

    pub(super) fn mul(a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            return 0;
        }
        EXP[log(a) + log(b)]
    }

    /// `a / b` for nonzero `b`.
    pub(super) fn div(a: u8, b: u8) -> u8 {
        if a == 0 {
            return 0;
        }
        EXP[log(a) + 31 - log(b)]
    }

    /// α^e for any e.
    pub(super) fn pow_alpha(e: usize) -> u8 {
        EXP[e % 31]
    }
}

/// Codeword position of written symbol `j`.
fn position(j: usize) -> usize {
    (j + 2) % SYMBOLS
}

/// Sums of `symbol · α^(k·position)` over the data symbols, for k = 1 and 2.
fn data_sums(symbols: &[u8; SYMBOLS]) -> (u8, u8) {
    symbols
        .iter()
        .take(DATA_SYMBOLS)
        .enumerate()
        .fold((0, 0), |(s1, s2), (j, &symbol)| {
            let e = position(j);
            (
                s1 ^ gf32::mul(symbol, gf32::pow_alpha(e)),
                s2 ^ gf32::mul(symbol, gf32::pow_alpha(2 * e)),
            )
        })
}

/// The check symbols (positions 0 and 1) that make both syndromes zero:
/// `c0 + c1·α = A` and `c0 + c1·α² = B` (characteristic 2: minus is plus).
fn check_symbols(symbols: &[u8; SYMBOLS]) -> (u8, u8) {
    let (a, b) = data_sums(symbols);
    let alpha = gf32::pow_alpha(1);
    let alpha2 = gf32::pow_alpha(2);
    let c1 = gf32::div(a ^ b, alpha ^ alpha2);
    let c0 = a ^ gf32::mul(c1, alpha);
    (c0, c1)
}

/// Both syndromes of a full written number; (0, 0) for a valid one.
fn syndromes(symbols: &[u8; SYMBOLS]) -> (u8, u8) {
    symbols
        .iter()
        .enumerate()
        .fold((0, 0), |(s1, s2), (j, &symbol)| {
            let e = position(j);
            (
                s1 ^ gf32::mul(symbol, gf32::pow_alpha(e)),
                s2 ^ gf32::mul(symbol, gf32::pow_alpha(2 * e)),
            )
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn field_tables_are_a_field() {
        // α generates all 31 nonzero elements.
        let mut seen = [false; 32];
        for &value in gf32::EXP.iter().take(31) {
            assert!(!seen[usize::from(value)], "α has order 31");
            seen[usize::from(value)] = true;
        }
        assert!(!seen[0]);
        for a in 1..32u8 {
            for b in 1..32u8 {
                assert_eq!(gf32::div(gf32::mul(a, b), b), a);
            }
        }
    }

    #[test]
    fn written_form_has_groups_and_check_characters() {
        let number = AccountNumber::from_bytes([0xff; 16]);
        let text = number.to_string();
        assert_eq!(text.len(), 7 * 4 + 6);
        assert!(text.starts_with("7ZZZ-"), "{text}");
        assert_eq!(text.split('-').count(), 7);
        assert_eq!(AccountNumber::parse(&text), Ok(number));
        let zero = AccountNumber::from_bytes([0; 16]);
        assert_eq!(zero.to_string(), "0000-0000-0000-0000-0000-0000-0000");
    }

    #[test]
    fn lenient_reading() {
        let number = AccountNumber::from_bytes(*b"openrelay-acct-1");
        let text = number.to_string();
        let sloppy = text.to_lowercase().replace('-', " ").replace('0', "o");
        assert_eq!(AccountNumber::parse(&sloppy), Ok(number));
        assert_eq!(AccountNumber::parse(&text.replace('-', "")), Ok(number));
    }

    #[test]
    fn precise_errors() {
        let text = AccountNumber::from_bytes([1; 16]).to_string();
        assert_eq!(
            AccountNumber::parse(&text[..text.len() - 1]),
            Err(ParseAccountError::WrongLength {
                got: 27,
                expected: 28
            })
        );
        assert_eq!(
            AccountNumber::parse("0000-U000"),
            Err(ParseAccountError::InvalidCharacter {
                ch: 'U',
                position: 5
            })
        );
        // A valid codeword whose first symbol is 8: built by hand.
        let mut symbols = [0u8; SYMBOLS];
        symbols[0] = 8;
        let (c0, c1) = check_symbols(&symbols);
        symbols[DATA_SYMBOLS] = c0;
        symbols[DATA_SYMBOLS + 1] = c1;
        let text: String = symbols
            .iter()
            .map(|&s| char::from(ALPHABET[usize::from(s)]))
            .collect();
        assert_eq!(
            AccountNumber::parse(&text),
            Err(ParseAccountError::FirstCharacterTooLarge)
        );
    }

    fn retype(text: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut symbols: Vec<u8> = text.bytes().filter(|&b| b != b'-').collect();
        edit(&mut symbols);
        String::from_utf8(symbols).expect("ascii")
    }

    proptest! {
        #[test]
        fn written_form_round_trips(bytes in any::<[u8; 16]>()) {
            let number = AccountNumber::from_bytes(bytes);
            prop_assert_eq!(AccountNumber::parse(&number.to_string()), Ok(number));
        }

        #[test]
        fn every_single_typo_is_caught(
            bytes in any::<[u8; 16]>(),
            at in 0..SYMBOLS,
            other in 0..31usize,
        ) {
            let text = AccountNumber::from_bytes(bytes).to_string();
            let typo = retype(&text, |symbols| {
                let current = ALPHABET.iter().position(|&c| c == symbols[at]).expect("alphabet");
                // Any of the 31 other characters.
                symbols[at] = ALPHABET[(current + 1 + other) % 32];
            });
            prop_assert!(AccountNumber::parse(&typo).is_err(), "{} accepted", typo);
        }

        #[test]
        fn every_swap_is_caught(
            bytes in any::<[u8; 16]>(),
            at in 0..SYMBOLS - 1,
            gap in 1..SYMBOLS,
        ) {
            let text = AccountNumber::from_bytes(bytes).to_string();
            let other = (at + gap) % SYMBOLS;
            let swapped = retype(&text, |symbols| symbols.swap(at, other));
            let original = retype(&text, |_| {});
            prop_assume!(swapped != original);
            prop_assert!(AccountNumber::parse(&swapped).is_err(), "{} accepted", swapped);
        }

        #[test]
        fn parse_never_panics(text in ".{0,64}") {
            let _ = AccountNumber::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_misses(text in "[0-9A-Za-z -]{20,40}") {
            let _ = AccountNumber::parse(&text);
        }
    }
}
