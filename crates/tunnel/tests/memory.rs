//! What a relay holds per client session once the handshake is done, counted with dhat.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Instant;

use tunnel::{Classified, Responder, Session, SessionConfig, StaticSecret};

// Only `initiator` and `transmitted` are needed here, not the ready-made pair.
#[allow(dead_code)]
mod support;
use support::{initiator, transmitted};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const SESSIONS: usize = 200;

/// The goal is 10,000 idle sessions in 64 MiB for the whole egress, 6.7 KiB each; the
/// WireGuard state is the largest part of a session and must leave room for the rest.
/// 2,183 bytes since a session shares its key, index table, rate limiter and keepalive
/// setting with the others of its responder and takes the peer's key from gotatun
/// (`Session` is 1,016 bytes, inside the relay allocator's 1,024-byte size class, which
/// `session::tests::a_session_fits_the_1024_byte_size_class` checks); 2,263 since gotatun boxes its handshake states and keeps timer ranges only when
/// not the defaults (vendor/gotatun/PATCHES.md, 5); 2,639 since it keeps a session's two
/// ChaCha20-Poly1305 keys as their bytes (4); 3,663 with ring's 544-byte keys; 3,959 with
/// gotatun's default jitter generator (ChaCha12).
const MAX_PER_SESSION: usize = 2_304;

fn an_established_relay_session_holds_a_few_kib() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = Instant::now();
    let from: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    let mut relay = Responder::new(now, StaticSecret::generate(), SessionConfig::default());
    let mut out = Vec::new();
    let inits: Vec<Vec<u8>> = (0..SESSIONS).map(|_| initiator(now, &relay).1).collect();
    let mut sessions = Vec::with_capacity(SESSIONS);

    let before = dhat::HeapStats::get().curr_bytes;
    for init in &inits {
        let Classified::Handshake { peer, msg } = relay.classify(now, from, init).unwrap() else {
            panic!("a handshake initiation");
        };
        let mut server = relay.session(now, peer);
        server.receive(now, msg, &mut out).unwrap();
        assert!(!transmitted(&mut out).is_empty(), "a handshake response");
        sessions.push(server);
    }
    let per_session =
        (dhat::HeapStats::get().curr_bytes - before) / SESSIONS + std::mem::size_of::<Session>();

    eprintln!("{per_session} bytes per established session");
    assert!(sessions.iter().all(|s| s.since_handshake().is_some()));
    assert!(
        per_session <= MAX_PER_SESSION,
        "{per_session} bytes per established session (at most {MAX_PER_SESSION})"
    );
}

fn main() {
    testbed::run_alone(an_established_relay_session_holds_a_few_kib);
}
