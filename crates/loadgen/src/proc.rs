//! CPU time and resident memory of a process, from Linux's `/proc`.

use std::io;
use std::time::Duration;

/// A process's accumulated CPU time (user + system) and resident set, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size (`VmRSS`), in bytes.
    pub rss: u64,
}

/// Reads CPU time and resident memory of process `pid`.
pub fn sample(pid: u32, ticks_per_sec: u64) -> io::Result<Sample> {
    Ok(Sample {
        cpu: cpu_time(pid, ticks_per_sec)?,
        rss: rss(pid)?,
    })
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 if that fails, which
/// is what Linux uses on every common architecture).
pub fn ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User plus system CPU time of `pid` (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_time(pid: u32, ticks_per_sec: u64) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| bad("/proc/PID/stat"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_sec.max(1) as f64,
    ))
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| bad("/proc/PID/status"))
}

/// utime + stime in ticks. The command name (field 2) may contain spaces and parentheses,
/// so fields are counted after its closing parenthesis: field 3 is the first there.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/PID/status`, such as `VmRSS:    1234 kB`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t    1234 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1234));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id(), ticks_per_sec()).expect("own /proc entry");
        assert!(s.rss > 0);
    }
}
