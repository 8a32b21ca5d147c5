//! The measurements: iperf3 (TCP both ways, UDP), ping (idle and under load) and the CPU
//! time of the tunnel processes, all from the client host towards the destination host.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use testbed::Testbed;

/// How long and how hard to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Seconds per iperf3 run.
    pub(crate) seconds: u32,
    /// UDP datagram payload in bytes (below every tunnel's MTU).
    pub(crate) udp_len: u32,
    /// Pings per RTT measurement.
    pub(crate) pings: u32,
    /// Fixed UDP send rate in Mbit/s for the loss measurement at moderate load.
    pub(crate) udp_rate_mbps: u32,
}

/// What one scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Metrics {
    /// TCP client → destination, Mbit/s at the receiver.
    pub(crate) tcp_up_mbps: f64,
    /// TCP destination → client (iperf3 -R), Mbit/s at the receiver.
    pub(crate) tcp_down_mbps: f64,
    /// UDP client → destination with an unlimited send rate, Mbit/s received.
    pub(crate) udp_mbps: f64,
    /// UDP datagrams lost in that run, percent.
    pub(crate) udp_loss_pct: f64,
    /// UDP datagrams lost at the fixed rate of [`Plan::udp_rate_mbps`], percent.
    pub(crate) udp_loss_at_rate_pct: f64,
    /// TCP segments the sender retransmitted in the upload (iperf3's count): drops in the
    /// tunnel's queues, which a saturating flow reaches by design, show here.
    pub(crate) tcp_up_retransmits: Option<u64>,
    /// The same for the download (the destination's sender).
    pub(crate) tcp_down_retransmits: Option<u64>,
    /// The upload's retransmitted segments as a share of the segments sent, percent
    /// (segments of the connection's default MSS).
    pub(crate) tcp_up_retransmit_pct: Option<f64>,
    /// The same for the download.
    pub(crate) tcp_down_retransmit_pct: Option<f64>,
    /// Average ping RTT with no load, ms.
    pub(crate) rtt_idle_ms: f64,
    /// Times a second that a thread of the tunnel processes went to sleep (voluntary
    /// context switches) with no traffic: timers that wake an idle tunnel.
    pub(crate) idle_sleeps_per_s: Option<f64>,
    /// Times per idle ping and its reply that a thread of the tunnel processes went to
    /// sleep, beyond `idle_sleeps_per_s`: each is a wake-up on the ping's path or beside
    /// it, which costs most when its core has halted.
    pub(crate) sleeps_per_ping: Option<f64>,
    /// Average ping RTT with no load while every core is kept awake ([`Awake`]), ms: the
    /// tunnel's own latency without the cost of waking idle cores.
    pub(crate) rtt_awake_ms: f64,
    /// Average ping RTT while a TCP upload runs, ms.
    pub(crate) rtt_load_ms: Option<f64>,
    /// CPU seconds (user + system) of the tunnel processes per GB moved over both TCP runs;
    /// `None` when no process carries the traffic (the kernel forwards it).
    pub(crate) cpu_s_per_gb: Option<f64>,
}

/// Starts iperf3's server in the destination host and waits until it listens.
pub(crate) fn start_iperf_server(bed: &Testbed) -> Result<()> {
    bed.spawn(
        &bed.dest,
        &["iperf3", "--server", "--port", "5201"],
        Stdio::null(),
        Stdio::null(),
    )?;
    wait_for("iperf3's server", Duration::from_secs(10), || {
        bed.exec(&bed.dest.ns, &["ss", "-Htln", "sport = :5201"])
            .is_ok_and(|out| !out.trim().is_empty())
    })
}

