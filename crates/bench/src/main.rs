//! `openrelay-bench`: the benchmark harness of issue 6. In one run, in network namespaces on
//! this machine, it measures the bare veth path, wireguard-go single hop, boringtun-cli
//! single hop (when installed), OpenRelay single hop (`openrelay-bench-peer`, the client's
//! data path with one session, straight to a TUN-mode egress), a stock wireguard-go peer of
//! that egress, and OpenRelay two hops (`openrelay client --tun` through an ingress and a
//! TUN-mode egress), then prints one table and writes it as JSON.
//!
//! Needs root, iproute2, nftables, iperf3, ping, python3, wireguard-go and wg. Run it with
//! `bench/run`, which builds everything in release first.

mod measure;
mod rounds;
mod scenario;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::measure::{Metrics, Plan};
use crate::scenario::{Env, Outcome};

/// Benchmarks OpenRelay against the bare path, wireguard-go and boringtun in network
/// namespaces (needs root).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The `openrelay` executable to measure (build it with --release).
    #[arg(long, default_value = "target/release/openrelay")]
    openrelay: PathBuf,
    /// The relay executable that the ingress and egress run: the relay image
    /// (`openrelay-relay`), as operators deploy it.
    #[arg(long, default_value = "target/release/openrelay-relay")]
    relay: PathBuf,
    /// The one-hop peer (`openrelay-bench-peer`, built with this harness).
    #[arg(long, default_value = "target/release/openrelay-bench-peer")]
    peer: PathBuf,
    /// Seconds per iperf3 run (TCP up, TCP down, UDP).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// UDP datagram payload in bytes; below every tunnel's MTU (two hops: 1340).
    #[arg(long, default_value_t = 1200)]
    udp_len: u32,
    /// Send rate in Mbit/s of the second UDP run, which measures loss under moderate load.
    #[arg(long, default_value_t = 100)]
    udp_rate: u32,
    /// Pings 0.2 s apart for the idle RTT, again with every core kept awake, and (as many
    /// as fit the upload) under load.
    /// With 20 the idle RTT moves by about a tenth of a millisecond between runs; more
    /// pings make it steadier.
    #[arg(long, default_value_t = 20)]
    pings: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these scenarios (repeat or separate with commas), e.g. to profile one.
    /// The bare path always runs: the RTT columns are measured against it. The ratio
    /// column needs wireguard-go.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Pick>,
    /// Run every scenario this many times, round after round, and show each column's
    /// median. A shared machine's speed drifts within minutes; each round's ratios and
    /// added RTTs are taken against that round's wireguard-go and bare path, and the
    /// table lists every round's ratios under it. The JSON keeps every round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
}

/// A scenario as `--only` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pick {
    WireguardGo,
    Boringtun,
    OneHop,
    StockPeer,
    TwoHops,
}

/// The whole result: the machine, the plan and one row per scenario.
#[derive(Debug, Serialize)]
struct Report {
    /// When the run ended (UTC, RFC 3339).
    date: String,
    /// What it ran on.
    machine: Machine,
    /// Seconds per iperf3 run.
    seconds: u32,
    /// UDP payload bytes.
    udp_len: u32,
    /// Send rate of the second UDP run, Mbit/s.
    udp_rate_mbps: u32,
    /// How many times each scenario ran.
    rounds: u32,
    /// One per scenario, in order: each column's median over the rounds.
    scenarios: Vec<Row>,
    /// Every round's rows, when there was more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    by_round: Vec<Vec<Row>>,
}

/// The machine the numbers come from.
#[derive(Debug, Serialize)]
struct Machine {
    /// The CPU model (/proc/cpuinfo).
    cpu: String,
    /// Online cores.
    cores: usize,
    /// `uname -r`.
    kernel: String,
    /// The 1-minute load average when the run started (other work skews the numbers).
    load_at_start: f64,
}

/// One scenario's line of the table.
#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    /// Scenario name.
    name: String,
    /// Why it has no numbers (not installed, or what failed).
    skipped: Option<String>,
    /// Its measurements.
    #[serde(flatten)]
    metrics: Option<Metrics>,
    /// RTT added over the bare path without load, ms.
    rtt_idle_added_ms: Option<f64>,
    /// RTT added over the bare path without load, every core kept awake, ms.
    rtt_awake_added_ms: Option<f64>,
    /// RTT added over the bare path's idle RTT while a TCP upload runs, ms.
    rtt_load_added_ms: Option<f64>,
    /// TCP upload throughput relative to wireguard-go single hop.
    tcp_up_vs_wireguard_go: Option<f64>,
    /// TCP download throughput relative to wireguard-go single hop.
    tcp_down_vs_wireguard_go: Option<f64>,
    /// Process start until the client printed "connected through" (both hops attested).
    connect_ms: Option<f64>,
    /// The first ping after the client rested (a new handshake with each relay), ms.
    wake_ms: Option<f64>,
}

