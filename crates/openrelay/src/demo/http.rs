//! The demo's destination: a small HTTP/1.1 server on loopback.
//!
//! `GET /` returns a page with a marker string (tests look for it in captures);
//! `GET /bytes/N` returns N bytes of a fixed pseudo-random stream, for large transfers.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A string the demo page contains, so a capture can show whether a hop saw the payload.
pub const PAGE_MARKER: &str = "openrelay-demo-page-7f3a";

/// Largest `/bytes/N` served.
const MAX_BYTES: u64 = 1 << 31;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = handle(stream).await;
        });
    }
}

/// Binds 127.0.0.1 on a free port.
pub async fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

async fn handle(stream: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut request = String::new();
    r.read_line(&mut request).await?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= MAX_BYTES)
    {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
        w.write_all(head.as_bytes()).await?;
        let mut stream = ByteStream::new();
        let mut left = n;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let chunk = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let part = buf.get_mut(..chunk).unwrap_or_default();
            stream.fill(part);
            w.write_all(part).await?;
            left -= chunk as u64;
        }
    } else if path == "/" {
        let body = format!(
            "<!doctype html><title>OpenRelay demo</title><p>Fetched through two hops. {PAGE_MARKER}</p>\n"
        );
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        w.write_all(head.as_bytes()).await?;
        w.write_all(body.as_bytes()).await?;
    } else {
        w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
    }
    w.shutdown().await
}

/// xorshift64*: cheap, deterministic filler so large transfers can be compared by hash.
struct ByteStream(u64);

impl ByteStream {
    fn new() -> Self {
        Self(0x9E37_79B9_7F4A_7C15)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(v.get(..n).unwrap_or(&v));
        }
    }
}
