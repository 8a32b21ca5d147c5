use std::io::Write;
use std::process::{Command, Stdio};

use crate::HostError;

/// Runs `ip` and `nft` here, or inside a network namespace (tests).
#[derive(Debug, Clone, Default)]
pub struct Runner {
    netns: Option<String>,
}

impl Runner {
    /// Commands in the current network namespace.
    pub fn here() -> Self {
        Self { netns: None }
    }

    /// Commands inside the named network namespace (`ip netns exec`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            netns: Some(name.to_string()),
        }
    }

    /// Runs `program args`, feeding `stdin`; returns standard output.
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, HostError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = format!("{program} {}", args.join(" "));
        let mut child = cmd.spawn().map_err(|source| HostError::Missing {
            program: program.to_string(),
            package: if program == "nft" {
                "nftables"
            } else {
                "iproute2"
            },
            source,
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|source| HostError::File {
                    path: format!("stdin of {program}"),
                    source,
                })?;
        }
        let out = child.wait_with_output().map_err(|source| HostError::File {
            path: format!("output of {program}"),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let hint = if stderr.contains("Operation not permitted")
                || stderr.contains("Permission denied")
            {
                " (run as root)"
            } else {
                ""
            };
            return Err(HostError::Failed {
                command: line,
                stderr,
                hint,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