/// One of the measured setups.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// The bare veth path through the router.
    Bare,
    /// wireguard-go at both ends, one hop.
    WireguardGo,
    /// boringtun at both ends, one hop (the executable's name).
    Boringtun(&'static str),
    /// `openrelay-bench-peer` straight to an OpenRelay TUN-mode egress.
    OneHop,
    /// A stock wireguard-go peer of an OpenRelay TUN-mode egress.
    StockPeer,
    /// `openrelay client --tun` through an ingress and a TUN-mode egress.
    TwoHops,
}

impl Scenario {
    fn run(self, env: &Env) -> Result<Outcome> {
        match self {
            Self::Bare => scenario::bare(env),
            Self::WireguardGo => {
                scenario::userspace_wireguard(env, &["wireguard-go", "--foreground"])
            }
            Self::Boringtun(bin) => scenario::userspace_wireguard(
                env,
                &[bin, "--foreground", "--disable-drop-privileges"],
            ),
            Self::OneHop => scenario::openrelay_one_hop(env),
            Self::StockPeer => scenario::stock_peer(env),
            Self::TwoHops => scenario::openrelay_two_hops(env),
        }
    }
}

const BARE: &str = "bare veth";
const WG_GO: &str = "wireguard-go 1 hop";

fn main() {
    if let Err(e) = run() {
        eprintln!("openrelay-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    preflight()?;
    let plan = Plan {
        seconds: args.seconds.max(2),
        udp_len: args.udp_len,
        pings: args.pings.max(1),
        udp_rate_mbps: args.udp_rate,
    };
    let env = Env::new(&args.openrelay, &args.relay, &args.peer, plan)?;
    let machine = machine();
    eprintln!(
        "machine: {} ({} cores), Linux {}, load {:.2}; {} s per iperf3 run",
        machine.cpu, machine.cores, machine.kernel, machine.load_at_start, plan.seconds
    );

    let boringtun = ["boringtun-cli", "boringtun"]
        .into_iter()
        .find(|p| on_path(p));
    let scenarios = [
        (BARE, None, Some(Scenario::Bare)),
        (WG_GO, Some(Pick::WireguardGo), Some(Scenario::WireguardGo)),
        (
            "boringtun-cli 1 hop",
            Some(Pick::Boringtun),
            boringtun.map(Scenario::Boringtun),
        ),
        (
            "OpenRelay 1 hop",
            Some(Pick::OneHop),
            Some(Scenario::OneHop),
        ),
        (
            "wireguard-go -> OpenRelay egress",
            Some(Pick::StockPeer),
            Some(Scenario::StockPeer),
        ),
        (
            "OpenRelay 2 hops",
            Some(Pick::TwoHops),
            Some(Scenario::TwoHops),
        ),
    ];
    let picked = |p: Option<Pick>| args.only.is_empty() || p.is_none_or(|p| args.only.contains(&p));
    let scenarios: Vec<_> = scenarios
        .into_iter()
        .filter(|(_, p, _)| picked(*p))
        .collect();
    let mut by_round = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        let mut rows: Vec<Row> = scenarios
            .iter()
            .map(|(name, _, scenario)| run_one(name, *scenario, &env))
            .collect();
        relate(&mut rows);
        by_round.push(rows);
    }
    let rows = if args.rounds > 1 {
        rounds::summarize(&by_round)
    } else {
        by_round.pop().unwrap_or_default()
    };
    let report = Report {
        date: now_utc(),
        machine,
        seconds: plan.seconds,
        udp_len: plan.udp_len,
        udp_rate_mbps: plan.udp_rate_mbps,
        rounds: args.rounds,
        scenarios: rows,
        by_round,
    };
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs one scenario once; a scenario that is not installed or fails gets a row that says
/// why, and the others still run.
fn run_one(name: &str, scenario: Option<Scenario>, env: &Env) -> Row {
    eprintln!("{name}...");
    let (outcome, skipped) = match scenario {
        None => (
            None,
            Some("skipped: not installed (cargo install boringtun-cli)".to_string()),
        ),
        Some(s) => match s.run(env) {
            Ok(o) => (Some(o), None),
            Err(e) => {
                eprintln!("  {name} failed: {e:#}");
                (None, Some(format!("failed: {e:#}")))
            }
        },
    };
    Row {
        name: name.to_string(),
        skipped,
        connect_ms: outcome.as_ref().and_then(|o| o.connect_ms),
        wake_ms: outcome.as_ref().and_then(|o| o.wake_ms),
        metrics: outcome.map(|o| o.metrics),
        ..Row::default()
    }
}

/// Fails with a clear message when something the harness needs is missing.
fn preflight() -> Result<()> {
    if !testbed::available() {
        bail!("needs root and iproute2 (network namespaces): run `sudo bench/run`");
    }
    let tools = [
        ("iperf3", "apt-get install iperf3"),
        ("wireguard-go", "apt-get install wireguard-go"),
        ("wg", "apt-get install wireguard-tools"),
        ("ping", "apt-get install iputils-ping"),
        ("nft", "apt-get install nftables"),
        ("python3", "apt-get install python3"),
        ("ss", "apt-get install iproute2"),
        ("timeout", "apt-get install coreutils"),
        ("getconf", "apt-get install libc-bin"),
        ("chrt", "apt-get install util-linux"),
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(t, how)| format!("{t} ({how})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

/// Whether an executable of that name is on PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(name)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// CPU model, cores and kernel.
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN);
    Machine {
        cpu,
        cores,
        kernel,
        load_at_start,
    }
}

/// Fills in the columns relative to the bare path and to wireguard-go.
fn relate(rows: &mut [Row]) {
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.metrics.clone())
    };
    let bare = find(BARE);
    let wg = find(WG_GO);
    for row in rows.iter_mut() {
        let Some(m) = &row.metrics else { continue };
        if let Some(b) = &bare {
            row.rtt_idle_added_ms = Some(m.rtt_idle_ms - b.rtt_idle_ms);
            row.rtt_awake_added_ms = Some(m.rtt_awake_ms - b.rtt_awake_ms);
            row.rtt_load_added_ms = m.rtt_load_ms.map(|r| r - b.rtt_idle_ms);
        }
        if let Some(w) = &wg {
            row.tcp_up_vs_wireguard_go = Some(m.tcp_up_mbps / w.tcp_up_mbps);
            row.tcp_down_vs_wireguard_go = Some(m.tcp_down_mbps / w.tcp_down_mbps);
        }
    }
}

/// The table as text.
fn table(report: &Report) -> String {
    let header = [
        "scenario",
        "TCP up Mbit/s",
        "TCP down Mbit/s",
        "vs wg-go up/down",
        "TCP retrans % up/down",
        "UDP max Mbit/s",
        "UDP loss % at max",
        "UDP loss % at rate",
        "RTT +ms idle",
        "RTT +ms awake",
        "sleeps/ping",
        "RTT +ms load",
        "CPU s/GB",
        "connect ms",
        "wake ms",
    ];
    let opt =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &report.scenarios {
        let Some(m) = &r.metrics else {
            lines.push(vec![r.name.clone(), r.skipped.clone().unwrap_or_default()]);
            continue;
        };
        let ratio = match (r.tcp_up_vs_wireguard_go, r.tcp_down_vs_wireguard_go) {
            (Some(u), Some(d)) => format!("{u:.2}x / {d:.2}x"),
            _ => "-".to_string(),
        };
        lines.push(vec![
            r.name.clone(),
            format!("{:.0}", m.tcp_up_mbps),
            format!("{:.0}", m.tcp_down_mbps),
            ratio,
            format!(
                "{} / {}",
                opt(m.tcp_up_retransmit_pct, 2),
                opt(m.tcp_down_retransmit_pct, 2)
            ),
            format!("{:.0}", m.udp_mbps),
            format!("{:.1}", m.udp_loss_pct),
            format!("{:.2}", m.udp_loss_at_rate_pct),
            opt(r.rtt_idle_added_ms, 3),
            opt(r.rtt_awake_added_ms, 3),
            opt(m.sleeps_per_ping, 1),
            opt(r.rtt_load_added_ms, 3),
            opt(m.cpu_s_per_gb, 2),
            opt(r.connect_ms, 0),
            opt(r.wake_ms, 1),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for l in &lines {
        // Skipped rows' reasons span the other columns.
        let cells = if l.len() == header.len() { l.len() } else { 1 };
        for (w, c) in widths.iter_mut().zip(&l[..cells]) {
            *w = (*w).max(c.chars().count());
        }
    }
    let m = &report.machine;
    let rounds = if report.rounds > 1 {
        format!(" | median of {} rounds", report.rounds)
    } else {
        String::new()
    };
    let mut out = format!(
        "\n{} | {} ({} cores, load {:.2} at start) | Linux {} | iperf3 {} s per run, UDP {} B datagrams unlimited and at {} Mbit/s{rounds}\n",
        report.date, m.cpu, m.cores, m.load_at_start, m.kernel, report.seconds, report.udp_len, report.udp_rate_mbps
    );
    if let Some(b) = report
        .scenarios
        .iter()
        .find(|r| r.name == BARE)
        .and_then(|r| r.metrics.as_ref())
    {
        out.push_str(&format!(
            "bare path RTT {:.3} ms idle, {:.3} ms with every core kept awake; RTT columns are added to it\n",
            b.rtt_idle_ms, b.rtt_awake_ms
        ));
    }
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(j, c)| {
                if l.len() != header.len() || j == 0 {
                    format!("{c:<w$}", w = widths[j])
                } else {
                    format!("{c:>w$}", w = widths[j])
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    if report.rounds > 1 {
        out.push_str("vs wg-go up / down, round by round:\n");
        for (name, each) in rounds::ratios_by_round(&report.by_round)
            .into_iter()
            .filter(|(name, _)| name != WG_GO)
        {
            out.push_str(&format!("  {name}: {}\n", each.join(", ")));
        }
    }
    out
}

/// The current time, UTC, from `date` (no time crate in the workspace).
fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
