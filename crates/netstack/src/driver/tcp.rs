//! Async TCP: a flow as `AsyncRead + AsyncWrite`, and incoming flows to accept or refuse.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Inner;
use crate::{FlowError, FlowId, TcpState};

/// One TCP flow through the stack. Reading returns 0 after the peer's FIN; `shutdown` sends
/// FIN; dropping closes the flow like dropping a socket (FIN, or RST if unread data remains).
pub struct TcpFlow {
    inner: Arc<Inner>,
    flow: FlowId,
    local: SocketAddr,
    remote: SocketAddr,
}

impl TcpFlow {
    pub(super) fn new(inner: Arc<Inner>, flow: FlowId) -> Self {
        let endpoints = inner.lock().stack.endpoints(flow);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let (local, remote) = endpoints.unwrap_or((unspecified, unspecified));
        Self {
            inner,
            flow,
            local,
            remote,
        }
    }

    /// This side's endpoint (in terminate mode: the destination the client asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other side's endpoint.
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The stack's id of this flow.
    pub fn id(&self) -> FlowId {
        self.flow
    }

    /// Wait for the handshake to complete.
    pub(super) async fn established(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut shared = self.inner.lock();
            shared.check_running()?;
            match shared.stack.state(self.flow) {
                None => Poll::Ready(Err(FlowError::UnknownFlow(self.flow).into())),
                Some(TcpState::Pending | TcpState::Connecting) => {
                    if let Some(w) = shared.wakers.get_mut(&self.flow) {
                        w.write = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Some(TcpState::Closed(reason)) => Poll::Ready(Err(closed_error(reason))),
                Some(_) => Poll::Ready(Ok(())),
            }
        })
        .await
    }
}

/// The error for a flow that closed before it was established.
fn closed_error(reason: crate::CloseReason) -> io::Error {
    use crate::CloseReason as R;
    let e = match reason {
        R::Graceful => FlowError::Closed,
        R::Reset | R::Aborted => FlowError::Reset,
        R::Refused => FlowError::Refused,
        R::TimedOut => FlowError::TimedOut,
    };
    e.into()
}

impl fmt::Debug for TcpFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpFlow")
            .field("flow", &self.flow)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl AsyncRead for TcpFlow {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut shared = this.inner.lock();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match shared.stack.recv(this.flow, buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                drop(shared);
                if n > 0 {
                    // The window reopened: let the task tell the peer.
                    this.inner.notify.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Err(FlowError::WouldBlock) => {
                shared.check_running()?;
                if let Some(w) = shared.wakers.get_mut(&this.flow) {
                    w.read = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncWrite for TcpFlow {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut shared = this.inner.lock();
        shared.check_running()?;
        match shared.stack.send(this.flow, data) {
            Ok(n) => {
                drop(shared);
                this.inner.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(FlowError::WouldBlock) => {
                if let Some(w) = shared.wakers.get_mut(&this.flow) {
                    w.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is in the stack's send buffer, which the task drains on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = this.inner.lock().stack.close(this.flow);
        this.inner.notify.notify_one();
        Poll::Ready(result.map_err(io::Error::from))
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        {
            let mut shared = self.inner.lock();
            shared.stack.release(self.flow);
            shared.wakers.remove(&self.flow);
        }
        self.inner.notify.notify_one();
    }
}

/// Terminate mode: a client's new TCP flow, waiting for the relay's decision. Dropping it
/// undecided refuses it.
pub struct IncomingTcp {
    inner: Arc<Inner>,
    flow: FlowId,
    src: SocketAddr,
    dst: SocketAddr,
    armed: bool,
}

impl IncomingTcp {
    pub(super) fn new(inner: Arc<Inner>, flow: FlowId, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            inner,
            flow,
            src,
            dst,
            armed: true,
        }
    }

    /// The client's endpoint.
    pub fn src(&self) -> SocketAddr {
        self.src
    }

    /// The destination the client asked for.
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// Accept: complete the handshake and return the flow once established.
    pub async fn accept(mut self) -> io::Result<TcpFlow> {
        self.armed = false;
        {
            let mut shared = self.inner.lock();
            shared.check_running()?;
            if let Err(e) = shared.stack.accept(self.flow) {
                shared.wakers.remove(&self.flow);
                return Err(e.into());
            }
        }
        self.inner.notify.notify_one();
        let flow = TcpFlow::new(Arc::clone(&self.inner), self.flow);
        flow.established().await?;
        Ok(flow)
    }

    /// Refuse: the client gets RST, as from a closed port.
    pub fn refuse(mut self) {
        self.armed = false;
        let _ = self.inner.lock().stack.refuse(self.flow);
        self.inner.notify.notify_one();
    }

    /// Forget the flow without touching the stack (used under the stack's lock).
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl fmt::Debug for IncomingTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingTcp")
            .field("flow", &self.flow)
            .field("src", &self.src)
            .field("dst", &self.dst)
            .finish()
    }
}

impl Drop for IncomingTcp {
    fn drop(&mut self) {
        if self.armed {
            {
                let mut shared = self.inner.lock();
                let _ = shared.stack.refuse(self.flow);
                shared.wakers.remove(&self.flow);
            }
            self.inner.notify.notify_one();
        }
    }
}
