//! Two stacks over a link that loses and reorders packets: property test over writes,
//! reads, closes, waits, and packets lost or held back between them. Every byte read must
//! be the byte written at that offset, everything written must arrive and be acknowledged
//! before the flows' 120 s timeout, once both sides have closed the flow must end at both,
//! and once both have released it neither stack may keep anything of it; a second property
//! aborts the flow (RST) at a random point and requires the same freeing.
//!
//! Each case runs twice, with idle flows' buffers given back (after a short 50 ms, so
//! that waits cross it often, including while the receiver holds data that came out of
//! order, which an empty-looking buffer must not give away) and with them kept.
//!
//! The property found three ways in which smoltcp 0.13.1 as published let a connection sit
//! until its timeout reset it (vendor/smoltcp/PATCHES.md); each has its case below.

mod support;

use std::time::Duration;

use netstack::{FlowError, FlowId, Stack};
use proptest::prelude::*;
use support::{dst, Pair};

/// Short, so that many waits cross it.
const IDLE: Duration = Duration::from_millis(50);
/// Small buffers, so that data wraps round them and spans their pages.
const BUFFER: usize = 16 * 1024;

#[derive(Debug, Clone)]
enum Step {
    /// The app on one side writes up to this many bytes (what fits).
    Write { up: bool, len: usize },
    /// The app on the other side reads what has arrived.
    Read { up: bool },
    /// Packets cross; the one at `hold` (if any) is held back and crosses after the next
    /// round's (reordered), the one at `drop` is lost.
    Cross {
        hold: Option<usize>,
        drop: Option<usize>,
    },
    /// The clock moves on (retransmissions, delayed ACKs, giving back).
    Wait { ms: u64 },
    /// The app on one side is done writing: FIN after its data.
    Close { up: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<bool>(), 1..40_000usize).prop_map(|(up, len)| Step::Write { up, len }),
        any::<bool>().prop_map(|up| Step::Read { up }),
        (
            proptest::option::of(0..8usize),
            proptest::option::of(0..8usize)
        )
            .prop_map(|(hold, drop)| Step::Cross { hold, drop }),
        (0..400u64).prop_map(|ms| Step::Wait { ms }),
        any::<bool>().prop_map(|up| Step::Close { up }),
    ]
}

/// The byte at `offset` of a direction's stream.
fn byte(up: bool, offset: usize) -> u8 {
    let x = offset.wrapping_mul(2_654_435_761) >> 7;
    (x as u8) ^ if up { 0x5a } else { 0xa5 } | 1
}

/// One direction: how much the sender's app wrote and the receiver's app read.
#[derive(Default)]
struct Stream {
    written: usize,
    read: usize,
    /// The writer closed (sent FIN after its data).
    closed: bool,
    /// The reader saw the end of the stream, after every byte.
    ended: bool,
}

struct World {
    pair: Pair,
    /// The flow was reset or failed: nothing more will arrive.
    broken: bool,
    /// One side aborted the flow (RST).
    aborted: bool,
    flows: (FlowId, FlowId),
    up: Stream,
    down: Stream,
    /// Held-back packets: (to the server, bytes).
    held: Vec<(bool, Vec<u8>)>,
}

impl World {
    fn new(give_back: bool) -> Self {
        let mut pair = Pair::with(|c| {
            c.idle_buffers_after = give_back.then_some(IDLE);
            c.tcp_rx_buffer = BUFFER;
            c.tcp_tx_buffer = BUFFER;
        });
        let flows = pair.open(dst());
        Self {
            pair,
            broken: false,
            aborted: false,
            flows,
            up: Stream::default(),
            down: Stream::default(),
            held: Vec::new(),
        }
    }

    fn ends(&mut self, up: bool) -> (&mut Stack, FlowId, &mut Stack, FlowId, &mut Stream) {
        let (c, s) = self.flows;
        if up {
            (
                &mut self.pair.client,
                c,
                &mut self.pair.server,
                s,
                &mut self.up,
            )
        } else {
            (
                &mut self.pair.server,
                s,
                &mut self.pair.client,
                c,
                &mut self.down,
            )
        }
    }

