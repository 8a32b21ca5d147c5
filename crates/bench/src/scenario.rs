//! The scenarios: each builds its own testbed (client, ingress, egress and destination
//! namespaces behind a router), starts the tunnel processes, measures, and tears everything
//! down again.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use testbed::{Host, Testbed};

use crate::measure::{self, wait_for, Metrics, Plan};

/// What every scenario shares: the `openrelay` and relay binaries, a scratch folder with
/// keys, the signed directory and relay configs, and the measurement plan.
pub(crate) struct Env {
    /// The `openrelay` executable under test: the client, and the keys and directory tools.
    openrelay: PathBuf,
    /// The relay executable under test (`openrelay-relay`, the image that clients attest).
    relay: PathBuf,
    /// `openrelay-bench-peer`, OpenRelay's one-hop data path.
    peer: PathBuf,
    /// Scratch folder, removed on drop.
    dir: PathBuf,
    /// The directory signer's public key (`--trust`).
    signer: String,
    /// The egress relay's WireGuard public key.
    egress_pub: String,
    /// How long and how hard to measure.
    pub(crate) plan: Plan,
}

/// A scenario's measurements, and the connect time where there is one.
pub(crate) struct Outcome {
    /// iperf3, ping and CPU figures.
    pub(crate) metrics: Metrics,
    /// Process start until the client reported "connected through", ms.
    pub(crate) connect_ms: Option<f64>,
    /// The first ping after the client rested, ms: it waits for a new handshake per hop.
    pub(crate) wake_ms: Option<f64>,
}

/// Quiet seconds after which the two-hop client rests: longer than any gap between the
/// measurements, so that it rests only once they are over.
const REST_SECS: u64 = 5;
/// What the client logs when it rests.
const RESTED: &str = "erased the session keys here and at both relays";

/// The tunnel addresses of the userspace WireGuard scenarios.
const WG_CLIENT: &str = "10.77.0.2";
const WG_EGRESS: &str = "10.77.0.1";

/// A Hello from the stock WireGuard peer's tunnel address to the relay's control port;
/// prints the tunnel address the relay's Admitted message assigns (as the interop test in
/// crates/openrelay/tests/testbed.rs does).
const HELLO_SCRIPT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 51822))
s.settimeout(1.0)
hello = b"OR" + bytes([1, 1]) + struct.pack(">H", 2) + struct.pack(">H", 1)
for _ in range(10):
    s.sendto(hello, ("100.64.0.1", 51821))
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        continue
    assert data[:2] == b"OR" and data[3] == 2, data
    print(socket.inet_ntoa(data[6:10]))
    sys.exit(0)
sys.exit("no Admitted from the relay")
"#;

