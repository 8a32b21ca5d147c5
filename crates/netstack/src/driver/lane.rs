//! Queues between the stack's task and others: new TCP flows and UDP datagrams from the task
//! to the one task that takes them (terminate mode), and packets from the tunnel into the
//! task ([`StackInput`]).
//!
//! They live in the stack's shared state, under the lock the task already holds when it
//! hands items over or takes them. A tokio channel allocates a block of 32 entries when it is
//! made (2.8 KiB for the incoming entries, 0.8 KiB for packets) and its shared part besides,
//! and an egress runs a stack per session. A lane holds no buffer until its first item.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{Inner, Shared, CHANNEL_DEPTH};
use crate::idle::ShrinkIfEmpty;

/// Items waiting for the receiver, and how to wake it.
pub(crate) struct Lane<T> {
    items: VecDeque<T>,
    /// Items beyond this many waiting are given back to the sender.
    depth: usize,
    waker: Option<Waker>,
    /// A receiver has been handed out ([`super::StackHandle::incoming`] gives it once).
    taken: bool,
    /// No more items: the receiver is gone or the stack has stopped.
    closed: bool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self::with_depth(CHANNEL_DEPTH)
    }
}

impl<T> Lane<T> {
    pub(crate) fn with_depth(depth: usize) -> Self {
        Self {
            items: VecDeque::new(),
            depth,
            waker: None,
            taken: false,
            closed: false,
        }
    }

    /// Queues `item` for the receiver, or gives it back when the lane is closed or full.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.closed || self.items.len() >= self.depth {
            return Err(item);
        }
        self.items.push_back(item);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Takes no more items and wakes the receiver, which gets those already waiting and then
    /// the end.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The items no receiver will take because none was ever handed out. For the caller to
    /// drop outside the lock.
    pub(crate) fn unclaimed(&mut self) -> VecDeque<T> {
        if self.taken {
            VecDeque::new()
        } else {
            mem::take(&mut self.items)
        }
    }

    /// Marks the receiver as handed out; false if it already was.
    pub(super) fn take_receiver(&mut self) -> bool {
        !mem::replace(&mut self.taken, true)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Everything waiting, with the queue's storage.
    pub(super) fn take_all(&mut self) -> VecDeque<T> {
        mem::take(&mut self.items)
    }

    /// Items the queue has room for without growing.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Gives back the queue's memory if it is empty.
    pub(super) fn shrink_idle(&mut self) {
        self.items.shrink_if_empty();
    }

    /// The next item if one is waiting.
    pub(super) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// The next item; `None` once the lane is closed and empty; otherwise waits.
    pub(super) fn poll_pop(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        if self.closed {
            return Poll::Ready(None);
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Closes the lane and takes what waits in it, for the caller to drop outside the lock.
    pub(super) fn drain(&mut self) -> VecDeque<T> {
        self.close();
        mem::take(&mut self.items)
    }
}

/// The receiving end of a lane: new TCP flows ([`IncomingTcp`](super::IncomingTcp)) or
/// datagrams ([`UdpDatagram`](crate::UdpDatagram)) in the order the stack saw them. Dropping
/// it refuses the flows still waiting, and later ones.
pub struct Incoming<T> {
    inner: Arc<Inner>,
    /// Where the items wait in the shared state.
    lane: fn(&mut Shared) -> &mut Lane<T>,
}

impl<T> Incoming<T> {
    pub(super) fn new(inner: Arc<Inner>, lane: fn(&mut Shared) -> &mut Lane<T>) -> Self {
        Self { inner, lane }
    }

    /// The next item; `None` once the stack has stopped and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        (self.lane)(&mut self.inner.lock()).pop()
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        (self.lane)(&mut self.inner.lock()).poll_pop(cx)
    }
}

impl<T> Drop for Incoming<T> {
    fn drop(&mut self) {
        let waiting = (self.lane)(&mut self.inner.lock()).drain();
        // Refusing a waiting flow takes the lock again.
        drop(waiting);
    }
}

impl<T> std::fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// Feeds packets from the tunnel to a stack started by [`super::spawn_fed`]. Dropping it
/// ends the stack's task once the packets already given are taken, as closing a channel
/// would.
pub struct StackInput {
    inner: Arc<Inner>,
}

impl StackInput {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Queues a packet for the stack and wakes its task. Gives the packet back when as many
    /// as the depth given to [`super::spawn_fed`] wait (drop it, as a full device queue
    /// would; TCP retransmits) or the stack has stopped.
    pub fn push(&self, packet: Vec<u8>) -> Result<(), Vec<u8>> {
        self.inner.lock().input.push(packet)
    }
}

impl Drop for StackInput {
    fn drop(&mut self) {
        self.inner.lock().input.close();
    }
}

impl std::fmt::Debug for StackInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackInput").finish_non_exhaustive()
    }
}