    fn write(&mut self, up: bool, len: usize) {
        let (tx, flow, _, _, stream) = self.ends(up);
        if stream.closed {
            return;
        }
        let data: Vec<u8> = (stream.written..stream.written + len)
            .map(|i| byte(up, i))
            .collect();
        match tx.send(flow, &data) {
            Ok(n) => stream.written += n,
            Err(FlowError::WouldBlock) => {}
            Err(_) => self.broken = true,
        }
    }

    /// Reads what has arrived and checks every byte.
    fn read(&mut self, up: bool) -> Result<(), TestCaseError> {
        let aborted = self.aborted;
        let (_, _, rx, flow, stream) = self.ends(up);
        if stream.ended {
            return Ok(());
        }
        let mut buf = [0u8; 8192];
        loop {
            match rx.recv(flow, &mut buf) {
                Ok(0) => {
                    prop_assert!(
                        aborted || (stream.closed && stream.read == stream.written),
                        "end of stream {} after {} of {} bytes, closed: {}",
                        if up { "up" } else { "down" },
                        stream.read,
                        stream.written,
                        stream.closed
                    );
                    stream.ended = true;
                    return Ok(());
                }
                Ok(n) => {
                    for (k, &b) in buf[..n].iter().enumerate() {
                        let at = stream.read + k;
                        prop_assert_eq!(
                            b,
                            byte(up, at),
                            "byte {} {}",
                            at,
                            if up { "up" } else { "down" }
                        );
                    }
                    stream.read += n;
                }
                Err(FlowError::WouldBlock) => return Ok(()),
                Err(_) => {
                    self.broken = true;
                    return Ok(());
                }
            }
        }
    }

    /// One round of packets both ways, with a packet held back or lost.
    fn cross(&mut self, hold: Option<usize>, drop: Option<usize>) {
        let now = self.pair.now;
        self.pair.client.poll(now);
        self.pair.server.poll(now);
        let mut fresh = Vec::new();
        while let Some(p) = self.pair.client.pop_transmit() {
            fresh.push((true, p));
        }
        while let Some(p) = self.pair.server.pop_transmit() {
            fresh.push((false, p));
        }
        let late = std::mem::take(&mut self.held);
        for (i, packet) in fresh.into_iter().enumerate() {
            if Some(i) == drop {
                continue;
            }
            if Some(i) == hold {
                self.held.push(packet);
                continue;
            }
            self.deliver(packet);
        }
        for packet in late {
            self.deliver(packet);
        }
        while self.pair.client.poll_event().is_some() {}
        while self.pair.server.poll_event().is_some() {}
    }

    fn deliver(&mut self, (to_server, packet): (bool, Vec<u8>)) {
        if to_server {
            self.pair.server.receive(&packet);
        } else {
            self.pair.client.receive(&packet);
        }
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Write { up, len } => self.write(up, len),
            Step::Read { up } => self.read(up)?,
            Step::Cross { hold, drop } => self.cross(hold, drop),
            Step::Wait { ms } => self.wait(ms),
            Step::Close { up } => self.close(up),
        }
        Ok(())
    }

    /// Both sides give the flow up.
    fn release(&mut self) {
        let (c, s) = self.flows;
        self.pair.client.release(c);
        self.pair.server.release(s);
    }

    /// Flows and sockets each stack still holds.
    fn left(&self) -> Left {
        let count = |stack: &Stack| (stack.flow_count(), stack.socket_count());
        (count(&self.pair.client), count(&self.pair.server))
    }

    /// The writer of one direction aborts the flow: RST, buffered data discarded.
    fn abort(&mut self, up: bool) {
        let (tx, flow, _, _, _) = self.ends(up);
        let _ = tx.abort(flow);
        self.aborted = true;
    }

    fn close(&mut self, up: bool) {
        let (tx, flow, _, _, stream) = self.ends(up);
        let failed = tx.close(flow).is_err();
        stream.closed = true;
        self.broken |= failed;
    }

    fn wait(&mut self, ms: u64) {
        self.pair.now += Duration::from_millis(ms);
        let now = self.pair.now;
        self.pair.client.poll(now);
        self.pair.server.poll(now);
    }
}