impl Env {
    /// Makes the keys, the signed directory (sim TEE, one sim vendor, the relay binary's
    /// measurement, the token issuer and its keys) and the relay and issuer configs for the
    /// testbed's addresses, which are the same in every testbed.
    pub(crate) fn new(openrelay: &Path, relay: &Path, peer: &Path, plan: Plan) -> Result<Self> {
        let openrelay = openrelay
            .canonicalize()
            .with_context(|| format!("no openrelay binary at {}", openrelay.display()))?;
        let relay = relay.canonicalize().with_context(|| {
            format!(
                "no relay binary at {} (cargo build --release -p openrelay-relay)",
                relay.display()
            )
        })?;
        let peer = peer.canonicalize().with_context(|| {
            format!(
                "no openrelay-bench-peer binary at {} (cargo build --release -p openrelay-bench)",
                peer.display()
            )
        })?;
        let dir = std::env::temp_dir().join(format!("openrelay-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir:?}"))?;
        let mut env = Self {
            openrelay,
            relay,
            peer,
            dir,
            signer: String::new(),
            egress_pub: String::new(),
            plan,
        };
        let ingress_pub = env.openrelay_ok(&["keygen", "--output", &env.path("ingress.key")])?;
        env.egress_pub = env.openrelay_ok(&["keygen", "--output", &env.path("egress.key")])?;
        env.signer =
            env.openrelay_ok(&["directory", "keygen", "--output", &env.path("signing.key")])?;
        let vendor_pub = env.openrelay_ok(&[
            "directory",
            "keygen",
            "--output",
            &env.path("sim-vendor.key"),
        ])?;
        // The sim measurement: the SHA-256 of the executable. The relays run the relay
        // image; the issuer runs `openrelay issuer run`, so that executable is approved too.
        let measure = |path: &Path| -> Result<String> {
            use sha2::Digest;
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(sha2::Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        };
        let images = [&env.relay, &env.openrelay]
            .into_iter()
            .map(|path| {
                measure(path)
                    .map(|m| format!("\n[[image]]\nplatform = \"sim\"\nmeasurement = \"{m}\"\n"))
            })
            .collect::<Result<String>>()?;
        // The token issuer runs in the destination host. Relays that read the directory
        // (the ingress, and the two-hop scenario's egress) admit only sessions that spend
        // one of its tokens, so the two-hop connect time includes spending them.
        env.openrelay_ok(&["keygen", "--output", &env.path("issuer.key")])?;
        env.openrelay_ok(&["keygen", "--output", &env.path("sealing.key")])?;
        env.write(
            "issuer.toml",
            &format!(
                "name = \"issuer.bench\"\nprivate_key_file = \"{}\"\nlisten = \"{}:{ISSUER_PORT}\"\nstate_dir = \"{}\"\nsealing_key_file = \"{}\"\ntee = \"sim\"\nsim_vendor_key_file = \"{}\"\n",
                env.path("issuer.key"),
                host_addr(4),
                env.path("issuer-state"),
                env.path("sealing.key"),
                env.path("sim-vendor.key"),
            ),
        )?;
        let issuer = env.openrelay_ok(&["issuer", "keys", "--config", &env.path("issuer.toml")])?;
        let (ingress_addr, egress_addr) = (host_addr(2), host_addr(3));
        let relay = |name: &str, role: &str, key: &str, addr: &str, op: &str| {
            format!("\n[[relay]]\nname = \"{name}\"\nrole = \"{role}\"\nwg_public_key = \"{key}\"\nendpoint = \"{addr}:51820\"\noperator = \"{op}\"\nbandwidth_mbps = 10000\n")
        };
        let body = format!(
            "version = 1\nserial = 1\nsim_vendors = [\"{vendor_pub}\"]\n{}{}{images}\n{issuer}\n",
            relay("in", "ingress", &ingress_pub, &ingress_addr, "a"),
            relay("out", "egress", &env.egress_pub, &egress_addr, "b"),
        );
        env.write("relays.toml", &body)?;
        env.openrelay_ok(&[
            "directory",
            "sign",
            "--key",
            &env.path("signing.key"),
            "--input",
            &env.path("relays.toml"),
            "--output",
            &env.path("directory.toml"),
        ])?;
        let tee = format!(
            "tee = \"sim\"\nsim_vendor_key_file = \"{}\"\n",
            env.path("sim-vendor.key")
        );
        env.write(
            "ingress.toml",
            &format!(
                "private_key_file = \"{}\"\nlisten = \"{ingress_addr}:51820\"\ndirectory = \"{}\"\ndirectory_keys = [\"{}\"]\n{tee}",
                env.path("ingress.key"),
                env.path("directory.toml"),
                env.signer,
            ),
        )?;
        // Without the directory the egress admits on `Hello` alone: the one-hop peer and the
        // stock WireGuard peer have no tokens.
        let egress_tun = format!(
            "private_key_file = \"{}\"\nlisten = \"{egress_addr}:51820\"\n{tee}tun = \"orexit0\"\n",
            env.path("egress.key"),
        );
        env.write("egress-tun.toml", &egress_tun)?;
        env.write(
            "egress-tun-tokens.toml",
            &format!(
                "{egress_tun}directory = \"{}\"\ndirectory_keys = [\"{}\"]\n",
                env.path("directory.toml"),
                env.signer,
            ),
        )?;
        Ok(env)
    }

    /// A file in the scratch folder.
    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    fn write(&self, file: &str, contents: &str) -> Result<()> {
        std::fs::write(self.path(file), contents).with_context(|| format!("cannot write {file}"))
    }

    /// Runs `openrelay` (outside the testbed) and returns its trimmed standard output.
    fn openrelay_ok(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.openrelay)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.openrelay.display()))?;
        stdout_of(args, out)
    }

    /// The log file of a process started in a scenario.
    fn log(&self, name: &str) -> Result<Stdio> {
        let f = std::fs::File::create(self.path(&format!("{name}.log")))
            .with_context(|| format!("cannot create {name}.log"))?;
        Ok(Stdio::from(f))
    }

    /// The last lines a process wrote to its log, for error messages.
    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Starts the token issuer in the destination host; returns its pid once its UDP port
    /// is bound.
    fn start_issuer(&self, bed: &Testbed) -> Result<u32> {
        let bin = self.openrelay.to_string_lossy();
        let config = self.path("issuer.toml");
        let args = [&*bin, "issuer", "run", "--config", &config];
        self.start_listening(bed, &bed.dest, "issuer", &args, ISSUER_PORT)
    }

    /// Runs `openrelay` in the client host with `input` on its standard input; returns its
    /// trimmed standard output.
    fn client_ok(&self, bed: &Testbed, args: &[&str], input: &str) -> Result<String> {
        let bin = self.openrelay.to_string_lossy();
        let out = testbed::output_with_input(bed.command(&bed.client, &bin).args(args), input)
            .with_context(|| format!("cannot run openrelay {args:?} in the client host"))?;
        stdout_of(args, out)
    }

    /// Buys the tokens of one connection as a user does, before the whole-host client
    /// starts (its kill switch lets nothing reach the issuer directly): an account, credit
    /// from the issuer's operator (with the issuer stopped), then `account tokens`. Returns
    /// the data directory that holds them.
    fn buy_tokens(&self, bed: &Testbed) -> Result<String> {
        let data = self.path("data");
        let common = [
            "--directory",
            &self.path("directory.toml"),
            "--trust",
            &self.signer,
            "--data-dir",
            &data,
        ];
        let password = "a long benchmark account password 7310";
        let issuer = self.start_issuer(bed)?;
        let account = self.client_ok(
            bed,
            &[&["account", "create"][..], &common].concat(),
            &format!("{password}\n"),
        )?;
        stop_process(bed, issuer)?;
        let config = self.path("issuer.toml");
        self.openrelay_ok(&["issuer", "credit", "--config", &config, &account, "10"])?;
        let issuer = self.start_issuer(bed)?;
        let password_file = self.path("password");
        std::fs::write(&password_file, format!("{password}\n"))
            .context("cannot write the password file")?;
        std::fs::set_permissions(
            &password_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .context("cannot restrict the password file")?;
        let bought = self.client_ok(
            bed,
            &[
                &["account", "tokens", "--connections", "1"][..],
                &common,
                &["--account", &account, "--password-file", &password_file],
            ]
            .concat(),
            "",
        )?;
        stop_process(bed, issuer)?;
        if connections_in_stock(&data) != 1 {
            bail!("`openrelay account tokens` left no tokens in {data}: {bought}");
        }
        Ok(data)
    }

    /// Starts an OpenRelay relay (`ingress` or `egress`) with one of the configs; returns
    /// its pid once its UDP port is bound (it measures itself first).
    fn start_relay(&self, bed: &Testbed, role: &str, config: &str) -> Result<u32> {
        let host = if role == "ingress" {
            &bed.ingress
        } else {
            &bed.egress
        };
        let bin = self.relay.to_string_lossy();
        let config = self.path(config);
        self.start_listening(bed, host, role, &[&bin, role, "--config", &config], 51820)
    }

    /// Starts `args` in `host`, logging to `name`.log, and returns its pid once an
    /// `openrelay` process listens on UDP `port` there.
    fn start_listening(
        &self,
        bed: &Testbed,
        host: &Host,
        name: &str,
        args: &[&str],
        port: u16,
    ) -> Result<u32> {
        let pid = bed.spawn(host, args, Stdio::null(), self.log(name)?)?;
        wait_for(
            &format!("the {name}'s UDP port"),
            Duration::from_secs(30),
            || {
                bed.exec(&host.ns, &["ss", "-Hulnp", &format!("sport = :{port}")])
                    .is_ok_and(|out| out.contains("openrelay"))
            },
        )
        .with_context(|| format!("{name} log:\n{}", self.log_tail(name)))?;
        Ok(pid)
    }
}

