// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.
//
// This file incorporates work covered by the following copyright and
// permission notice:
//
//   Copyright (c) Mullvad VPN AB. All rights reserved.
//   Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
//
// SPDX-License-Identifier: MPL-2.0

use crate::crypto::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use crate::{
    noise::errors::WireGuardError,
    noise::index_table::Index,
    packet::{Packet, WgData, WgDataHeader, WgKind},
};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use zerocopy::FromBytes;

/// The maximum number of transport data messages that may be sent or received under a single
/// session key, per section 6.2 of the [whitepaper](https://www.wireguard.com/papers/wireguard.pdf)
/// (`Reject-After-Messages = 2^64 - 2^13 - 1`).
/// Refusing to use a counter at or beyond this value guarantees the 64-bit AEAD nonce can never
/// wrap and reuse a nonce with the same key.
pub(super) const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

pub struct Session {
    pub(crate) receiving_index: Index,
    sending_index: u32,
    receiver: Key,
    sender: Key,
    sending_key_counter: AtomicU64,
    receiving_key_counter: Mutex<ReceivingKeyCounterValidator>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "Session: {}<- ->{}",
            self.receiving_index, self.sending_index
        )
    }
}

/// A ChaCha20-Poly1305 key, kept as its 32 bytes with ring (OpenRelay patch). ring's
/// `LessSafeKey` is 544 bytes, sized for the key schedule of AES-GCM, the other algorithm
/// it may hold, and a session holds two: half of its size. ChaCha20 has no key schedule,
/// so making the `LessSafeKey` for each message costs a copy of 32 bytes.
#[cfg(not(feature = "aws-lc-rs"))]
struct Key([u8; 32]);

#[cfg(not(feature = "aws-lc-rs"))]
impl Key {
    fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.0)
                .expect("32 bytes are a ChaCha20-Poly1305 key"),
        )
    }
}

/// With aws-lc-rs a key is a context allocated by the C library: made once per session.
#[cfg(feature = "aws-lc-rs")]
struct Key(LessSafeKey);

#[cfg(feature = "aws-lc-rs")]
impl Key {
    fn new(key: [u8; 32]) -> Self {
        Self(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &key)
                .expect("32 bytes are a ChaCha20-Poly1305 key"),
        ))
    }

    fn aead(&self) -> &LessSafeKey {
        &self.0
    }
}

// Receiving buffer constants
const WORD_SIZE: u64 = 64;
// 64*128 = 8192, matching the WireGuard replay window in both the Linux kernel and wireguard-go
const N_WORDS: u64 = 128;
const N_BITS: u64 = WORD_SIZE * N_WORDS;

#[derive(Debug, Clone)]
struct ReceivingKeyCounterValidator {
    /// In order to avoid replays while allowing for some reordering of the packets, we keep a
    /// bitmap of received packets, and the value of the highest counter
    next: u64,
    /// Used to estimate packet loss
    receive_cnt: u64,
    bitmap: [u64; N_WORDS as usize],
}

impl Default for ReceivingKeyCounterValidator {
    fn default() -> Self {
        // `derive(Default)` only covers arrays up to length 32, so implement it by hand.
        Self {
            next: 0,
            receive_cnt: 0,
            bitmap: [0u64; N_WORDS as usize],
        }
    }
}

impl ReceivingKeyCounterValidator {
    #[inline(always)]
    fn set_bit(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        self.bitmap[word] |= 1 << bit;
    }

    #[inline(always)]
    fn clear_bit(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        self.bitmap[word] &= !(1u64 << bit);
    }

    /// Clear the word that contains idx
    #[inline(always)]
    fn clear_word(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        self.bitmap[word] = 0;
    }

    /// Returns true if bit is set, false otherwise
    #[inline(always)]
    fn check_bit(&self, idx: u64) -> bool {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        ((self.bitmap[word] >> bit) & 1) == 1
    }

    /// Returns true if the counter was not yet received, and is not too far back
    #[inline(always)]
    fn will_accept(&self, counter: u64) -> Result<(), WireGuardError> {
        if counter >= self.next {
            // As long as the counter is growing no replay took place for sure
            return Ok(());
        }
        if counter + N_BITS < self.next {
            // Drop if too far back
            return Err(WireGuardError::InvalidCounter);
        }
        if self.check_bit(counter) {
            Err(WireGuardError::DuplicateCounter)
        } else {
            Ok(())
        }
    }

