//! Queues from the stack's task to the one task that takes new TCP flows or UDP datagrams
//! (terminate mode).
//!
//! They live in the stack's shared state, under the lock the task already holds when it
//! hands items over. A tokio channel allocates a block of 32 entries when it is made, 2.8 KiB
//! for these entries, and an egress runs a stack per session: two such channels were a third
//! of a session's stack. A lane holds no buffer until its first item.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{Inner, Shared, CHANNEL_DEPTH};

/// Items waiting for the receiver, and how to wake it.
pub(crate) struct Lane<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    /// A receiver has been handed out ([`super::StackHandle::incoming`] gives it once).
    taken: bool,
    /// No more items: the receiver is gone or the stack has stopped.
    closed: bool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            waker: None,
            taken: false,
            closed: false,
        }
    }
}

impl<T> Lane<T> {
    /// Queues `item` for the receiver, or gives it back when the lane is closed or full.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.closed || self.items.len() >= CHANNEL_DEPTH {
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
}

/// The receiving end of a lane: new TCP flows ([`IncomingTcp`]) or datagrams
/// ([`UdpDatagram`]) in the order the stack saw them. Dropping it refuses the flows still
/// waiting, and later ones.
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
        (self.lane)(&mut self.inner.lock()).items.pop_front()
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut shared = self.inner.lock();
        let lane = (self.lane)(&mut shared);
        if let Some(item) = lane.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if lane.closed {
            return Poll::Ready(None);
        }
        if !lane.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            lane.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> Drop for Incoming<T> {
    fn drop(&mut self) {
        let waiting = {
            let mut shared = self.inner.lock();
            let lane = (self.lane)(&mut shared);
            lane.close();
            mem::take(&mut lane.items)
        };
        // Refusing a waiting flow takes the lock again.
        drop(waiting);
    }
}

impl<T> std::fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}