/// The trimmed standard output of `openrelay args`, or an error with its standard error.
fn stdout_of(args: &[&str], out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "openrelay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The issuer's UDP port.
const ISSUER_PORT: u16 = 51830;

/// How many connections' tokens the client's stock in `data` holds.
fn connections_in_stock(data: &str) -> usize {
    std::fs::read_to_string(Path::new(data).join("tokens.toml"))
        .unwrap_or_default()
        .matches("[[connection]]")
        .count()
}

/// Stops a process started in the testbed (SIGTERM) and waits until it has exited.
fn stop_process(bed: &Testbed, pid: u32) -> Result<()> {
    signal(pid, "-TERM");
    let gone = wait_for("a process to exit", Duration::from_secs(15), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    });
    bed.kill(pid);
    gone
}

/// The testbed's IPv4 address of host number `n` (1 client, 2 ingress, 3 egress, 4 dest).
fn host_addr(n: u8) -> String {
    format!("198.18.{n}.2")
}

/// A new testbed with iperf3's server running in the destination host.
fn testbed() -> Result<Testbed> {
    let bed = Testbed::new().context("cannot build the testbed")?;
    measure::start_iperf_server(&bed)?;
    Ok(bed)
}

/// Scenario 1: the bare path, client → router → destination over veth.
pub(crate) fn bare(env: &Env) -> Result<Outcome> {
    let bed = testbed()?;
    let metrics = measure::run(&bed, env.plan, &[])?;
    Ok(Outcome {
        metrics,
        connect_ms: None,
        wake_ms: None,
    })
}