    /// Marks the counter as received, and returns true if it is still good (in case during
    /// decryption something changed)
    #[inline(always)]
    fn mark_did_receive(&mut self, counter: u64) -> Result<(), WireGuardError> {
        if counter + N_BITS < self.next {
            // Drop if too far back
            return Err(WireGuardError::InvalidCounter);
        }
        if counter == self.next {
            // Usually the packets arrive in order, in that case we simply mark the bit and
            // increment the counter
            self.set_bit(counter);
            self.next += 1;
            return Ok(());
        }
        if counter < self.next {
            // A packet arrived out of order, check if it is valid, and mark
            if self.check_bit(counter) {
                return Err(WireGuardError::InvalidCounter);
            }
            self.set_bit(counter);
            return Ok(());
        }
        // Packets where dropped, or maybe reordered, skip them and mark unused
        if counter - self.next >= N_BITS {
            // Too far ahead, clear all the bits
            for c in self.bitmap.iter_mut() {
                *c = 0;
            }
        } else {
            let mut i = self.next;
            while !i.is_multiple_of(WORD_SIZE) && i < counter {
                // Clear until i aligned to word size
                self.clear_bit(i);
                i += 1;
            }
            while i + WORD_SIZE < counter {
                // Clear whole word at a time
                self.clear_word(i);
                i = (i + WORD_SIZE) & 0u64.wrapping_sub(WORD_SIZE);
            }
            while i < counter {
                // Clear any remaining bits
                self.clear_bit(i);
                i += 1;
            }
        }
        self.set_bit(counter);
        self.next = counter + 1;
        Ok(())
    }
}

impl Session {
    pub(super) fn new(
        local_index: Index,
        sending_index: u32,
        receiving_key: [u8; 32],
        sending_key: [u8; 32],
    ) -> Session {
        Session {
            receiving_index: local_index,
            sending_index,
            receiver: Key::new(receiving_key),
            sender: Key::new(sending_key),
            sending_key_counter: AtomicU64::new(0),
            receiving_key_counter: Mutex::new(Default::default()),
        }
    }

    /// Returns true if receiving counter is good to use
    fn receiving_counter_quick_check(&self, counter: u64) -> Result<(), WireGuardError> {
        let counter_validator = self.receiving_key_counter.lock();
        counter_validator.will_accept(counter)
    }

    /// Returns true if receiving counter is good to use, and marks it as used {
    fn receiving_counter_mark(&self, counter: u64) -> Result<(), WireGuardError> {
        let mut counter_validator = self.receiving_key_counter.lock();
        let ret = counter_validator.mark_did_receive(counter);
        if ret.is_ok() {
            counter_validator.receive_cnt += 1;
        }
        ret
    }

    /// Test-only: fast-forward the sending counter so the `REJECT_AFTER_MESSAGES` limit can be
    /// exercised without actually sending billions of packets.
    #[cfg(test)]
    pub(super) fn set_sending_key_counter(&self, value: u64) {
        self.sending_key_counter.store(value, Ordering::Relaxed);
    }

    /// Encapsulate `packet` into a [`WgData`].
    ///
    /// Returns `Err(packet)` (the original, un-encapsulated packet) once the sending counter has
    /// reached `REJECT_AFTER_MESSAGES`: the session must then be replaced by a fresh handshake
    /// before more transport data can be sent, so the AEAD nonce can never wrap.
    pub(super) fn format_packet_data(&self, mut packet: Packet) -> Result<Packet<WgData>, Packet> {
        if self.is_exhausted() {
            return Err(packet);
        }
        let payload = packet.len();
        let len = WgData::OVERHEAD + payload;

        // The message is built in the packet's own buffer when it has room for the header and
        // tag (OpenRelay patch): the payload moves up by the header's length and is encrypted
        // where it lands, so a caller that hands in buffers with room allocates nothing per
        // message. Otherwise a buffer is allocated, as upstream does.
        let buf = if packet.buf_mut().capacity() >= len {
            let mut buf = packet;
            buf.buf_mut().resize(WgDataHeader::LEN + payload, 0);
            buf.copy_within(..payload, WgDataHeader::LEN);
            buf
        } else {
            let mut buf = BytesMut::with_capacity(len);
            buf.resize(WgDataHeader::LEN, 0);
            buf.extend_from_slice(&packet);
            Packet::from_bytes(buf)
        };
        Ok(self.seal(buf))
    }

