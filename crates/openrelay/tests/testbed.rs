//! Four hosts in network namespaces (client, ingress, egress, destination) joined by a
//! router: captures on each host prove what each hop sees. Needs root (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{any_contains, Host, Packet, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_openrelay");
const MARKER: &str = "openrelay-capture-marker-5d1e";
/// The destination's name in the testbed's /etc/hosts files.
const DEST_NAME: &str = "dest.openrelay.test";

fn ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Keys, signed directory and relay configs for the testbed's addresses.
struct Setup {
    dir: PathBuf,
    signer: String,
}

impl Setup {
    fn new(bed: &Testbed, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("openrelay-bed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        let ingress_pub = ok(&["keygen", "--output", &p("ingress.key")]);
        let egress_pub = ok(&["keygen", "--output", &p("egress.key")]);
        let signer = ok(&["directory", "keygen", "--output", &p("signing.key")]);
        let relay = |name: &str, role: &str, key: &str, host: &Host, op: &str| {
            format!("\n[[relay]]\nname = \"{name}\"\nrole = \"{role}\"\nwg_public_key = \"{key}\"\nendpoint = \"{}:51820\"\noperator = \"{op}\"\nbandwidth_mbps = 100\n", host.addr)
        };
        // Both relays run in the sim TEE of one vendor; the directory approves the sim
        // measurement of this `openrelay` executable.
        let vendor_pub = ok(&["directory", "keygen", "--output", &p("sim-vendor.key")]);
        let measurement = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(BIN).unwrap()))
        };
        let tee = format!(
            "tee = \"sim\"\nsim_vendor_key_file = \"{}\"\n",
            p("sim-vendor.key")
        );
        let body = format!(
            "version = 1\nserial = 1\nsim_vendors = [\"{vendor_pub}\"]\n{}{}\n[[image]]\nplatform = \"sim\"\nmeasurement = \"{measurement}\"\n",
            relay("in", "ingress", &ingress_pub, &bed.ingress, "a"),
            relay("out", "egress", &egress_pub, &bed.egress, "b")
        );
        std::fs::write(p("relays.toml"), body).unwrap();
        sign_directory(&dir);
        std::fs::write(
            p("ingress.toml"),
            format!(
                "private_key_file = \"{}\"\nlisten = \"{}:51820\"\ndirectory = \"{}\"\ndirectory_keys = [\"{signer}\"]\n{tee}",
                p("ingress.key"),
                bed.ingress.addr,
                p("directory.toml")
            ),
        )
        .unwrap();
        let egress = format!(
            "private_key_file = \"{}\"\nlisten = \"{}:51820\"\n{tee}",
            p("egress.key"),
            bed.egress.addr
        );
        std::fs::write(p("egress.toml"), &egress).unwrap();
        std::fs::write(p("egress-tun.toml"), format!("{egress}tun = \"orexit0\"\n")).unwrap();
        std::fs::write(
            p("egress-tun-plain.toml"),
            format!("{egress}tun = \"orexit0\"\noffload = false\n"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/page.html"), format!("<p>{MARKER}</p>\n")).unwrap();
        Self { dir, signer }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }

    /// Signs `relays.toml` again into `directory.toml` (after a change to the body).
    fn sign_directory(&self) {
        sign_directory(&self.dir);
    }
}

/// Signs `dir/relays.toml` with `dir/signing.key` into `dir/directory.toml`.
fn sign_directory(dir: &std::path::Path) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    ok(&[
        "directory",
        "sign",
        "--key",
        &p("signing.key"),
        "--input",
        &p("relays.toml"),
        "--output",
        &p("directory.toml"),
    ]);
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// The destination's web server (python3's http.server) serving the setup's www folder;
/// returns once it listens, since a fresh machine can take seconds to start python.
fn start_web(bed: &Testbed, s: &Setup, bind: &str) {
    let www = s.path("www");
    let args = [
        "python3",
        "-m",
        "http.server",
        "--bind",
        bind,
        "80",
        "--directory",
        &www,
    ];
    bed.spawn(&bed.dest, &args, Stdio::null(), Stdio::null())
        .unwrap();
    wait_for("the web server's TCP port", Duration::from_secs(20), || {
        bed.exec(&bed.dest.ns, &["ss", "-Htlnp", "sport = :80"])
            .is_ok_and(|out| out.contains("python3"))
    });
}

/// The egress relay with one of the setup's configs; returns its pid.
fn start_egress(bed: &Testbed, s: &Setup, config: &str) -> u32 {
    let args = [BIN, "relay", "egress", "--config", &s.path(config)];
    let pid = bed
        .spawn(&bed.egress, &args, Stdio::null(), Stdio::inherit())
        .unwrap();
    wait_listening(bed, &bed.egress);
    pid
}

