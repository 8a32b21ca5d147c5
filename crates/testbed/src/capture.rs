//! tcpdump captures and what they contain.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet, Ipv6Packet};

use crate::netns::{Host, Testbed};
use crate::Error;

/// A running tcpdump on one host's link.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

/// One captured IP packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// The whole frame, for byte searches.
    pub bytes: Vec<u8>,
}

impl Capture {
    pub(crate) fn start(bed: &Testbed, host: &Host) -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("{}-{}.pcap", host.ns, std::process::id()));
        let _ = std::fs::remove_file(&path);
        let child = bed
            .command(host, "tcpdump")
            .args([
                "-Z",
                "root",
                "--immediate-mode",
                "-U",
                "-i",
                &host.iface,
                "-s",
                "0",
                "-n",
                "-w",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: "tcpdump".into(),
                source,
            })?;
        // tcpdump writes the file header once it is listening.
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self { child, path })
    }

    /// Stops tcpdump and returns every IP packet it saw.
    pub fn stop(mut self) -> Result<Vec<Packet>, Error> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::process::Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let file = std::fs::File::open(&self.path).map_err(|e| Error::Capture(e.to_string()))?;
        let mut reader =
            pcap_file::pcap::PcapReader::new(file).map_err(|e| Error::Capture(e.to_string()))?;
        let mut packets = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.map_err(|e| Error::Capture(e.to_string()))?;
            if let Some(packet) = parse(&p.data) {
                packets.push(packet);
            }
        }
        let _ = std::fs::remove_file(&self.path);
        Ok(packets)
    }
}

fn parse(frame: &[u8]) -> Option<Packet> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let (src, dst) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()))
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()))
        }
        _ => return None,
    };
    Some(Packet {
        src,
        dst,
        bytes: frame.to_vec(),
    })
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether any packet contains `needle` anywhere in its bytes.
pub fn any_contains(packets: &[Packet], needle: &[u8]) -> bool {
    packets
        .iter()
        .any(|p| p.bytes.windows(needle.len()).any(|w| w == needle))
}
