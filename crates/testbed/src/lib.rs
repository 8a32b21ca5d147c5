//! Several hosts on one machine, as the internet would join them, for tests that need real
//! routing and packet captures.
//!
//! ```text
//!   client 198.18.1.2 ─┐
//!  ingress 198.18.2.2 ─┤
//!   egress 198.18.3.2 ─┼─ router (forwards between /24s, like the internet)
//!     dest 198.18.4.2 ─┘
//! ```
//!
//! Each host is a network namespace with one veth link to the router namespace, an IPv4
//! and an IPv6 address and a default route. The testbed removes its namespaces (and kills
//! the processes it started) when dropped. Needs root and iproute2; captures need tcpdump.
//!
//! [`run_alone`] runs a test binary's one test without libtest, for tests that count the
//! whole process's heap.

mod alone;
mod capture;
mod netns;

pub use alone::run_alone;
pub use capture::{any_contains, Capture, Packet};
pub use netns::{Host, Testbed};

/// Runs `command` with `input` on its standard input and collects its output (for
/// commands that read a password from standard input).
pub fn output_with_input(
    command: &mut std::process::Command,
    input: &str,
) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    child.wait_with_output()
}

/// Whether this process can build testbeds (root, and `ip` present).
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && std::process::Command::new("ip").arg("-V").output().is_ok()
}

/// Whether a test that builds testbeds should run: yes where [`available`], no where
/// `OPENRELAY_SKIP_ROOT_TESTS` is set, and otherwise a panic that says so, so that a
/// machine without root does not pass such tests silently.
pub fn required() -> bool {
    if available() {
        return true;
    }
    assert!(
        std::env::var_os("OPENRELAY_SKIP_ROOT_TESTS").is_some(),
        "these tests need root and iproute2 (CI has both); set OPENRELAY_SKIP_ROOT_TESTS=1 to skip them"
    );
    false
}

/// Why a testbed could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A command could not be started (not installed?).
    #[error("cannot run `{command}`: {source} (install iproute2 / tcpdump)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A capture file could not be read.
    #[error("cannot read the capture: {0}")]
    Capture(String),
}
