//! Which of many sockets polled by one event loop may have datagrams: each socket's
//! waker puts its key (a session, a flow) on a list and wakes the loop, so that the loop
//! reads the sockets where datagrams wait, in its own turn, instead of a task per socket.
//! The socket lives in its waker ([`Polled`]): one allocation per socket for both.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// The list of keys whose sockets were woken, and the loop to wake.
pub(super) struct Ready<K> {
    state: Mutex<State<K>>,
}

struct State<K> {
    woken: Vec<K>,
    /// The event loop, while it waits.
    waiting: Option<Waker>,
}

impl<K> Default for Ready<K> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                woken: Vec::new(),
                waiting: None,
            }),
        }
    }
}

impl<K: Copy> Ready<K> {
    /// Takes a socket to be polled by the loop, listed at once: the loop's first read of
    /// it registers its waker. A wake puts `id` on the list; later ones do nothing until
    /// the loop takes it off ([`Ready::take`]) and unlists it.
    pub(super) fn add<S>(self: &Arc<Self>, id: K, socket: S) -> Arc<Polled<K, S>> {
        let polled = Arc::new(Polled {
            id,
            ready: Arc::clone(self),
            listed: AtomicBool::new(false),
            inner: socket,
        });
        polled.list();
        polled
    }

    /// Waits until a key is on the list.
    pub(super) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.woken.is_empty() {
            state.waiting = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Moves the listed keys into `into` (which keeps its capacity between turns).
    pub(super) fn take(&self, into: &mut Vec<K>) {
        into.append(&mut self.lock().woken);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A socket the loop polls (with what the loop keeps beside it), and its waker.
pub(super) struct Polled<K, S> {
    id: K,
    ready: Arc<Ready<K>>,
    /// On the list, not yet taken off: more wakes add nothing.
    listed: AtomicBool,
    inner: S,
}

impl<K, S> std::ops::Deref for Polled<K, S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.inner
    }
}

impl<K: Copy, S> Polled<K, S> {
    /// Lists the key as if its socket had been woken: a new socket, and one that gave
    /// datagrams and may have more, are read in the loop's next turn.
    pub(super) fn list(&self) {
        if self.listed.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiting = {
            let mut state = self.ready.lock();
            state.woken.push(self.id);
            state.waiting.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
    }

    /// Takes the key off the list before its socket is read: a wake from then on lists
    /// it again.
    pub(super) fn unlist(&self) {
        self.listed.store(false, Ordering::Release);
    }
}

impl<K: Copy + Send + Sync + 'static, S: Send + Sync + 'static> Polled<K, S> {
    /// The loop's read of a listed socket: takes it off the list, polls `recv` with the
    /// socket's own waker, and lists it again when the read gave datagrams (more may wait)
    /// or an error (a readiness left set would wake no one). `Pending` registered the
    /// waker, which lists the socket once something comes.
    pub(super) fn read<T>(
        self: &Arc<Self>,
        recv: impl FnOnce(&S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.unlist();
        let waker = Waker::from(Arc::clone(self));
        let got = recv(&self.inner, &mut Context::from_waker(&waker));
        if got.is_ready() {
            self.list();
        }
        got
    }
}

impl<K: Copy, S> Wake for Polled<K, S> {
    fn wake(self: Arc<Self>) {
        self.list();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.list();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::table::SessionId;

    #[test]
    fn a_session_is_listed_once_until_taken_and_wakes_the_waiting_loop() {
        let ready = Arc::new(Ready::default());
        let loop_woken = Arc::new(Counted::default());
        let loop_waker = Waker::from(Arc::clone(&loop_woken));
        let mut cx = Context::from_waker(&loop_waker);
        assert!(ready.poll_woken(&mut cx).is_pending());

        let a = ready.add(SessionId(1), ());
        let b = ready.add(SessionId(2), ());
        assert_eq!(loop_woken.count(), 1, "added sockets are listed");
        let mut taken = Vec::new();
        ready.take(&mut taken);
        assert_eq!(taken, vec![SessionId(1), SessionId(2)]);
        taken.clear();
        a.unlist();
        b.unlist();
        assert!(ready.poll_woken(&mut cx).is_pending());

        let wa = Waker::from(Arc::clone(&a));
        wa.wake_by_ref();
        wa.wake_by_ref();
        Waker::from(Arc::clone(&b)).wake();
        assert_eq!(loop_woken.count(), 2, "the loop is woken once per wait");
        assert!(ready.poll_woken(&mut cx).is_ready());

        ready.take(&mut taken);
        assert_eq!(taken, vec![SessionId(1), SessionId(2)]);
        assert!(ready.poll_woken(&mut cx).is_pending());

        // Still listed until unlisted: a wake adds nothing.
        wa.wake_by_ref();
        ready.take(&mut taken);
        assert_eq!(taken.len(), 2);
        a.unlist();
        wa.wake_by_ref();
        ready.take(&mut taken);
        assert_eq!(taken, vec![SessionId(1), SessionId(2), SessionId(1)]);
        assert_eq!(loop_woken.count(), 3);
    }

    #[derive(Default)]
    struct Counted(std::sync::atomic::AtomicUsize);

    impl Counted {
        fn count(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