/// Flows and sockets a stack still holds, at the client and at the server.
type Left = ((usize, usize), (usize, usize));

/// How a run ended.
#[derive(Debug)]
struct Outcome {
    /// Everything written was read and acknowledged, both ways.
    delivered: bool,
    /// Times each end (client, server) gave its buffers back while the flow was open.
    given_back: (u64, u64),
    /// A side closed during the steps.
    closed_early: bool,
    /// Once both sides closed: both readers saw the end after every byte, and the flow
    /// ended at both ends.
    finished: bool,
    /// Once released at both ends: flows and sockets left in each stack (0, 0 both).
    left: Left,
}

/// Plays `steps`, then a clean link for up to 150 s (past the flows' 120 s timeout) until
/// everything written has been read and acknowledged both ways (a lost ACK waits for a
/// retransmission), then a quiet time, then both sides close and the link runs until the
/// flow has ended at both ends, then both release it; every byte read is checked on the
/// way.
fn play(steps: &[Step], give_back: bool) -> Result<Outcome, TestCaseError> {
    let mut world = World::new(give_back);
    for step in steps {
        world.apply(step)?;
    }
    let closed_early = world.up.closed || world.down.closed;
    let (c, s) = world.flows;
    let delivered = run_until(&mut world, |w| {
        w.up.read == w.up.written
            && w.down.read == w.down.written
            && w.pair.client.send_queue(c) == 0
            && w.pair.server.send_queue(s) == 0
    })?;
    // Quiet now: the ends give their buffers back (once the last ACKs have crossed).
    for _ in 0..4 {
        world.cross(None, None);
        world.wait(2 * IDLE.as_millis() as u64);
    }
    let given_back = world.pair.given_back();
    for up in [true, false] {
        if !world.ends(up).4.closed {
            world.close(up);
        }
    }
    let finished = run_until(&mut world, |w| {
        w.up.ended
            && w.down.ended
            && w.pair.client.state(c).is_some_and(|t| t.is_closed())
            && w.pair.server.state(s).is_some_and(|t| t.is_closed())
    })?;
    world.release();
    world.cross(None, None);
    let left = world.left();
    Ok(Outcome {
        delivered,
        given_back,
        closed_early,
        finished,
        left,
    })
}

/// Runs a clean link, reading both ways, for up to 150 s until `done`; whether it came.
fn run_until(world: &mut World, done: impl Fn(&World) -> bool) -> Result<bool, TestCaseError> {
    for _ in 0..1_500 {
        if done(world) || world.broken {
            break;
        }
        world.cross(None, None);
        world.read(true)?;
        world.read(false)?;
        world.wait(100);
    }
    Ok(done(world) && !world.broken)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_byte_arrives_intact_and_the_flow_ends_with_buffers_given_back_or_kept(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let kept = play(&steps, false)?;
        let given = play(&steps, true)?;
        prop_assert_eq!(kept.given_back, (0, 0));
        prop_assert!(kept.delivered, "stalled with the buffers kept");
        prop_assert!(given.delivered, "stalled with the buffers given back");
        prop_assert!(kept.finished, "did not end with the buffers kept: {:?}", kept);
        prop_assert!(given.finished, "did not end with the buffers given back: {:?}", given);
        prop_assert_eq!(kept.left, ((0, 0), (0, 0)), "released flows are freed");
        prop_assert_eq!(given.left, ((0, 0), (0, 0)), "released flows are freed");
        if !given.closed_early {
            prop_assert!(given.given_back.0 >= 1 && given.given_back.1 >= 1, "{:?}", given);
        }
    }
}

