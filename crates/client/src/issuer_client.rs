//! The client's edge to the issuer: a UDP socket driving an [`IssuerLink`], and calls with
//! retransmission (the issuer answers a repeated request id from memory, so a retry never
//! pays twice).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use issuer::{Request, RequestBody, Response, ResponseBody};
use tokio::net::UdpSocket;
use tunnel::PublicKey;

use crate::connection::Verification;
use crate::issuer_link::{IssuerLink, LinkEvent};

/// Time to wait for an answer before sending the request again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Sends of one request before giving up.
const TRIES: u32 = 5;

/// Why talking to the issuer failed.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// No socket.
    #[error("cannot reach the issuer: {0}")]
    Socket(#[from] std::io::Error),
    /// The session failed (attestation, refusal, silence).
    #[error("{0}")]
    Link(String),
    /// No answer after all retries.
    #[error("the issuer did not answer ({TRIES} tries); check the network or try later")]
    NoAnswer,
    /// The answer does not parse.
    #[error("the issuer's answer is malformed: {0}")]
    Malformed(#[from] issuer::WireError),
}

/// An attested, admitted session with the issuer.
pub struct IssuerClient {
    socket: UdpSocket,
    link: IssuerLink,
    next_id: u32,
    /// What the issuer's evidence showed.
    pub attested: attest::Claims,
}

impl IssuerClient {
    /// Connects to the issuer at `endpoint` with key `key`, verifying its attestation.
    pub async fn connect(
        endpoint: SocketAddr,
        key: PublicKey,
        verification: Verification,
    ) -> Result<Self, IssuerError> {
        let bind: SocketAddr = match endpoint.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(endpoint).await?;
        let mut link = IssuerLink::new(Instant::now(), key, verification);
        let mut events = Vec::new();
        link.start(Instant::now(), &mut events);
        let mut client = Self {
            socket,
            link,
            next_id: rand::random(),
            attested: attest::Claims {
                platform: attest::Platform::Sim,
                measurement: Vec::new(),
                report_data: [0; 64],
                tcb_status: attest::TcbStatus::UpToDate,
                advisories: Vec::new(),
                snp_tcb: None,
            },
        };
        loop {
            for ev in client.flush(events).await {
                match ev {
                    LinkEvent::Ready(claims) => {
                        client.attested = *claims;
                        return Ok(client);
                    }
                    LinkEvent::Failed(why) => return Err(IssuerError::Link(why)),
                    _ => {}
                }
            }
            events = client.step(None).await?;
        }
    }

    /// One request, answered.
    pub async fn call(&mut self, body: RequestBody) -> Result<ResponseBody, IssuerError> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let bytes = Request { id, body }.encode();
        for _ in 0..TRIES {
            let mut events = Vec::new();
            self.link.request(Instant::now(), &bytes, &mut events);
            let until = tokio::time::Instant::now() + RETRY_AFTER;
            loop {
                for ev in self.flush(events).await {
                    match ev {
                        LinkEvent::Response(r) => {
                            let response = Response::decode(&r)?;
                            if response.id == id {
                                return Ok(response.body);
                            }
                        }
                        LinkEvent::Failed(why) => return Err(IssuerError::Link(why)),
                        _ => {}
                    }
                }
                if tokio::time::Instant::now() >= until {
                    break;
                }
                events = self.step(Some(until)).await?;
            }
        }
        Err(IssuerError::NoAnswer)
    }

    /// Sends what the link wants sent; returns the other events.
    async fn flush(&mut self, events: Vec<LinkEvent>) -> Vec<LinkEvent> {
        let mut rest = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::Transmit(d) => {
                    let _ = self.socket.send(&d).await;
                }
                other => rest.push(other),
            }
        }
        rest
    }

    /// Waits for a datagram, a timer, or `until`.
    async fn step(
        &mut self,
        until: Option<tokio::time::Instant>,
    ) -> Result<Vec<LinkEvent>, IssuerError> {
        let mut buf = vec![0u8; 65_535];
        let mut events = Vec::new();
        let timer = tokio::time::Instant::from_std(self.link.poll_timeout());
        let wake = until.map_or(timer, |u| u.min(timer));
        tokio::select! {
            r = self.socket.recv(&mut buf) => {
                if let Ok(n) = r {
                    self.link.receive(Instant::now(), buf.get(..n).unwrap_or_default(), &mut events);
                }
            }
            _ = tokio::time::sleep_until(wake) => self.link.handle_timeout(Instant::now(), &mut events),
        }
        Ok(events)
    }
}