/// Scenarios 2 and 3: one userspace WireGuard implementation (`program`, which takes the
/// interface name last and stays in the foreground) at both ends, client → egress, and
/// the egress forwards with NAT to the destination.
pub(crate) fn userspace_wireguard(env: &Env, program: &[&str]) -> Result<Outcome> {
    let bed = testbed()?;
    let tag = std::process::id() % 100_000;
    let (cif, eif) = (format!("orb{tag}c"), format!("orb{tag}e"));
    let (ckey, cpub) = wg_keypair(env, "wg-client.key")?;
    let (ekey, epub) = wg_keypair(env, "wg-egress.key")?;
    let mut started = Started::new(&bed, &[&cif, &eif]);
    let epid = start_wg(env, &bed, &bed.egress, program, &eif)?;
    started.push(epid);
    ns(
        &bed,
        &bed.egress,
        &[
            "wg",
            "set",
            &eif,
            "listen-port",
            "51820",
            "private-key",
            &ekey,
            "peer",
            &cpub,
            "allowed-ips",
            &format!("{WG_CLIENT}/32"),
        ],
    )?;
    ns(
        &bed,
        &bed.egress,
        &["ip", "addr", "add", &format!("{WG_EGRESS}/24"), "dev", &eif],
    )?;
    ns(&bed, &bed.egress, &["ip", "link", "set", &eif, "up"])?;
    ns(
        &bed,
        &bed.egress,
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    )?;
    env.write(
        "nat.nft",
        &format!(
            "table ip orbench {{\n  chain post {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{}\" masquerade\n  }}\n}}\n",
            bed.egress.iface
        ),
    )?;
    ns(&bed, &bed.egress, &["nft", "-f", &env.path("nat.nft")])?;

    let cpid = start_wg(env, &bed, &bed.client, program, &cif)?;
    started.push(cpid);
    let endpoint = format!("{}:51820", bed.egress.addr);
    ns(
        &bed,
        &bed.client,
        &[
            "wg",
            "set",
            &cif,
            "private-key",
            &ckey,
            "peer",
            &epub,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "0.0.0.0/0",
        ],
    )?;
    ns(
        &bed,
        &bed.client,
        &["ip", "addr", "add", &format!("{WG_CLIENT}/32"), "dev", &cif],
    )?;
    ns(&bed, &bed.client, &["ip", "link", "set", &cif, "up"])?;
    ns(
        &bed,
        &bed.client,
        &[
            "ip",
            "route",
            "add",
            &format!("{}/32", bed.dest.addr),
            "dev",
            &cif,
        ],
    )?;
    wait_through(&bed)?;

    let metrics = measure::run(&bed, env.plan, &[cpid, epid])?;
    started.stop();
    Ok(Outcome {
        metrics,
        connect_ms: None,
        wake_ms: None,
    })
}

