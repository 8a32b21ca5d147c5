//! Which of many sockets polled by one event loop may have datagrams: each socket's
//! waker puts its session on a list and wakes the loop, so that the loop reads the
//! sockets where datagrams wait, in its own turn, instead of a task per socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::table::SessionId;

/// The list of sessions whose sockets were woken, and the loop to wake.
#[derive(Default)]
pub(super) struct Ready {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    woken: Vec<SessionId>,
    /// The event loop, while it waits.
    waiting: Option<Waker>,
}

impl Ready {
    /// A waker for one session's socket. Its first wake puts the session on the list;
    /// later ones do nothing until the loop takes the session off ([`Ready::take`]).
    pub(super) fn waker(self: &Arc<Self>, id: SessionId) -> Arc<SocketWaker> {
        Arc::new(SocketWaker {
            id,
            ready: Arc::clone(self),
            listed: AtomicBool::new(false),
        })
    }

    /// Waits until a session is on the list.
    pub(super) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.woken.is_empty() {
            state.waiting = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Moves the listed sessions into `into` (which keeps its capacity between turns).
    pub(super) fn take(&self, into: &mut Vec<SessionId>) {
        into.append(&mut self.lock().woken);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wakes the event loop for one session's socket.
pub(super) struct SocketWaker {
    id: SessionId,
    ready: Arc<Ready>,
    /// On the list, not yet taken off: more wakes add nothing.
    listed: AtomicBool,
}

impl SocketWaker {
    /// Lists the session as if its socket had been woken: a new socket, and one that
    /// gave datagrams and may have more, are read in the loop's next turn.
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

    /// Takes the session off the list before its socket is read: a wake from then on
    /// lists it again.
    pub(super) fn unlist(&self) {
        self.listed.store(false, Ordering::Release);
    }
}

impl Wake for SocketWaker {
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

    #[test]
    fn a_session_is_listed_once_until_taken_and_wakes_the_waiting_loop() {
        let ready = Arc::new(Ready::default());
        let loop_woken = Arc::new(Counted::default());
        let loop_waker = Waker::from(Arc::clone(&loop_woken));
        let mut cx = Context::from_waker(&loop_waker);
        assert!(ready.poll_woken(&mut cx).is_pending());

        let a = ready.waker(SessionId(1));
        let b = ready.waker(SessionId(2));
        let wa = Waker::from(Arc::clone(&a));
        wa.wake_by_ref();
        wa.wake_by_ref();
        Waker::from(Arc::clone(&b)).wake();
        assert_eq!(loop_woken.count(), 1, "the loop is woken once per wait");
        assert!(ready.poll_woken(&mut cx).is_ready());

        let mut taken = Vec::new();
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
        assert_eq!(loop_woken.count(), 2);
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
