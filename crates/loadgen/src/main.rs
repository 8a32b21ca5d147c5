//! `openrelay-loadgen`: opens many client sessions against one egress (or, with `--role
//! ingress`, one ingress) relay process and reports handshakes per CPU-second of the relay
//! and its resident memory per idle session.
//!
//! ```text
//! cargo build --release -p openrelay-relay -p openrelay-loadgen
//! target/release/openrelay-loadgen --sessions 10000
//! target/release/openrelay-loadgen --sessions 10000 --role ingress
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use loadgen::client::Traffic;
use loadgen::proc::{self, Sample};
use loadgen::{drive, IdleOutcome, Outcome, Plan, Sink, TcpSink};
use tunnel::{PublicKey, StaticSecret};

/// Opens client sessions against one egress, or one ingress (handshake, admission, a few UDP
/// packets, then idle), and reports handshakes per CPU-second and resident memory per idle
/// session.
#[derive(Debug, Parser)]
#[command(name = "openrelay-loadgen", version)]
struct Args {
    /// Client sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// The relay executable measured (in --role): `openrelay-relay` (the relay image), or
    /// `openrelay` (its `relay` subcommand).
    #[arg(long, default_value = "target/release/openrelay-relay")]
    relay: PathBuf,
    /// Measure a running relay with this process id instead of starting one (needs
    /// --endpoint and --relay-key; an egress's config must allow 127.0.0.1 destinations).
    #[arg(long, requires_all = ["endpoint", "relay_key"])]
    attach_pid: Option<u32>,
    /// The running relay's UDP endpoint (with --attach-pid).
    #[arg(long)]
    endpoint: Option<SocketAddr>,
    /// The running relay's WireGuard public key, base64 (with --attach-pid).
    #[arg(long)]
    relay_key: Option<String>,
    /// UDP sockets the sessions share.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// New handshakes per second (relays ask for cookies above 1000 per second from one
    /// address).
    #[arg(long, default_value_t = 800.0)]
    rate: f64,
    /// Most sessions under way (not yet admitted) at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// UDP packets each admitted session sends to the sink.
    #[arg(long, default_value_t = 3)]
    packets: usize,
    /// Payload bytes of those packets.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Each admitted session also opens one TCP connection through the egress to a local
    /// listener, sends a short request, reads the answer and keeps the connection open,
    /// idle (as an app's push channel does). The egress then runs a userspace stack for the
    /// session. With --packets 0 the sessions hold no UDP flow.
    #[arg(long)]
    tcp: bool,
    /// With --tcp: bytes of the answer to each connection's request, after which the
    /// connection idles. More than the egress's 256 KiB buffer touches all of its pages, as
    /// a download does.
    #[arg(long, default_value_t = loadgen::tcp::REQUEST.len(), requires = "tcp")]
    tcp_answer_bytes: usize,
    /// Seconds to wait after the last admission before measuring idle memory and CPU. The
    /// clients keep their tunnels running meanwhile (keepalives, handshake answers). Past
    /// the rest time (--rest-after-secs) the clients have rested, and the relay's sessions
    /// with them (dropped their WireGuard state); without resting, past 190 s.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Seconds of quiet after which each client rests (`Rest`: it and the relay erase the
    /// session's keys), as the real client does; 0: never.
    #[arg(long, default_value_t = control::REST_AFTER.as_secs())]
    rest_after_secs: u64,
    /// Seconds without progress before a session retries.
    #[arg(long, default_value_t = 2)]
    retry_secs: u64,
    /// Keep the started relay's directory (config, key, log) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// The relay role measured. An ingress lists the UDP sink as its one egress and
    /// forwards each session's packets to it from a socket of the session's own.
    #[arg(long, value_enum, default_value_t = Role::Egress)]
    role: Role,
}

/// Which of the relay's roles runs and is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Egress,
    Ingress,
}