/// Scenario 4: OpenRelay at both ends of one hop: `openrelay-bench-peer` (the client's TUN
/// edge, batched UDP and one session) in the client host, straight to a TUN-mode egress.
pub(crate) fn openrelay_one_hop(env: &Env) -> Result<Outcome> {
    let bed = testbed()?;
    let mut started = Started::new(&bed, &[]);
    let epid = env.start_relay(&bed, "egress", "egress-tun.toml")?;
    started.push(epid);

    let tun = format!("orp{}", std::process::id() % 100_000);
    let endpoint = format!("{}:51820", bed.egress.addr);
    let child = bed
        .command(&bed.client, &env.peer.to_string_lossy())
        .args([
            "--egress",
            &endpoint,
            "--egress-key",
            &env.egress_pub,
            "--tun",
            &tun,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(env.log("peer")?)
        .spawn()
        .context("cannot start openrelay-bench-peer")?;
    let mut peer = ClientGuard(child);
    let ppid = peer.0.id();
    wait_line(env, &mut peer, "peer", "admitted ", Duration::from_secs(30))?;
    for dst in ["100.64.0.1/32".to_string(), format!("{}/32", bed.dest.addr)] {
        ns(
            &bed,
            &bed.client,
            &["ip", "route", "add", &dst, "dev", &tun],
        )?;
    }
    wait_through(&bed).with_context(|| format!("egress log:\n{}", env.log_tail("egress")))?;

    let metrics = measure::run(&bed, env.plan, &[ppid, epid])?;
    drop(peer);
    started.stop();
    Ok(Outcome {
        metrics,
        connect_ms: None,
        wake_ms: None,
    })
}

/// Scenario 5: Debian's wireguard-go in the client host as a stock WireGuard peer of an
/// OpenRelay egress in TUN mode, admitted with a Hello inside the tunnel.
pub(crate) fn stock_peer(env: &Env) -> Result<Outcome> {
    let bed = testbed()?;
    let tag = std::process::id() % 100_000;
    let cif = format!("orb{tag}o");
    let (ckey, _) = wg_keypair(env, "wg-stock.key")?;
    let mut started = Started::new(&bed, &[&cif]);
    let epid = env.start_relay(&bed, "egress", "egress-tun.toml")?;
    started.push(epid);

    let cpid = start_wg(
        env,
        &bed,
        &bed.client,
        &["wireguard-go", "--foreground"],
        &cif,
    )?;
    started.push(cpid);
    let endpoint = format!("{}:51820", bed.egress.addr);
    ns(
        &bed,
        &bed.client,
        &[
            "wg",
            "set",
            &cif,
            "private-key",
            &ckey,
            "peer",
            &env.egress_pub,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "0.0.0.0/0",
        ],
    )?;
    ns(
        &bed,
        &bed.client,
        &["ip", "addr", "add", "100.64.0.2/32", "dev", &cif],
    )?;
    ns(&bed, &bed.client, &["ip", "link", "set", &cif, "up"])?;
    ns(
        &bed,
        &bed.client,
        &["ip", "route", "add", "100.64.0.1/32", "dev", &cif],
    )?;
    ns(
        &bed,
        &bed.client,
        &[
            "ip",
            "route",
            "add",
            &format!("{}/32", bed.dest.addr),
            "dev",
            &cif,
        ],
    )?;

    let admitted = bed
        .command(&bed.client, "python3")
        .args(["-c", HELLO_SCRIPT, "100.64.0.2"])
        .output()
        .context("cannot run python3 in the client host")?;
    if !admitted.status.success() {
        bail!(
            "the egress did not admit the stock peer: {}\negress log:\n{}",
            String::from_utf8_lossy(&admitted.stderr).trim(),
            env.log_tail("egress")
        );
    }
    let assigned = String::from_utf8_lossy(&admitted.stdout).trim().to_string();
    if assigned != "100.64.0.2" {
        // The relay chose another tunnel address: use it.
        ns(
            &bed,
            &bed.client,
            &["ip", "addr", "add", &format!("{assigned}/32"), "dev", &cif],
        )?;
        ns(
            &bed,
            &bed.client,
            &["ip", "addr", "del", "100.64.0.2/32", "dev", &cif],
        )?;
    }
    wait_through(&bed).with_context(|| format!("egress log:\n{}", env.log_tail("egress")))?;

    let metrics = measure::run(&bed, env.plan, &[cpid, epid])?;
    started.stop();
    Ok(Outcome {
        metrics,
        connect_ms: None,
        wake_ms: None,
    })
}

/// Scenario 5: `openrelay client --tun` in the client host through an OpenRelay ingress
/// and a TUN-mode egress, with attestation of both hops and a token spent at each.
pub(crate) fn openrelay_two_hops(env: &Env) -> Result<Outcome> {
    let bed = testbed()?;
    let data = env.buy_tokens(&bed)?;
    let mut started = Started::new(&bed, &[]);
    let epid = env.start_relay(&bed, "egress", "egress-tun-tokens.toml")?;
    started.push(epid);
    let ipid = env.start_relay(&bed, "ingress", "ingress.toml")?;
    started.push(ipid);

    let bin = env.openrelay.to_string_lossy();
    let t0 = Instant::now();
    let child = bed
        .command(&bed.client, &bin)
        .args([
            "client",
            "--tun",
            "--state-dir",
            &env.path("state"),
            "--directory",
            &env.path("directory.toml"),
            "--trust",
            &env.signer,
            "--data-dir",
            &data,
            "--rest-after",
            &REST_SECS.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(env.log("client")?)
        .spawn()
        .context("cannot start openrelay client")?;
    let mut client = ClientGuard(child);
    let cpid = client.0.id();
    wait_line(
        env,
        &mut client,
        "client",
        "connected through",
        Duration::from_secs(60),
    )?;
    let connect = t0.elapsed();
    if connections_in_stock(&data) != 0 {
        bail!("the client connected without spending its tokens (is the issuer in the directory?)");
    }
    wait_through(&bed)?;

    let metrics = measure::run(&bed, env.plan, &[cpid, ipid, epid])?;
    let wake_ms = wake_after_rest(env, &bed)?;
    drop(client);
    started.stop();
    Ok(Outcome {
        metrics,
        connect_ms: Some(connect.as_secs_f64() * 1e3),
        wake_ms,
    })
}

/// Waits for the client to rest, then times one ping; `None` if it did not rest in time.
fn wake_after_rest(env: &Env, bed: &Testbed) -> Result<Option<f64>> {
    let rests = || {
        std::fs::read_to_string(env.path("client.log"))
            .unwrap_or_default()
            .matches(RESTED)
            .count()
    };
    let before = rests();
    let end = Instant::now() + Duration::from_secs(REST_SECS + 10);
    while rests() == before {
        if Instant::now() > end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    measure::ping(bed, &bed.dest.addr.to_string(), 1)
}

/// Waits until the process prints a line starting with `prefix` and returns that line;
/// its standard error goes to the log `name`, quoted when it fails.
fn wait_line(
    env: &Env,
    child: &mut ClientGuard,
    name: &str,
    prefix: &str,
    within: Duration,
) -> Result<String> {
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of the {name}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + within;
    loop {
        let left = end.checked_duration_since(Instant::now()).ok_or_else(|| {
            anyhow!(
                "the {name} printed no \"{prefix}\" within {} s\n{name} log:\n{}",
                within.as_secs(),
                env.log_tail(name)
            )
        })?;
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                "the {name} exited before printing \"{prefix}\"\n{name} log:\n{}",
                env.log_tail(name)
            ),
        }
    }
}

/// Runs a command in a host's namespace.
fn ns(bed: &Testbed, host: &Host, args: &[&str]) -> Result<()> {
    bed.exec(&host.ns, args)?;
    Ok(())
}

/// A WireGuard key pair from `wg`: the private key's file and the public key.
fn wg_keypair(env: &Env, file: &str) -> Result<(String, String)> {
    let key = Command::new("wg")
        .arg("genkey")
        .output()
        .context("cannot run wg")?;
    let path = env.path(file);
    std::fs::write(&path, &key.stdout).context("cannot write a key")?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run wg pubkey")?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, &key.stdout)?;
    }
    let out = child.wait_with_output()?;
    Ok((
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Starts a userspace WireGuard process for interface `iface` in `host`; returns its pid
/// once the interface exists.
fn start_wg(env: &Env, bed: &Testbed, host: &Host, program: &[&str], iface: &str) -> Result<u32> {
    let mut args = program.to_vec();
    args.push(iface);
    let log = format!("wg-{}", host.name);
    let pid = bed.spawn(host, &args, Stdio::null(), env.log(&log)?)?;
    wait_for(
        &format!("{}'s interface", program.first().copied().unwrap_or("wg")),
        Duration::from_secs(10),
        || bed.exec(&host.ns, &["ip", "link", "show", iface]).is_ok(),
    )
    .with_context(|| format!("log:\n{}", env.log_tail(&log)))?;
    Ok(pid)
}

/// Waits until pings from the client host reach the destination (handshakes done).
fn wait_through(bed: &Testbed) -> Result<()> {
    let dest = bed.dest.addr.to_string();
    wait_for("a ping through the tunnel", Duration::from_secs(20), || {
        measure::ping(bed, &dest, 1).is_ok_and(|r| r.is_some())
    })
}

/// Processes a scenario started through the testbed: stopped gently (SIGTERM, so they
/// remove their interfaces, sockets and firewall tables) before the testbed's SIGKILL.
struct Started<'a> {
    bed: &'a Testbed,
    pids: Vec<u32>,
    ifaces: Vec<String>,
}

impl<'a> Started<'a> {
    fn new(bed: &'a Testbed, ifaces: &[&str]) -> Self {
        Self {
            bed,
            pids: Vec::new(),
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Adds a process to stop.
    fn push(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// Stops the processes now.
    fn stop(self) {}
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        for pid in &self.pids {
            signal(*pid, "-TERM");
        }
        std::thread::sleep(Duration::from_millis(500));
        for pid in &self.pids {
            self.bed.kill(*pid);
        }
        // wireguard-go's control sockets live outside the namespaces.
        for iface in &self.ifaces {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
    }
}

/// The whole-host client or the one-hop peer: stopped with SIGTERM (the client restores
/// the host), then killed.
struct ClientGuard(Child);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        signal(self.0.id(), "-TERM");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}
