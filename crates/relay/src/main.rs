//! `openrelay-relay`: the relay alone, as measured and attested.
//!
//! It holds only what a relay needs (no client, no demo), so the image that validators
//! rebuild and clients approve stays small. `openrelay relay` runs the same code.

use clap::Parser;

/// mimalloc gives freed pages back to the kernel. glibc's malloc kept a relay at its peak:
/// 10,000 sleeping sessions (their state machines and stacks freed) still held all of the
/// 370 MiB they had used awake; with mimalloc 168 MiB. Only the relay image uses it: in the
/// `openrelay` tool (client and relays) it made the benchmark's two-hop connect 104-159 ms
/// instead of 46. It is built without transparent huge pages (feature `no_thp`), and
/// `main` turns them off for the process too (the kernel may use them without being
/// asked): with them, 10,000 handshakes at 800/s had a p99 setup latency of 32-34 ms and
/// 1,486-1,577 handshakes per CPU-second; without, 8.0-8.3 ms and 1,805-1,908. Blocks of
/// 128 KiB or more (the userspace stack's TCP buffers) get mappings of their own
/// (`pagealloc`): 10,000 sessions each holding a quiet TCP connection took 0.9 KiB per
/// session less.
#[global_allocator]
static ALLOCATOR: pagealloc::PageAlloc = pagealloc::PageAlloc;

/// OpenRelay relay (ingress or egress). Keeps everything in RAM, writes nothing to disk,
/// and logs only aggregate counters, never an address.
#[derive(Debug, Parser)]
#[command(name = "openrelay-relay", version)]
struct Cli {
    #[command(subcommand)]
    role: relay::cli::RelayCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "openrelay-relay: cannot turn transparent huge pages off ({e}); running with them"
        );
    }
    let cli = Cli::parse();
    relay::cli::init_logging();
    relay::cli::run_until_signal(&cli.role).await?;
    Ok(())
}