    /// Like [`Session::format_packet_data`] for a packet that already sits behind
    /// [`WgDataHeader::LEN`] bytes of room for the header (OpenRelay patch): it is encrypted
    /// where it is, without moving. `Err` returns `placed` as it came.
    pub(super) fn format_placed_data(&self, placed: Packet) -> Result<Packet<WgData>, Packet> {
        if self.is_exhausted() {
            return Err(placed);
        }
        Ok(self.seal(placed))
    }

    /// Whether the sending counter has reached `REJECT_AFTER_MESSAGES`. Checked before the
    /// counter is incremented, so an exhausted counter is never advanced (and thus can never
    /// wrap back around to a previously used value).
    fn is_exhausted(&self) -> bool {
        self.sending_key_counter.load(Ordering::Relaxed) >= REJECT_AFTER_MESSAGES
    }

    /// Seals the payload behind the header's room in `buf`, which grows by the tag.
    fn seal(&self, mut buf: Packet) -> Packet<WgData> {
        let sending_key_counter = self.sending_key_counter.fetch_add(1, Ordering::Relaxed);
        let payload = buf.len() - WgDataHeader::LEN;
        buf.buf_mut().resize(WgData::OVERHEAD + payload, 0);

        let data = WgData::mut_from_bytes(buf.buf_mut())
            .expect("buffer size is at least WgData::OVERHEAD");

        // Initialize wireguard header.
        data.header = WgDataHeader::new()
            .with_receiver_idx(self.sending_index)
            .with_counter(sending_key_counter);
        debug_assert_eq!(payload, data.encrypted_encapsulated_packet_mut().len());

        let mut nonce = [0u8; 12];
        nonce[4..12].copy_from_slice(&sending_key_counter.to_le_bytes());

        // Encrypt the inner packet+padding in-place.
        let tag = self
            .sender
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[]),
                data.encrypted_encapsulated_packet_mut(),
            )
            .expect("encryption must succeed");

        data.tag_mut().copy_from_slice(tag.as_ref());

        // this won't panic since we've correctly initialized a WgData packet
        let packet = buf.try_into_wg().expect("is a wireguard packet");
        let WgKind::Data(packet) = packet else {
            unreachable!("is a wireguard data packet");
        };
        packet
    }

    /// Decapsulate `packet` and return the decrypted data.
    pub(super) fn receive_packet_data(
        &self,
        packet: Packet<WgData>,
    ) -> Result<Packet, WireGuardError> {
        if packet.header.receiver_idx.get() != self.receiving_index.value() {
            return Err(WireGuardError::WrongIndex);
        }

        let counter = packet.header.counter.get();

        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WireGuardError::ConnectionExpired);
        }

        // Don't reuse counters, in case this is a replay attack we want to quickly check the
        // counter without running expensive decryption
        self.receiving_counter_quick_check(counter)?;

        let mut nonce = [0u8; 12];
        nonce[4..12].copy_from_slice(&packet.header.counter.to_bytes());

        // Decrypt to the start of the buffer, over the header (OpenRelay patch): the cipher
        // writes each block where the one before it was read, so the packet starts where its
        // buffer does and a caller taking the buffer over (`Vec::from`) moves no bytes.
        // Upstream decrypted in place and advanced past the header.
        let mut packet = packet.into_bytes();
        let buf = packet.buf_mut();
        let decrypted_len = self
            .receiver
            .aead()
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[]),
                buf,
                WgDataHeader::LEN..,
            )
            .map_err(|_| WireGuardError::InvalidAeadTag)?
            .len();
        buf.truncate(decrypted_len);

        // After decryption is done, check counter again, and mark as received
        self.receiving_counter_mark(counter)?;
        Ok(packet)
    }

    /// Returns the estimated downstream packet loss for this session
    pub(super) fn current_packet_cnt(&self) -> (u64, u64) {
        let counter_validator = self.receiving_key_counter.lock();
        (counter_validator.next, counter_validator.receive_cnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::index_table::IndexTable;

    /// OpenRelay patch: a packet with room for the header and tag is sealed in its own buffer,
    /// one without room in a new buffer; both open to the bytes that went in.
    #[test]
    fn a_message_is_sealed_in_the_packets_buffer_when_it_has_room() {
        use zerocopy::IntoBytes;
        let table: IndexTable = IndexTable::from_os_rng();
        let key = [7u8; 32];
        let rx = Session::new(table.new_index(), 0, key, [0u8; 32]);
        let tx = Session::new(
            table.new_index(),
            rx.receiving_index.value(),
            [0u8; 32],
            key,
        );
        let payload: Vec<u8> = (0..100u8).collect();

        let mut roomy = BytesMut::with_capacity(payload.len() + WgData::OVERHEAD);
        roomy.extend_from_slice(&payload);
        let start = roomy.as_ptr();
        let in_place = tx.format_packet_data(Packet::from_bytes(roomy)).unwrap();
        assert_eq!(
            in_place.as_bytes().as_ptr(),
            start,
            "sealed where the packet was"
        );

        let tight = Packet::from_bytes(BytesMut::from(&payload[..]));
        let copied = tx.format_packet_data(tight).unwrap();
        assert_eq!(copied.as_bytes().len(), payload.len() + WgData::OVERHEAD);

        for sealed in [in_place, copied] {
            let opened = rx.receive_packet_data(sealed).unwrap();
            assert_eq!(&opened[..], &payload[..]);
        }
    }

    /// OpenRelay patch: a packet behind room for the header is sealed where it sits, to the
    /// same message a moved packet becomes; a message opens to the start of its buffer.
    #[test]
    fn a_placed_packet_is_sealed_where_it_sits_and_opens_at_its_buffers_start() {
        use zerocopy::IntoBytes;
        let table: IndexTable = IndexTable::from_os_rng();
        let key = [9u8; 32];
        let rx = Session::new(table.new_index(), 0, key, [0u8; 32]);
        // Two senders with the same key and counter: one is given the packet placed, the
        // other moves it up itself.
        let placing = Session::new(table.new_index(), rx.receiving_index.value(), [0; 32], key);
        let moving = Session::new(table.new_index(), rx.receiving_index.value(), [0; 32], key);
        let payload: Vec<u8> = (0..144u8).collect();

        let mut placed = BytesMut::with_capacity(payload.len() + WgData::OVERHEAD);
        placed.resize(WgDataHeader::LEN, 0xee);
        placed.extend_from_slice(&payload);
        let start = placed.as_ptr();
        let sealed = placing
            .format_placed_data(Packet::from_bytes(placed))
            .unwrap();
        assert_eq!(sealed.as_bytes().as_ptr(), start, "sealed where it sits");

        let mut roomy = BytesMut::with_capacity(payload.len() + WgData::OVERHEAD);
        roomy.extend_from_slice(&payload);
        let moved = moving
            .format_packet_data(Packet::from_bytes(roomy))
            .unwrap();
        assert_eq!(
            sealed.as_bytes(),
            moved.as_bytes(),
            "the same message either way"
        );

        let message_start = sealed.as_bytes().as_ptr();
        let opened = rx.receive_packet_data(sealed).unwrap();
        assert_eq!(&opened[..], &payload[..]);
        assert_eq!(
            opened.as_ptr(),
            message_start,
            "the packet starts where its buffer does"
        );
        let mut opened = opened;
        assert_eq!(
            std::mem::take(opened.buf_mut()).capacity(),
            payload.len() + WgData::OVERHEAD,
            "no bytes cut off in front"
        );
    }

    /// OpenRelay patch: a placed packet is refused, as it came, once the counter is spent.
    #[test]
    fn a_placed_packet_comes_back_unsealed_from_an_exhausted_session() {
        let session = test_session();
        session.set_sending_key_counter(REJECT_AFTER_MESSAGES);
        let mut placed = BytesMut::zeroed(WgDataHeader::LEN);
        placed.extend_from_slice(&[1, 2, 3, 4]);
        let Err(back) = session.format_placed_data(Packet::from_bytes(placed.clone())) else {
            panic!("an exhausted session seals nothing");
        };
        assert_eq!(&back[..], &placed[..]);
    }

    /// Build a `Session` with throwaway keys and a real receiving index.
    fn test_session() -> Session {
        let table: IndexTable = IndexTable::from_os_rng();
        Session::new(table.new_index(), 0, [0u8; 32], [0u8; 32])
    }

    /// Craft a (cryptographically invalid) `WgData` packet with a chosen receiver index and
    /// counter, for exercising the receive-path checks that run before decryption.
    fn make_data_packet(receiver_idx: u32, counter: u64) -> Packet<WgData> {
        let mut buf = Packet::from_bytes(BytesMut::zeroed(WgData::OVERHEAD));
        let data = WgData::mut_from_bytes(buf.buf_mut()).expect("buffer is WgData::OVERHEAD");
        data.header = WgDataHeader::new()
            .with_receiver_idx(receiver_idx)
            .with_counter(counter);
        let WgKind::Data(packet) = buf.try_into_wg().expect("is a wireguard packet") else {
            unreachable!("is a wireguard data packet");
        };
        packet
    }

    /// The receive path must reject a counter at/beyond REJECT_AFTER_MESSAGES before decryption,
    /// while a counter just below the limit is allowed past that check (and fails later at AEAD).
    #[test]
    fn test_receive_rejects_counter_at_reject_after_messages() {
        let session = test_session();
        let recv_idx = session.receiving_index.value();

        let over_limit = make_data_packet(recv_idx, REJECT_AFTER_MESSAGES);
        assert!(matches!(
            session.receive_packet_data(over_limit),
            Err(WireGuardError::ConnectionExpired)
        ));

        let in_limit = make_data_packet(recv_idx, REJECT_AFTER_MESSAGES - 1);
        assert!(matches!(
            session.receive_packet_data(in_limit),
            Err(WireGuardError::InvalidAeadTag)
        ));
    }

    #[test]
    fn test_replay_counter() {
        let mut c: ReceivingKeyCounterValidator = Default::default();

        assert!(c.mark_did_receive(0).is_ok());
        assert!(c.mark_did_receive(0).is_err());
        assert!(c.mark_did_receive(1).is_ok());
        assert!(c.mark_did_receive(1).is_err());
        assert!(c.mark_did_receive(63).is_ok());
        assert!(c.mark_did_receive(63).is_err());
        assert!(c.mark_did_receive(15).is_ok());
        assert!(c.mark_did_receive(15).is_err());

        for i in 64..N_BITS + 128 {
            assert!(c.mark_did_receive(i).is_ok());
            assert!(c.mark_did_receive(i).is_err());
        }

        assert!(c.mark_did_receive(N_BITS * 3).is_ok());
        for i in 0..=N_BITS * 2 {
            assert!(matches!(
                c.will_accept(i),
                Err(WireGuardError::InvalidCounter)
            ));
            assert!(c.mark_did_receive(i).is_err());
        }
        for i in N_BITS * 2 + 1..N_BITS * 3 {
            assert!(c.will_accept(i).is_ok());
        }
        assert!(matches!(
            c.will_accept(N_BITS * 3),
            Err(WireGuardError::DuplicateCounter)
        ));

        for i in (N_BITS * 2 + 1..N_BITS * 3).rev() {
            assert!(c.mark_did_receive(i).is_ok());
            assert!(c.mark_did_receive(i).is_err());
        }

        assert!(c.mark_did_receive(N_BITS * 3 + 70).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 71).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 72).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 72 + 125).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 63).is_ok());

        assert!(c.mark_did_receive(N_BITS * 3 + 70).is_err());
        assert!(c.mark_did_receive(N_BITS * 3 + 71).is_err());
        assert!(c.mark_did_receive(N_BITS * 3 + 72).is_err());
    }
}