impl Role {
    /// The role as the relay's command line and log name it.
    fn name(self) -> &'static str {
        match self {
            Role::Egress => "egress",
            Role::Ingress => "ingress",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sink = Sink::start().await.context("cannot bind the UDP sink")?;
    let tcp_sink = match args.tcp {
        true => Some(
            TcpSink::start(args.tcp_answer_bytes)
                .await
                .context("cannot listen for TCP")?,
        ),
        false => None,
    };
    if args.tcp && args.role == Role::Ingress {
        bail!("--tcp needs --role egress: an ingress forwards only datagrams to egresses");
    }
    let ticks = proc::ticks_per_sec();
    let mut relay = match (args.attach_pid, args.endpoint, &args.relay_key) {
        (Some(pid), Some(endpoint), Some(key)) => Relay::attached(pid, endpoint, key, args.role)?,
        _ => Relay::spawn(&args.relay, args.sessions, args.role, sink.addr())?,
    };
    let result = measure(&args, &sink, tcp_sink.as_ref(), &mut relay, ticks).await;
    relay.stop(args.keep);
    result
}

async fn measure(
    args: &Args,
    sink: &Sink,
    tcp_sink: Option<&TcpSink>,
    relay: &mut Relay,
    ticks: u64,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc::sample(relay.pid, ticks).context("cannot read the relay's /proc")?;
    let plan = Plan {
        target: relay.endpoint,
        relay_key: relay.key,
        sessions: args.sessions,
        sockets: args.sockets,
        rate: args.rate,
        window: args.window,
        traffic: Traffic {
            sink: sink.addr(),
            packets: args.packets,
            payload_len: args.payload,
            rest_after: (args.rest_after_secs > 0)
                .then(|| Duration::from_secs(args.rest_after_secs)),
            tcp_sink: tcp_sink.map(TcpSink::target),
        },
        retry_after: Duration::from_secs(args.retry_secs),
        max_attempts: 5,
        deadline: Duration::from_secs_f64(args.sessions as f64 / args.rate.max(1.0) + 120.0),
    };
    eprintln!(
        "opening {} sessions against {} (pid {}) at up to {}/s, at most {} pending, over {} sockets",
        args.sessions, relay.endpoint, relay.pid, args.rate, args.window, args.sockets
    );
    let (outcome, mut clients) = drive(&plan).await.context("load generation failed")?;
    let loaded = proc::sample(relay.pid, ticks)?;
    let settle = Duration::from_secs(args.settle_secs);
    let clients_idle = clients.keep_for(settle).await;
    let idle = proc::sample(relay.pid, ticks)?;
    let counters = relay.counters();
    print_report(&Report {
        args,
        outcome: &outcome,
        before,
        loaded,
        idle,
        settle,
        clients_idle,
        sink_received: sink.received(),
        tcp: tcp_sink.map(|t| (t.accepted(), clients.tcp_replied())),
        counters,
    });
    if outcome.failed > 0 {
        bail!("{} sessions were not admitted", outcome.failed);
    }
    Ok(())
}

struct Report<'a> {
    args: &'a Args,
    outcome: &'a Outcome,
    before: Sample,
    loaded: Sample,
    idle: Sample,
    settle: Duration,
    clients_idle: IdleOutcome,
    sink_received: u64,
    /// TCP connections the sink accepted, and clients that got their whole answer.
    tcp: Option<(u64, usize)>,
    counters: Option<String>,
}

fn print_report(r: &Report<'_>) {
    let o = r.outcome;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let cpu = r.loaded.cpu.saturating_sub(r.before.cpu).as_secs_f64();
    let secs = o.elapsed.as_secs_f64();
    let per_cpu = if cpu > 0.0 {
        format!("{:.0}", o.admitted as f64 / cpu)
    } else {
        "n/a".into()
    };
    let grown = r.idle.rss.saturating_sub(r.before.rss);
    let per_session = grown as f64 / o.admitted.max(1) as f64 / 1024.0;
    let idle_cpu = r.idle.cpu.saturating_sub(r.loaded.cpu).as_secs_f64();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "openrelay-loadgen: {} sessions, one {}",
        r.args.sessions,
        r.args.role.name()
    );
    let role = r.args.role.name();
    println!(
        "  admitted         {} (failed {}; retried: {} handshakes, {} Hellos; cookie replies {}, refused {}, bad datagrams {}, unrouted {}, send errors {})",
        o.admitted, o.failed, o.handshake_retries, o.hello_retries, o.cookie_replies, o.refused, o.bad_datagrams, o.unrouted, o.send_errors
    );
    println!(
        "  setup            {secs:.2} s for all at {}/s paced: {:.0} admitted/s; per session p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.args.rate,
        o.admitted as f64 / secs.max(1e-9),
        ms(o.latency(0.5)),
        ms(o.latency(0.99)),
        ms(o.latency(1.0)),
    );
    println!(
        "  {role:<7} CPU      {cpu:.2} s over the setup ({:.0}% of one core): {per_cpu} handshakes+admissions per CPU-second (per core)",
        100.0 * cpu / secs.max(1e-9)
    );
    println!(
        "  {role:<7} idle CPU {idle_cpu:.2} s over {} s idle ({:.1}% of one core)",
        r.settle.as_secs(),
        100.0 * idle_cpu / r.settle.as_secs_f64().max(1e-9)
    );
    println!(
        "  {role:<7} RSS      {:.1} MiB before, {:.1} MiB right after, {:.1} MiB idle after {} s: {:.1} KiB per idle session ({:.1} MiB per 10,000)",
        mib(r.before.rss),
        mib(r.loaded.rss),
        mib(r.idle.rss),
        r.settle.as_secs(),
        per_session,
        per_session * 10_000.0 / 1024.0
    );
    println!(
        "  clients idle     {} datagrams from the {role} answered with {}",
        r.clients_idle.received, r.clients_idle.sent
    );
    println!(
        "  UDP sink         {} of {} datagrams arrived",
        r.sink_received,
        o.admitted * r.args.packets
    );
    if let Some((accepted, replied)) = r.tcp {
        println!(
            "  TCP sink         {accepted} of {} connections accepted; {replied} clients got their answer ({} bytes) and hold the connection open",
            o.admitted, r.args.tcp_answer_bytes
        );
    }
    if let Some(c) = &r.counters {
        println!("  {role:<7} counters {c}");
    }
}