/// The egress with its log in a file (for its final counters), and that file.
fn start_egress_logged(bed: &Testbed, s: &Setup, config: &str) -> (u32, String) {
    let log = s.path("egress.log");
    let args = [BIN, "relay", "egress", "--config", &s.path(config)];
    let out = Stdio::from(std::fs::File::create(&log).unwrap());
    let pid = bed.spawn(&bed.egress, &args, Stdio::null(), out).unwrap();
    wait_listening(bed, &bed.egress);
    (pid, log)
}

/// Waits until a relay on `host` has bound its UDP port (it measures itself first).
fn wait_listening(bed: &Testbed, host: &Host) {
    wait_for("the relay's UDP port", Duration::from_secs(20), || {
        bed.exec(&host.ns, &["ss", "-Hulnp", "sport = :51820"])
            .is_ok_and(|out| out.contains("openrelay"))
    });
}

/// The ingress relay.
fn start_ingress(bed: &Testbed, s: &Setup) {
    let args = [BIN, "relay", "ingress", "--config", &s.path("ingress.toml")];
    bed.spawn(&bed.ingress, &args, Stdio::null(), Stdio::inherit())
        .unwrap();
    wait_listening(bed, &bed.ingress);
}

fn start_network(bed: &Testbed, s: &Setup) {
    start_network_with(bed, s, "egress.toml");
}

fn start_network_with(bed: &Testbed, s: &Setup, egress_config: &str) {
    start_web(bed, s, &bed.dest.addr.to_string());
    start_egress(bed, s, egress_config);
    start_ingress(bed, s);
    bed.spawn(
        &bed.client,
        &[
            BIN,
            "client",
            "--directory",
            &s.path("directory.toml"),
            "--trust",
            &s.signer,
            "--socks",
            "127.0.0.1:1080",
        ],
        Stdio::null(),
        Stdio::inherit(),
    )
    .unwrap();
    let url = format!("http://{}/page.html", bed.dest.addr);
    wait_for(
        "the web server and the tunnel",
        Duration::from_secs(30),
        || curl(bed, &url).status.success(),
    );
}

fn curl(bed: &Testbed, url: &str) -> std::process::Output {
    bed.command(&bed.client, "curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--socks5-hostname",
            "127.0.0.1:1080",
            url,
        ])
        .output()
        .unwrap()
}

/// The routers' addresses (198.18.N.1) answer with ICMP; they are not peers.
fn is_router(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(a) if a.octets()[..2] == [198, 18] && a.octets()[3] == 1)
}

fn touches(packets: &[Packet], ip: IpAddr) -> bool {
    packets.iter().any(|p| p.src == ip || p.dst == ip)
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[test]
fn captures_show_each_hop_sees_only_its_half() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "captures");
    start_network(&bed, &s);

    let at_client = bed.capture(&bed.client).unwrap();
    let at_ingress = bed.capture(&bed.ingress).unwrap();
    let at_egress = bed.capture(&bed.egress).unwrap();
    let at_dest = bed.capture(&bed.dest).unwrap();
    // By address, and by name: the name is resolved at the egress (its /etc/hosts).
    for url in [
        format!("http://{}/page.html", bed.dest.addr),
        format!("http://{DEST_NAME}/page.html"),
    ] {
        let out = curl(&bed, &url);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
    }
    let client_link = at_client.stop().unwrap();
    let ingress = at_ingress.stop().unwrap();
    let egress = at_egress.stop().unwrap();
    let dest = at_dest.stop().unwrap();

    assert!(
        !any_contains(&ingress, DEST_NAME.as_bytes()),
        "the destination's name appears in the ingress capture"
    );
    assert!(
        !any_contains(&client_link, DEST_NAME.as_bytes()),
        "the destination's name left the client host in clear"
    );
    let ingress_addr = IpAddr::V4(bed.ingress.addr);
    assert!(
        client_link
            .iter()
            .filter(|p| p.src == IpAddr::V4(bed.client.addr))
            .all(|p| p.dst == ingress_addr),
        "the client host sent something other than tunnel traffic to the ingress"
    );

    let client = IpAddr::V4(bed.client.addr);
    let destination = IpAddr::V4(bed.dest.addr);
    let egress_addr = IpAddr::V4(bed.egress.addr);
    assert!(
        touches(&ingress, client),
        "the capture on the ingress host saw the client's traffic"
    );
    assert!(
        !touches(&ingress, destination),
        "the ingress host saw the destination address in a header"
    );
    assert!(
        !any_contains(&ingress, &octets(destination)),
        "the destination address appears in the ingress capture"
    );
    assert!(
        !any_contains(&ingress, MARKER.as_bytes()),
        "the page's content appears in the ingress capture"
    );
    assert!(
        !any_contains(&ingress, b"page.html"),
        "the request appears in the ingress capture"
    );

    assert!(
        touches(&egress, destination),
        "the capture on the egress host saw the flow to the destination"
    );
    assert!(
        !touches(&egress, client),
        "the egress host saw the client's address in a header"
    );
    assert!(
        !any_contains(&egress, &octets(client)),
        "the client's address appears in the egress capture"
    );

    // Every packet sent to the destination's address (neighbour discovery and the router's
    // ICMP aside).
    let tcp_peers: Vec<IpAddr> = dest
        .iter()
        .filter(|p| p.dst == destination && !is_router(p.src))
        .map(|p| if p.dst == destination { p.src } else { p.dst })
        .collect();
    assert!(!tcp_peers.is_empty());
    assert!(
        tcp_peers.iter().all(|ip| *ip == egress_addr),
        "the destination saw a peer other than the egress: {tcp_peers:?}"
    );
}