/// Runs every measurement of one scenario; `pids` are the tunnel processes to account.
pub(crate) fn run(bed: &Testbed, plan: Plan, pids: &[u32]) -> Result<Metrics> {
    let dest = bed.dest.addr.to_string();
    // The tunnel's own timers wake it without traffic too: counted first, then taken
    // out of the pings' count.
    let quiet = Duration::from_secs(2);
    let before_quiet = sleeps(pids)?;
    std::thread::sleep(quiet);
    let before = sleeps(pids)?;
    let started = std::time::Instant::now();
    let rtt_idle_ms = ping(bed, &dest, plan.pings)?
        .ok_or_else(|| anyhow!("no ping answered through the path"))?;
    let pinged = started.elapsed();
    let after = sleeps(pids)?;
    let idle_sleeps_per_s = (!pids.is_empty())
        .then(|| before.saturating_sub(before_quiet) as f64 / quiet.as_secs_f64());
    let sleeps_per_ping = idle_sleeps_per_s.map(|background| {
        let during = after.saturating_sub(before) as f64 - background * pinged.as_secs_f64();
        (during / f64::from(plan.pings)).max(0.0)
    });
    let rtt_awake_ms = {
        let _awake = Awake::start(Duration::from_secs(u64::from(plan.pings) / 5 + 30))?;
        ping(bed, &dest, plan.pings)?
            .ok_or_else(|| anyhow!("no ping answered through the path with the cores awake"))?
    };

    let ticks = clock_ticks()?;
    let cpu_before = cpu_ticks(pids)?;
    // The upload, with ping running alongside once the flow has ramped up.
    let load_pings = plan.pings.min(plan.seconds.saturating_sub(1) * 5).max(1);
    let (up, rtt_load_ms) = std::thread::scope(|s| {
        let iperf = s.spawn(|| iperf(bed, &dest, &[], plan.seconds));
        std::thread::sleep(Duration::from_millis(700));
        let rtt = ping(bed, &dest, load_pings);
        let up = iperf
            .join()
            .map_err(|_| anyhow!("the iperf3 thread panicked"))?;
        anyhow::Ok((up?, rtt?))
    })?;
    let down = iperf(bed, &dest, &["--reverse"], plan.seconds)?;
    let cpu_after = cpu_ticks(pids)?;

    let len = plan.udp_len.to_string();
    let udp = iperf(
        bed,
        &dest,
        &["--udp", "--bitrate", "0", "--length", &len],
        plan.seconds,
    )?;

    let rate = format!("{}M", plan.udp_rate_mbps);
    let udp_at_rate = iperf(
        bed,
        &dest,
        &["--udp", "--bitrate", &rate, "--length", &len],
        plan.seconds,
    )?;

    let (tcp_up_mbps, up_bytes) = received(&up, "TCP upload")?;
    let (tcp_down_mbps, down_bytes) = received(&down, "TCP download")?;
    let (udp_mbps, _) = received(&udp, "UDP")?;
    let loss = |report: &serde_json::Value| {
        report
            .pointer("/end/sum_received/lost_percent")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let udp_loss_pct = loss(&udp);
    let udp_loss_at_rate_pct = loss(&udp_at_rate);
    let gb = (up_bytes + down_bytes) / 1e9;
    let cpu_s_per_gb = (!pids.is_empty() && gb > 0.0)
        .then(|| (cpu_after.saturating_sub(cpu_before)) as f64 / ticks / gb);
    Ok(Metrics {
        tcp_up_mbps,
        tcp_down_mbps,
        tcp_up_retransmits: retransmits(&up),
        tcp_down_retransmits: retransmits(&down),
        tcp_up_retransmit_pct: retransmit_pct(&up),
        tcp_down_retransmit_pct: retransmit_pct(&down),
        udp_mbps,
        udp_loss_pct,
        udp_loss_at_rate_pct,
        rtt_idle_ms,
        idle_sleeps_per_s,
        sleeps_per_ping,
        rtt_awake_ms,
        rtt_load_ms,
        cpu_s_per_gb,
    })
}

/// One busy loop per core at the lowest priority (`chrt --idle`) while it lives.
///
/// An idle core of a virtual machine halts, and waking it again goes through the
/// hypervisor: on the 2-core KVM machine of the README that is most of a tunnel's idle RTT.
/// The loops keep the cores from halting and give way at once to any runnable task, so
/// pings measured meanwhile show what the tunnel itself adds.
struct Awake(Vec<std::process::Child>);

impl Awake {
    /// Keeps the cores awake for at most `limit`, which the loops also keep to if the
    /// harness is killed before it stops them. Each is a bare loop: one that checked for
    /// its parent would enter the kernel at every turn.
    fn start(limit: Duration) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut awake = Self(Vec::with_capacity(cores));
        let limit = limit.as_secs().max(1).to_string();
        for _ in 0..cores {
            let child = std::process::Command::new("timeout")
                .args([
                    limit.as_str(),
                    "chrt",
                    "--idle",
                    "0",
                    "sh",
                    "-c",
                    "while :; do :; done",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run timeout (apt-get install coreutils)")?;
            awake.0.push(child);
        }
        // Let the loops reach their cores before the first ping.
        std::thread::sleep(Duration::from_millis(200));
        Ok(awake)
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // `timeout` passes SIGTERM on to the loop; SIGKILL would leave the loop behind.
            crate::scenario::signal(child.id(), "-TERM");
            let _ = child.wait();
        }
    }
}

/// One iperf3 client run from the client host, its JSON report.
fn iperf(bed: &Testbed, dest: &str, extra: &[&str], seconds: u32) -> Result<serde_json::Value> {
    let limit = (seconds + 30).to_string();
    let secs = seconds.to_string();
    let out = bed
        .command(&bed.client, "timeout")
        .args([
            "--signal=KILL",
            &limit,
            "iperf3",
            "--client",
            dest,
            "--time",
            &secs,
            "--json",
            "--connect-timeout",
            "5000",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("cannot run iperf3 in the client host")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 {extra:?} printed no report (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = report.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3 {extra:?}: {err}");
    }
    Ok(report)
}

/// Mbit/s and bytes at the receiving end of an iperf3 report.
fn received(report: &serde_json::Value, what: &str) -> Result<(f64, f64)> {
    let sum = report
        .pointer("/end/sum_received")
        .ok_or_else(|| anyhow!("the {what} report has no end.sum_received"))?;
    let field = |k: &str| {
        sum.get(k)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| anyhow!("the {what} report has no {k}"))
    };
    Ok((field("bits_per_second")? / 1e6, field("bytes")?))
}

/// Segments the sending end of a TCP iperf3 run retransmitted (the server's in a
/// `--reverse` run); `None` where the platform does not report them.
fn retransmits(report: &serde_json::Value) -> Option<u64> {
    report
        .pointer("/end/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64)
}

/// [`retransmits`] as a share of the segments sent, percent: the bytes sent in segments of
/// the connection's default MSS.
fn retransmit_pct(report: &serde_json::Value) -> Option<f64> {
    let retransmits = retransmits(report)?;
    let mss = report
        .pointer("/start/tcp_mss_default")
        .and_then(serde_json::Value::as_f64)?;
    let sent = report
        .pointer("/end/sum_sent/bytes")
        .and_then(serde_json::Value::as_f64)?;
    let segments = sent / mss;
    (segments >= 1.0).then(|| retransmits as f64 / segments * 100.0)
}

/// Average RTT in ms of `count` pings 0.2 s apart from the client host, or `None` if
/// none was answered.
pub(crate) fn ping(bed: &Testbed, dest: &str, count: u32) -> Result<Option<f64>> {
    let count = count.to_string();
    let out = bed
        .command(&bed.client, "ping")
        .args(["-q", "-n", "-c", &count, "-i", "0.2", "-W", "2", dest])
        .stdin(Stdio::null())
        .output()
        .context("cannot run ping in the client host")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "rtt min/avg/max/mdev = 0.041/0.052/0.080/0.010 ms"
    Ok(text
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("avg")))
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|avg| avg.parse().ok()))
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of /proc/PID/stat times.
fn clock_ticks() -> Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("cannot run getconf")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")
}

