//! The ingress's datagrams to egresses within one turn of its loop, grouped by session, so
//! that each session's forwarding socket sends its own together (one `sendmmsg` or GSO
//! batch). A turn's groups are gone once it is sent: an idle session holds nothing here,
//! and a turn visits only the sessions that had datagrams in it.

use std::net::SocketAddr;

use crate::table::{SessionId, TrustedKeyMap};

/// One session's datagrams of a turn, in the order they came.
pub(super) type Batch = Vec<(SocketAddr, Vec<u8>)>;

/// Emptied lists kept for the next turns, so that a turn allocates none.
const KEPT: usize = 64;
/// Longer lists are freed rather than kept: a burst's list would pin its size.
const KEPT_CAPACITY: usize = 64;

#[derive(Default)]
pub(super) struct Outbound {
    /// This turn's groups, sessions in the order of their first datagram.
    batches: Vec<(SessionId, Batch)>,
    /// Where each session's group is in `batches`, this turn.
    at: TrustedKeyMap<SessionId, usize>,
    /// Emptied lists.
    spare: Vec<Batch>,
}

impl Outbound {
    /// Adds a datagram for the egress at `to` to the session's group of this turn.
    pub(super) fn push(&mut self, id: SessionId, to: SocketAddr, payload: Vec<u8>) {
        let batches = &mut self.batches;
        let spare = &mut self.spare;
        let i = *self.at.entry(id).or_insert_with(|| {
            batches.push((id, spare.pop().unwrap_or_default()));
            batches.len() - 1
        });
        self.batches[i].1.push((to, payload));
    }

    /// This turn's groups, leaving none behind; hand them to [`Outbound::recycle`] once
    /// sent and their datagrams given back.
    pub(super) fn take(&mut self) -> Vec<(SessionId, Batch)> {
        self.at.clear();
        std::mem::take(&mut self.batches)
    }

    /// Takes back a sent turn's groups, keeping their lists for the next turns.
    pub(super) fn recycle(&mut self, mut sent: Vec<(SessionId, Batch)>) {
        for (_, mut batch) in sent.drain(..) {
            if self.spare.len() < KEPT && batch.capacity() <= KEPT_CAPACITY {
                batch.clear();
                self.spare.push(batch);
            }
        }
        self.batches = sent;
    }

    /// Lists kept for the next turns.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.spare.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    /// One turn: what `take` returns, as (session, payloads) pairs.
    fn turn(out: &mut Outbound) -> Vec<(u64, Vec<Vec<u8>>)> {
        let mut sent = out.take();
        let seen = sent
            .iter_mut()
            .map(|(id, b)| (id.0, b.drain(..).map(|(_, d)| d).collect()))
            .collect();
        out.recycle(sent);
        seen
    }

    #[test]
    fn a_sessions_datagrams_go_together_in_the_order_they_came() {
        let mut out = Outbound::default();
        out.push(SessionId(7), egress(1), vec![1]);
        out.push(SessionId(3), egress(1), vec![2]);
        out.push(SessionId(7), egress(2), vec![3]);
        out.push(SessionId(3), egress(1), vec![4]);
        out.push(SessionId(7), egress(1), vec![5]);
        assert_eq!(
            turn(&mut out),
            vec![
                (7, vec![vec![1], vec![3], vec![5]]),
                (3, vec![vec![2], vec![4]])
            ]
        );
    }

    /// A turn holds only the sessions that had datagrams in it: sessions of earlier turns
    /// leave nothing behind to visit or keep.
    #[test]
    fn a_turn_leaves_no_session_behind() {
        let mut out = Outbound::default();
        for id in 0..1_000 {
            out.push(SessionId(id), egress(1), vec![0; 8]);
        }
        assert_eq!(turn(&mut out).len(), 1_000);
        out.push(SessionId(5_000), egress(1), vec![9]);
        assert_eq!(turn(&mut out), vec![(5_000, vec![vec![9]])]);
        assert!(
            turn(&mut out).is_empty(),
            "a turn without datagrams has no groups"
        );
        assert!(out.at.is_empty());
    }

    /// Lists are reused from turn to turn, at most [`KEPT`] of them and none longer than
    /// [`KEPT_CAPACITY`], so a busy turn does not pin memory and a steady one allocates none.
    #[test]
    fn emptied_lists_are_reused_within_bounds() {
        let mut out = Outbound::default();
        out.push(SessionId(1), egress(1), vec![1]);
        let first = out.batches[0].1.as_ptr();
        turn(&mut out);
        assert_eq!(out.kept(), 1);
        out.push(SessionId(2), egress(1), vec![2]);
        assert_eq!(
            out.batches[0].1.as_ptr(),
            first,
            "the emptied list came back"
        );
        turn(&mut out);

        for id in 0..(KEPT as u64 + 50) {
            out.push(SessionId(id), egress(1), vec![0]);
        }
        for _ in 0..(KEPT_CAPACITY + 1) {
            out.push(SessionId(10_000), egress(1), vec![0]);
        }
        turn(&mut out);
        assert_eq!(out.kept(), KEPT);
        assert!(out.spare.iter().all(|b| b.capacity() <= KEPT_CAPACITY));
    }
}