/// A Hello from the standard WireGuard peer's tunnel address, and the relay's answer,
/// sent with python3 inside the client's namespace.
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

#[test]
fn stock_wireguard_go_peer_handshakes_and_passes_traffic_once_admitted() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "interop");
    start_web(&bed, &s, &bed.dest.addr.to_string());
    start_egress(&bed, &s, "egress.toml");

    // A standard WireGuard peer: Debian's wireguard-go and wg, configured with the
    // egress's key and endpoint.
    // Started through the testbed, so it is killed even when an assertion fails (a
    // leftover would hold /var/run/wireguard/orwg0.sock).
    bed.spawn(
        &bed.client,
        &["wireguard-go", "--foreground", "orwg0"],
        Stdio::null(),
        Stdio::null(),
    )
    .expect("wireguard-go is installed (apt-get install wireguard-go)");
    wait_for("wireguard-go's interface", Duration::from_secs(10), || {
        bed.exec(&bed.client.ns, &["ip", "link", "show", "orwg0"])
            .is_ok()
    });
    let key_path = s.path("wg.key");
    std::fs::write(&key_path, tunnel::StaticSecret::generate().to_base64()).unwrap();
    let egress_pub = std::fs::read_to_string(s.path("relays.toml")).unwrap();
    let egress_pub = egress_pub
        .split("wg_public_key = \"")
        .nth(2)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let endpoint = format!("{}:51820", bed.egress.addr);
    bed.exec(
        &bed.client.ns,
        &[
            "wg",
            "set",
            "orwg0",
            "private-key",
            &key_path,
            "peer",
            &egress_pub,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "0.0.0.0/0",
        ],
    )
    .unwrap();
    bed.exec(
        &bed.client.ns,
        &["ip", "addr", "add", "100.64.0.2/32", "dev", "orwg0"],
    )
    .unwrap();
    bed.exec(&bed.client.ns, &["ip", "link", "set", "orwg0", "up"])
        .unwrap();
    bed.exec(
        &bed.client.ns,
        &["ip", "route", "add", "100.64.0.1/32", "dev", "orwg0"],
    )
    .unwrap();
    bed.exec(
        &bed.client.ns,
        &[
            "ip",
            "route",
            "add",
            &format!("{}/32", bed.dest.addr),
            "dev",
            "orwg0",
        ],
    )
    .unwrap();

    let url = format!("http://{}/page.html", bed.dest.addr);
    let direct = |url: &str| {
        bed.command(&bed.client, "curl")
            .args(["--silent", "--max-time", "3", url])
            .output()
            .unwrap()
    };
    // Handshake completes, but user traffic does not pass before admission.
    assert!(
        !direct(&url).status.success(),
        "user traffic passed before the session was admitted"
    );
    let handshakes = bed
        .exec(
            &bed.client.ns,
            &["wg", "show", "orwg0", "latest-handshakes"],
        )
        .unwrap();
    let when: u64 = handshakes
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        when > 0,
        "wireguard-go completed no handshake with the egress: {handshakes}"
    );

    let admitted = bed
        .command(&bed.client, "python3")
        .args(["-c", HELLO_SCRIPT, "100.64.0.2"])
        .output()
        .unwrap();
    assert!(
        admitted.status.success(),
        "{}",
        String::from_utf8_lossy(&admitted.stderr)
    );
    // The address comes from the worker that took the session (each hands out its own
    // share of 100.64.0.0/10); a standard peer takes the one Admitted names.
    let assigned: std::net::Ipv4Addr = String::from_utf8_lossy(&admitted.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(assigned.octets()[0], 100);
    assert_eq!(
        assigned.octets()[1] & 0xc0,
        64,
        "{assigned} is not in 100.64.0.0/10"
    );
    if assigned != std::net::Ipv4Addr::new(100, 64, 0, 2) {
        bed.exec(
            &bed.client.ns,
            &["ip", "addr", "del", "100.64.0.2/32", "dev", "orwg0"],
        )
        .unwrap();
        bed.exec(
            &bed.client.ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{assigned}/32"),
                "dev",
                "orwg0",
            ],
        )
        .unwrap();
    }

    let out = direct(&url);
    assert!(
        out.status.success(),
        "no traffic through the egress after admission"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
}

