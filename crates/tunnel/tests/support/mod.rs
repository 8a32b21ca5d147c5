//! What the tunnel's integration tests and its benchmark share: a client session and the
//! relay's session for it with the handshake done, without any I/O.

use std::net::SocketAddr;
use std::time::Instant;

use tunnel::{Action, Classified, Responder, Session, SessionConfig, StaticSecret};

/// Both ends of one tunnel, ready for data.
pub(crate) struct Pair {
    /// The relay side that classified the handshake; it routes the data datagrams too.
    pub(crate) relay: Responder,
    /// The initiating side, as a client holds it.
    pub(crate) client: Session,
    /// The relay's session for the client.
    pub(crate) server: Session,
    /// The client's address as the relay saw it.
    pub(crate) from: SocketAddr,
}

/// The one datagram `out` holds; `out` is left empty.
pub(crate) fn transmitted(out: &mut Vec<Action>) -> Vec<u8> {
    let d = out
        .drain(..)
        .find_map(|a| match a {
            Action::Transmit(d) => Some(d),
            _ => None,
        })
        .expect("a datagram to send");
    out.clear();
    d
}

/// A client session with a fresh key for `relay`, and its handshake initiation.
pub(crate) fn initiator(now: Instant, relay: &Responder) -> (Session, Vec<u8>) {
    let mut client = Session::initiator(
        now,
        &StaticSecret::generate(),
        relay.public_key(),
        SessionConfig::default(),
    );
    let mut out = Vec::new();
    client.connect(now, &mut out);
    let init = transmitted(&mut out);
    (client, init)
}

/// A client and a relay with fresh keys, after the handshake at `now`.
pub(crate) fn pair(now: Instant) -> Pair {
    let from: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    let mut relay = Responder::new(now, StaticSecret::generate(), SessionConfig::default());
    let (mut client, init) = initiator(now, &relay);
    let mut out = Vec::new();
    let Classified::Handshake { peer, msg } = relay.classify(now, from, &init).unwrap() else {
        panic!("a handshake initiation");
    };
    let mut server = relay.session(now, peer);
    server.receive(now, msg, &mut out).unwrap();
    let resp = transmitted(&mut out);
    client.decapsulate(now, &resp, &mut out).unwrap();
    out.clear();
    Pair {
        relay,
        client,
        server,
        from,
    }
}