/// Plays `steps` with one side aborting the flow after the first `at` of them, then both
/// sides release it and a clean link runs for up to 150 s; returns the flows and sockets
/// left in each stack. Every byte read before the reset is checked.
fn play_reset(steps: &[Step], at: usize, up: bool, give_back: bool) -> Result<Left, TestCaseError> {
    let mut world = World::new(give_back);
    for (i, step) in steps.iter().enumerate() {
        if i == at {
            world.abort(up);
        }
        world.apply(step)?;
    }
    if at >= steps.len() {
        world.abort(up);
    }
    world.release();
    for _ in 0..1_500 {
        if world.left() == ((0, 0), (0, 0)) {
            break;
        }
        world.cross(None, None);
        world.wait(100);
    }
    Ok(world.left())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A reset at any point, on a link that loses and reorders, leaves no flow or socket
    /// at either end once both have released it, and what was read before it is intact.
    #[test]
    fn a_reset_flow_is_freed_at_both_ends(
        steps in proptest::collection::vec(step(), 1..40),
        at in 0..40usize,
        up in any::<bool>(),
    ) {
        for give_back in [false, true] {
            let left = play_reset(&steps, at, up, give_back)?;
            prop_assert_eq!(left, ((0, 0), (0, 0)), "give_back {}", give_back);
        }
    }
}

/// Plays a case with buffers kept and given back: both runs deliver every byte and end.
fn completes(steps: &[Step]) {
    for give_back in [false, true] {
        let outcome = play(steps, give_back).expect("bytes intact");
        assert!(
            outcome.delivered && outcome.finished && outcome.left == ((0, 0), (0, 0)),
            "give_back {give_back}: {outcome:?}"
        );
    }
}

/// The client's last byte goes out; a retransmission from the server then tells the
/// client that the server's window is closed, and the server's window update and its ACK
/// of that byte come only on further retransmissions the client already has, which it
/// drops. Published smoltcp went idle at the retransmission timeout (nothing could be sent
/// into a zero window) and never probed.
#[test]
fn a_window_reopened_only_on_old_duplicates_is_probed() {
    use Step::*;
    let steps = [
        Write {
            up: true,
            len: 16384,
        },
        Cross {
            hold: None,
            drop: Some(0),
        },
        Wait { ms: 166 },
        Write {
            up: false,
            len: 15004,
        },
        Read { up: false },
        Read { up: false },
        Cross {
            hold: None,
            drop: None,
        },
        Write { up: false, len: 1 },
        Cross {
            hold: None,
            drop: None,
        },
        Cross {
            hold: None,
            drop: None,
        },
        Write {
            up: false,
            len: 6900,
        },
        Read { up: false },
        Cross {
            hold: None,
            drop: None,
        },
        Wait { ms: 0 },
        Read { up: true },
        Write { up: true, len: 1 },
        Write { up: false, len: 1 },
        Cross {
            hold: Some(0),
            drop: None,
        },
    ];
    completes(&steps);
}

/// Both ends fill each other's window, have one more byte to send, and read just as their
/// probes are due: each reopens its window in the round it probes the other's. Published
/// smoltcp probed with the next new byte, each end took the other's probe, and each end's
/// later segments came one below what the other expected, so their ACKs were dropped.
#[test]
fn ends_probing_each_others_closed_window_at_once_recover() {
    use Step::*;
    let steps = [
        Write {
            up: true,
            len: 16384,
        },
        Write {
            up: false,
            len: 16384,
        },
        Cross {
            hold: None,
            drop: None,
        },
        Wait { ms: 209 },
        Cross {
            hold: None,
            drop: None,
        },
        Wait { ms: 315 },
        Write { up: true, len: 1 },
        Write { up: false, len: 1 },
        Wait { ms: 476 },
        Read { up: true },
        Read { up: false },
    ];
    completes(&steps);
}

/// The server closes; the client then fills the server's window, closes too (LAST-ACK
/// with data still to send) and probes. Published smoltcp answered every ACK that
/// acknowledged nothing new in LAST-ACK with a challenge ACK and went no further, so the
/// window update that answered the probe was dropped each time.
#[test]
fn a_side_that_closed_with_data_waiting_takes_window_updates() {
    use Step::*;
    let steps = [
        Write {
            up: true,
            len: 12421,
        },
        Cross {
            hold: None,
            drop: Some(1),
        },
        Close { up: false },
        Cross {
            hold: None,
            drop: None,
        },
        Wait { ms: 0 },
        Write {
            up: true,
            len: 3964,
        },
        Close { up: true },
        Cross {
            hold: None,
            drop: None,
        },
    ];
    completes(&steps);
}