#[test]
fn tun_mode_egress_forwards_with_nat_and_refuses_the_same_destinations() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "exit");
    let at_dest = bed.capture(&bed.dest).unwrap();
    start_network_with(&bed, &s, "egress-tun.toml");
    let out = curl(&bed, &format!("http://{}/page.html", bed.dest.addr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
    let rules = bed
        .exec(
            &bed.egress.ns,
            &["nft", "list", "table", "ip", "openrelay-exit"],
        )
        .unwrap();
    assert!(rules.contains("masquerade"), "{rules}");

    // The destination sees the egress's address (NAT), never a tunnel address.
    let dest = at_dest.stop().unwrap();
    let destination = IpAddr::V4(bed.dest.addr);
    let peers: Vec<IpAddr> = dest
        .iter()
        .filter(|p| p.dst == destination && !is_router(p.src))
        .map(|p| if p.dst == destination { p.src } else { p.dst })
        .collect();
    assert!(
        !peers.is_empty() && peers.iter().all(|ip| *ip == IpAddr::V4(bed.egress.addr)),
        "{peers:?}"
    );

    // The relay's own address and private networks are refused at once (TCP reset).
    for url in [
        format!("http://{}:22/", bed.egress.addr),
        "http://10.1.2.3/".to_string(),
        "http://169.254.169.254/".to_string(),
    ] {
        let started = Instant::now();
        let out = curl(&bed, &url);
        assert!(
            !out.status.success(),
            "{url} was reachable through the egress"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url} was not refused promptly"
        );
    }
    drop(bed);
    // The egress removes its table when it stops (the testbed killed it with the namespace).
}

