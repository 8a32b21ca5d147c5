//! Idle flows give their buffers' pages back: a flow that has moved no data for
//! [`StackConfig::idle_buffers_after`](crate::StackConfig::idle_buffers_after) and holds none
//! hands its two buffers to [`pages::give_back`]. One deadline for the whole stack, the
//! earliest a flow could be due, keeps the check off the per-packet path. Once every flow
//! has, the stack's empty queues give their memory back too.

use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

use crate::{pages, FlowId, Stack};

/// A flow's place in the giving back of idle buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quiet {
    /// When the flow last moved data (or got its socket).
    since: Instant,
    /// Its pages went back since then.
    given_back: bool,
}

impl Quiet {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            since: now,
            given_back: false,
        }
    }
}

/// When a stack next looks for quiet flows: the earliest a flow could be due, kept as
/// flows move data so that nothing on the packet path scans them.
#[derive(Debug, Default)]
pub(crate) struct IdleCheck {
    at: Option<Instant>,
}

impl IdleCheck {
    /// The flow whose `quiet` this is moved data (or got its socket) at `now`; with
    /// `after` set, it is due that much later.
    pub(crate) fn moved(&mut self, quiet: &mut Quiet, after: Option<Duration>, now: Instant) {
        let Some(after) = after else {
            return;
        };
        *quiet = Quiet::new(now);
        let due = now + after;
        self.at = Some(self.at.map_or(due, |at| at.min(due)));
    }

    /// When [`Stack::give_back_idle`] has work, if ever.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at
    }
}

impl Stack {
    /// `flow` got its socket: its buffers are in use from now on.
    pub(crate) fn note_activity(&mut self, flow: FlowId) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            self.idle
                .moved(&mut entry.quiet, self.config.idle_buffers_after, self.now);
        }
    }

    /// Gives back the buffers of every flow quiet for long enough that holds no data, once
    /// the deadline has come; flows still holding data are looked at again a period later.
    pub(crate) fn give_back_idle(&mut self) {
        let (Some(after), Some(at)) = (self.config.idle_buffers_after, self.idle.at) else {
            return;
        };
        if self.now < at {
            return;
        }
        let now = self.now;
        let mut next: Option<Instant> = None;
        for entry in self.flows.values_mut() {
            let Some(handle) = entry.socket else {
                continue;
            };
            if entry.quiet.given_back {
                continue;
            }
            let mut due = entry.quiet.since + after;
            if due <= now {
                if let Some((rx, tx)) = self.sockets.get_mut::<tcp::Socket>(handle).idle_buffers() {
                    pages::give_back(rx);
                    pages::give_back(tx);
                    entry.quiet.given_back = true;
                    self.stats.buffers_given_back += 1;
                    continue;
                }
                due = now + after;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.idle.at = next;
        if next.is_none() {
            self.shrink_idle();
        }
    }

    /// Every flow is quiet: the queues that grew for their traffic (to four entries or
    /// more on first use, and kept) give their memory back if empty, and grow again with
    /// the next packet. An egress keeps such a stack for every session holding a quiet
    /// connection.
    pub(crate) fn shrink_idle(&mut self) {
        self.events.shrink_if_empty();
        self.woken.shrink_if_empty();
        self.reap.shrink_if_empty();
        self.pending.shrink_idle();
        self.dev.shrink_idle();
        self.ready.shrink_idle();
        self.rested = true;
    }

    /// Whether the stack has come to rest ([`shrink_idle`](Self::shrink_idle)) since the
    /// last call: the driver then shrinks its own queues.
    pub(crate) fn take_rested(&mut self) -> bool {
        std::mem::take(&mut self.rested)
    }
}

/// A queue or table that gives its memory back once it holds nothing, for the stack and its
/// task at rest ([`Stack::shrink_idle`]); it grows again with the next entry.
pub(crate) trait ShrinkIfEmpty {
    fn shrink_if_empty(&mut self);
}

impl<T> ShrinkIfEmpty for Vec<T> {
    fn shrink_if_empty(&mut self) {
        if self.is_empty() {
            self.shrink_to_fit();
        }
    }
}

impl<T> ShrinkIfEmpty for std::collections::VecDeque<T> {
    fn shrink_if_empty(&mut self) {
        if self.is_empty() {
            self.shrink_to_fit();
        }
    }
}
