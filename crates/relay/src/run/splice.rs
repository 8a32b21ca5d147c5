//! Relays a connection's bytes both ways, as tokio's `copy_bidirectional` does, but holds a
//! buffer only while bytes are in transit. `copy_bidirectional` keeps two 8 KiB buffers for
//! a connection's whole life: at an egress where 10,000 sessions each held one idle TCP
//! connection that was half of the 31.8 KiB each session cost. Here a direction takes a
//! buffer from its thread's pool when it reads, and gives it back once the bytes are
//! written on; a read that finds nothing gives it back at once.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one read may take.
const CHUNK: usize = 32 * 1024;
/// Buffers a thread keeps for the next reads (1 MiB); more are freed.
const KEPT: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Buffers taken and not given back.
    static OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn take() -> Vec<u8> {
    #[cfg(test)]
    OUT.set(OUT.get() + 1);
    POOL.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0; CHUNK])
}

fn give(buf: Vec<u8>) {
    #[cfg(test)]
    OUT.set(OUT.get().saturating_sub(1));
    POOL.with_borrow_mut(|pool| {
        if pool.len() < KEPT {
            pool.push(buf);
        }
    });
}

/// Copies `a` to `b` and `b` to `a` until both have ended; each end is shut down for
/// writing once the other has no more to send. Returns the bytes copied each way.
pub(super) async fn both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let there = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let back = b_to_a.poll(cx, &mut *b, &mut *a)?;
        match (there, back) {
            (Poll::Ready(there), Poll::Ready(back)) => Poll::Ready(Ok((there, back))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction's progress.
#[derive(Default)]
struct Direction {
    /// Bytes read and not yet all written: `buf[written..filled]` is left.
    buf: Option<Vec<u8>>,
    filled: usize,
    written: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader has ended.
    eof: bool,
    /// The writer has been shut down: this direction is done.
    shut: bool,
    copied: u64,
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give(buf);
        }
    }
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.shut {
                return Poll::Ready(Ok(self.copied));
            }
            if let Some(buf) = &self.buf {
                while self.written < self.filled {
                    let left = buf.get(self.written..self.filled).unwrap_or_default();
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, left))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.written += n;
                    self.copied += n as u64;
                    self.unflushed = true;
                }
                if let Some(buf) = self.buf.take() {
                    give(buf);
                }
                continue;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.shut = true;
                continue;
            }
            let mut buf = take();
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *r).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        give(buf);
                        self.eof = true;
                    } else {
                        (self.filled, self.written) = (n, 0);
                        self.buf = Some(buf);
                    }
                }
                Poll::Ready(Err(e)) => {
                    give(buf);
                    return Poll::Ready(Err(e));
                }
                // Nothing to read: the buffer goes back, and what was written goes out.
                Poll::Pending => {
                    give(buf);
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Bytes cross both ways byte-exact, each end's shutdown reaches the other, the counts
    /// are right, and between bursts the connection holds no buffer.
    #[tokio::test(flavor = "current_thread")]
    async fn bytes_cross_both_ways_and_an_idle_connection_holds_no_buffer() {
        // Small pipes, so that the copy waits on full writers too.
        let (mut client, mut a) = duplex(4096);
        let (mut b, mut server) = duplex(4096);
        let relay = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        let up = pattern(300_000, 1);
        let down = pattern(200_000, 7);

        let (up2, down2) = (up.clone(), down.clone());
        let server_side = async {
            let mut got = vec![0; up2.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&down2).await.unwrap();
            got
        };
        let client_side = async {
            client.write_all(&up).await.unwrap();
            let mut got = vec![0; down.len()];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let (at_server, at_client) = tokio::join!(server_side, client_side);
        assert_eq!(at_server, up);
        assert_eq!(at_client, down);
        tokio::task::yield_now().await;
        assert_eq!(OUT.get(), 0, "an idle connection holds no buffer");

        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the client's end reached the server");
        server.write_all(b"last words").await.unwrap();
        server.shutdown().await.unwrap();
        let mut last = Vec::new();
        client.read_to_end(&mut last).await.unwrap();
        assert_eq!(
            last, b"last words",
            "a half-closed connection still carries the rest"
        );
        let (there, back) = relay.await.unwrap().unwrap();
        assert_eq!((there, back), (up.len() as u64, down.len() as u64 + 10));
        assert_eq!(OUT.get(), 0);
    }
}