/// The relay being measured: a child process this program started, or one it attached to.
struct Relay {
    pid: u32,
    endpoint: SocketAddr,
    key: PublicKey,
    role: Role,
    child: Option<(Child, PathBuf)>,
}

impl Relay {
    fn attached(pid: u32, endpoint: SocketAddr, key: &str, role: Role) -> anyhow::Result<Self> {
        let key = PublicKey::from_base64(key).context("--relay-key is not a WireGuard key")?;
        Ok(Self {
            pid,
            endpoint,
            key,
            role,
            child: None,
        })
    }

    /// Writes a key and config to a new directory and starts the relay in `role`, waiting
    /// until it listens. An egress may reach loopback destinations (the sinks); an ingress
    /// lists `sink` as its one egress.
    fn spawn(relay: &Path, sessions: usize, role: Role, sink: SocketAddr) -> anyhow::Result<Self> {
        if !relay.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p openrelay-relay` or pass --relay",
                relay.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("openrelay-loadgen-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let secret = StaticSecret::generate();
        let key_file = dir.join("relay.key");
        write_private(&key_file, &secret.to_base64())?;
        let port = free_udp_port()?;
        let endpoint: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.join("relay.toml");
        let reach = match role {
            Role::Egress => "allow_destinations = [\"127.0.0.1/32\"]".to_string(),
            Role::Ingress => format!("egresses = [\"{sink}\"]"),
        };
        std::fs::write(
            &config,
            format!(
                "private_key_file = {key:?}\nlisten = \"{endpoint}\"\nmax_sessions = {max}\n\
                 report_interval_secs = 1\n{reach}\n",
                key = key_file.display().to_string(),
                max = (sessions * 2).max(20_000),
            ),
        )?;
        let log = dir.join("relay.log");
        // `openrelay` takes the role after `relay`; `openrelay-relay` takes it first.
        let tool = relay.file_name().is_some_and(|n| n == "openrelay");
        let child = Command::new(relay)
            .args(if tool { &["relay"][..] } else { &[][..] })
            .args([role.name(), "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", relay.display()))?;
        let mut relay = Self {
            pid: child.id(),
            endpoint,
            key: secret.public_key(),
            role,
            child: Some((child, dir)),
        };
        relay.wait_listening()?;
        Ok(relay)
    }

    fn log(&self) -> String {
        self.child
            .as_ref()
            .and_then(|(_, dir)| std::fs::read_to_string(dir.join("relay.log")).ok())
            .unwrap_or_default()
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self
                .log()
                .contains(&format!("{} listening", self.role.name()))
            {
                return Ok(());
            }
            if let Some((child, _)) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the {} exited ({status}):\n{}",
                        self.role.name(),
                        self.log()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the {} did not start listening:\n{}",
            self.role.name(),
            self.log()
        )
    }

    /// The latest counters line the started relay logged (it reports every second).
    fn counters(&self) -> Option<String> {
        self.child.as_ref()?;
        std::thread::sleep(Duration::from_millis(1100));
        let log = self.log();
        let tag = format!("{} counters:", self.role.name());
        let line = log.lines().rev().find(|l| l.contains(&tag))?;
        let (_, counters) = line.split_once(&tag)?;
        Some(counters.trim().to_string())
    }

    /// Stops a started relay (SIGTERM, then kill) and removes its directory.
    fn stop(&mut self, keep: bool) {
        let Some((mut child, dir)) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        if keep {
            eprintln!("relay files kept in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl Drop for Relay {
    /// A started relay never outlives the generator, even when measuring failed.
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("cannot find a free UDP port")?;
    Ok(s.local_addr()?.port())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}
