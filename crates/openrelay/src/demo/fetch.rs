//! A minimal HTTP/1.1 GET through a SOCKS5 proxy, so the demo needs no curl.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use socks::wire::{self, Command, Decoded, Request, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fetches `http://{target}{path}` through the SOCKS5 proxy at `proxy`; returns the
/// status line and the body.
pub async fn get_via_socks(
    proxy: SocketAddr,
    target: SocketAddr,
    path: &str,
) -> anyhow::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("cannot reach the SOCKS5 proxy at {proxy}"))?;
    let mut out = Vec::new();
    wire::encode_greeting(&[wire::METHOD_NO_AUTH], &mut out)?;
    s.write_all(&out).await?;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, |b| {
        wire::parse_method_selection(b).map(|d| matches!(d, Decoded::Complete(..)))
    })
    .await?;
    out.clear();
    wire::encode_request(
        &Request {
            command: Command::Connect,
            target: Target::Ip(target),
        },
        &mut out,
    )?;
    s.write_all(&out).await?;
    buf.clear();
    read_until(&mut s, &mut buf, |b| {
        wire::parse_reply(b).map(|d| matches!(d, Decoded::Complete(..)))
    })
    .await?;
    if let Ok(Decoded::Complete(reply, _)) = wire::parse_reply(&buf) {
        if reply.code != wire::ReplyCode::Succeeded {
            bail!("the proxy could not connect to {target}: {:?}", reply.code);
        }
    }
    let req = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).await?;
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the response from {target} has no HTTP header");
    };
    let head = String::from_utf8_lossy(response.get(..split).unwrap_or_default()).to_string();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body))
}

async fn read_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Result<bool, wire::WireError>,
) -> anyhow::Result<()> {
    let mut chunk = [0u8; 512];
    loop {
        if done(buf)? {
            return Ok(());
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the SOCKS5 proxy closed the connection during the handshake");
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}