/// Sum of utime + stime (all threads) of the processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("tunnel process {pid} is gone"))?;
        // The command name may hold spaces; the fields after it do not.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `rest` starts at field 3.
        for i in [11, 12] {
            total += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))?;
        }
    }
    Ok(total)
}

/// Voluntary context switches of all threads of the processes so far.
fn sleeps(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("tunnel process {pid} is gone"))?;
        for task in tasks {
            let status = std::fs::read_to_string(task?.path().join("status"))
                // A thread that ended meanwhile took its count with it.
                .unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Polls `f` every 100 ms until it holds or `timeout` passes.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of iperf3 3.12's `--json` report for a TCP run, trimmed to what is read.
    const TCP_REPORT: &str = r#"{
        "start": {"tcp_mss_default": 1360},
        "end": {
            "sum_sent": {"bytes": 3400000000, "bits_per_second": 2.72e9, "retransmits": 131435},
            "sum_received": {"bytes": 3390000000, "bits_per_second": 2.712e9}
        }
    }"#;

    #[test]
    fn a_tcp_report_gives_its_receivers_rate_and_its_senders_retransmissions() {
        let report: serde_json::Value = serde_json::from_str(TCP_REPORT).unwrap();
        let (mbps, bytes) = received(&report, "TCP upload").unwrap();
        assert_eq!(mbps, 2712.0);
        assert_eq!(bytes, 3.39e9);
        assert_eq!(retransmits(&report), Some(131_435));
        // 3.4e9 bytes in 1,360-byte segments: 2.5 million, of which 131,435 again.
        let pct = retransmit_pct(&report).unwrap();
        assert!((pct - 5.2574).abs() < 1e-3, "{pct}");
    }

    #[test]
    fn a_udp_report_has_no_retransmissions_and_a_report_without_a_receiver_is_an_error() {
        let udp: serde_json::Value = serde_json::from_str(
            r#"{"end": {"sum": {"lost_percent": 1.5}, "sum_received": {"bytes": 10, "bits_per_second": 8}}}"#,
        )
        .unwrap();
        assert_eq!(retransmits(&udp), None);
        assert_eq!(retransmit_pct(&udp), None);
        let empty: serde_json::Value = serde_json::from_str(r#"{"end": {}}"#).unwrap();
        let err = received(&empty, "TCP upload").unwrap_err().to_string();
        assert!(err.contains("no end.sum_received"), "{err}");
    }
}
