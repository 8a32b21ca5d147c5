//! Userspace TCP/IP (smoltcp) that terminates or originates TCP and UDP flows over raw IP
//! packets, so neither end of the tunnel needs root or a TUN device.
//!
//! Two layers:
//! - [`Stack`], sans-IO: IP packets and the caller's `now` in, IP packets, [`Event`]s and the
//!   next deadline out. In [`Mode::Client`] it originates flows from the tunnel address (the
//!   SOCKS5 client); in [`Mode::Terminate`] it accepts flows to any address and reports each
//!   with its destination so that the egress relay can apply policy and open a real socket,
//!   then [`accept`](Stack::accept) or [`refuse`](Stack::refuse) (RST) it. UDP is reported
//!   datagram by datagram and can be refused with ICMP unreachable.
//! - [`driver`], the tokio edge: runs a `Stack` in a task over packet channels and offers
//!   [`TcpFlow`](driver::TcpFlow) (`AsyncRead + AsyncWrite`) and UDP sockets.

mod config;
mod device;
pub mod driver;
mod error;
mod event;
mod idle;
mod pages;
mod stack;
mod table;
mod tcp;
mod terminate;
mod udp;
mod wire;

pub use config::{Congestion, Mode, StackConfig};
pub use error::{ConfigError, FlowError, StackError};
pub use event::{CloseReason, Event, FlowId, Stats, TcpState, UdpDatagram, Unreachable};
pub use stack::Stack;
pub use udp::{plain_udp, unreachable, PlainUdp};