/// The client host's routing rules, routes and firewall tables, to compare before and after.
fn client_network_state(bed: &Testbed) -> Vec<String> {
    let ns = &bed.client.ns;
    let mut state = Vec::new();
    for f in ["-4", "-6"] {
        state.push(bed.exec(ns, &["ip", f, "rule", "show"]).unwrap());
        // Link-local routes appear on their own once the kernel configures fe80:: addresses.
        let routes = bed
            .exec(ns, &["ip", f, "route", "show", "table", "all"])
            .unwrap();
        state.push(
            routes
                .lines()
                .filter(|l| !l.contains("fe80:"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    state.push(bed.exec(ns, &["nft", "list", "tables"]).unwrap());
    state.push(std::fs::read_to_string(Testbed::etc_dir(ns).join("resolv.conf")).unwrap());
    state
}

/// Starts `openrelay client --tun` in the client host; returns its pid once connected.
fn start_whole_host_client(bed: &Testbed, s: &Setup) -> (u32, std::sync::mpsc::Receiver<String>) {
    start_whole_host_client_with(bed, s, &[])
}

/// The whole-host client with more arguments; returns its pid and its stdout lines after
/// it connected. The testbed kills it if the test ends without stopping it.
fn start_whole_host_client_with(
    bed: &Testbed,
    s: &Setup,
    extra: &[&str],
) -> (u32, std::sync::mpsc::Receiver<String>) {
    let state = s.path("state");
    let directory = s.path("directory.toml");
    let mut args = vec![
        BIN,
        "client",
        "--tun",
        "--state-dir",
        &state,
        "--directory",
        &directory,
        "--trust",
        &s.signer,
    ];
    args.extend_from_slice(extra);
    let (pid, stdout) = bed
        .spawn_piped(&bed.client, &args, Stdio::inherit())
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("the whole-host client did not connect");
        if let Ok(line) = rx.recv_timeout(left) {
            if line.starts_with("connected through") {
                return (pid, rx);
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Waits until `pid` has exited (a zombie that its parent has not reaped yet counts).
fn wait_gone(pid: u32) {
    wait_for(
        "the process to exit",
        Duration::from_secs(15),
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => true,
        },
    );
}

fn direct_curl(bed: &Testbed, args: &[&str]) -> std::process::Output {
    bed.command(&bed.client, "curl")
        .args(["--silent", "--show-error", "--max-time", "8"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn whole_host_mode_tunnels_everything_and_restores_the_host_exactly() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "wholehost");
    start_web(&bed, &s, "::");
    start_egress(&bed, &s, "egress.toml");
    start_ingress(&bed, &s);
    let before = client_network_state(&bed);

    let at_client = bed.capture(&bed.client).unwrap();
    let (pid, _lines) = start_whole_host_client(&bed, &s);
    // Plain curl, no proxy: the name is resolved through the tunnel at the egress.
    let out = direct_curl(&bed, &[&format!("http://{DEST_NAME}/page.html")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
    // IPv6 is blocked, not leaked.
    let v6 = direct_curl(
        &bed,
        &["-6", &format!("http://[{}]/page.html", bed.dest.addr6)],
    );
    assert!(
        !v6.status.success(),
        "an IPv6 destination was reached around the tunnel"
    );
    let link = at_client.stop().unwrap();

    let ingress = IpAddr::V4(bed.ingress.addr);
    let own = [IpAddr::V4(bed.client.addr), IpAddr::V6(bed.client.addr6)];
    let leaked: Vec<_> = link
        .iter()
        .filter(|p| own.contains(&p.src) && p.dst != ingress)
        .map(|p| (p.src, p.dst))
        .collect();
    assert!(
        leaked.is_empty(),
        "packets left the client host for something other than the ingress: {leaked:?}"
    );
    assert!(
        link.iter().any(|p| p.dst == ingress),
        "no tunnel traffic on the link"
    );
    assert!(
        !any_contains(&link, DEST_NAME.as_bytes()),
        "the destination's name crossed the link in clear"
    );
    assert!(
        !link.iter().any(port_53),
        "a DNS packet crossed the client's link"
    );

    signal(pid, "-TERM");
    wait_gone(pid);
    assert_eq!(
        client_network_state(&bed),
        before,
        "the client did not restore the host exactly"
    );
}

/// Whether a captured IPv4/UDP or TCP packet has port 53 on either side.
fn port_53(p: &Packet) -> bool {
    let ip = &p.bytes[14..];
    if ip.first().map(|b| b >> 4) != Some(4) {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    if !(proto == 6 || proto == 17) || ip.len() < ihl + 4 {
        return false;
    }
    let sport = u16::from_be_bytes([ip[ihl], ip[ihl + 1]]);
    let dport = u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]);
    sport == 53 || dport == 53
}

#[test]
fn kill_switch_holds_when_the_egress_dies_and_the_client_is_killed() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "killswitch");
    std::fs::write(s.dir.join("www/big.bin"), vec![7u8; 30 * 1024 * 1024]).unwrap();
    start_web(&bed, &s, &bed.dest.addr.to_string());
    let egress_pid = start_egress(&bed, &s, "egress.toml");
    start_ingress(&bed, &s);
    let (pid, _lines) = start_whole_host_client(&bed, &s);

    let at_client = bed.capture(&bed.client).unwrap();
    // A slow download, interrupted by the egress dying.
    let download = bed
        .command(&bed.client, "curl")
        .args([
            "--silent",
            "--max-time",
            "20",
            "--limit-rate",
            "2M",
            "-o",
            "/dev/null",
            &format!("http://{}/big.bin", bed.dest.addr),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    bed.kill(egress_pid);
    std::thread::sleep(Duration::from_secs(3));
    signal(pid, "-KILL");
    wait_gone(pid);
    // With the client dead, the host stays offline: a direct fetch fails.
    let out = direct_curl(
        &bed,
        &[
            "--max-time",
            "3",
            &format!("http://{}/page.html", bed.dest.addr),
        ],
    );
    assert!(
        !out.status.success(),
        "traffic flowed after the client was killed"
    );
    let mut download = download;
    let _ = download.kill();
    let _ = download.wait();
    let link = at_client.stop().unwrap();
    let ingress = IpAddr::V4(bed.ingress.addr);
    let own = [IpAddr::V4(bed.client.addr), IpAddr::V6(bed.client.addr6)];
    let leaked: Vec<_> = link
        .iter()
        .filter(|p| own.contains(&p.src) && p.dst != ingress)
        .map(|p| (p.src, p.dst))
        .collect();
    assert!(
        leaked.is_empty(),
        "packets left for something other than the ingress: {leaked:?}"
    );

    // The documented way back.
    let out = bed
        .command(&bed.client, BIN)
        .args(["client", "--unblock", "--state-dir", &s.path("state")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kill switch"));
    let out = direct_curl(&bed, &[&format!("http://{}/page.html", bed.dest.addr)]);
    assert!(
        out.status.success(),
        "the network is not back after --unblock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(Testbed::etc_dir(&bed.client.ns).join("resolv.conf")).unwrap(),
        "nameserver 127.0.0.1\n"
    );
}

#[test]
fn whole_host_client_reconnects_after_an_egress_restart_while_the_kill_switch_holds() {
    if !testbed::required() {
        return;
    }
    const BIG: usize = 16 * 1024 * 1024;
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "reconnect");
    // curl's --limit-rate lets the first seconds run ahead (8 MiB at "1M" took 3.7 to 5 s
    // on loopback), so the file is large enough to be still arriving at the restart.
    std::fs::write(s.dir.join("www/big.bin"), vec![9u8; BIG]).unwrap();
    start_web(&bed, &s, &bed.dest.addr.to_string());
    let egress_pid = start_egress(&bed, &s, "egress.toml");
    start_ingress(&bed, &s);
    let (pid, lines) = start_whole_host_client(&bed, &s);
    let at_client = bed.capture(&bed.client).unwrap();

    let url = format!("http://{}/big.bin", bed.dest.addr);
    let mut download = bed
        .command(&bed.client, "curl")
        .args([
            "--silent",
            "--max-time",
            "90",
            "--limit-rate",
            "1M",
            "--retry",
            "10",
            "--retry-all-errors",
            "--retry-delay",
            "1",
            "--speed-limit",
            "1000",
            "--speed-time",
            "8",
            "-o",
            &s.path("got.bin"),
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download ended before the egress restart, so it tests no reconnect"
    );
    // The egress restarts: same key and port, every session forgotten.
    bed.kill(egress_pid);
    start_egress(&bed, &s, "egress.toml");

    let out = download.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the retried download did not complete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(s.path("got.bin")).unwrap(), vec![9u8; BIG]);
    // The end of the file may already sit in the client's TCP receive buffer when the
    // egress dies, so curl can finish before the client notices: its probe does within
    // PROBE_AFTER of the last reply, and it reconnects.
    let mut reported = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    while let Ok(l) = lines.recv_timeout(left()) {
        let back = l.starts_with("reconnected through");
        reported.push(l);
        if back {
            break;
        }
    }
    let lost = reported
        .iter()
        .position(|l| l.starts_with("connection lost"));
    let back = reported
        .iter()
        .position(|l| l.starts_with("reconnected through"));
    assert!(
        matches!((lost, back), (Some(l), Some(b)) if l < b),
        "expected \"connection lost\" then \"reconnected through\" within 30 s: {reported:?}"
    );

    let link = at_client.stop().unwrap();
    let ingress = IpAddr::V4(bed.ingress.addr);
    let own = [IpAddr::V4(bed.client.addr), IpAddr::V6(bed.client.addr6)];
    assert!(
        link.iter()
            .filter(|p| own.contains(&p.src))
            .all(|p| p.dst == ingress),
        "a packet left for something other than the ingress while reconnecting"
    );
    signal(pid, "-TERM");
    wait_gone(pid);
}

/// In the destination host: TCP 9000 answers the SHA-256 of everything it receives; UDP
/// 9001 echoes every datagram.
const HASH_ECHO_SERVER: &str = r#"
import hashlib, socket, sys, threading
addr = sys.argv[1]
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 9000)); s.listen(4)
    while True:
        c, _ = s.accept(); h = hashlib.sha256()
        while True:
            b = c.recv(65536)
            if not b: break
            h.update(b)
        c.sendall(h.hexdigest().encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 9001))
while True:
    d, a = u.recvfrom(65535); u.sendto(d, a)
"#;

/// In the client host: sends 8 MiB over TCP and compares hashes, then UDP datagrams of
/// sizes around the tunnel MTU, checking bytes and order of the echoes.
const HASH_ECHO_CLIENT: &str = r#"
import hashlib, random, socket, struct, sys
dest = sys.argv[1]; mtu = int(sys.argv[2])
rnd = random.Random(7); data = bytes(rnd.getrandbits(8) for _ in range(1 << 16)) * 128
s = socket.create_connection((dest, 9000), timeout=60); s.sendall(data); s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(100)
    if not b: break
    got += b
assert got.decode() == hashlib.sha256(data).hexdigest(), "TCP upload differs"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3); u.connect((dest, 9001))
top = mtu - 28
sizes = [8, 500, top - 1, top] * 25
for seq, n in enumerate(sizes):
    u.send(struct.pack(">I", seq) + bytes((seq + i) % 256 for i in range(n - 4)))
last = -1; count = 0
try:
    while count < len(sizes):
        d = u.recv(65535); seq = struct.unpack(">I", d[:4])[0]
        assert d[4:] == bytes((seq + i) % 256 for i in range(sizes[seq] - 4)), "UDP bytes differ"
        assert seq > last, "UDP datagrams reordered"
        last = seq; count += 1
except socket.timeout:
    pass
assert count >= len(sizes) * 9 // 10, f"only {count} of {len(sizes)} UDP echoes"
print("ok", count)
"#;

/// Whole-host client, ingress and a TUN-mode egress (`egress_config`); TCP and UDP through
/// both hops must arrive byte-exact and in order. Returns the egress's final count of the
/// packets it wrote to its TUN device and of the writes they took.
fn tun_path_is_byte_exact(egress_config: &str, name: &str) -> Option<(u64, u64)> {
    if !testbed::required() {
        return None;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, name);
    // A 16 MiB file for the download.
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(s.dir.join("www/big.bin"), &big).unwrap();
    start_web(&bed, &s, &bed.dest.addr.to_string());
    let dest = bed.dest.addr.to_string();
    bed.spawn(
        &bed.dest,
        &["python3", "-c", HASH_ECHO_SERVER, &dest],
        Stdio::null(),
        Stdio::inherit(),
    )
    .unwrap();
    wait_for(
        "the hash echo server's TCP port",
        Duration::from_secs(20),
        || {
            bed.exec(&bed.dest.ns, &["ss", "-Htlnp", "sport = :9000"])
                .is_ok_and(|out| out.contains("python3"))
        },
    );
    let (egress, egress_log) = start_egress_logged(&bed, &s, egress_config);
    start_ingress(&bed, &s);
    let (client, _lines) = start_whole_host_client(&bed, &s);

    let out = direct_curl(
        &bed,
        &["--max-time", "60", &format!("http://{dest}/big.bin")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big, "the download through both hops differs");

    let mtu = bed
        .exec(&bed.client.ns, &["cat", "/sys/class/net/ortun0/mtu"])
        .unwrap();
    let out = bed
        .command(&bed.client, "python3")
        .args(["-c", HASH_ECHO_CLIENT, &dest, mtu.trim()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    signal(client, "-TERM");
    wait_gone(client);
    // The egress reports its counters once more as it stops.
    signal(egress, "-TERM");
    wait_gone(egress);
    let log = std::fs::read_to_string(&egress_log).unwrap();
    let tun = log
        .lines()
        .rev()
        .find_map(|l| l.split(" tun=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.split_once('/'))
        .map(|(p, w)| (p.parse().unwrap(), w.parse().unwrap()));
    assert!(tun.is_some(), "the egress reported no TUN writes:\n{log}");
    tun
}

#[test]
fn tcp_and_udp_through_a_tun_egress_with_offloads_are_byte_exact_and_in_order() {
    let Some((packets, writes)) = tun_path_is_byte_exact("egress-tun.toml", "exact") else {
        return;
    };
    // The 8 MiB upload arrives in runs of in-order segments, which coalesce.
    assert!(
        writes * 2 < packets,
        "{packets} packets took {writes} TUN writes: hardly any were coalesced"
    );
}

#[test]
fn tcp_and_udp_through_a_tun_egress_without_offloads_are_byte_exact_and_in_order() {
    let Some((packets, writes)) = tun_path_is_byte_exact("egress-tun-plain.toml", "exact-plain")
    else {
        return;
    };
    assert_eq!(
        packets, writes,
        "nothing coalesces without the virtio-net header"
    );
}

/// A TUN egress whose device goes down drops what it would write there, counts it
/// (`tun_refused`), carries traffic again once the device is back, and stops when told to
/// while the device is down.
#[test]
fn a_tun_egress_whose_device_goes_down_drops_and_keeps_running() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "tun-down");
    let dest = bed.dest.addr.to_string();
    start_web(&bed, &s, &dest);
    let (egress, egress_log) = start_egress_logged(&bed, &s, "egress-tun.toml");
    start_ingress(&bed, &s);
    let (client, _lines) = start_whole_host_client(&bed, &s);
    let page = format!("http://{dest}/page.html");
    let out = direct_curl(&bed, &[&page]);
    assert!(
        out.status.success(),
        "no page through the TUN egress before its device went down: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    bed.exec(&bed.egress.ns, &["ip", "link", "set", "orexit0", "down"])
        .unwrap();
    let out = direct_curl(&bed, &["--max-time", "3", &page]);
    assert!(
        !out.status.success(),
        "a page came through a TUN device that is down"
    );
    bed.exec(&bed.egress.ns, &["ip", "link", "set", "orexit0", "up"])
        .unwrap();
    // The worker kept running: the page comes through again once the device is back (its
    // routes went with it, so they are put back first), and the egress stops on SIGTERM.
    bed.exec(
        &bed.egress.ns,
        &["ip", "route", "replace", "100.64.0.0/10", "dev", "orexit0"],
    )
    .unwrap();
    assert!(
        direct_curl(&bed, &[&page]).status.success(),
        "the egress did not carry traffic after its device came back"
    );
    // Down again, with packets for it: the egress still stops when told to.
    bed.exec(&bed.egress.ns, &["ip", "link", "set", "orexit0", "down"])
        .unwrap();
    let _ = direct_curl(&bed, &["--max-time", "2", &page]);
    signal(egress, "-TERM");
    wait_gone(egress);
    signal(client, "-TERM");
    wait_gone(client);
    let log = std::fs::read_to_string(&egress_log).unwrap();
    let refused: u64 = log
        .lines()
        .rev()
        .find_map(|l| l.split(" tun_refused=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "no refused TUN write was counted:\n{log}");
}

/// The token issuer on the destination host, reachable from the client host only before
/// the kill switch is up.
fn start_issuer(bed: &Testbed, s: &Setup) -> u32 {
    let args = [BIN, "issuer", "run", "--config", &s.path("issuer.toml")];
    let pid = bed
        .spawn(&bed.dest, &args, Stdio::null(), Stdio::inherit())
        .unwrap();
    wait_for("the issuer's UDP port", Duration::from_secs(20), || {
        bed.exec(&bed.dest.ns, &["ss", "-Hulnp", "sport = :51830"])
            .is_ok_and(|out| out.contains("openrelay"))
    });
    pid
}

/// Runs `openrelay` in the client host, with `input` on its standard input.
fn client_cmd(bed: &Testbed, args: &[&str], input: &str) -> String {
    let out = testbed::output_with_input(bed.command(&bed.client, BIN).args(args), input).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// In whole-host mode the kill switch lets nothing reach the issuer directly: the refill
/// goes through both hops like any other traffic, and buys the tickets the client needs.
#[test]
fn whole_host_client_refills_its_tokens_through_the_tunnel() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let s = Setup::new(&bed, "refill");
    let p = |f: &str| s.path(f);
    ok(&["keygen", "--output", &p("issuer.key")]);
    ok(&["keygen", "--output", &p("sealing.key")]);
    std::fs::write(
        p("issuer.toml"),
        format!(
            "name = \"issuer.test\"\nprivate_key_file = \"{}\"\nlisten = \"{}:51830\"\nstate_dir = \"{}\"\nsealing_key_file = \"{}\"\ntee = \"sim\"\nsim_vendor_key_file = \"{}\"\n",
            p("issuer.key"),
            bed.dest.addr,
            p("issuer-state"),
            p("sealing.key"),
            p("sim-vendor.key"),
        ),
    )
    .unwrap();
    // The directory lists the issuer and its token keys: both relays now require tokens.
    let section = ok(&["issuer", "keys", "--config", &p("issuer.toml")]);
    let body = std::fs::read_to_string(p("relays.toml")).unwrap();
    std::fs::write(p("relays.toml"), format!("{body}\n{section}\n")).unwrap();
    s.sign_directory();
    let egress = std::fs::read_to_string(p("egress.toml")).unwrap();
    std::fs::write(
        p("egress-tokens.toml"),
        format!(
            "{egress}directory = \"{}\"\ndirectory_keys = [\"{}\"]\n",
            p("directory.toml"),
            s.signer
        ),
    )
    .unwrap();

    // An account with credit and tickets for one connection, bought directly.
    let mut issuer = start_issuer(&bed, &s);
    let data = p("data");
    let common = [
        "--directory",
        &p("directory.toml"),
        "--trust",
        &s.signer,
        "--data-dir",
        &data,
    ];
    let password = "a long and private refill password 5521";
    let account = client_cmd(
        &bed,
        &[&["account", "create"][..], &common].concat(),
        &format!("{password}\n"),
    )
    .trim()
    .to_string();
    signal(issuer, "-TERM");
    wait_gone(issuer);
    ok(&[
        "issuer",
        "credit",
        "--config",
        &p("issuer.toml"),
        &account,
        "20",
    ]);
    issuer = start_issuer(&bed, &s);
    let pw_file = p("password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(
        &pw_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let with_pw = [
        &common[..],
        &["--account", &account, "--password-file", &pw_file],
    ]
    .concat();
    let bought = client_cmd(
        &bed,
        &[&["account", "tokens", "--connections", "1"][..], &with_pw].concat(),
        "",
    );
    assert!(bought.contains("for 1 connections"), "{bought}");
    let stock = || {
        std::fs::read_to_string(s.dir.join("data/tokens.toml"))
            .unwrap_or_default()
            .matches("[[connection]]")
            .count()
    };
    assert_eq!(stock(), 1);

    start_web(&bed, &s, &bed.dest.addr.to_string());
    start_egress(&bed, &s, "egress-tokens.toml");
    start_ingress(&bed, &s);
    let at_client = bed.capture(&bed.client).unwrap();
    // Connecting spends the only connection's tickets; the stock (0) is below half of
    // --keep 2, so the client refills it, with no wait: the refill starts while the tunnel
    // is still being set up, and must wait for it.
    let (pid, lines) = start_whole_host_client_with(
        &bed,
        &s,
        &[
            "--data-dir",
            &data,
            "--refill-account",
            &account,
            "--password-file",
            &pw_file,
            "--keep",
            "2",
            "--refill-delay-secs",
            "0",
        ],
    );
    let end = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("no refill report from the whole-host client");
        if let Ok(line) = lines.recv_timeout(left) {
            if line.starts_with("tokens:") && line != "tokens: no refill yet" {
                break line;
            }
        }
    };
    assert!(
        report.starts_with("tokens: bought 2 connections"),
        "{report}"
    );
    assert_eq!(stock(), 2, "the refill's tickets are in the stock");
    // The host still reaches the web only through the tunnel.
    let out = direct_curl(&bed, &[&format!("http://{}/page.html", bed.dest.addr)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(MARKER));
    let link = at_client.stop().unwrap();
    let ingress = IpAddr::V4(bed.ingress.addr);
    let own = IpAddr::V4(bed.client.addr);
    let direct: Vec<_> = link
        .iter()
        .filter(|p| p.src == own && p.dst != ingress)
        .map(|p| (p.src, p.dst))
        .collect();
    assert!(
        direct.is_empty(),
        "the refill or something else left the host around the tunnel: {direct:?}"
    );
    signal(pid, "-TERM");
    wait_gone(pid);
    signal(issuer, "-TERM");
    wait_gone(issuer);
}
